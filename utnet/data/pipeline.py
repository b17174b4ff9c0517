"""Crop, augment and normalise HO3D frames into samples of the batch contract (docs/batch_contract.md).

Pixel conventions: full-image pixels follow OpenCV (integer = pixel centre, what camMat projects
to); crop pixels are measured from the crop's left/top EDGE, so the crop spans [0, W] x [0, H] and
`keypoints_2d = (u / W - 0.5, v / H - 0.5)` puts the crop centre at 0 (HaMeR's camera). The
crop intrinsics use the same crop-edge pixels.

One affine warp per image: `M` maps full-image pixels to crop pixels (scale, in-plane rotation
about the box centre, shift). The in-plane rotation by theta turns the image clockwise on screen
for theta > 0 (x right, y down) and equals a rotation Rz(theta) of the OpenCV camera frame about
its optical axis, which is applied to the 3D joints and the MANO root; the crop intrinsics
K_crop = M3 @ K @ Rz^T then project the rotated joints exactly onto the warped keypoints.
"""
from __future__ import annotations

import logging
from dataclasses import dataclass
from pathlib import Path
from typing import Optional

import cv2
import numpy as np
import torch
from torch.utils.data import Dataset

from losses.units import grid_to_crop_units
from utnet.config import AugmentConfig, ExperimentConfig
from utnet.errors import UserError
from utnet.geometry import project_points, rotate_mano_root
from utnet.data import ho3d

logger = logging.getLogger("utnet.data")

IMAGENET_MEAN_RGB = np.array([0.485, 0.456, 0.406], dtype=np.float32)
IMAGENET_STD_RGB = np.array([0.229, 0.224, 0.225], dtype=np.float32)
SPLITS = ("train", "val", "evaluation")
DEPTH_MIN_VALID = 1e-3  # a measured depth below the window maps here, never to 0 (= no measurement)


@dataclass
class Augmentation:
    """Per-sample augmentation: box scale factor, in-plane rotation (radians), box-centre shift as a
    fraction of the box size (x, y), per-channel colour scale (R, G, B)."""

    scale: float = 1.0
    rotation: float = 0.0
    shift: tuple = (0.0, 0.0)
    color: tuple = (1.0, 1.0, 1.0)


def sample_augmentation(aug: AugmentConfig, generator: Optional[torch.Generator] = None) -> Augmentation:
    """HaMeR's augmentation (docs/hamer_recipe.md), drawn from torch's RNG (seeded per DataLoader worker)."""
    n = torch.randn(4, generator=generator, dtype=torch.float64).numpy()
    u = torch.rand(4, generator=generator, dtype=torch.float64).numpy()
    scale = 1.0 + aug.scale * float(np.clip(n[0], -1.0, 1.0))
    rotation = 0.0
    if u[0] < aug.rotation_prob:
        rotation = np.deg2rad(aug.rotation_deg * float(np.clip(n[1], -2.0, 2.0)))
    shift = (aug.translation * float(np.clip(n[2], -1.0, 1.0)), aug.translation * float(np.clip(n[3], -1.0, 1.0)))
    color = tuple(1.0 - aug.color + 2.0 * aug.color * u[1:4])
    return Augmentation(scale, float(rotation), shift, color)


def fit_box(side_px: float, image_size: tuple[int, int]) -> tuple[float, float]:
    """Box (width, height) in full-image pixels with the crop's aspect ratio whose shorter side is side_px."""
    H, W = image_size
    if W <= H:
        return side_px, side_px * H / W
    return side_px * W / H, side_px


def tight_box(points_px: np.ndarray) -> np.ndarray:
    """[x0, y0, x1, y1] of points [N, 2]."""
    return np.concatenate([points_px.min(axis=0), points_px.max(axis=0)])


