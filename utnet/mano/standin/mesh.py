"""The stand-in's rest-pose layout (millimetres) and its vertex positions for given shape parameters.

Each finger is a tube of 10-vertex elliptic rings closed by one apex vertex; the four finger base
rings form the distal rim of the palm, a tube of 40-vertex rows that narrows to a 16-vertex open rim
at the wrist; the thumb is a tube of 12-vertex rings leaving the palm through a hole cut at its
radial-palmar corner. Vertices are numbered in build order (apexes last); `model.py` renumbers them.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from utnet.mano.pose_prior import FINGER_CHAINS

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


def smoothstep(u):
    u = np.clip(u, 0.0, 1.0)
    return u * u * (3.0 - 2.0 * u)


def _ring_angles(n):
    """Uniform angles offset by half a step: the ring's mean is exactly its centre."""
    return np.pi * (2.0 * np.arange(n) + 1.0) / n


def _ellipse_ring(center, e_side, e_up, a, b, angles):
    return center[None] + a * np.cos(angles)[:, None] * e_side[None] + b * np.sin(angles)[:, None] * e_up[None]


@dataclass
class Geometry:
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
        mix = smoothstep((t_row - 0.1) / 0.8)  # columns drift from the rim's spacing to uniform angles
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


def build_geometry(betas=None) -> Geometry:
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
    return Geometry(vl.array(), joints, rings, ring_s, stations, angles)
