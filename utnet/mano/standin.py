"""The MANO stand-in: a procedurally built right hand in MANO's exact file format.

The official MANO files cannot be shipped, so tests, CI and the default experiment run on this
model. It is NOT MANO and numbers measured on it are not MANO numbers. What it shares with MANO:
778 vertices, 1538 faces, the mesh open at the wrist, the 16 joints with MANO's kinematic tree and
order, the HO3D fingertip vertex ids (744, 333, 444, 555, 672 at the tips of thumb, index, middle,
ring, pinky), the pickle keys, shapes and dtypes that `smplx.MANO` reads.

Rest-pose layout (metres, like MANO's right hand): the hand lies flat, fingers point along -x,
the palm faces -y (the back of the hand is +y), the thumb is on the +z side. The origin is at the
middle finger's knuckle (MCP); the wrist joint sits about 97 mm along +x.

Construction: each finger is a tube of 10-vertex elliptic rings closed by one apex vertex (the tip
vertex); the four finger base rings form the distal rim of the palm, a tube of 40-vertex rows that
narrows to a 16-vertex open rim at the wrist; the thumb is a tube of 12-vertex rings leaving the
palm through a hole cut at its radial-palmar corner. A disk-like surface with 778 vertices and a
16-vertex boundary has exactly 2 * 778 - 16 - 2 = 1538 triangles. Every joint has a ring of
vertices that share one skinning-weight row and whose mean is the joint, so `J_regressor` (uniform
over that ring) reproduces the skinned joints from posed vertices at any pose.

Shape space: each of the 10 shapedirs is the central difference of the builder with respect to one
anatomical parameter (size, palm width, palm length, finger length, thickness, finger girth,
thumb length, index-versus-ring length, pinky length, knuckle arch), one standard deviation per unit
beta. Pose space: hands_components is the eigenbasis of a synergy-based covariance (curl of all
fingers first), hands_std its square-rooted eigenvalues, hands_mean a relaxed, slightly curled hand.

Determinism: no randomness, and no eigen-solver freedom (distinct eigenvalues, fixed signs). Every
stored float is rounded (positions to 1e-9 m, the rest to 1e-8), so last-bit differences of libm or
LAPACK between machines would have to straddle a rounding step to change the file's bytes.
"""
from __future__ import annotations

import os
import pickle
import tempfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from utnet.joints import MANO_PARENTS, TIP_VERTEX_IDS
from utnet.mano.pose_prior import FINGER_CHAINS, joint_frames, local_to_axis_angle

STANDIN_VERSION = 1
STANDIN_MARKER_KEY = "utnet_standin"  # extra pickle key; smplx ignores unknown keys
STANDIN_FILENAME = f"mano_standin_v{STANDIN_VERSION}.pkl"

_MM = 1e-3  # the layout below is written in millimetres; the file stores metres like MANO

# ------------------------------------------------------------------------------------ layout
FINGERS = ("index", "middle", "ring", "pinky")  # radial to ulnar, the order around the palm
FINGER_RING = 10
THUMB_RING = 12
WRIST_RING = 16
PALM_ROW = 4 * FINGER_RING
# Fraction of the way from the knuckles to the wrist of each inner palm row.
PALM_ROW_T = (0.15, 0.33, 0.51, 0.69, 0.855)
# Thumb hole in the palm grid: inner rows 3..5 (1-based from the knuckles), columns 36..39, 0.
THUMB_HOLE_ROWS = (3, 4, 5)
THUMB_HOLE_COLS = (36, 37, 38, 39, 0)


@dataclass(frozen=True)
class _FingerSpec:
    mcp: tuple          # knuckle centre (x, y, z) mm
    splay_deg: float    # turn of the finger axis from -x toward +z (radial)
    lengths: tuple      # MCP->PIP, PIP->DIP, DIP->tip apex, mm
    half_width: tuple   # at MCP, PIP, DIP, cap start, mm (across the finger)
    half_thick: tuple   # same stations, mm (dorsal-palmar)