def crop_transform(center_xy, box_wh, rotation: float, image_size: tuple[int, int]) -> np.ndarray:
    """M [3, 3]: full-image pixels (OpenCV centres) -> crop-edge pixels (see module docstring)."""
    H, W = image_size
    s = W / box_wh[0]
    c, sn = np.cos(rotation), np.sin(rotation)
    A = s * np.array([[c, -sn], [sn, c]])
    M = np.eye(3)
    M[:2, :2] = A
    M[:2, 2] = np.array([W / 2.0, H / 2.0]) - A @ np.asarray(center_xy, dtype=np.float64)
    return M


def rotation_z(rotation: float) -> np.ndarray:
    """Rz [3, 3] turning the OpenCV camera frame about its optical axis as `crop_transform` turns the image."""
    c, s = np.cos(rotation), np.sin(rotation)
    return np.array([[c, -s, 0.0], [s, c, 0.0], [0.0, 0.0, 1.0]])


def normalise_depth(depth_crop_mm: np.ndarray, window_mm: float) -> np.ndarray:
    """Depth crop [H, W] mm (0 = none) -> [H, W] float32 in [0, 1]: a window of `window_mm` centred on
    the median valid depth near the crop centre; 0 stays 0 (no measurement).

    "Near the centre" is the central quarter (H/4 x W/4: the palm, even for a spread hand), widened to
    the central half and then the whole crop when it holds fewer than 10 measurements.
    """
    H, W = depth_crop_mm.shape
    valid = np.empty(0, dtype=depth_crop_mm.dtype)
    for margin in (3 / 8, 1 / 4, 0.0):
        y, x = int(H * margin), int(W * margin)
        region = depth_crop_mm[y: H - y, x: W - x]
        valid = region[region > 0]
        if valid.size >= 10:
            break
    if valid.size == 0:
        return np.zeros_like(depth_crop_mm, dtype=np.float32)
    low = np.float32(np.median(valid) - window_mm / 2.0)
    out = depth_crop_mm - low
    out *= np.float32(1.0 / window_mm)
    np.clip(out, DEPTH_MIN_VALID, 1.0, out=out)
    out *= depth_crop_mm > 0  # no measurement stays 0 (a multiply: cheaper than a masked assignment)
    return out.astype(np.float32, copy=False)


_LEVELS = np.arange(256, dtype=np.float32)[:, None] / np.float32(255.0)  # [256, 1] uint8 level / 255


def normalise_rgb(bgr_crop: np.ndarray, color=(1.0, 1.0, 1.0)) -> np.ndarray:
    """BGR uint8 crop [H, W, 3] -> ImageNet-normalised RGB float32 [3, H, W] after the colour scale.

    One table lookup per pixel: value v of channel c becomes (clip(v / 255 * color_c, 0, 1) - mean_c) / std_c.
    The crop is split into planes and each plane is looked up straight into its output plane, so the
    [H, W, 3] -> [3, H, W] reordering costs no extra pass over float data.
    """
    H, W = bgr_crop.shape[:2]
    tables = (np.clip(_LEVELS * np.asarray(color, dtype=np.float32), 0.0, 1.0) - IMAGENET_MEAN_RGB) / IMAGENET_STD_RGB
    out = np.empty((3, H, W), dtype=np.float32)
    blue, green, red = cv2.split(bgr_crop)
    for channel, plane in enumerate((red, green, blue)):
        cv2.LUT(plane, np.ascontiguousarray(tables[:, channel]), dst=out[channel])
    return out


