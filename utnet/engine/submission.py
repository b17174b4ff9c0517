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
from utnet.errors import UserError
from utnet.geometry import flip_opengl_opencv
from utnet.joints import CANONICAL_TO_HO3D, HO3D_TO_CANONICAL, NUM_JOINTS, NUM_VERTS, ROOT_INDEX

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
    """Read and check a pred.json, or a pred.zip holding pred.json, in the HO3D submission format.

    Returns:
        (xyz [N,21,3], verts [N,778,3]) float64, exactly as in the file: OpenGL frame, metres, HO3D order.
    Raises:
        UserError naming the file: missing or unreadable, a zip without pred.json, not [xyz_list,
        verts_list], lists of different lengths, entries that are not 21 / 778 points of 3 values (also
        the two lists swapped), non-finite values.
    """
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{path}: prediction file not found")
    try:
        if zipfile.is_zipfile(path):
            with zipfile.ZipFile(path) as archive:
                if "pred.json" not in archive.namelist():
                    raise UserError(f"{path}: the zip holds no pred.json (it holds {archive.namelist()[:5]})")
                payload = json.loads(archive.read("pred.json"))
        else:
            with open(path) as f:
                payload = json.load(f)
    except UserError:
        raise
    except Exception as err:  # a truncated zip, invalid JSON, ...: a bad file for the user
        raise UserError(f"{path}: cannot read ({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from None
    if not isinstance(payload, list) or len(payload) != 2:
        raise UserError(f"{path}: expected [xyz_list, verts_list] (HO3D submission format)")
    xyz, verts = (_points(path, name, part) for name, part in zip(("xyz_list", "verts_list"), payload))
    if xyz.shape[1:] == (NUM_VERTS, 3) and verts.shape[1:] == (NUM_JOINTS, 3):
        raise UserError(f"{path}: xyz_list holds {NUM_VERTS} points and verts_list {NUM_JOINTS}: the lists are swapped "
                        f"(expected [xyz_list, verts_list])")
    for name, array, count in (("xyz_list", xyz, NUM_JOINTS), ("verts_list", verts, NUM_VERTS)):
        if array.shape[1:] != (count, 3):
            raise UserError(f"{path}: {name} entries have shape {list(array.shape[1:])}, expected [{count}, 3]")
        if not np.isfinite(array).all():
            bad = int(np.flatnonzero(~np.isfinite(array).reshape(len(array), -1).all(axis=1))[0])
            raise UserError(f"{path}: {name} entry {bad} holds non-finite values (NaN or inf)")
    if len(xyz) != len(verts):
        raise UserError(f"{path}: xyz_list has {len(xyz)} entries but verts_list {len(verts)}")
    return xyz, verts


def _points(path: Path, name: str, part) -> np.ndarray:
    """One list of a submission as float64 [N,K,3]; UserError when it is not a list of point lists."""
    try:
        array = np.asarray(part, dtype=np.float64)
    except (TypeError, ValueError):
        raise UserError(f"{path}: {name} is not a list of equally sized point lists") from None
    if array.ndim != 3 or array.shape[0] == 0:
        raise UserError(f"{path}: {name} has shape {list(array.shape)}, expected [N, K, 3] with N > 0")
    return array


def from_ho3d_frame(xyz_opengl_m: np.ndarray, verts_opengl_m: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """HO3D submission / ground truth (OpenGL, metres, HO3D order) -> (joints_cam_mm [N,21,3] canonical
    order, verts_cam_mm [N,V,3]) in the OpenCV camera frame, through the data reader's one conversion."""
    from utnet.data.ho3d import opengl_m_to_opencv_mm

    return opengl_m_to_opencv_mm(xyz_opengl_m)[:, HO3D_TO_CANONICAL], opengl_m_to_opencv_mm(verts_opengl_m)
