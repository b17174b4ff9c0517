"""The stand-in assembled as a MANO-format dict: vertices renumbered so that the apexes sit at the
HO3D tip ids, metres, shapedirs by central differences, rounded so that the bytes are stable."""
from __future__ import annotations

import numpy as np

from losses.units import MM_PER_M  # the layout (mesh.py) is in millimetres; the file stores metres like MANO
from utnet.joints import MANO_PARENTS, TIP_VERTEX_IDS
from utnet.mano.pose_prior import joint_frames
from utnet.mano.standin.mesh import SHAPE_MODES, build_geometry
from utnet.mano.standin.pose_space import pose_space
from utnet.mano.standin.skinning import joint_regressor, skinning_weights
from utnet.mano.standin.topology import mesh_faces

STANDIN_VERSION = 1
STANDIN_MARKER_KEY = "utnet_standin"  # extra pickle key; smplx ignores unknown keys



def _apex_order(n_verts: int, apex_build_ids: dict) -> np.ndarray:
    """new id -> build id: non-apex vertices in build order, apexes inserted at the HO3D tip ids."""
    tips = dict(zip(("thumb", "index", "middle", "ring", "pinky"), TIP_VERTEX_IDS["ho3d"]))
    apex_set = set(apex_build_ids.values())
    others = iter([v for v in range(n_verts) if v not in apex_set])
    at = {tips[name]: b for name, b in apex_build_ids.items()}
    return np.array([at[i] if i in at else next(others) for i in range(n_verts)])


def build_standin() -> dict:
    """The stand-in model as a MANO-format dict (numpy arrays, metres). Deterministic."""
    geo = build_geometry()
    faces_build = mesh_faces(geo)
    W = skinning_weights(geo)
    Jr = joint_regressor(geo)
    new_to_build = _apex_order(len(geo.verts_mm), geo.rings["apex"])
    build_to_new = np.argsort(new_to_build)

    v_template = np.round(geo.verts_mm[new_to_build] / MM_PER_M, 9)
    faces = build_to_new[faces_build].astype(np.uint32)
    weights = np.round(W[new_to_build], 8)
    J_regressor = Jr[:, new_to_build]
    shapedirs = np.zeros((len(v_template), 3, 10))
    for i in range(10):
        e = np.zeros(10)
        e[i] = 1.0
        plus, minus = build_geometry(e).verts_mm, build_geometry(-e).verts_mm
        shapedirs[:, :, i] = 0.5 * (plus - minus)[new_to_build] / MM_PER_M
    shapedirs = np.round(shapedirs, 9)

    J = np.round(geo.joints_mm / MM_PER_M, 9)
    if np.abs(J_regressor @ v_template - J).max() > 1e-8:
        raise AssertionError("the stand-in's J_regressor does not reproduce its joints")
    frames = joint_frames(J, np.array([0.0, -1.0, 0.0]))
    hands_mean, hands_components, hands_std = pose_space(frames)
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
