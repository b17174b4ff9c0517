"""Hand-pose knowledge on top of a MANO model: anatomical joint axes, joint limits, the pose prior.

MANO's 15 finger joints rotate in the rest-pose frame of the model (every rest rotation is the
identity), so a joint's axis-angle vector can be read in a per-joint anatomical basis built from
the rest skeleton: flexion (curl toward the palm, positive), abduction (toward the thumb side,
positive) and twist (about the bone). The basis is derived from the model itself, so the same
limits serve the official MANO file and the stand-in, whatever the layout of their rest pose.

The palm side is the side the fingers curl toward in the model's `hands_mean` (MANO's mean pose is
a relaxed, curled hand). `palm_axes` also gives the chirality used to refuse left hands.
"""
from __future__ import annotations

import numpy as np
import torch

from utnet.geometry import axis_angle_to_matrix
from utnet.joints import MANO_PARENTS

# Joint ids (MANO order) of each finger's chain, proximal to distal.
FINGER_CHAINS = {
    "index": (1, 2, 3),
    "middle": (4, 5, 6),
    "pinky": (7, 8, 9),
    "ring": (10, 11, 12),
    "thumb": (13, 14, 15),
}
# Angle between the palm normal and the thumb's flexion direction, turned toward the fingers:
# the thumb's pad faces the fingers obliquely, so it curls across the palm, not straight into it.
THUMB_PAD_TURN_RAD = np.deg2rad(50.0)

# Joint limits in radians, (low, high) for (flexion, abduction, twist) of each joint kind.
# Values follow typical active ranges of motion of the adult hand, rounded.
_LIMITS_BY_KIND = {
    "mcp": ((-0.35, 1.60), (-0.35, 0.35), (-0.20, 0.20)),
    "pip": ((-0.05, 1.90), (-0.08, 0.08), (-0.12, 0.12)),
    "dip": ((-0.15, 1.40), (-0.06, 0.06), (-0.10, 0.10)),
    "cmc": ((-0.25, 0.90), (-0.45, 0.90), (-0.50, 0.80)),
    "thumb_mcp": ((-0.30, 1.00), (-0.25, 0.25), (-0.30, 0.30)),
    "thumb_ip": ((-0.35, 1.40), (-0.10, 0.10), (-0.15, 0.15)),
}
_KIND_OF_JOINT = {}
for _name, (_a, _b, _c) in FINGER_CHAINS.items():
    if _name == "thumb":
        _KIND_OF_JOINT.update({_a: "cmc", _b: "thumb_mcp", _c: "thumb_ip"})
    else:
        _KIND_OF_JOINT.update({_a: "mcp", _b: "pip", _c: "dip"})

# [15, 3, 2]: limits of the hand joints 1..15 (flexion, abduction, twist) x (low, high), radians.
JOINT_LIMITS = np.array([_LIMITS_BY_KIND[_KIND_OF_JOINT[j]] for j in range(1, 16)], dtype=np.float64)


def _unit(v: np.ndarray) -> np.ndarray:
    return v / np.linalg.norm(v)


def _orthogonal_part(v: np.ndarray, axis: np.ndarray) -> np.ndarray:
    return _unit(v - np.dot(v, axis) * axis)


def forward_kinematics_np(joints_rest: np.ndarray, pose_aa: np.ndarray) -> np.ndarray:
    """Posed joint positions [16, 3] (unit of joints_rest) of one hand.

    Args:
        joints_rest: [16, 3] rest joints of the model (MANO order).
        pose_aa: [48] (root + 15 joints) or [45] (hand joints, root identity), axis-angle.
    """
    pose_aa = np.asarray(pose_aa, dtype=np.float64).reshape(-1, 3)
    if pose_aa.shape[0] == 15:
        pose_aa = np.concatenate([np.zeros((1, 3)), pose_aa])
    R = axis_angle_to_matrix(torch.from_numpy(pose_aa)).numpy()
    J = np.asarray(joints_rest, dtype=np.float64)
    rot = [R[0]]
    pos = [J[0]]
    for j in range(1, 16):
        p = MANO_PARENTS[j]
        rot.append(rot[p] @ R[j])
        pos.append(pos[p] + rot[p] @ (J[j] - J[p]))
    return np.stack(pos)