def make_sample(bgr: np.ndarray, depth_encoded: np.ndarray, ann: ho3d.Annotation, image_size: tuple[int, int],
                bbox_expand: float, depth_window_mm: float, aug: Optional[Augmentation],
                rest_root_joint_m=None) -> dict:
    """One frame -> one sample dict of the batch contract (float32 tensors; no sample_index).

    bgr [h, w, 3] uint8 full image, depth_encoded [h, w, 3] uint8 full image in HO3D's PNG encoding,
    ann in OpenCV mm canonical.
    The box comes from the projected joints when all 21 are valid and ann carries no box, else from
    ann.bbox_xyxy. `aug=None` means no augmentation. `rest_root_joint_m(betas)` is needed when the
    sample has MANO parameters and a rotation is applied.
    """
    H, W = image_size
    K = ann.cam_K
    valid = ann.joints_valid > 0
    # Unknown joints (evaluation: all but the root) sit at z = 1 only to keep the projection finite.
    with np.errstate(divide="ignore", invalid="ignore"):  # broken ground truth (z = 0) becomes NaN, the doctor says so
        keypoints_px = project_points(np.where(valid[:, None], ann.joints_cam_mm, [0.0, 0.0, 1.0]), K)
    if ann.bbox_xyxy is not None:
        box = np.asarray(ann.bbox_xyxy, dtype=np.float64)
    else:
        box = tight_box(keypoints_px)
    center = 0.5 * (box[:2] + box[2:])
    side = bbox_expand * max(box[2] - box[0], box[3] - box[1], 1.0)
    aug = aug or Augmentation()
    box_wh = np.array(fit_box(side * aug.scale, image_size))
    center = center + np.asarray(aug.shift) * box_wh
    M = crop_transform(center, box_wh, aug.rotation, image_size)

    # cv2 wants destination pixel centres: crop-edge coordinate minus 0.5.
    M_cv = M[:2].copy()
    M_cv[:, 2] -= 0.5
    bgr_crop = cv2.warpAffine(bgr, M_cv, (W, H), flags=cv2.INTER_LINEAR, borderMode=cv2.BORDER_CONSTANT)
    # nearest-neighbour warping commutes with the depth decoding: decode the crop only
    depth_crop = ho3d.decode_depth_mm(cv2.warpAffine(depth_encoded, M_cv, (W, H), flags=cv2.INTER_NEAREST,
                                                     borderMode=cv2.BORDER_CONSTANT))

    Rz = rotation_z(aug.rotation)
    joints_mm = ann.joints_cam_mm @ Rz.T
    keypoints_crop = np.where(valid[:, None], keypoints_px @ M[:2, :2].T + M[:2, 2], np.array([W / 2.0, H / 2.0]))
    K_crop = M @ K @ Rz.T
    global_orient, transl_m = ann.mano_global_orient, ann.mano_transl_m
    if ann.has_mano and aug.rotation != 0.0:
        global_orient, transl_m = rotate_mano_root(Rz, global_orient, transl_m, rest_root_joint_m(ann.mano_betas))

    sample = {
        "rgb": torch.from_numpy(normalise_rgb(bgr_crop, aug.color)),
        "depth": torch.from_numpy(normalise_depth(depth_crop, depth_window_mm)[None]),
        "keypoints_2d": torch.from_numpy(grid_to_crop_units(keypoints_crop, H, W).astype(np.float32)),
        "keypoints_2d_valid": torch.from_numpy(ann.joints_valid.astype(np.float32)),
        "joints_3d": torch.from_numpy(joints_mm.astype(np.float32)),
        "joints_3d_valid": torch.from_numpy(ann.joints_valid.astype(np.float32)),
        "mano_global_orient": torch.from_numpy(np.asarray(global_orient, dtype=np.float32)),
        "mano_hand_pose": torch.from_numpy(np.asarray(ann.mano_hand_pose, dtype=np.float32)),
        "mano_betas": torch.from_numpy(np.asarray(ann.mano_betas, dtype=np.float32)),
        "mano_transl": torch.from_numpy(np.asarray(transl_m, dtype=np.float32)),
        "has_mano": torch.tensor(1.0 if ann.has_mano else 0.0),
        "cam_intrinsics": torch.from_numpy(K_crop.astype(np.float32)),
        "bbox": torch.from_numpy(np.concatenate([center - box_wh / 2, center + box_wh / 2]).astype(np.float32)),
    }
    if ann.verts_cam_mm is not None:
        sample["verts_3d"] = torch.from_numpy((ann.verts_cam_mm @ Rz.T).astype(np.float32))
    return sample


