"""Rotations, frames, projection and Procrustes alignment: small pure functions.

Torch functions are batched over leading dimensions. Units are whatever the caller passes
(the functions are unit-free) unless a docstring says otherwise.
"""
from __future__ import annotations

import cv2
import numpy as np
import torch
import torch.nn.functional as F

# OpenGL camera (y up, hand at negative z) <-> OpenCV camera (y down, z forward). Its own inverse.
OPENGL_TO_OPENCV = np.diag([1.0, -1.0, -1.0])


def flip_opengl_opencv(points):
    """Convert points [..., 3] between the OpenGL and OpenCV camera frames (the same op both ways).

    Accepts numpy arrays or torch tensors; returns the same type.
    """
    if isinstance(points, torch.Tensor):
        sign = points.new_tensor([1.0, -1.0, -1.0])
        return points * sign
    return np.asarray(points) * np.array([1.0, -1.0, -1.0], dtype=np.asarray(points).dtype)


def axis_angle_to_matrix(axis_angle: torch.Tensor) -> torch.Tensor:
    """Rodrigues: axis-angle [..., 3] (radians) -> rotation matrices [..., 3, 3]."""
    angle = torch.linalg.norm(axis_angle, dim=-1, keepdim=True)  # [...,1]
    small = angle < 1e-8
    safe_angle = torch.where(small, torch.ones_like(angle), angle)
    axis = axis_angle / safe_angle
    x, y, z = axis.unbind(-1)
    zero = torch.zeros_like(x)
    K = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(*axis.shape[:-1], 3, 3)
    sin = torch.sin(angle)[..., None]
    cos = torch.cos(angle)[..., None]
    eye = torch.eye(3, dtype=axis_angle.dtype, device=axis_angle.device).expand_as(K)
    R = eye + sin * K + (1.0 - cos) * (K @ K)
    # First-order expansion near zero keeps gradients finite and exact to O(theta^2).
    x, y, z = axis_angle.unbind(-1)
    K_small = torch.stack([zero, -z, y, z, zero, -x, -y, x, zero], dim=-1).reshape(K.shape)
    return torch.where(small[..., None], eye + K_small, R)


def matrix_to_axis_angle(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> axis-angle [..., 3] (radians, angle in [0, pi])."""
    return quaternion_to_axis_angle(matrix_to_quaternion(R))


def matrix_to_quaternion(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> unit quaternions [..., 4] (w, x, y, z), w >= 0."""
    m = R
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q_abs = torch.sqrt(torch.clamp(torch.stack([
        1.0 + m00 + m11 + m22,
        1.0 + m00 - m11 - m22,
        1.0 - m00 + m11 - m22,
        1.0 - m00 - m11 + m22,
    ], dim=-1), min=1e-12))
    m21, m12, m02, m20, m10, m01 = m[..., 2, 1], m[..., 1, 2], m[..., 0, 2], m[..., 2, 0], m[..., 1, 0], m[..., 0, 1]
    candidates = torch.stack([
        torch.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], dim=-1),
        torch.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], dim=-1),
        torch.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], dim=-1),
        torch.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], dim=-1),
    ], dim=-2) / (2.0 * q_abs[..., None])
    best = q_abs.argmax(dim=-1)
    q = torch.gather(candidates, -2, best[..., None, None].expand(*best.shape, 1, 4)).squeeze(-2)
    q = q * torch.where(q[..., :1] < 0, -1.0, 1.0)
    return F.normalize(q, dim=-1)


def quaternion_to_axis_angle(q: torch.Tensor) -> torch.Tensor:
    """Unit quaternions [..., 4] (w, x, y, z) -> axis-angle [..., 3]."""
    xyz = q[..., 1:]
    sin_half = torch.linalg.norm(xyz, dim=-1, keepdim=True)
    half = torch.atan2(sin_half, q[..., :1])
    angle = 2.0 * half
    small = sin_half < 1e-6
    factor = torch.where(small, 2.0 / torch.clamp(q[..., :1], min=1e-12) * torch.ones_like(half),
                         angle / torch.where(small, torch.ones_like(sin_half), sin_half))
    return xyz * factor


def rot6d_to_matrix(x: torch.Tensor) -> torch.Tensor:
    """6D rotation representation [..., 6] -> rotation matrices [..., 3, 3] by Gram-Schmidt.

    The first column comes from x[..., :3], the second from x[..., 3:].
    """
    a1, a2 = x[..., :3], x[..., 3:]
    b1 = F.normalize(a1, dim=-1)
    b2 = F.normalize(a2 - (b1 * a2).sum(-1, keepdim=True) * b1, dim=-1)
    b3 = torch.cross(b1, b2, dim=-1)
    return torch.stack([b1, b2, b3], dim=-1)