_FINGER_SPECS = {
    "index": _FingerSpec((6.0, 0.0, 27.0), 5.0, (40.0, 24.0, 21.0), (10.6, 9.4, 8.4, 7.9), (10.0, 8.8, 7.4, 6.6)),
    "middle": _FingerSpec((0.0, 0.5, 6.0), 0.5, (43.0, 27.0, 22.0), (10.6, 9.6, 8.5, 8.0), (10.4, 9.1, 7.6, 6.8)),
    "ring": _FingerSpec((4.0, 0.0, -14.5), -4.5, (40.0, 26.0, 22.0), (10.0, 9.0, 8.0, 7.6), (9.8, 8.6, 7.2, 6.5)),
    "pinky": _FingerSpec((13.5, -1.0, -33.0), -10.0, (32.0, 19.5, 20.0), (8.8, 7.9, 7.1, 6.8), (8.6, 7.6, 6.4, 5.9)),
}
# Palm cross-sections of the inner rows and the wrist rim: centre z, centre y, half width,
# half thickness, superellipse exponent; x comes from PALM_ROW_T between knuckles and wrist.
_PALM_ROWS = (
    (-2.0, 0.0, 42.0, 14.0, 2.8),
    (-2.5, -0.5, 42.5, 15.0, 2.7),
    (-3.0, -1.0, 41.0, 16.0, 2.5),
    (-3.5, -1.0, 37.5, 17.0, 2.3),
    (-4.0, -0.5, 32.5, 17.5, 2.1),
)
_WRIST = dict(x=97.0, z=-4.0, y=0.5, half_width=28.0, half_thick=19.0)
# Thumb: bone lengths CMC->MCP, MCP->IP, IP->tip apex (mm) and bone directions at rest.
_THUMB_LENGTHS = (40.0, 32.0, 27.0)
_THUMB_DIRS = ((-0.70, -0.24, 0.62), (-0.86, -0.14, 0.46), (-0.94, -0.06, 0.30))
# Thumb cross-section half axes (across, dorsal-palmar), mm, for its rings 1..7; the cap follows.
_THUMB_RADII = ((14.8, 13.0), (12.4, 11.0), (11.6, 10.3), (11.2, 9.7), (11.0, 9.3), (10.6, 8.9), (10.2, 8.5))

# Shape parameters: one standard deviation of each (relative unless stated) per unit beta.
SHAPE_MODES = (
    ("size", 0.06),
    ("palm_width", 0.05),
    ("palm_length", 0.05),
    ("finger_length", 0.05),
    ("thickness", 0.08),
    ("finger_girth", 0.06),
    ("thumb_length", 0.06),
    ("index_vs_ring", 0.04),
    ("pinky_length", 0.06),
    ("knuckle_arch_mm", 2.5),
)


def _unit(v):
    v = np.asarray(v, dtype=np.float64)
    return v / np.linalg.norm(v)


def _smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _ring_angles(n):
    """Uniform angles offset by half a step: the ring's mean is exactly its centre."""
    return np.pi * (2.0 * np.arange(n) + 1.0) / n


def _ellipse_ring(center, e_side, e_up, a, b, angles):
    return center[None] + a * np.cos(angles)[:, None] * e_side[None] + b * np.sin(angles)[:, None] * e_up[None]


# ------------------------------------------------------------------------------------ geometry
@dataclass
class _Geometry:
    verts_mm: np.ndarray     # [778, 3] in build order (apexes last)
    joints_mm: np.ndarray    # [16, 3] designed joint positions (MANO order)
    rings: dict              # name -> vertex ids (build order) of tubes, palm rows, wrist, apexes
    ring_s: dict             # finger -> axial coordinate (mm) of each ring of its tube
    stations: dict           # finger -> axial coordinates (mm) of its three joints
    angles: dict             # ring name -> angle arrays used by the wrist zipper


class _Vertices:
    """Vertex positions appended in build order; `add` returns the new ids."""

    def __init__(self):
        self._chunks, self.count = [], 0

    def add(self, points) -> np.ndarray:
        points = np.asarray(points, dtype=np.float64).reshape(-1, 3)
        self._chunks.append(points)
        self.count += len(points)
        return np.arange(self.count - len(points), self.count)

    def array(self) -> np.ndarray:
        return np.concatenate(self._chunks)


