"""The stand-in's triangles: tubes, caps, webs, palm grid, wrist band, thumb, wound outward."""
from __future__ import annotations

import numpy as np

from utnet.mano.standin.mesh import FINGER_RING, FINGERS, PALM_ROW, THUMB_HOLE_COLS, THUMB_HOLE_ROWS, THUMB_RING, Geometry


def _quad_band(ring_a, ring_b):
    """Two triangles per quad between two closed rings of the same size."""
    n = len(ring_a)
    tris = []
    for k in range(n):
        a0, a1 = ring_a[k], ring_a[(k + 1) % n]
        b0, b1 = ring_b[k], ring_b[(k + 1) % n]
        tris += [(a0, a1, b1), (a0, b1, b0)]
    return tris


def _zipper(ring_a, theta_a, ring_b, theta_b):
    """Triangulate the band between two closed rings of different sizes, walking both by angle."""
    na, nb = len(ring_a), len(ring_b)
    ta = np.append(theta_a, theta_a[0] + 2 * np.pi)
    tb = np.append(theta_b, theta_b[0] + 2 * np.pi)
    i = j = 0
    tris = []
    while i < na or j < nb:
        if j == nb or (i < na and ta[i + 1] <= tb[j + 1]):
            tris.append((ring_a[i % na], ring_a[(i + 1) % na], ring_b[j % nb]))
            i += 1
        else:
            tris.append((ring_a[i % na], ring_b[(j + 1) % nb], ring_b[j % nb]))
            j += 1
    return tris


def mesh_faces(geo: Geometry) -> np.ndarray:
    """[1538, 3] triangles (build ids): finger tubes and caps, webs, palm, wrist band, thumb."""
    R = geo.rings
    tris = []
    for name in FINGERS:
        tube = R[f"{name}_tube"]
        for a, b in zip(tube[:-1], tube[1:]):
            tris += _quad_band(a, b)
        last, apex = tube[-1], R["apex"][name]
        tris += [(last[k], last[(k + 1) % FINGER_RING], apex) for k in range(FINGER_RING)]
    half = FINGER_RING // 2
    for left, right in zip(FINGERS[:-1], FINGERS[1:]):  # the webs between neighbouring fingers
        a, b = R[f"{left}_tube"][0], R[f"{right}_tube"][0]
        d_end, p_end, d0, p0 = a[half - 1], a[half], b[0], b[-1]
        tris += [(d_end, d0, p0), (d_end, p0, p_end)]
    rows = R["palm_rows"]
    for r in range(len(rows) - 1):
        for c in range(PALM_ROW):
            quad = (rows[r][c], rows[r][(c + 1) % PALM_ROW], rows[r + 1][(c + 1) % PALM_ROW], rows[r + 1][c])
            if r + 1 in THUMB_HOLE_ROWS[1:] and c in THUMB_HOLE_COLS[:-1]:
                continue  # the thumb's opening
            tris += [(quad[0], quad[1], quad[2]), (quad[0], quad[2], quad[3])]
    tris += _zipper(rows[-1], geo.angles["palm_rows"][-1], R["wrist"], geo.angles["wrist"])
    tube = R["thumb_tube"]
    for a, b in zip(tube[:-1], tube[1:]):
        tris += _quad_band(a, b)
    last, apex = tube[-1], R["apex"]["thumb"]
    tris += [(last[k], last[(k + 1) % THUMB_RING], apex) for k in range(THUMB_RING)]
    return _orient(np.array(tris, dtype=np.int64), geo.verts_mm)


def _orient(faces: np.ndarray, verts: np.ndarray) -> np.ndarray:
    """Make the winding consistent across shared edges, then outward (positive enclosed volume)."""
    edge_faces = {}
    for f, tri in enumerate(faces):
        for k in range(3):
            key = tuple(sorted((tri[k], tri[(k + 1) % 3])))
            edge_faces.setdefault(key, []).append(f)
    bad = [e for e, fs in edge_faces.items() if len(fs) > 2]
    if bad:
        raise AssertionError(f"non-manifold edges: {bad[:5]}")
    faces = faces.copy()
    done = np.zeros(len(faces), dtype=bool)
    for seed in range(len(faces)):
        if done[seed]:
            continue
        done[seed] = True
        stack = [seed]
        while stack:
            f = stack.pop()
            tri = faces[f]
            for k in range(3):
                a, b = tri[k], tri[(k + 1) % 3]
                for g in edge_faces[tuple(sorted((a, b)))]:
                    if g == f or done[g]:
                        continue
                    other = faces[g]
                    same_direction = any(other[m] == a and other[(m + 1) % 3] == b for m in range(3))
                    if same_direction:
                        faces[g] = other[::-1]
                    done[g] = True
                    stack.append(g)
    v = verts[faces]
    volume = np.einsum("ij,ij->i", v[:, 0], np.cross(v[:, 1], v[:, 2])).sum() / 6.0
    return faces if volume > 0 else faces[:, ::-1].copy()