def matrix_to_rot6d(R: torch.Tensor) -> torch.Tensor:
    """Rotation matrices [..., 3, 3] -> 6D representation [..., 6] (first two columns)."""
    return torch.cat([R[..., :, 0], R[..., :, 1]], dim=-1)


def axis_angle_to_matrix_np(aa) -> np.ndarray:
    """numpy float64 axis-angle [..., 3] -> rotation matrices [..., 3, 3], by OpenCV's Rodrigues formula.

    Exact to ~1e-15 also near angle 0 and pi (tested against scipy). Per vector: the callers (the
    data pipeline per augmented sample, the synthesiser per frame) pass one, where a torch round trip
    would cost ~1 ms and numpy's small-array overhead ~0.1 ms.
    """
    aa = np.asarray(aa, dtype=np.float64)
    flat = aa.reshape(-1, 3)
    out = np.empty((flat.shape[0], 3, 3))
    for i, vector in enumerate(flat):
        out[i] = cv2.Rodrigues(vector.reshape(3, 1))[0]
    return out.reshape(*aa.shape[:-1], 3, 3)


def matrix_to_axis_angle_np(R) -> np.ndarray:
    """numpy float64 twin of matrix_to_axis_angle (same quaternion route): [..., 3, 3] -> [..., 3].

    Not cv2.Rodrigues: this direction of OpenCV's is off by up to 2e-5 rad near angle 0 and pi.
    """
    m = np.asarray(R, dtype=np.float64)
    m00, m11, m22 = m[..., 0, 0], m[..., 1, 1], m[..., 2, 2]
    q_abs = np.sqrt(np.maximum(np.stack([1.0 + m00 + m11 + m22, 1.0 + m00 - m11 - m22,
                                         1.0 - m00 + m11 - m22, 1.0 - m00 - m11 + m22], axis=-1), 1e-12))
    m21, m12, m02, m20, m10, m01 = m[..., 2, 1], m[..., 1, 2], m[..., 0, 2], m[..., 2, 0], m[..., 1, 0], m[..., 0, 1]
    candidates = np.stack([
        np.stack([q_abs[..., 0] ** 2, m21 - m12, m02 - m20, m10 - m01], axis=-1),
        np.stack([m21 - m12, q_abs[..., 1] ** 2, m10 + m01, m02 + m20], axis=-1),
        np.stack([m02 - m20, m10 + m01, q_abs[..., 2] ** 2, m12 + m21], axis=-1),
        np.stack([m10 - m01, m20 + m02, m21 + m12, q_abs[..., 3] ** 2], axis=-1),
    ], axis=-2) / (2.0 * q_abs[..., None])
    best = q_abs.argmax(axis=-1)
    q = np.take_along_axis(candidates, best[..., None, None], axis=-2)[..., 0, :]
    q = q * np.where(q[..., :1] < 0, -1.0, 1.0)
    q = q / np.linalg.norm(q, axis=-1, keepdims=True)
    xyz = q[..., 1:]
    sin_half = np.linalg.norm(xyz, axis=-1, keepdims=True)
    angle = 2.0 * np.arctan2(sin_half, q[..., :1])
    small = sin_half < 1e-6
    factor = np.where(small, 2.0 / np.maximum(q[..., :1], 1e-12), angle / np.where(small, 1.0, sin_half))
    return xyz * factor


def rotate_mano_root(R_apply, global_orient_aa, transl, root_joint_rest):
    """Apply a rotation about the camera origin to a whole MANO hand (numpy, float64).

    MANO rotates the hand about its rest-pose root joint J0 and then adds `transl`, so turning the
    posed hand by A is not a rotation of the translation alone: R' = A R, t' = A (J0 + t) - J0.

    Args:
        R_apply: [3, 3] rotation (OPENGL_TO_OPENCV for the frame change, or an in-plane rotation).
        global_orient_aa: [3] axis-angle.
        transl: [3] MANO translation (same unit as root_joint_rest).
        root_joint_rest: [3] J0 of this hand's shape at zero pose, without translation.
    Returns:
        (global_orient_aa' [3], transl' [3]).
    """
    A = np.asarray(R_apply, dtype=np.float64)
    R = axis_angle_to_matrix_np(global_orient_aa)
    J0 = np.asarray(root_joint_rest, dtype=np.float64)
    t = np.asarray(transl, dtype=np.float64)
    return matrix_to_axis_angle_np(A @ R), A @ (J0 + t) - J0