@dataclass(frozen=True)
class _Scales:
    """Multipliers of the layout for one set of shape parameters (see SHAPE_MODES)."""

    size: float
    palm_width: float
    palm_length: float
    thickness: float
    girth: float
    thumb_length: float
    finger_length: dict
    knuckle_arch_mm: float

    @classmethod
    def from_betas(cls, betas) -> "_Scales":
        b = np.zeros(10) if betas is None else np.asarray(betas, dtype=np.float64)
        p = {name: b[i] * sd for i, (name, sd) in enumerate(SHAPE_MODES)}
        fl = 1.0 + p["finger_length"]
        return cls(
            size=1.0 + p["size"], palm_width=1.0 + p["palm_width"], palm_length=1.0 + p["palm_length"],
            thickness=1.0 + p["thickness"], girth=1.0 + p["finger_girth"], thumb_length=1.0 + p["thumb_length"],
            finger_length={"index": fl * (1.0 + p["index_vs_ring"]), "middle": fl,
                           "ring": fl * (1.0 - p["index_vs_ring"]), "pinky": fl * (1.0 + p["pinky_length"])},
            knuckle_arch_mm=p["knuckle_arch_mm"],
        )


_UP = np.array([0.0, 1.0, 0.0])  # dorsal
_ARCH = {"index": 0.3, "middle": 0.0, "ring": 0.5, "pinky": 1.0}  # share of the knuckle-arch mode


def _finger(vl: _Vertices, name: str, sc: _Scales):
    """One finger: 11 rings (the first is its share of the palm rim), joints, apex point (mm)."""
    spec = _FINGER_SPECS[name]
    mcp = np.array(spec.mcp, dtype=np.float64)
    mcp[2] *= sc.palm_width
    mcp[0] = mcp[0] * sc.palm_length + _ARCH[name] * sc.knuckle_arch_mm
    mcp *= sc.size
    splay = np.deg2rad(spec.splay_deg)
    t = np.array([-np.cos(splay), 0.0, np.sin(splay)])
    side = np.cross(_UP, t)  # toward the thumb side
    l1, l2, l3 = np.array(spec.lengths) * sc.finger_length[name] * sc.size
    hw = np.array(spec.half_width) * sc.girth * sc.size
    ht = np.array(spec.half_thick) * sc.thickness * sc.size
    tip = l1 + l2 + l3
    cap = 1.15 * ht[3]
    s_cap = tip - cap
    stations = np.array([0.0, l1, l1 + l2, s_cap])
    ring_s = np.array([0.0, 0.32 * l1, 0.66 * l1, l1, l1 + 0.36 * l2, l1 + 0.7 * l2, l1 + l2,
                       l1 + l2 + 0.45 * (s_cap - l1 - l2), s_cap + 0.45 * cap, s_cap + 0.78 * cap,
                       s_cap + 0.95 * cap])
    tube = []
    for sk in ring_s:
        if sk <= s_cap:
            # phalanges are slightly slimmer between the joints than at them
            phase = np.interp(sk, stations, [0.0, 1.0, 2.0, 3.0]) % 1.0
            slim = 1.0 - 0.045 * np.sin(np.pi * phase)
            a, b = np.interp(sk, stations, hw) * slim, np.interp(sk, stations, ht) * slim
            centre = mcp + sk * t
        else:  # rounded cap; the fingertip pad sits a little palmar of the axis
            u = (sk - s_cap) / cap
            f = np.sqrt(max(1.0 - u * u, 0.0))
            a, b = hw[3] * f, ht[3] * f
            centre = mcp + sk * t - 0.18 * ht[3] * u * _UP
        tube.append(vl.add(_ellipse_ring(centre, side, _UP, a, b, _ring_angles(FINGER_RING))))
    joints = (mcp, mcp + l1 * t, mcp + (l1 + l2) * t)
    apex = mcp + tip * t - 0.1 * ht[3] * _UP
    return tube, ring_s, (0.0, l1, l1 + l2), joints, apex


