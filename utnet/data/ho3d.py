"""HO3D v2/v3 reader: split files, images, depth, meta pickles, and THE frame conversion.

Layout and encodings follow the official toolkit (docs/ho3d_format.md). `list_frames` turns a
root into frame records; `read_images` decodes one frame's RGB and depth; `read_meta` loads its
pickle; `convert_annotation` is the one place where OpenGL becomes OpenCV, metres become
millimetres and HO3D joint order becomes canonical order.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

import cv2
import numpy as np

from losses.units import MM_PER_M
from utnet import safe_pickle
from utnet.errors import UserError
from utnet.geometry import OPENGL_TO_OPENCV, flip_opengl_opencv, rotate_mano_root
from utnet.joints import HO3D_TO_CANONICAL, NUM_JOINTS

# One unit of the 16-bit depth PNG, in metres (docs/ho3d_format.md).
DEPTH_UNIT_M = 0.00012498664727900177
SPLIT_FILES = {"train": "train.txt", "evaluation": "evaluation.txt"}
LAYOUT_HINT = ("expected HO3D layout: train.txt, evaluation.txt, train/<SEQ>/{rgb,depth,meta}/NNNN.{png|jpg,png,pkl}, "
               "evaluation/<SEQ>/...")


@dataclass(frozen=True)
class FrameRecord:
    """One listed frame. `line` is its 0-based line in the split file (the order of evaluation_*.json).
    `problem`: why it cannot be read, found when listing (a missing file; kept only with keep_unreadable)."""

    folder: str  # "train" | "evaluation" (the folder on disk)
    sequence: str
    frame_id: str
    line: int
    rgb_path: Path
    depth_path: Path
    meta_path: Path
    problem: Optional[str] = None


def read_split_file(root: Path, folder: str) -> list[tuple[str, str]]:
    """Lines `SEQ/NNNN` of <root>/train.txt or evaluation.txt -> [(sequence, frame_id)], in file order."""
    path = Path(root) / SPLIT_FILES[folder]
    if not path.is_file():
        raise UserError(f"data.root: {path} not found; {LAYOUT_HINT}")
    entries = []
    for n, raw in enumerate(path.read_text().splitlines(), start=1):
        line = raw.strip()
        if not line:
            continue
        seq, sep, frame = line.partition("/")
        if not sep or not seq or not frame:
            raise UserError(f"{path}: line {n} is not SEQ/NNNN (got {line!r})")
        entries.append((seq, frame))
    return entries


def list_frames(root: Path, folder: str, sequences: Optional[set] = None, exclude: Optional[set] = None,
                on_error: str = "raise", version: str = "v2",
                keep_unreadable: bool = False) -> tuple[list[FrameRecord], list[str]]:
    """Frame records of a split folder whose three files exist.

    RGB is looked up as .png and .jpg, the version's own extension first (v2 .png, v3 .jpg). A listed frame with a missing file raises a
    UserError naming the file (on_error="raise") or is left out and reported in the returned list
    of problems (on_error="skip"); with keep_unreadable it also stays in the records, at its place, with
    the message as its `problem` (scored splits drop it when scored and keep one entry per listed line).
    Returns (records, problems).
    """
    root = Path(root)
    exts = (".jpg", ".png") if version == "v3" else (".png", ".jpg")
    records, problems = [], []
    for line, (seq, frame) in enumerate(read_split_file(root, folder)):
        if sequences is not None and seq not in sequences:
            continue
        if exclude is not None and seq in exclude:
            continue
        base = root / folder / seq
        rgb = base / "rgb" / f"{frame}{exts[0]}"
        if not os.path.exists(rgb):
            rgb = base / "rgb" / f"{frame}{exts[1]}"
        depth = base / "depth" / f"{frame}.png"
        meta = base / "meta" / f"{frame}.pkl"
        missing = next((p for p in (rgb, depth, meta) if not os.path.exists(p)), None)
        if missing is not None:
            if missing == rgb:
                missing = base / "rgb" / f"{frame}{exts[0]}|{exts[1]}"
            message = f"{missing}: file missing (listed in {SPLIT_FILES[folder]} as {seq}/{frame})"
            if on_error == "raise":
                raise UserError(message)
            problems.append(message)
            if keep_unreadable:
                records.append(FrameRecord(folder, seq, frame, line, rgb, depth, meta, problem=message))
            continue
        records.append(FrameRecord(folder, seq, frame, line, rgb, depth, meta))
    return records, problems


def decode_depth_m(depth_bgr: np.ndarray) -> np.ndarray:
    """HO3D depth PNG as read by cv2 (BGR uint8 [H,W,3]) -> depth [H,W] float32 metres, 0 = no measurement.

    Red holds the low byte, green the high byte; cast before multiplying (uint8 * 256 overflows).
    """
    raw = depth_bgr[..., 2].astype(np.int32) + 256 * depth_bgr[..., 1].astype(np.int32)
    return (raw * DEPTH_UNIT_M).astype(np.float32)


def encode_depth_m(depth_m: np.ndarray) -> np.ndarray:
    """Inverse of decode_depth_m: depth [H,W] metres -> BGR uint8 [H,W,3] (red low byte, green high, blue 0)."""
    raw = np.rint(np.clip(np.asarray(depth_m, dtype=np.float32) * np.float32(1.0 / DEPTH_UNIT_M), 0, 65535)).astype("<u2")
    low_high = raw.view(np.uint8).reshape(raw.shape + (2,))  # little-endian: [..., 0] low byte, [..., 1] high
    return cv2.merge([np.zeros(raw.shape, np.uint8), low_high[..., 1], low_high[..., 0]])


def read_images(record: FrameRecord) -> tuple[np.ndarray, np.ndarray]:
    """Read one frame's files: (rgb_bgr uint8 [H,W,3] as cv2 reads it, depth_encoded uint8 [H,W,3]).

    The depth stays in its PNG encoding so that the pipeline can crop it first and decode only the
    crop (`decode_depth_mm`; nearest-neighbour warping commutes with the decoding).
    Raises UserError naming the file when it cannot be decoded.
    """
    bgr = cv2.imread(str(record.rgb_path), cv2.IMREAD_COLOR)
    if bgr is None:
        raise UserError(f"{record.rgb_path}: cannot decode image")
    depth_bgr = cv2.imread(str(record.depth_path), cv2.IMREAD_UNCHANGED)
    if depth_bgr is None or depth_bgr.ndim != 3 or depth_bgr.shape[2] < 3 or depth_bgr.dtype != np.uint8:
        raise UserError(f"{record.depth_path}: cannot decode as an HO3D 8-bit 3-channel depth PNG")
    return bgr, depth_bgr[..., :3]


def decode_depth_mm(depth_bgr: np.ndarray) -> np.ndarray:
    """HO3D depth encoding (BGR uint8 [H,W,3]) -> depth [H,W] float32 MILLIMETRES, 0 = no measurement.

    The one place depth becomes millimetres.
    """
    return decode_depth_m(depth_bgr) * np.float32(MM_PER_M)


def read_meta(path: Path) -> dict:
    """Load a meta pickle (protocol 2, Python 2 writers: latin1) with utnet.safe_pickle, which refuses any class
    but numpy's and builtins' (a pickle can run code when opened). Raises UserError naming the file."""
    try:
        with open(path, "rb") as f:
            meta, _ = safe_pickle.loads(f.read(), path)
        if isinstance(meta, dict):
            meta = {key: safe_pickle.to_plain(value) for key, value in meta.items()}
    except UserError:  # a refused class, named in the message; nothing of the file was run
        raise
    except Exception as err:  # any other unpickling failure means a corrupt file
        raise UserError(f"{path}: cannot read meta pickle ({type(err).__name__}: {err})") from None
    if not isinstance(meta, dict):
        raise UserError(f"{path}: meta pickle is not a dict (got {type(meta).__name__})")
    return meta


def _finite(arr: np.ndarray, key: str, path: Path) -> np.ndarray:
    """`arr` unchanged; UserError naming the file and field when it holds NaN or inf (a bad frame)."""
    if not np.isfinite(arr).all():
        raise UserError(f"{path}: field {key!r} has {int((~np.isfinite(arr)).sum())} non-finite value(s) (NaN/inf)")
    return arr


def _field(meta: dict, key: str, shape: tuple, path: Path) -> np.ndarray:
    value = meta.get(key)
    if value is None:
        raise UserError(f"{path}: field {key!r} is missing or None (frame not annotated?)")
    arr = np.asarray(value, dtype=np.float64).reshape(-1)
    size = int(np.prod(shape))
    if arr.size != size:
        raise UserError(f"{path}: field {key!r} has {arr.size} values, expected {size} {shape}")
    return _finite(arr, key, path).reshape(shape)


@dataclass
class Annotation:
    """One frame's annotation in the project's frame: OpenCV camera, millimetres, canonical order.

    joints_cam_mm [21,3] (only row 0 meaningful when joints_valid says so); joints_valid [21];
    cam_K [3,3] full-image pixels; mano_* axis-angle OpenCV frame, mano_transl_m [3] METRES
    (a MANO parameter); has_mano; bbox_xyxy [4] full-image pixels or None (train: from joints);
    verts_cam_mm [778,3] or None.
    """

    joints_cam_mm: np.ndarray
    joints_valid: np.ndarray
    cam_K: np.ndarray
    mano_global_orient: np.ndarray
    mano_hand_pose: np.ndarray
    mano_betas: np.ndarray
    mano_transl_m: np.ndarray
    has_mano: bool
    bbox_xyxy: Optional[np.ndarray] = None
    verts_cam_mm: Optional[np.ndarray] = None


def opengl_m_to_opencv_mm(points_opengl_m: np.ndarray) -> np.ndarray:
    """Points [..., 3] OpenGL camera frame, metres -> OpenCV camera frame, millimetres (float64)."""
    return flip_opengl_opencv(np.asarray(points_opengl_m, dtype=np.float64)) * MM_PER_M


def convert_annotation(meta: dict, path: Path, rest_root_joint_m: Optional[Callable[[np.ndarray], np.ndarray]],
                       eval_joints_opengl_m: Optional[np.ndarray] = None,
                       eval_verts_opengl_m: Optional[np.ndarray] = None) -> Annotation:
    """THE conversion: HO3D meta (OpenGL, metres, HO3D order) -> Annotation (OpenCV, mm, canonical).

    Train frames carry MANO (handPose 48, handBeta 10, handTrans 3); their root rotation turns
    about J0, so `rest_root_joint_m(betas[10]) -> J0[3]` metres is needed. Evaluation frames carry
    the root joint (3,) and handBoundingBox; `eval_joints_opengl_m` [21,3] / `eval_verts_opengl_m`
    [778,3] (from evaluation_xyz/verts.json) replace the root-only ground truth when given.
    """
    cam_K = _field(meta, "camMat", (3, 3), path)
    joints_gl = meta.get("handJoints3D")
    if joints_gl is None:
        raise UserError(f"{path}: field 'handJoints3D' is missing or None (frame not annotated?)")
    joints_gl = _finite(np.asarray(joints_gl, dtype=np.float64), "handJoints3D", path)
    zeros3 = np.zeros(3)
    if "handPose" in meta and joints_gl.size == NUM_JOINTS * 3:
        pose = _field(meta, "handPose", (48,), path)
        betas = _field(meta, "handBeta", (10,), path)
        transl_gl = _field(meta, "handTrans", (3,), path)
        joints_ho3d_gl = joints_gl.reshape(NUM_JOINTS, 3)
        joints_cam_mm = opengl_m_to_opencv_mm(joints_ho3d_gl[HO3D_TO_CANONICAL])
        go_cv, transl_cv = rotate_mano_root(OPENGL_TO_OPENCV, pose[:3], transl_gl, rest_root_joint_m(betas))
        return Annotation(joints_cam_mm, np.ones(NUM_JOINTS), cam_K, go_cv, pose[3:].copy(), betas,
                          transl_cv, True)
    if joints_gl.size != 3:
        raise UserError(f"{path}: 'handJoints3D' has {joints_gl.size} values; expected 63 (train, with handPose) "
                        "or 3 (evaluation root)")
    bbox = _field(meta, "handBoundingBox", (4,), path)
    if eval_joints_opengl_m is not None:
        joints_ho3d_gl = np.asarray(eval_joints_opengl_m, dtype=np.float64).reshape(NUM_JOINTS, 3)
        joints_valid = np.ones(NUM_JOINTS)
    else:
        joints_ho3d_gl = np.zeros((NUM_JOINTS, 3))
        joints_ho3d_gl[0] = joints_gl.reshape(3)
        joints_valid = np.zeros(NUM_JOINTS)
        joints_valid[0] = 1.0
    joints_cam_mm = opengl_m_to_opencv_mm(joints_ho3d_gl[HO3D_TO_CANONICAL])
    verts = None
    if eval_verts_opengl_m is not None:
        verts = opengl_m_to_opencv_mm(np.asarray(eval_verts_opengl_m).reshape(-1, 3))
    return Annotation(joints_cam_mm, joints_valid, cam_K, zeros3, np.zeros(45), np.zeros(10), zeros3.copy(), False,
                      bbox_xyxy=bbox, verts_cam_mm=verts)


def load_evaluation_json(root: Path, name: str, expected: int) -> Optional[np.ndarray]:
    """<root>/evaluation_xyz.json or evaluation_verts.json -> array [N, K, 3] (OpenGL metres, HO3D order,
    the order of evaluation.txt), or None when absent. Raises UserError if N differs from the split."""
    path = Path(root) / name
    if not path.is_file():
        return None
    try:
        with open(path) as f:
            arr = np.asarray(json.load(f), dtype=np.float64)
    except Exception as err:
        raise UserError(f"{path}: cannot read ({type(err).__name__}: {err})") from None
    if arr.ndim != 3 or arr.shape[0] != expected or arr.shape[2] != 3:
        raise UserError(f"{path}: shape {list(arr.shape)}, expected [{expected}, K, 3] (one entry per line of evaluation.txt)")
    bad = np.flatnonzero(~np.isfinite(arr).all(axis=(1, 2)))
    if bad.size:
        raise UserError(f"{path}: {bad.size} entries hold NaN/inf (first: entry {bad[0]}, line {bad[0] + 1} of evaluation.txt)")
    return arr