def palm_axes(joints_rest: np.ndarray, hands_mean: np.ndarray):
    """Anatomical axes of a rest hand and its chirality.

    Args:
        joints_rest: [16, 3] rest joints (MANO order), any unit.
        hands_mean: [45] the model's mean pose (axis-angle), used to find the palm side.
    Returns:
        (distal [3], radial [3], palm_normal [3] or None, is_right: bool or None).
        distal: wrist -> middle MCP; radial: toward the index side of the palm (orthogonal to distal);
        palm_normal: out of the palm, the side the fingers curl to in hands_mean; when hands_mean
        does not curl them, the side of the knuckle plane the thumb lies on (None if neither tells).
        A right hand has palm_normal . (distal x radial) < 0.
    """
    J = np.asarray(joints_rest, dtype=np.float64)
    distal = _unit(J[4] - J[0])
    radial = _orthogonal_part(J[1] - J[7], distal)
    posed = forward_kinematics_np(J, hands_mean)
    dip_ids = [3, 6, 9, 12]
    shift = (posed[dip_ids] - J[dip_ids]).sum(axis=0)
    shift = shift - np.dot(shift, distal) * distal - np.dot(shift, radial) * radial
    scale = np.linalg.norm(J[dip_ids] - J[0], axis=1).mean()
    if np.linalg.norm(shift) < 1e-3 * scale:
        # flat hands_mean: fall back on the thumb, which sits on the palm side of the knuckle plane
        thumb = J[13:16].mean(axis=0) - J[[0, 1, 4, 7, 10]].mean(axis=0)
        shift = np.dot(thumb, np.cross(distal, radial)) * np.cross(distal, radial)
        if np.linalg.norm(shift) < 1e-3 * scale:
            return distal, radial, None, None
    palm_normal = _unit(shift)
    is_right = bool(np.dot(palm_normal, np.cross(distal, radial)) < 0)
    return distal, radial, palm_normal, is_right


def joint_frames(joints_rest: np.ndarray, palm_normal: np.ndarray) -> np.ndarray:
    """Anatomical bases of the 15 hand joints in the rest frame: [15, 3, 3], columns
    (flexion axis, abduction axis, twist axis). Positive flexion curls toward the palm, positive
    abduction turns the finger toward the thumb side, the twist axis is the bone direction.

    Args:
        joints_rest: [16, 3] rest joints (MANO order), any unit.
        palm_normal: [3] unit vector out of the palm (see palm_axes).
    """
    J = np.asarray(joints_rest, dtype=np.float64)
    n = _unit(np.asarray(palm_normal, dtype=np.float64))
    distal = _unit(J[4] - J[0])
    radial = _orthogonal_part(J[1] - J[7], distal)
    frames = np.zeros((15, 3, 3))
    for name, chain in FINGER_CHAINS.items():
        for k, j in enumerate(chain):
            bone = J[chain[k + 1]] - J[j] if k < 2 else J[j] - J[chain[k - 1]]
            t = _unit(bone)
            normal = n
            if name == "thumb":
                normal = np.cos(THUMB_PAD_TURN_RAD) * n - np.sin(THUMB_PAD_TURN_RAD) * radial
            pad = _orthogonal_part(normal, t)
            flex = _unit(np.cross(t, pad))
            abd = np.cross(t, flex)
            frames[j - 1] = np.stack([flex, abd, t], axis=1)
    return frames


def local_to_axis_angle(frames: np.ndarray, local: np.ndarray) -> np.ndarray:
    """(flexion, abduction, twist) per joint [..., 15, 3] -> MANO hand pose [..., 45] axis-angle."""
    aa = np.einsum("jab,...jb->...ja", frames, np.asarray(local, dtype=np.float64))
    return aa.reshape(*aa.shape[:-2], 45)