def _palm(vl: _Vertices, rim: np.ndarray, sc: _Scales):
    """Inner palm rows (40 columns following the rim's angular order) and the wrist rim (mm)."""
    rim_pts = vl.array()[rim]
    lo, hi = rim_pts.min(axis=0), rim_pts.max(axis=0)
    centre, half = 0.5 * (lo + hi), 0.5 * (hi - lo)
    theta_rim = np.mod(np.arctan2((rim_pts[:, 1] - centre[1]) / half[1], (rim_pts[:, 2] - centre[2]) / half[2]),
                       2 * np.pi)
    theta_uniform = _ring_angles(PALM_ROW)
    wrist_x = _WRIST["x"] * sc.palm_length * sc.size
    rows, thetas, grid = [rim], [theta_rim], {}
    hole = {(r, c) for r in THUMB_HOLE_ROWS[1:-1] for c in THUMB_HOLE_COLS[1:-1]}
    w, th = sc.palm_width * sc.size, sc.thickness * sc.size
    for r, (zc, yc, a, b, expo) in enumerate(_PALM_ROWS, start=1):
        t_row = PALM_ROW_T[r - 1]
        mix = _smoothstep((t_row - 0.1) / 0.8)  # columns drift from the rim's spacing to uniform angles
        theta = (1.0 - mix) * theta_rim + mix * theta_uniform
        c, s = np.cos(theta), np.sin(theta)
        pts = np.stack([(1.0 - t_row) * rim_pts[:, 0] + t_row * wrist_x,
                        yc * th + b * th * np.sign(s) * np.abs(s) ** (2.0 / expo),
                        zc * w + a * w * np.sign(c) * np.abs(c) ** (2.0 / expo)], axis=1)
        row = np.full(PALM_ROW, -1)
        keep = [col for col in range(PALM_ROW) if (r, col) not in hole]
        row[keep] = vl.add(pts[keep])
        grid.update({(r, col): row[col] for col in range(PALM_ROW)})
        rows.append(row)
        thetas.append(theta)
    wrist_theta = _ring_angles(WRIST_RING)
    wrist_centre = np.array([wrist_x, _WRIST["y"] * th, _WRIST["z"] * w])
    wrist = vl.add(_ellipse_ring(wrist_centre, np.array([0.0, 0.0, 1.0]), _UP, _WRIST["half_width"] * w,
                                 _WRIST["half_thick"] * th, wrist_theta))
    return rows, thetas, grid, wrist, wrist_theta, wrist_centre


