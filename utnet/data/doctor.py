"""`utnet doctor` checks: read samples through the real pipeline and say whether they look right.

Each check returns PASS / WARN / FAIL with its numbers and, when it is not a PASS, the likely
cause in words. The thresholds are wide on purpose: they catch unit, frame and order mistakes
(joints multiplied by 1000 twice, metres left as metres, root-centred ground truth, crop
intrinsics out of step with the keypoints), not small annotation noise.
"""
from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from losses.units import crop_units_to_grid
from utnet.geometry import axis_angle_to_matrix, project_points
from utnet.joints import CANONICAL_BONES

RGB_LIMITS = ((0.0 - 0.485) / 0.229, (1.0 - 0.406) / 0.225)  # the ImageNet-normalised range of [0, 1]


@dataclass
class Check:
    status: str  # PASS | WARN | FAIL
    name: str
    message: str

    def line(self) -> str:
        return f"{self.status:4s}  {self.name}: {self.message}"


def _stack(samples: list[dict], key: str) -> np.ndarray:
    return torch.stack([s[key] for s in samples]).double().numpy()


def check_rgb(samples) -> Check:
    rgb = _stack(samples, "rgb")
    lo, hi, mean = rgb.min(), rgb.max(), rgb.mean()
    text = f"min {lo:.2f} max {hi:.2f} mean {mean:.2f} (ImageNet-normalised [0,1] spans {RGB_LIMITS[0]:.2f}..{RGB_LIMITS[1]:.2f})"
    if not np.isfinite(rgb).all():
        return Check("FAIL", "rgb range", text + "; non-finite values")
    if lo < RGB_LIMITS[0] - 0.01 or hi > RGB_LIMITS[1] + 0.01:
        return Check("FAIL", "rgb range", text + "; values outside the normalised range: normalised twice or not scaled by 1/255?")
    if hi - lo < 0.5:
        return Check("WARN", "rgb range", text + "; nearly constant crops: wrong box or blank images?")
    return Check("PASS", "rgb range", text)


def check_depth(samples) -> Check:
    depth = _stack(samples, "depth")
    valid = (depth > 0).mean()
    text = f"min {depth.min():.3f} max {depth.max():.3f}, valid pixels {100 * valid:.1f}%"
    if not np.isfinite(depth).all() or depth.min() < 0 or depth.max() > 1:
        return Check("FAIL", "depth range", text + "; must lie in [0,1] (0 = no measurement)")
    if valid == 0:
        return Check("FAIL", "depth range", text + "; no valid depth at all: wrong depth decoding or crops off the image")
    if valid < 0.2:
        return Check("WARN", "depth range", text + "; few valid pixels: depth holes or a misplaced crop")
    return Check("PASS", "depth range", text)


def _joints(samples):
    j = _stack(samples, "joints_3d")
    v = _stack(samples, "joints_3d_valid") > 0
    return j, v


def check_joint_units(samples) -> Check:
    """Hand size (median bone length) when all joints are known, else camera distance of the root."""
    j, v = _joints(samples)
    full = v.all(axis=1)
    if full.any():
        jf = j[full]
        value = float(np.median([np.linalg.norm(jf[:, c] - jf[:, p], axis=-1) for p, c in CANONICAL_BONES]))
        text, low, high = f"median bone length {value:.4g} mm (expected 10..80 mm)", 1.0, 1000.0
    else:
        z = np.abs(j[:, 0, 2])
        value = float(np.median(z)) if z.size else float("nan")
        text, low, high = f"median |z| of the root {value:.4g} mm (expected 100..3000 mm)", 10.0, 3e4
    if not np.isfinite(value):
        return Check("FAIL", "joint units", "no finite valid joints")
    if value > high:
        return Check("FAIL", "joint units", text + "; looks multiplied by 1000 twice (metres -> mm applied to millimetres)")
    if value < low:
        return Check("FAIL", "joint units", text + "; looks like metres (the metres -> mm conversion is missing)")
    return Check("PASS", "joint units", text)


def check_root(samples) -> Check:
    j, v = _joints(samples)
    root = j[:, 0]
    dist = np.linalg.norm(root, axis=-1)
    full = v.all(axis=1)
    text = f"median |root| {np.median(dist):.1f} mm"
    if full.any():
        centred = j[full] - j[full][:, :1]
        spread = float(np.linalg.norm(centred.mean(axis=1), axis=-1).mean())
        text += f"; root-centred joints average {spread:.1f} mm from the origin (near 0 next to the absolute root; expected < 200)"
    else:
        spread = 0.0
    if not np.isfinite(dist).all() or np.median(dist) < 1.0:
        return Check("FAIL", "absolute root", text + "; the root sits at the origin: ground truth was root-centred "
                     "upstream (the contract wants absolute camera-frame joints; only losses centre)")
    if spread > 200:
        return Check("FAIL", "absolute root", text + "; joints far from their root: wrong joint order or mixed units")
    return Check("PASS", "absolute root", text)


def check_bones(samples) -> Check:
    j, v = _joints(samples)
    full = v.all(axis=1)
    if not full.any():
        return Check("WARN", "bone lengths", "no sample with all 21 joints (root-only split): not checked")
    jf = j[full]
    lengths = np.stack([np.linalg.norm(jf[:, c] - jf[:, p], axis=-1) for p, c in CANONICAL_BONES], axis=1)
    med = np.median(lengths, axis=0)
    text = f"per-bone median {med.min():.1f}..{med.max():.1f} mm (plausible 5..130 mm)"
    if not np.isfinite(med).all() or med.min() < 2 or med.max() > 200:
        worst = int(np.argmax(np.abs(np.log(np.maximum(med, 1e-6) / 35.0))))
        p, c = CANONICAL_BONES[worst]
        return Check("FAIL", "bone lengths", text + f"; bone {p}->{c} is {med[worst]:.4g} mm: wrong units or joint order")
    if med.min() < 5 or med.max() > 130:
        return Check("WARN", "bone lengths", text + "; unusual hand size")
    return Check("PASS", "bone lengths", text)


