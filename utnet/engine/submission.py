"""HO3D competition submission: the one place predictions go back to HO3D's frame, unit and order.

The HO3D evaluation server (docs/evaluation.md) expects `pred.json` = [xyz_list, verts_list],
N x 21 x 3 joints and N x 778 x 3 vertices in METRES, OpenGL camera frame (hand at negative z),
HO3D joint order, one entry per line of evaluation.txt, uploaded as `pred.zip` holding pred.json.
"""
from __future__ import annotations

import json
import os
import zipfile
from pathlib import Path

import numpy as np

from losses.units import MM_PER_M
from utnet.geometry import flip_opengl_opencv
from utnet.joints import CANONICAL_TO_HO3D, NUM_JOINTS, ROOT_INDEX

# 1e-6 m = 1 micrometre: far below any reported error, and it keeps pred.json small.
DECIMALS_M = 6


def _check(name: str, array: np.ndarray, shape: tuple) -> None:
    if array.ndim != len(shape) or any(s is not None and a != s for a, s in zip(array.shape, shape)):
        raise ValueError(f"{name}: expected shape {shape} (None = any), got {array.shape}")
    if not np.isfinite(array).all():
        raise ValueError(f"{name}: contains non-finite values")


def to_ho3d_frame(pred_joints_cam_mm, pred_verts_cam_mm, gt_root_cam_mm):
    """Predictions (OpenCV camera frame, mm, canonical order) -> HO3D (OpenGL, metres, HO3D order).

    Each prediction is translated so that its root joint equals the given root (the evaluation
    split provides the gt root), then flipped to OpenGL and scaled to metres.

    Args:
        pred_joints_cam_mm: [N,21,3] canonical order. pred_verts_cam_mm: [N,V,3]. gt_root_cam_mm: [N,3].
    Returns:
        (joints_opengl_m [N,21,3] HO3D order, verts_opengl_m [N,V,3]), float64.
    """
    joints = np.asarray(pred_joints_cam_mm, dtype=np.float64)
    verts = np.asarray(pred_verts_cam_mm, dtype=np.float64)
    root = np.asarray(gt_root_cam_mm, dtype=np.float64)
    _check("pred_joints_cam_mm", joints, (None, NUM_JOINTS, 3))
    _check("pred_verts_cam_mm", verts, (joints.shape[0], None, 3))
    _check("gt_root_cam_mm", root, (joints.shape[0], 3))
    offset = (root - joints[:, ROOT_INDEX])[:, None, :]
    joints_opengl_m = flip_opengl_opencv(joints + offset) / MM_PER_M
    verts_opengl_m = flip_opengl_opencv(verts + offset) / MM_PER_M
    return joints_opengl_m[:, CANONICAL_TO_HO3D], verts_opengl_m


def write_ho3d_submission(out_dir, pred_joints_cam_mm, pred_verts_cam_mm, gt_root_cam_mm) -> tuple[Path, Path]:
    """Write `pred.json` and `pred.zip` (holding pred.json) for the HO3D evaluation server.

    Args: as `to_ho3d_frame` (numpy arrays or CPU tensors; N = size of the evaluation split,
    in its order). Values are rounded to 1 micrometre.
    Returns:
        (path of pred.json, path of pred.zip). Both are written under temporary names and renamed
        when complete, so an interrupted write never leaves a truncated submission.
    """
    joints_m, verts_m = to_ho3d_frame(pred_joints_cam_mm, pred_verts_cam_mm, gt_root_cam_mm)
    if (joints_m[..., 2] >= 0).any() or (verts_m[..., 2] >= 0).any():
        # HO3D rejects a submission in the wrong frame; a hand behind the camera means a bad root.
        raise ValueError("submission: some points have z >= 0 in the OpenGL frame (in front of the camera "
                         "is z < 0); check gt_root_cam_mm")
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    json_path, zip_path = out_dir / "pred.json", out_dir / "pred.zip"
    payload = [np.round(joints_m, DECIMALS_M).tolist(), np.round(verts_m, DECIMALS_M).tolist()]
    tmp_json = json_path.with_name(json_path.name + ".tmp")
    with open(tmp_json, "w") as f:
        json.dump(payload, f, separators=(",", ":"))
    os.replace(tmp_json, json_path)
    tmp_zip = zip_path.with_name(zip_path.name + ".tmp")
    with zipfile.ZipFile(tmp_zip, "w", compression=zipfile.ZIP_DEFLATED) as archive:
        archive.write(json_path, arcname="pred.json")
    os.replace(tmp_zip, zip_path)
    return json_path, zip_path


def load_ho3d_prediction(path) -> tuple[np.ndarray, np.ndarray]:
    """Read a pred.json or pred.zip as written for HO3D.

    Returns:
        (xyz [N,21,3], verts [N,V,3]) float64, exactly as in the file: OpenGL frame, metres, HO3D order.
    """
    path = Path(path)
    if path.suffix == ".zip":
        with zipfile.ZipFile(path) as archive:
            xyz, verts = json.loads(archive.read("pred.json"))
    else:
        with open(path) as f:
            xyz, verts = json.load(f)
    return np.asarray(xyz, dtype=np.float64), np.asarray(verts, dtype=np.float64)