def _thumb(vl: _Vertices, grid: dict, sc: _Scales):
    """The thumb: a tube from its opening in the palm; CMC is the mean of the opening (mm)."""
    r0, rm, r1 = THUMB_HOLE_ROWS
    cols = THUMB_HOLE_COLS
    loop = np.array([grid[(r0, c)] for c in cols] + [grid[(rm, cols[-1])]]
                    + [grid[(r1, c)] for c in reversed(cols)] + [grid[(rm, cols[0])]])
    pts = vl.array()
    cmc = pts[loop].mean(axis=0)
    L1, L2, L3 = np.array(_THUMB_LENGTHS) * sc.thumb_length * sc.size
    d1, d2, d3 = (_unit(d) for d in _THUMB_DIRS)
    mcp = cmc + L1 * d1
    ip = mcp + L2 * d2
    e_up = _unit(_UP - np.dot(_UP, d1) * d1)
    e_side = np.cross(e_up, d1)

    def loop_angles(ids):  # angles of the opening around the metacarpal axis
        rel = pts[ids] - cmc
        return np.unwrap(np.arctan2(rel @ e_up, rel @ e_side))

    hole_theta = loop_angles(loop)
    if hole_theta[-1] < hole_theta[0]:  # walk the opening the way the thumb rings turn
        loop = loop[::-1].copy()
        hole_theta = loop_angles(loop)
    if np.any(np.diff(hole_theta) <= 0) or hole_theta[-1] - hole_theta[0] >= 2 * np.pi:
        raise AssertionError("thumb opening is not star-shaped around the thumb axis")
    uniform = hole_theta[0] + 2 * np.pi * np.arange(THUMB_RING) / THUMB_RING
    uniform += np.mean(hole_theta - uniform)
    cap = 1.1 * _THUMB_RADII[-1][1] * sc.thickness * sc.size
    s_cap = L1 + L2 + L3 - cap
    ring_s = [0.36 * L1, 0.7 * L1, L1, L1 + 0.36 * L2, L1 + 0.7 * L2, L1 + L2,
              L1 + L2 + 0.45 * (s_cap - L1 - L2), s_cap + 0.45 * cap, s_cap + 0.78 * cap, s_cap + 0.95 * cap]
    hole_blend = (0.5, 0.82)  # the first two rings keep some of the opening's shape: the thenar bulge
    tube = [loop]
    for k, sk in enumerate(ring_s):
        if sk <= L1:
            centre, t = cmc + sk * d1, d1
        elif sk <= L1 + L2:
            centre, t = mcp + (sk - L1) * d2, d2
        else:
            centre, t = ip + (sk - L1 - L2) * d3, d3
        if k in (2, 5):  # the rings at MCP and IP are perpendicular to the mean of their two bones
            t = _unit((d1 + d2) if k == 2 else (d2 + d3))
        fu = _unit(e_up - np.dot(e_up, t) * t)
        fs = np.cross(fu, t)
        a, b = np.array(_THUMB_RADII[min(k, len(_THUMB_RADII) - 1)]) * sc.size * np.array([sc.girth, sc.thickness])
        theta = uniform if k >= 2 else (1 - hole_blend[k]) * hole_theta + hole_blend[k] * uniform
        if sk > s_cap:
            u = (sk - s_cap) / cap
            f = np.sqrt(max(1.0 - u * u, 0.0))
            a, b = a * f, b * f
            centre = centre - 0.15 * b * u * fu
        ring = _ellipse_ring(centre, fs, fu, a, b, theta)
        if k < 2:
            hole_shape = cmc + sk * d1 + (pts[loop] - cmc) * (0.92 if k == 0 else 0.8)
            ring = (1 - hole_blend[k]) * hole_shape + hole_blend[k] * ring
        tube.append(vl.add(ring))
    apex = ip + L3 * d3
    return tube, np.array([0.0] + ring_s), (0.0, L1, L1 + L2), (cmc, mcp, ip), apex


def _build_geometry(betas=None) -> _Geometry:
    """All vertex positions (mm, build order) for shape parameters `betas` [10] (None = zeros)."""
    sc = _Scales.from_betas(betas)
    vl = _Vertices()
    joints = np.zeros((16, 3))
    tubes, ring_s, stations, apex_points = {}, {}, {}, {}
    for name in FINGERS:
        tubes[name], ring_s[name], stations[name], finger_joints, apex_points[name] = _finger(vl, name, sc)
        joints[list(FINGER_CHAINS[name])] = finger_joints
    # the palm rim: the dorsal halves of the four base rings radial to ulnar, then the palmar halves back
    half = FINGER_RING // 2
    base = [tubes[n][0] for n in FINGERS]
    rim = np.concatenate([b[:half] for b in base] + [b[half:] for b in reversed(base)])
    rows, thetas, grid, wrist, wrist_theta, joints[0] = _palm(vl, rim, sc)
    tubes["thumb"], ring_s["thumb"], stations["thumb"], thumb_joints, apex_points["thumb"] = _thumb(vl, grid, sc)
    joints[list(FINGER_CHAINS["thumb"])] = thumb_joints
    apex = {name: vl.add(apex_points[name])[0] for name in ("thumb", "index", "middle", "ring", "pinky")}
    rings = {"palm_rows": rows, "wrist": wrist, "apex": apex, **{f"{n}_tube": tubes[n] for n in tubes}}
    angles = {"palm_rows": thetas, "wrist": wrist_theta}
    return _Geometry(vl.array(), joints, rings, ring_s, stations, angles)


# ------------------------------------------------------------------------------------ topology
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


def _faces(geo: _Geometry) -> np.ndarray:
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


# ------------------------------------------------------------------------------------ skinning
def _blend(s, s_joint, half_width):
    """0 before the joint, 1 after it, 0.5 exactly at it; smooth over +-half_width (mm)."""
    return _smoothstep(0.5 + (np.asarray(s) - s_joint) / (2.0 * half_width))