def check_keypoints_in_crop(samples) -> Check:
    kp = _stack(samples, "keypoints_2d")
    v = _stack(samples, "keypoints_2d_valid") > 0
    pts = kp[v]
    if pts.size == 0 or not np.isfinite(pts).all():
        return Check("FAIL", "2D in crop", "non-finite or no valid keypoints: projection of bad 3D joints (z near 0?)")
    inside = (np.abs(pts) <= 0.5).all(axis=-1).mean()
    text = f"{100 * inside:.1f}% of valid keypoints inside [-0.5,0.5], range {pts.min():.2f}..{pts.max():.2f}"
    if inside < 0.9:
        return Check("FAIL", "2D in crop", text + "; the crop box does not follow the hand (box or keypoint transform wrong)")
    if inside < 0.99:
        return Check("WARN", "2D in crop", text + "; some keypoints leave the crop (strong augmentation?)")
    return Check("PASS", "2D in crop", text)


def check_projection(samples, image_size) -> Check:
    H, W = image_size
    j, v = _joints(samples)
    K = _stack(samples, "cam_intrinsics")
    kp = _stack(samples, "keypoints_2d")
    kv = (_stack(samples, "keypoints_2d_valid") > 0) & v
    with np.errstate(all="ignore"):
        proj_px = project_points(j, K)
    err_px = np.linalg.norm(proj_px - crop_units_to_grid(kp, H, W), axis=-1)[kv]
    if err_px.size == 0 or not np.isfinite(err_px).all():
        return Check("FAIL", "projection", "3D joints do not project to finite points with the crop intrinsics (z near 0: root-centred joints?)")
    text = f"|project(joints_3d, cam_intrinsics) - keypoints_2d| max {err_px.max():.3f} px, mean {err_px.mean():.3f} px"
    if err_px.max() > 1.0:
        return Check("FAIL", "projection", text + "; crop intrinsics and 2D keypoints disagree (augmentation applied to one only, or a frame flip missing)")
    return Check("PASS", "projection", text)


def check_mano(samples, mano_layer, root: Path, cfg) -> Check:
    has = _stack(samples, "has_mano") > 0
    if not has.any():
        return Check("WARN", "mano reproduces joints", "no sample carries MANO parameters: not checked")
    sel = [s for s, h in zip(samples, has) if h]
    with torch.no_grad():
        # rotation matrices [B,1,3,3]: an axis-angle [B,3] batch is ambiguous for the layer when B == 3
        root_rot = axis_angle_to_matrix(torch.stack([s["mano_global_orient"] for s in sel]).double())[:, None].float()
        _, joints_mm = mano_layer.mesh_mm(root_rot,
                                          torch.stack([s["mano_hand_pose"] for s in sel]),
                                          torch.stack([s["mano_betas"] for s in sel]),
                                          torch.stack([s["mano_transl"] for s in sel]))
    gt = torch.stack([s["joints_3d"] for s in sel])
    err = torch.linalg.norm(joints_mm.double() - gt.double(), dim=-1)
    text = f"mean {err.mean():.2f} mm, max {err.max():.2f} mm over {len(sel)} samples (MANO {getattr(mano_layer, 'source', '?')})"
    from utnet.data.synth import INFO_FILE

    info = Path(root) / INFO_FILE
    if info.is_file():  # our synthetic set records the model it was rendered with
        try:
            same_model = json.loads(info.read_text()).get("mano_model_path") == cfg.mano.model_path
        except ValueError:
            same_model = False
    else:  # real HO3D was annotated with the official MANO model
        same_model = cfg.mano.model_path is not None
    if not torch.isfinite(err).all():
        return Check("FAIL", "mano reproduces joints", "non-finite MANO output or ground truth")
    if err.mean() <= 2.0:
        return Check("PASS", "mano reproduces joints", text)
    cause = ("global orient / translation not turned about J0 when changing frame or augmenting, or a different MANO file "
             "(mano.model_path) or fingertip ids (mano.tip_vertex_ids) than the data was annotated with")
    if not same_model:
        return Check("WARN", "mano reproduces joints", text + "; the data was not made with this MANO model, so a mismatch is expected")
    if err.mean() <= 8.0:
        return Check("WARN", "mano reproduces joints", text + f"; small mismatch: {cause}")
    return Check("FAIL", "mano reproduces joints", text + f"; {cause}")


def run_checks(cfg, split: str = "train", samples: int = 32, log=print) -> list[Check]:
    """Read `samples` evenly spaced samples of `split` through the real pipeline and run every check."""
    from utnet.data import build_dataset

    torch.manual_seed(cfg.seed)
    dataset = build_dataset(cfg, split)
    n = min(samples, len(dataset))
    indices = np.unique(np.linspace(0, len(dataset) - 1, n).round().astype(int))
    log(f"doctor: {split} split of {cfg.data.root}: {len(dataset)} frames"
        f"{f' ({dataset.skipped} skipped)' if getattr(dataset, 'skipped', 0) else ''}; checking {len(indices)}")
    batch = [dataset[int(i)] for i in indices]
    checks = [check_rgb(batch), check_depth(batch), check_joint_units(batch), check_root(batch), check_bones(batch),
              check_keypoints_in_crop(batch), check_projection(batch, tuple(cfg.data.image_size))]
    if split != "evaluation":
        checks.append(check_mano(batch, dataset.rest_root.mano_layer, Path(cfg.data.root), cfg))
    return checks