def axis_angle_to_local(frames: np.ndarray, hand_pose: np.ndarray) -> np.ndarray:
    """MANO hand pose [..., 45] axis-angle -> (flexion, abduction, twist) per joint [..., 15, 3]."""
    aa = np.asarray(hand_pose, dtype=np.float64).reshape(*np.shape(hand_pose)[:-1], 15, 3)
    return np.einsum("jba,...jb->...ja", frames, aa)


def clip_to_joint_limits(frames: np.ndarray, hand_pose: np.ndarray) -> np.ndarray:
    """Clip a hand pose [..., 45] (axis-angle) to JOINT_LIMITS in the anatomical frames."""
    local = axis_angle_to_local(frames, hand_pose)
    local = np.clip(local, JOINT_LIMITS[..., 0], JOINT_LIMITS[..., 1])
    return local_to_axis_angle(frames, local)


# Named poses in (flexion, abduction, twist) per finger joint, radians; thumb rows are CMC, MCP, IP.
_NAMED_POSES = {
    "open": {},
    "fist": {
        "index": [(1.45, 0.05, 0), (1.65, 0, 0), (1.0, 0, 0)],
        "middle": [(1.5, 0, 0), (1.7, 0, 0), (1.0, 0, 0)],
        "ring": [(1.5, -0.05, 0), (1.7, 0, 0), (1.0, 0, 0)],
        "pinky": [(1.5, -0.1, 0), (1.6, 0, 0), (1.0, 0, 0)],
        "thumb": [(0.33, 0.1, 0.22), (0.51, -0.24, -0.19), (0.46, -0.1, -0.08)],
    },
    "pinch": {
        "index": [(0.83, 0.13, 0.12), (0.91, 0.07, 0.06), (0.43, 0.01, 0)],
        "middle": [(0.45, 0, 0), (0.55, 0, 0), (0.3, 0, 0)],
        "ring": [(0.5, -0.05, 0), (0.6, 0, 0), (0.3, 0, 0)],
        "pinky": [(0.55, -0.12, 0), (0.65, 0, 0), (0.3, 0, 0)],
        "thumb": [(0.31, 0.21, 0.38), (0.27, -0.2, -0.06), (0.22, -0.07, 0)],
    },
}
# pointing: the fist with the index finger straight
_NAMED_POSES["point"] = {**_NAMED_POSES["fist"], "index": [(0.0, 0.05, 0), (0.05, 0, 0), (0.0, 0, 0)]}
NAMED_POSES = tuple(_NAMED_POSES)


def named_local_pose(name: str) -> np.ndarray:
    """A named pose ('open', 'fist', 'pinch', 'point') as (flexion, abduction, twist) [15, 3]."""
    local = np.zeros((15, 3))
    for finger, rows in _NAMED_POSES[name].items():
        for j, row in zip(FINGER_CHAINS[finger], rows):
            local[j - 1] = row
    return local


def named_hand_pose(layer, name: str) -> np.ndarray:
    """A named pose ('open', 'fist', 'pinch', 'point') for `layer`'s model: [45] axis-angle."""
    if name not in _NAMED_POSES:
        raise ValueError(f"unknown pose {name!r}; known: {', '.join(NAMED_POSES)}")
    return local_to_axis_angle(layer.joint_frames, named_local_pose(name))


def sample_natural_hand_pose(layer, rng: np.random.Generator, n: int) -> np.ndarray:
    """Draw `n` plausible hand poses from the model's pose prior: [n, 45] axis-angle (flat hand mean,
    i.e. the full hand pose as HO3D stores it), clipped to JOINT_LIMITS.

    The prior is Gaussian in the model's PCA space: pose = hands_mean + (z * std) @ hands_components
    with z ~ N(0, 1). std is the file's `hands_std` (the stand-in stores it), else the spread of
    its `hands_coeffs` (the official file's training coefficients), else 1 (component rows then
    carry their own scale).

    Args:
        layer: a ManoLayer (its pose-PCA map `pose_from_pca` and joint_frames).
        rng: numpy Generator; the only source of randomness.
        n: number of poses.
    """
    z = rng.standard_normal((int(n), 45))
    pose = layer.pose_from_pca(z)
    return clip_to_joint_limits(layer.joint_frames, pose)