def _skinning(geo: _Geometry) -> np.ndarray:
    R = geo.rings
    n = len(geo.verts_mm)
    W = np.zeros((n, 16))
    W[:, 0] = 1.0  # palm and wrist follow the root
    for name in FINGERS + ("thumb",):
        chain = (0,) + FINGER_CHAINS[name]
        stations = geo.stations[name]
        tube = R[f"{name}_tube"]
        seg_len = np.diff(list(stations) + [geo.ring_s[name][-1]])
        # half-widths of the blends at the three joints; neighbouring blends never overlap
        w_joint = min(10.0 if name == "thumb" else 9.0, 0.45 * seg_len[1], 0.45 * seg_len[2])
        w_base = min(18.0 if name == "thumb" else 12.0, seg_len[0] - w_joint)
        widths = [w_base, w_joint, w_joint]
        for ids, s in zip(tube, geo.ring_s[name]):
            h = [float(_blend(s, st, w)) for st, w in zip(stations, widths)]
            row = np.zeros(16)
            row[chain[0]] = 1.0 - h[0]
            row[chain[1]] = h[0] - h[1]
            row[chain[2]] = h[1] - h[2]
            row[chain[3]] = h[2]
            W[ids] = row
        W[R["apex"][name]] = W[tube[-1][0]]
    # the thenar: palm vertices near the thumb's opening follow the CMC joint a little
    loop = R["thumb_tube"][0]
    loop_pts = geo.verts_mm[loop]
    loop_set = set(loop.tolist())
    for r, row_ids in enumerate(R["palm_rows"][1:], start=1):
        for v in row_ids:
            if v < 0 or v in loop_set:
                continue
            d = np.min(np.linalg.norm(loop_pts - geo.verts_mm[v], axis=1))
            w = 0.5 * float(_smoothstep(1.0 - d / 22.0))
            W[v] = 0.0
            W[v, 0], W[v, 13] = 1.0 - w, w
    return W


def _regressor(geo: _Geometry) -> np.ndarray:
    R = geo.rings
    Jr = np.zeros((16, len(geo.verts_mm)))
    Jr[0, R["wrist"]] = 1.0 / WRIST_RING
    for name in FINGERS:
        tube = R[f"{name}_tube"]
        for j, k in zip(FINGER_CHAINS[name], (0, 3, 6)):  # base ring, PIP ring, DIP ring
            Jr[j, tube[k]] = 1.0 / FINGER_RING
    c, m, i = FINGER_CHAINS["thumb"]
    tube = R["thumb_tube"]
    Jr[c, tube[0]] = 1.0 / THUMB_RING  # the opening in the palm
    Jr[m, tube[3]] = 1.0 / THUMB_RING
    Jr[i, tube[6]] = 1.0 / THUMB_RING
    return Jr


