"""The stand-in's skinning weights (rings blend between bones at each joint) and joint regressor
(uniform over each joint's ring, so it reproduces the skinned joints at any pose)."""
from __future__ import annotations

import numpy as np

from utnet.mano.pose_prior import FINGER_CHAINS
from utnet.mano.standin.mesh import FINGER_RING, FINGERS, THUMB_RING, WRIST_RING, Geometry, smoothstep


def _blend(s, s_joint, half_width):
    """0 before the joint, 1 after it, 0.5 exactly at it; smooth over +-half_width (mm)."""
    return smoothstep(0.5 + (np.asarray(s) - s_joint) / (2.0 * half_width))


def skinning_weights(geo: Geometry) -> np.ndarray:
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
            w = 0.5 * float(smoothstep(1.0 - d / 22.0))
            W[v] = 0.0
            W[v, 0], W[v, 13] = 1.0 - w, w
    return W


def joint_regressor(geo: Geometry) -> np.ndarray:
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