def project_points(points_cam, K):
    """Pinhole projection of points [..., N, 3] (OpenCV camera frame) with intrinsics K [..., 3, 3].

    Returns pixel coordinates [..., N, 2]. Works for numpy arrays and torch tensors.
    """
    if isinstance(points_cam, torch.Tensor):
        uvw = points_cam @ K.transpose(-1, -2)
        return uvw[..., :2] / uvw[..., 2:3]
    points_cam = np.asarray(points_cam)
    uvw = points_cam @ np.swapaxes(np.asarray(K), -1, -2)
    return uvw[..., :2] / uvw[..., 2:3]


def procrustes_align(pred: torch.Tensor, gt: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """Align each prediction to its ground truth by similarity Procrustes, as HO3D's eval.py does.

    Both point sets are centred on their means and divided by their Frobenius norms (+ eps); the
    orthogonal Procrustes rotation R = U Vh of the SVD of gt_n^T pred_n (no reflection fix) and the
    scale (sum of its singular values) map the prediction, then the ground truth's normalisation is
    undone. The 3x3 SVD is computed as a polar decomposition (`_polar_factor`, far cheaper batched)
    wherever that settles, by torch.linalg.svd elsewhere (nearly singular or slow to converge).

    Args:
        pred, gt: [..., N, 3] in the same unit (any frame).
    Returns:
        [..., N, 3] the aligned prediction, in gt's unit and frame; NaN for a non-finite sample.
    """
    shape = pred.shape
    pred, gt = pred.reshape(-1, *shape[-2:]), gt.reshape(-1, *shape[-2:])
    gt_mean = gt.mean(dim=1, keepdim=True)
    pred_mean = pred.mean(dim=1, keepdim=True)
    gt_c = gt - gt_mean
    pred_c = pred - pred_mean
    gt_norm = gt_c.flatten(1).norm(dim=1) + eps
    pred_norm = pred_c.flatten(1).norm(dim=1) + eps
    m = (gt_c.transpose(1, 2) @ pred_c) / (gt_norm * pred_norm)[:, None, None]
    rotation, scale, settled = _polar_factor(m)
    redo = ~settled & torch.isfinite(m).all(dim=2).all(dim=1)
    if bool(redo.any()):  # degenerate samples: the SVD of the normalised point sets
        m = (gt_c[redo] / gt_norm[redo, None, None]).transpose(1, 2) @ (pred_c[redo] / pred_norm[redo, None, None])
        u, s, vh = torch.linalg.svd(m)
        rotation[redo], scale[redo] = u @ vh, s.sum(dim=-1)
    linear = rotation.transpose(1, 2) * (scale * gt_norm / pred_norm)[:, None, None]
    return torch.baddbmm(gt_mean, pred_c, linear).reshape(shape)


def _polar_factor(m: torch.Tensor, iterations: int = 7) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """Orthogonal polar factor R of each m [B,3,3] (= U Vh of its SVD, a reflection where det m < 0),
    the sum of its singular values [B] (= trace(R^T m)), and whether both are settled [B] bool.

    Newton's iteration X <- (X + X^-T) / 2 (determinant-scaled for the first steps) converges
    quadratically from X = m and is far cheaper than a batched LAPACK SVD of 3x3 matrices. Not
    settled: a step that had not converged, a nearly singular m (its polar factor is then not
    unique: the caller asks the SVD, as the official protocol does) and a non-finite m (NaN).
    """
    x = m
    for step in range(iterations):
        # rows of the cofactor matrix: r1 x r2, r2 x r0, r0 x r1, so x^-T = cof / det
        cof = torch.linalg.cross(x.roll(-1, dims=1), x.roll(-2, dims=1), dim=-1)
        det = (x[:, 0] * cof[:, 0]).sum(-1)[:, None, None]
        if step == 0:
            m_det = det[:, 0, 0]
        if step < 3:
            gamma = det.abs().pow(-1.0 / 3.0)
            x_next = 0.5 * (gamma * x + cof / (gamma * det))
        else:
            x_next = 0.5 * (x + cof / det)
        change, x = (x_next - x).abs().amax(dim=(1, 2)), x_next
    # quadratic convergence: the last step's change squared bounds the remaining error
    settled = (change <= 1e-9) & (m_det.abs() > 1e-6 * m.square().sum(dim=(1, 2)) ** 1.5)
    return x, (x * m).sum(dim=(1, 2)), settled
