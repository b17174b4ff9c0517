"""Hand-mesh metrics by the official HO3D protocol (docs/evaluation.md), batched on the device.

Two steps, so that a distributed evaluator can gather between them:

1. `per_sample_errors` turns one batch of predictions and ground truth (millimetres, any common
   camera frame) into a dict of per-sample tensors. Every value is a tensor whose first dimension
   is the batch, so `accelerator.gather_for_metrics(errors)` gathers it as a whole.
2. `summarize` turns the gathered dict into the reported numbers.

Definitions (as the official `eval.py` computes them, in mm instead of cm):
- Errors are Euclidean distances per joint / vertex. A mean error is the mean over keypoints of
  each keypoint's mean over the samples where it is valid (the official EvalUtil).
- Root-aligned (`mpjpe`, `mpvpe`): each side minus its own root joint; vertices use the joint root.
- Procrustes-aligned (`pa_mpjpe`, `pa_mpvpe`): per-sample similarity Procrustes
  (`utnet.geometry.procrustes_align`), joints and vertices aligned independently.
- Scale-translation aligned (`st_mpjpe`, the official eval's third joint error): the prediction
  scaled about the origin so that its wrist -> middle-finger MCP bone has the gt's length (unscaled
  when that bone has length 0), then translated so that its wrist lies on the gt wrist.
- `auc_j`, `auc_v`: per keypoint, PCK (error <= t) over t = np.linspace(0, 50, 100) mm, integrated
  with the trapezoid rule and divided by the integral of 1, then averaged over keypoints; on the
  Procrustes-aligned errors, as papers report.
- `f_5mm`, `f_15mm`: per sample on Procrustes-aligned vertices, precision = share of predicted
  vertices closer than the threshold (strictly) to their nearest gt vertex, recall = the reverse,
  F = 2PR / (P + R) (0 when P + R = 0); the mean over samples. The nearest-vertex search is
  `utnet.engine.nearest.hits_within` (exact, windowed).

Validity: `joints_valid` [B,21] marks usable gt joints (the HO3D evaluation split has the root
only). Root-aligned joint errors need the gt root and at least one other joint; Procrustes needs
all 21 joints (as the official protocol); vertex metrics need gt and predicted vertices
(`verts_valid`) and, for root alignment, the gt root. Entries that are not valid hold NaN and are
masked out by `summarize`. A metric with no valid data at all is NaN in `summarize` and None in
`metrics_for_json` (JSON has no NaN).
A non-finite prediction on a valid sample makes the metrics it enters NaN: it is not hidden.
"""
from __future__ import annotations

import math

import numpy as np
import torch

from utnet.engine.nearest import hits_within
from utnet.engine.nearest import squared_norm as _squared_norm  # the one rounding the F-score search uses
from utnet.geometry import procrustes_align
from utnet.joints import CANONICAL_NAMES, NUM_VERTS, ROOT_INDEX

AUC_THRESHOLDS_MM = np.linspace(0.0, 50.0, 100)
F_THRESHOLDS_MM = (5.0, 15.0)  # ascending: the F-score search reaches as far as the first (smallest)
# Samples per pass over the vertices: keeps one pass's arrays in cache.
_CHUNK_SAMPLES = 128
# The scale bone of `st_mpjpe` ends at the middle finger's first joint (HO3D order: joint 4).
MIDDLE_MCP_INDEX = CANONICAL_NAMES.index("middle1")


def _threshold_key(threshold_mm: float) -> str:
    return f"{threshold_mm:g}mm"