class RestRootJoint:
    """Cached J0 (rest-pose root joint, metres) per shape, from the MANO layer: betas [10] -> [3]."""

    def __init__(self, mano_layer):
        self.mano_layer = mano_layer
        self.cache: dict[bytes, np.ndarray] = {}

    def __call__(self, betas) -> np.ndarray:
        betas = np.asarray(betas, dtype=np.float32).reshape(10)
        key = betas.tobytes()
        if key not in self.cache:
            with torch.no_grad():
                j0 = self.mano_layer.rest_root_joint(torch.from_numpy(betas)[None])
            self.cache[key] = j0[0].double().numpy()
        return self.cache[key]


class HO3DDataset(Dataset):
    """A split of an HO3D-format folder as samples of the batch contract.

    train: train.txt minus data.val_sequences (augmented when data.augment.enabled);
    val: the frames of data.val_sequences; evaluation: evaluation.txt (root + box; full ground
    truth from evaluation_xyz.json / evaluation_verts.json when present).

    data.on_error: skip. train leaves out frames with a missing file and serves the next readable frame
    in place of one that fails to read (a substitute keeps the batch full). val and evaluation are
    scored, so they keep every listed frame at its index (`len()` = listed frames; evaluation.txt needs
    one submission entry per line): an unreadable frame comes back as the next readable frame's data with
    sample_index = its own index, sample_source_index = the frame whose data it carries and
    sample_readable = False, and the evaluator drops it from the metrics. Those two keys are added to
    every sample of a scored split in skip mode. `skipped` counts this process's skips (the doctor's
    report); `unreadable_flags` [len] uint8 in shared memory marks every frame found unreadable by
    any DataLoader worker, and `left_out` counts the train frames left out when listing.
    """

    def __init__(self, cfg: ExperimentConfig, split: str, mano_layer=None):
        if split not in SPLITS:
            raise UserError(f"split: must be one of {', '.join(SPLITS)} (got {split!r})")
        data = cfg.data
        self.root = Path(data.root)
        self.split = split
        self.image_size = tuple(data.image_size)
        self.bbox_expand = data.bbox_expand
        self.depth_window_mm = data.depth_window_mm
        self.on_error = data.on_error
        self.augment = data.augment if (split == "train" and data.augment.enabled) else None
        if not (self.root / "train.txt").is_file():
            raise UserError(f"data.root: {self.root} has no train.txt; {ho3d.LAYOUT_HINT}")
        val = set(data.val_sequences)
        folder = "evaluation" if split == "evaluation" else "train"
        if split != "evaluation" and val:
            listed = {seq for seq, _ in ho3d.read_split_file(self.root, "train")}
            unknown = sorted(val - listed)
            if unknown:
                raise UserError(f"data.val_sequences: {unknown} not in {self.root / 'train.txt'} "
                                f"(sequences there: {', '.join(sorted(listed)[:12])}{'...' if len(listed) > 12 else ''})")
        if split == "val" and not val:
            raise UserError("data.val_sequences: empty, so there is no val split; list held-out train sequences")
        scored = split != "train"
        self.records, problems = ho3d.list_frames(
            self.root, folder,
            sequences=val if split == "val" else None,
            exclude=val if split == "train" else None,
            on_error=self.on_error, version=data.version, keep_unreadable=scored)
        self.skipped = len(problems)
        self.left_out = 0 if scored else len(problems)
        if problems:
            logger.warning("data.on_error=skip: %d listed %s frame(s) %s (first: %s)", len(problems), split,
                           "dropped when scored" if scored else "skipped", problems[0])
        if all(rec.problem is not None for rec in self.records):
            raise UserError(f"data.root: no usable {split} frames in {self.root}")
        # Shared memory: DataLoader workers mark what they could not read, the training process reports it.
        self.unreadable_flags = None
        if self.on_error == "skip":
            self.unreadable_flags = torch.tensor([rec.problem is not None for rec in self.records],
                                                 dtype=torch.uint8).share_memory_()
        self.eval_xyz = self.eval_verts = None
        self._annotations: dict[int, ho3d.Annotation] = {}
        if split == "evaluation":
            n_lines = len(ho3d.read_split_file(self.root, "evaluation"))
            self.eval_xyz = ho3d.load_evaluation_json(self.root, "evaluation_xyz.json", n_lines)
            self.eval_verts = ho3d.load_evaluation_json(self.root, "evaluation_verts.json", n_lines)
            self.rest_root = None
        else:
            if mano_layer is None:
                from utnet.mano import ManoLayer

                mano_layer = ManoLayer(model_path=cfg.mano.model_path, tip_vertex_ids=cfg.mano.tip_vertex_ids)
            self.rest_root = RestRootJoint(mano_layer)

    def __len__(self) -> int:
        return len(self.records)

    def frame_name(self, index: int) -> str:
        """`SEQ/NNNN` of frame `index`, as listed in the split file."""
        rec = self.records[index]
        return f"{rec.sequence}/{rec.frame_id}"

    def annotation(self, index: int) -> ho3d.Annotation:
        """The converted annotation (OpenCV, mm, canonical order) of frame `index`, without images.

        Train/val annotations are immutable and small, so each process converts a frame once and
        keeps it (the pickle and the frame conversion cost about a tenth of the image decoding).
        """
        cached = self._annotations.get(index)
        if cached is not None:
            return cached
        rec = self.records[index]
        meta = ho3d.read_meta(rec.meta_path)
        xyz = self.eval_xyz[rec.line] if self.eval_xyz is not None else None
        verts = self.eval_verts[rec.line] if self.eval_verts is not None else None
        ann = ho3d.convert_annotation(meta, rec.meta_path, self.rest_root, xyz, verts)
        if self.split != "evaluation":
            self._annotations[index] = ann
        return ann

    def load(self, index: int, aug: Optional[Augmentation] = None) -> dict:
        """Read and convert frame `index` with the given augmentation (None: none). Raises UserError."""
        rec = self.records[index]
        if rec.problem is not None:
            raise UserError(rec.problem)
        bgr, depth_encoded = ho3d.read_images(rec)
        ann = self.annotation(index)
        sample = make_sample(bgr, depth_encoded, ann, self.image_size, self.bbox_expand, self.depth_window_mm,
                             aug, self.rest_root)
        sample["sample_index"] = torch.tensor(index, dtype=torch.int64)
        return sample

    def __getitem__(self, index: int) -> dict:
        aug = sample_augmentation(self.augment) if self.augment is not None else None
        if self.on_error == "raise":
            return self.load(index, aug)
        try:
            sample, readable = self.load(index, aug), True
        except UserError as err:
            self._mark_unreadable(index)
            logger.warning("data.on_error=skip: %s (%d skipped so far in this process)", err, self.skipped)
            sample, readable = self._next_readable(index, aug), False
        if self.split != "train":  # scored: the evaluator drops it (see the class docstring)
            sample["sample_source_index"] = sample["sample_index"]
            sample["sample_index"] = torch.tensor(index, dtype=torch.int64)
            sample["sample_readable"] = torch.tensor(readable)
        return sample

    def _mark_unreadable(self, index: int) -> None:
        if self.records[index].problem is None:  # a listing problem was counted when listed
            self.skipped += 1
        self.unreadable_flags[index] = 1

    def _next_readable(self, index: int, aug: Optional[Augmentation]) -> dict:
        """The sample of the first readable frame after `index` (wrapping round), marking the unreadable ones met."""
        for step in range(1, len(self.records)):
            other = (index + step) % len(self.records)
            try:
                return self.load(other, aug)
            except UserError:
                self._mark_unreadable(other)
        raise UserError(f"data.root: no readable {self.split} frame in {self.root}")