# ------------------------------------------------------------------------------------ pose prior
# Synergies: (flexion, abduction, twist) loadings per finger joint, radians per unit latent.
_SYNERGIES = (
    # all fingers curl together (open hand <-> fist)
    {"index": [(0.55, 0, 0), (0.65, 0, 0), (0.4, 0, 0)], "middle": [(0.6, 0, 0), (0.7, 0, 0), (0.45, 0, 0)],
     "ring": [(0.65, 0, 0), (0.72, 0, 0), (0.45, 0, 0)], "pinky": [(0.7, 0, 0), (0.72, 0, 0), (0.45, 0, 0)],
     "thumb": [(0.15, 0.1, 0.1), (0.25, 0, 0), (0.3, 0, 0)]},
    # knuckles versus the finger joints (flat bend <-> hook)
    {f: [(0.4, 0, 0), (-0.35, 0, 0), (-0.25, 0, 0)] for f in FINGERS},
    # thumb opposition
    {"thumb": [(0.3, 0.35, 0.3), (0.2, 0, 0), (0.15, 0, 0)]},
    # the index on its own (pointing, pinching)
    {"index": [(0.45, 0, 0), (0.5, 0, 0), (0.3, 0, 0)]},
    # ring and little finger together
    {"ring": [(0.35, 0, 0), (0.4, 0, 0), (0.25, 0, 0)], "pinky": [(0.4, 0, 0), (0.45, 0, 0), (0.3, 0, 0)]},
    # thumb flexion
    {"thumb": [(0.1, 0, 0), (0.3, 0, 0), (0.4, 0, 0)]},
    # the middle finger, dragging the ring finger
    {"middle": [(0.35, 0, 0), (0.4, 0, 0), (0.25, 0, 0)], "ring": [(0.12, 0, 0), (0.12, 0, 0), (0.08, 0, 0)]},
    # spread
    {"index": [(0, 0.15, 0)] + [(0, 0, 0)] * 2, "middle": [(0, 0.03, 0)] + [(0, 0, 0)] * 2,
     "ring": [(0, -0.1, 0)] + [(0, 0, 0)] * 2, "pinky": [(0, -0.2, 0)] + [(0, 0, 0)] * 2,
     "thumb": [(0, 0.2, 0)] + [(0, 0, 0)] * 2},
    # the little finger alone
    {"pinky": [(0.3, 0, 0), (0.3, 0, 0), (0.2, 0, 0)]},
)
_LOCAL_NOISE = (0.06, 0.04, 0.025)  # independent (flexion, abduction, twist) noise, radians
_THUMB_NOISE = (0.08, 0.07, 0.06)
# A relaxed hand: knuckles and finger joints slightly bent, more toward the little finger.
_RELAXED = {
    "index": [(0.2, 0.04, 0), (0.3, 0, 0), (0.15, 0, 0)],
    "middle": [(0.25, 0.0, 0), (0.35, 0, 0), (0.18, 0, 0)],
    "ring": [(0.3, -0.04, 0), (0.4, 0, 0), (0.2, 0, 0)],
    "pinky": [(0.35, -0.1, 0), (0.4, 0, 0), (0.2, 0, 0)],
    "thumb": [(0.1, 0.15, 0.05), (0.1, 0, 0), (0.15, 0, 0)],
}


def _local_array(spec):
    out = np.zeros((15, 3))
    for finger, rows in spec.items():
        for j, row in zip(FINGER_CHAINS[finger], rows):
            out[j - 1] = row
    return out


def _pose_prior(frames: np.ndarray):
    """(hands_mean [45], hands_components [45, 45] orthonormal rows by decreasing variance, std [45])."""
    M = np.zeros((45, 45))
    for j in range(15):
        M[3 * j:3 * j + 3, 3 * j:3 * j + 3] = frames[j]
    cov_local = np.zeros((45, 45))
    for syn in _SYNERGIES:
        g = _local_array(syn).reshape(45)
        cov_local += np.outer(g, g)
    noise = np.tile(_LOCAL_NOISE, 15).reshape(15, 3)
    noise[12:] = _THUMB_NOISE
    # a small per-joint ramp keeps every eigenvalue distinct, so the basis is unique (up to the sign
    # fixed below) and does not depend on how an eigen-solver splits a repeated eigenvalue
    noise *= (1.0 + 0.02 * np.arange(15))[:, None]
    cov_local += np.diag(noise.reshape(45) ** 2)
    cov = M @ cov_local @ M.T
    evals, evecs = np.linalg.eigh(0.5 * (cov + cov.T))
    order = np.argsort(-evals, kind="stable")
    evals, evecs = evals[order], evecs[:, order]
    if np.min(-np.diff(evals)) < 1e-7 * evals[0]:
        raise AssertionError("pose prior eigenvalues too close: the basis would not be unique")
    # a sign convention makes the basis independent of the eigen-solver's choice
    lead = np.argmax(np.abs(evecs), axis=0)
    evecs = evecs * np.sign(evecs[lead, np.arange(45)])
    mean = local_to_axis_angle(frames, _local_array(_RELAXED))
    return mean, evecs.T.copy(), np.sqrt(np.maximum(evals, 0.0))