def _bool_mask(mask, shape, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    return torch.broadcast_to(mask.to(torch.bool) if mask.dtype == torch.bool else mask > 0.5, shape)


def _procrustes_aligned(pred: torch.Tensor, gt: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """`utnet.geometry.procrustes_align` (official HO3D similarity Procrustes) of pred [B,N,3] onto gt
    [B,N,3] for the samples where `ok` [B]; NaN for the other samples and for non-finite ones."""
    return procrustes_align(torch.where(ok[:, None, None], pred, math.nan), gt)


def scale_translation_errors(pred_j: torch.Tensor, gt_j: torch.Tensor, j_valid: torch.Tensor,
                             root_index: int = ROOT_INDEX, bone_end: int = MIDDLE_MCP_INDEX) -> dict[str, torch.Tensor]:
    """Per-joint errors [B,21] after the official scale-translation alignment (module docstring) and
    their 0/1 validity [B,21]: valid joints of samples whose gt root and bone end are valid; NaN elsewhere.
    pred_j, gt_j: [B,21,3] mm, canonical order; j_valid [B,21] bool."""
    def bone(j):
        return _squared_norm(j[:, bone_end] - j[:, root_index]).sqrt()[:, None, None]

    pred_bone, gt_bone = bone(pred_j), bone(gt_j)
    scaled = torch.where(pred_bone > 0, pred_j / pred_bone.clamp(min=1e-300) * gt_bone, pred_j)  # 0-length bone: unscaled
    aligned = scaled - scaled[:, root_index:root_index + 1] + gt_j[:, root_index:root_index + 1]
    valid = j_valid & (j_valid[:, root_index] & j_valid[:, bone_end])[:, None]
    return {"joints_st_err_mm": torch.where(valid, _squared_norm(aligned - gt_j).sqrt(), math.nan),
            "joints_st_valid": valid.to(pred_j.dtype)}


@torch.no_grad()
def per_sample_errors(
    pred_joints_mm: torch.Tensor,
    gt_joints_mm: torch.Tensor,
    pred_verts_mm: torch.Tensor | None = None,
    gt_verts_mm: torch.Tensor | None = None,
    root_index: int = ROOT_INDEX,
    joints_valid: torch.Tensor | None = None,
    verts_valid: torch.Tensor | bool | None = None,
    dtype: torch.dtype = torch.float64,
) -> dict[str, torch.Tensor]:
    """Per-sample HO3D errors of one batch; every value is a tensor with the batch first.

    Args:
        pred_joints_mm, gt_joints_mm: [B,21,3] mm, the same camera frame (absolute or not).
        pred_verts_mm, gt_verts_mm: [B,V,3] mm (V = 778) or None (no vertex metrics).
        root_index: joint both sides are centred on for the root-aligned errors.
        joints_valid: [B,21] (bool or 0/1) usable gt joints; None = all.
        verts_valid: [B] or a bool: samples with gt vertices; None = all when both vertex sets exist.
        dtype: computation dtype (float64 by default: the errors match a float64 reference to 1e-9 mm).
    Returns:
        dict of tensors on the input's device, float `dtype`; errors in mm, NaN where not valid:
        joints_err_mm [B,21] root-aligned, joints_valid [B,21] (0/1),
        joints_pa_err_mm [B,21] Procrustes-aligned, joints_pa_valid [B],
        joints_st_err_mm [B,21] scale-translation aligned, joints_st_valid [B,21],
        verts_err_mm [B,V] root-aligned on the joint root, verts_valid [B],
        verts_pa_err_mm [B,V], verts_pa_valid [B],
        precision_5mm, recall_5mm, precision_15mm, recall_15mm [B] (on aligned vertices).
    """
    device = pred_joints_mm.device
    pred_j = pred_joints_mm.to(dtype)
    gt_j = gt_joints_mm.to(dtype)
    batch, num_joints = gt_j.shape[:2]
    if pred_j.shape != gt_j.shape or gt_j.shape[-1] != 3:
        raise ValueError(f"joints: pred {tuple(pred_j.shape)} and gt {tuple(gt_j.shape)} must both be [B,J,3]")

    j_valid = _bool_mask(joints_valid, (batch, num_joints), device)
    root_valid = j_valid[:, root_index]
    # The root's own root-aligned error is 0 by construction: it only counts beside another joint.
    ra_valid = j_valid & (root_valid & (j_valid.sum(dim=1) > 1))[:, None]
    pred_root = pred_j[:, root_index:root_index + 1]
    gt_root = gt_j[:, root_index:root_index + 1]
    joints_err = _squared_norm((pred_j - pred_root) - (gt_j - gt_root)).sqrt()
    pa_valid = j_valid.all(dim=1)
    joints_pa_err = _squared_norm(_procrustes_aligned(pred_j, gt_j, pa_valid) - gt_j).sqrt()
    errors = {
        "joints_err_mm": torch.where(ra_valid, joints_err, math.nan),
        "joints_valid": ra_valid.to(dtype),
        "joints_pa_err_mm": torch.where(pa_valid[:, None], joints_pa_err, math.nan),
        "joints_pa_valid": pa_valid.to(dtype),
        **scale_translation_errors(pred_j, gt_j, j_valid, root_index),
    }

    have_verts = pred_verts_mm is not None and gt_verts_mm is not None
    num_verts = gt_verts_mm.shape[1] if gt_verts_mm is not None else NUM_VERTS
    if have_verts:
        pred_v = pred_verts_mm.to(dtype)
        gt_v = gt_verts_mm.to(dtype)
        if pred_v.shape != gt_v.shape or gt_v.shape[0] != batch or gt_v.shape[-1] != 3:
            raise ValueError(f"verts: pred {tuple(pred_v.shape)} and gt {tuple(gt_v.shape)} must both be [B,V,3]")
        v_valid = _bool_mask(verts_valid, (batch,), device)
    else:
        v_valid = torch.zeros(batch, dtype=torch.bool, device=device)
    v_ra_valid = v_valid & root_valid
    verts_err = torch.full((batch, num_verts), math.nan, dtype=dtype, device=device)
    verts_pa_err = verts_err.clone()
    hits = torch.zeros(batch, 2, len(F_THRESHOLDS_MM), dtype=torch.int64, device=device)
    f_ok = torch.zeros(batch, dtype=torch.bool, device=device)
    if bool(v_valid.any()):
        root_offset = pred_root - gt_root
        for start in range(0, batch, _CHUNK_SAMPLES):
            part = slice(start, start + _CHUNK_SAMPLES)
            pred_part, gt_part = pred_v[part], gt_v[part]
            verts_err[part] = _squared_norm(pred_part - gt_part - root_offset[part]).sqrt()
            aligned = _procrustes_aligned(pred_part, gt_part, v_valid[part])
            to_own_sq = _squared_norm(aligned - gt_part)
            verts_pa_err[part] = to_own_sq.sqrt()
            # a non-finite prediction gives NaN F-scores, not misses
            usable = v_valid[part] & torch.isfinite(to_own_sq).all(dim=1)
            f_ok[part] = usable
            if bool(usable.all()):
                hits[part] = hits_within(aligned, gt_part, to_own_sq, F_THRESHOLDS_MM)
            elif bool(usable.any()):
                hits[part][usable] = hits_within(aligned[usable], gt_part[usable], to_own_sq[usable], F_THRESHOLDS_MM)
    errors["verts_err_mm"] = torch.where(v_ra_valid[:, None], verts_err, math.nan)
    errors["verts_valid"] = v_ra_valid.to(dtype)
    errors["verts_pa_err_mm"] = torch.where(v_valid[:, None], verts_pa_err, math.nan)
    errors["verts_pa_valid"] = v_valid.to(dtype)
    shares = torch.where(f_ok[:, None, None], hits.to(dtype) / num_verts, math.nan)
    for k, threshold in enumerate(F_THRESHOLDS_MM):
        errors[f"precision_{_threshold_key(threshold)}"] = shares[:, 0, k]
        errors[f"recall_{_threshold_key(threshold)}"] = shares[:, 1, k]
    return errors


def _valid_mask(errors: dict[str, torch.Tensor], key: str, err: torch.Tensor) -> torch.Tensor:
    """The 0/1 validity under `key` ([B] or [B,K]) as a bool mask shaped like `err` [B,K]."""
    mask = errors[key] > 0.5
    return (mask[:, None] if mask.dim() == 1 else mask).expand_as(err)


def _per_keypoint_mean(err: torch.Tensor, valid: torch.Tensor) -> torch.Tensor:
    """Mean over valid samples per keypoint [K] (NaN for a keypoint without data)."""
    count = valid.sum(dim=0)
    total = torch.where(valid, err, torch.zeros_like(err)).sum(dim=0)
    return torch.where(count > 0, total / count.clamp(min=1), torch.full_like(total, math.nan))


def _mean_over_keypoints(per_keypoint: torch.Tensor, valid: torch.Tensor) -> float:
    has_data = valid.any(dim=0)
    if not bool(has_data.any()):
        return math.nan
    return float(per_keypoint[has_data].mean())


def _auc_scores(err: torch.Tensor) -> torch.Tensor:
    """Each error's contribution to the normalised trapezoid integral of the PCK curve.

    PCK(t) is a mean of indicators [e <= t] and the trapezoid rule is linear, so the AUC of a set of
    errors is the mean of this per-error score: the integral of one indicator step, which is the
    sum of the trapezoid weights of the thresholds t >= e.
    """
    thresholds = torch.as_tensor(AUC_THRESHOLDS_MM, dtype=err.dtype, device=err.device)
    steps = thresholds[1:] - thresholds[:-1]
    weights = torch.zeros_like(thresholds)
    weights[:-1] += steps / 2
    weights[1:] += steps / 2
    tail = torch.cat([weights.flip(0).cumsum(0).flip(0), weights.new_zeros(1)]) / weights.sum()
    # First threshold >= e: the thresholds are evenly spaced, so an estimate off by at most one step,
    # then one exact correction each way against the thresholds themselves (as searchsorted would give).
    count = thresholds.numel()
    table = torch.cat([thresholds.new_full((1,), -math.inf), thresholds, thresholds.new_full((1,), math.inf)])
    first = ((err.nan_to_num(0.0) - thresholds[0]) / steps[0]).ceil_().clamp_(0, count).long()
    first += (table[first + 1] < err).long()
    first -= (table[first] >= err).long()
    return torch.where(torch.isnan(err), err, tail[first])


def _keypoint_metric(errors: dict[str, torch.Tensor], err_key: str, valid_key: str, score=None) -> float:
    """Mean over keypoints of each keypoint's mean over its valid samples (the official EvalUtil) of
    the errors under `err_key`, or of their `score(err)` when given (`_auc_scores`: the AUC)."""
    err = errors[err_key]
    valid = _valid_mask(errors, valid_key, err)
    return _mean_over_keypoints(_per_keypoint_mean(err if score is None else score(err), valid), valid)


def _f_score(errors: dict[str, torch.Tensor], threshold_mm: float) -> float:
    valid = errors["verts_pa_valid"] > 0.5
    if not bool(valid.any()):
        return math.nan
    p = errors[f"precision_{_threshold_key(threshold_mm)}"][valid]
    r = errors[f"recall_{_threshold_key(threshold_mm)}"][valid]
    f = torch.where(p + r > 0, 2 * p * r / (p + r).clamp(min=1e-300), torch.zeros_like(p))
    f = torch.where(torch.isnan(p + r), p + r, f)  # a non-finite prediction stays visible
    return float(f.mean())


def summarize(errors: dict[str, torch.Tensor]) -> dict[str, float]:
    """Reported metrics from (gathered) `per_sample_errors` output; errors in mm, AUC and F in [0,1].

    Returns: mpjpe, mpvpe, pa_mpjpe, pa_mpvpe, st_mpjpe, f_5mm, f_15mm, auc_j, auc_v (floats, NaN when no
    sample has the data) and num_samples (int). AUCs are on the Procrustes-aligned errors.
    """
    return {
        "mpjpe": _keypoint_metric(errors, "joints_err_mm", "joints_valid"),
        "mpvpe": _keypoint_metric(errors, "verts_err_mm", "verts_valid"),
        "pa_mpjpe": _keypoint_metric(errors, "joints_pa_err_mm", "joints_pa_valid"),
        "pa_mpvpe": _keypoint_metric(errors, "verts_pa_err_mm", "verts_pa_valid"),
        "st_mpjpe": _keypoint_metric(errors, "joints_st_err_mm", "joints_st_valid"),
        "f_5mm": _f_score(errors, 5.0),
        "f_15mm": _f_score(errors, 15.0),
        "auc_j": _keypoint_metric(errors, "joints_pa_err_mm", "joints_pa_valid", _auc_scores),
        "auc_v": _keypoint_metric(errors, "verts_pa_err_mm", "verts_pa_valid", _auc_scores),
        "num_samples": int(errors["joints_err_mm"].shape[0]),
    }


def per_joint_errors_mm(errors: dict[str, torch.Tensor], aligned: bool = True) -> torch.Tensor:
    """Mean error per joint [21] in mm (Procrustes-aligned by default; NaN for a joint without data)."""
    err_key, valid_key = ("joints_pa_err_mm", "joints_pa_valid") if aligned else ("joints_err_mm", "joints_valid")
    err = errors[err_key]
    return _per_keypoint_mean(err, _valid_mask(errors, valid_key, err))


def metrics_for_json(metrics: dict) -> dict:
    """Copy of a (nested) metrics dict with NaN floats replaced by None, since JSON has no NaN."""
    out = {}
    for key, value in metrics.items():
        if isinstance(value, dict):
            out[key] = metrics_for_json(value)
        elif isinstance(value, float) and not math.isfinite(value):
            out[key] = None
        else:
            out[key] = value
    return out