# ------------------------------------------------------------------------------------ assembly
def _apex_order(n_verts: int, apex_build_ids: dict) -> np.ndarray:
    """new id -> build id: non-apex vertices in build order, apexes inserted at the HO3D tip ids."""
    tips = dict(zip(("thumb", "index", "middle", "ring", "pinky"), TIP_VERTEX_IDS["ho3d"]))
    apex_set = set(apex_build_ids.values())
    others = iter([v for v in range(n_verts) if v not in apex_set])
    at = {tips[name]: b for name, b in apex_build_ids.items()}
    return np.array([at[i] if i in at else next(others) for i in range(n_verts)])


def build_standin() -> dict:
    """The stand-in model as a MANO-format dict (numpy arrays, metres). Deterministic."""
    geo = _build_geometry()
    faces_build = _faces(geo)
    W = _skinning(geo)
    Jr = _regressor(geo)
    new_to_build = _apex_order(len(geo.verts_mm), geo.rings["apex"])
    build_to_new = np.argsort(new_to_build)

    v_template = np.round(geo.verts_mm[new_to_build] * _MM, 9)
    faces = build_to_new[faces_build].astype(np.uint32)
    weights = np.round(W[new_to_build], 8)
    J_regressor = Jr[:, new_to_build]
    shapedirs = np.zeros((len(v_template), 3, 10))
    for i in range(10):
        e = np.zeros(10)
        e[i] = 1.0
        plus, minus = _build_geometry(e).verts_mm, _build_geometry(-e).verts_mm
        shapedirs[:, :, i] = 0.5 * (plus - minus)[new_to_build] * _MM
    shapedirs = np.round(shapedirs, 9)

    J = np.round(geo.joints_mm * _MM, 9)
    if np.abs(J_regressor @ v_template - J).max() > 1e-8:
        raise AssertionError("the stand-in's J_regressor does not reproduce its joints")
    frames = joint_frames(J, np.array([0.0, -1.0, 0.0]))
    hands_mean, hands_components, hands_std = _pose_prior(frames)
    kintree = np.array([[4294967295] + MANO_PARENTS[1:], list(range(16))], dtype=np.int64)
    return {
        "v_template": v_template,
        "f": faces,
        "weights": weights,
        "J_regressor": J_regressor,
        "J": J,
        "shapedirs": shapedirs,
        "posedirs": np.zeros((len(v_template), 3, 135)),
        "kintree_table": kintree,
        "hands_components": np.round(hands_components, 8),
        "hands_mean": np.round(hands_mean, 8),
        "hands_std": np.round(hands_std, 8),
        "bs_style": "lbs",
        "bs_type": "lrotmin",
        STANDIN_MARKER_KEY: {
            "version": STANDIN_VERSION,
            "note": "procedurally built MANO stand-in (utnet.mano.standin); not MANO, numbers on it are not MANO numbers",
            "layout": "flat right hand, fingers along -x, palm facing -y, thumb on +z, metres",
            "shape_modes": [name for name, _ in SHAPE_MODES],
        },
    }


def standin_bytes() -> bytes:
    """The stand-in pickle exactly as it is cached (protocol 2, like the official files)."""
    return pickle.dumps(build_standin(), protocol=2)


def cache_dir() -> Path:
    """`$UTNET_CACHE`, else `$XDG_CACHE_HOME/utnet`, else `~/.cache/utnet`."""
    if os.environ.get("UTNET_CACHE"):
        return Path(os.environ["UTNET_CACHE"]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "utnet"


def standin_path(build: bool = True) -> Path:
    """Path of the cached stand-in pickle; builds and writes it atomically when missing or unreadable."""
    path = cache_dir() / STANDIN_FILENAME
    if build and not _cached_file_ok(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=".standin-", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                fh.write(standin_bytes())
                fh.flush()
                os.fsync(fh.fileno())
            os.replace(tmp, path)
        finally:
            if os.path.exists(tmp):
                os.unlink(tmp)
    return path


def _cached_file_ok(path: Path) -> bool:
    from utnet import safe_pickle  # the cache is a pickle too: read it like any foreign one

    try:
        with open(path, "rb") as fh:
            data, _ = safe_pickle.loads(fh.read(), path)
        return data[STANDIN_MARKER_KEY]["version"] == STANDIN_VERSION
    except Exception:  # missing, truncated or foreign: rebuild
        return False
