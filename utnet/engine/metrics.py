"""Hand-mesh metrics by the official HO3D protocol (REFERENCE.md section 3), batched on the device.

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
  F = 2PR / (P + R) (0 when P + R = 0); the mean over samples.

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

from utnet.geometry import procrustes_align
from utnet.joints import CANONICAL_NAMES, NUM_VERTS, ROOT_INDEX

AUC_THRESHOLDS_MM = np.linspace(0.0, 50.0, 100)
F_THRESHOLDS_MM = (5.0, 15.0)  # ascending: the F-score search reaches as far as the first (smallest)
# Samples per pass over the vertices: keeps one pass's arrays in cache.
_CHUNK_SAMPLES = 128
# Predicted vertices per block of the F-score's windowed search.
_BLOCK = 32
# Groups of blocks of similar window width, one padded matrix product each.
_WIDTH_GROUPS = 8
# The scale bone of `st_mpjpe` ends at the middle finger's first joint (HO3D order: joint 4).
MIDDLE_MCP_INDEX = CANONICAL_NAMES.index("middle1")


def _threshold_key(threshold_mm: float) -> str:
    return f"{threshold_mm:g}mm"


def _bool_mask(mask, shape, device) -> torch.Tensor:
    if mask is None:
        return torch.ones(shape, dtype=torch.bool, device=device)
    mask = torch.as_tensor(mask, device=device)
    return torch.broadcast_to(mask.to(torch.bool) if mask.dtype == torch.bool else mask > 0.5, shape)


def _squared_norm(d: torch.Tensor) -> torch.Tensor:
    """|d|^2 over the last dimension (3) [...], always summed as x*x + y*y + z*z.

    One fixed rounding: a vertex's distance to its own gt vertex and the exact nearest-neighbour
    re-check of the F-score both use it, so the two agree to the last bit on a tie.
    """
    x, y, z = d.unbind(-1)
    return x * x + y * y + z * z


def _procrustes_aligned(pred: torch.Tensor, gt: torch.Tensor, ok: torch.Tensor) -> torch.Tensor:
    """`utnet.geometry.procrustes_align` (official HO3D similarity Procrustes) of pred [B,N,3] onto gt
    [B,N,3] for the samples where `ok` [B]; NaN for the other samples and for non-finite ones."""
    return procrustes_align(torch.where(ok[:, None, None], pred, math.nan), gt)


def _sort_order(values: torch.Tensor) -> torch.Tensor:
    """Indices [c,n] int64 that sort each row of `values` [c,n] (float32, finite) ascending.

    On the CPU one numpy sort of int64 keys (order-preserving integer image of the float, index in
    the low bits) replaces an argsort: several times faster for these short rows.
    """
    if values.device.type != "cpu":
        return values.argsort(dim=1)
    index_bits = max(1, (values.shape[1] - 1).bit_length())
    bits = values.contiguous().numpy().view(np.int32).astype(np.int64)
    bits ^= (bits >> 63) & 0x7FFFFFFF  # negative floats: reverse their order
    keys = (bits << index_bits) | np.arange(values.shape[1])
    keys.sort(axis=1)
    return torch.from_numpy(keys & ((1 << index_bits) - 1))


def _f_score_hits(pred: torch.Tensor, gt: torch.Tensor, pred_to_own_sq: torch.Tensor) -> torch.Tensor:
    """Per sample, how many predicted vertices have a gt vertex closer than each of `F_THRESHOLDS_MM`
    (strictly), and how many gt vertices have a predicted one: [c, 2, len(F_THRESHOLDS_MM)] int64.

    pred, gt: [c,V,3] finite, the same frame (mm), float64 (or the metric dtype); pred_to_own_sq [c,V]:
    `_squared_norm(pred - gt)`. Exactly the counts of a brute-force search over all pairs with
    `_squared_norm` distances, found without one:
    - `_window_minima`: nearest squared distances within the smallest (first) threshold's windows, float32.
    - A vertex's distance to its own counterpart is an upper bound: below a threshold it is a hit.
    - Every decision the float32 minimum cannot make for sure (within its rounding bound of a
      threshold, or a larger threshold not settled by the two bounds above) is made by an exact
      search over all vertices of that sample in the input dtype.
    """
    thresholds_sq = [t * t for t in F_THRESHOLDS_MM]
    pred_min, gt_min, pred_order, gt_order, tolerance = _window_minima(pred, gt, F_THRESHOLDS_MM[0])
    counts = torch.zeros(pred.shape[0], 2, len(thresholds_sq), dtype=torch.int64, device=pred.device)
    for side, (nearest, order, queries, targets) in enumerate(
            ((pred_min, pred_order, pred, gt), (gt_min, gt_order, gt, pred))):
        nearest = nearest.to(pred.dtype)
        own = pred_to_own_sq.gather(1, order)
        for k, t_sq in enumerate(thresholds_sq):
            hit = (own < t_sq) | (nearest < t_sq - tolerance)
            unsure = ~hit & (nearest < t_sq + tolerance) if k == 0 else ~hit
            sample, point = unsure.nonzero(as_tuple=True)
            if sample.numel():
                hit[sample, point] = _exact_nearest_sq(queries[sample, order[sample, point]], targets, sample) < t_sq
            counts[:, side, k] = hit.sum(dim=1)
    return counts


def _window_minima(pred: torch.Tensor, gt: torch.Tensor, reach_mm: float):
    """Nearest squared distances, exact below `reach_mm`, for the F-score (`_f_score_hits`).

    pred, gt: [c,V,3] finite, the same frame (mm). Both sets are projected on the principal axis of
    the gt and sorted. A block of `_BLOCK` consecutive predicted vertices only needs the gt vertices
    whose projection lies within `reach_mm` of the block's range (its window): every closer pair is
    inside. One float32 matrix product per block gives its block x window squared distances, and the
    minima of its rows and columns serve both directions.
    Returns pred_min [c,V] (each predicted vertex, in pred_order), gt_min [c,V] (in gt_order), both
    the minimum over a set of vertices of the other side that holds every one closer than reach_mm;
    pred_order, gt_order [c,V] (index of the vertex at each position); tolerance [c,1]: a bound of
    the rounding of the minima (float32 expansion), in the dtype of pred.
    """
    c, n, _ = pred.shape
    device = pred.device
    # float32 tiles unless float32 matmuls may round coarser than IEEE (the rounding bound assumes it)
    tile_dtype = torch.float32 if torch.get_float32_matmul_precision() == "highest" else pred.dtype
    centre = gt.mean(dim=1, keepdim=True)
    pred_c = (pred - centre).to(tile_dtype)
    gt_c = (gt - centre).to(tile_dtype)
    gt_cov = gt_c.transpose(1, 2) @ gt_c
    axis = torch.ones(c, 3, 1, dtype=tile_dtype, device=device)
    for _ in range(3):  # power iteration: any unit axis is correct, the principal one prunes best
        axis = gt_cov @ axis
        axis = axis / axis.norm(dim=1, keepdim=True).clamp(min=1e-30)
    pred_x, gt_x = (pred_c @ axis)[..., 0].float(), (gt_c @ axis)[..., 0].float()
    pred_order, gt_order = _sort_order(pred_x).to(device), _sort_order(gt_x).to(device)
    # |x(p) - x(g)| <= |p - g| up to the rounding of the projections, which this margin covers
    reach = reach_mm + 1e-4 * (1 + torch.maximum(pred_x.abs().amax(dim=1), gt_x.abs().amax(dim=1)))

    blocks = -(-n // _BLOCK)
    padded = pred_order[:, torch.arange(blocks * _BLOCK, device=device).clamp(max=n - 1)]  # repeats the last
    offsets = (torch.arange(c, device=device) * n)[:, None]
    pred_s = pred_c.reshape(-1, 3).index_select(0, (padded + offsets).flatten()).reshape(c, -1, 3)
    gt_s = gt_c.reshape(-1, 3).index_select(0, (gt_order + offsets).flatten()).reshape(c, n, 3)
    pred_sq, gt_sq = _squared_norm(pred_s)[..., None], _squared_norm(gt_s)[..., None]
    # |p - g|^2 = [p, |p|^2, 1] . [-2g, 1, |g|^2]; a last row of +inf stands for "outside the window"
    pred_aug = torch.cat([pred_s, pred_sq, torch.ones_like(pred_sq)], -1).reshape(c * blocks, _BLOCK, 5)
    gt_aug = torch.cat([-2 * gt_s, torch.ones_like(gt_sq), gt_sq], -1).reshape(c * n, 5)
    gt_aug = torch.cat([gt_aug, gt_aug.new_tensor([[0.0, 0.0, 0.0, 0.0, math.inf]])])
    gt_xs = gt_x.gather(1, gt_order)
    pred_xs = pred_x.gather(1, padded)
    low = torch.searchsorted(gt_xs, pred_xs[:, ::_BLOCK] - reach[:, None])
    high = torch.searchsorted(gt_xs, pred_xs[:, _BLOCK - 1::_BLOCK] + reach[:, None], right=True)
    # Tiles padded to the widest window of their group: grouping blocks by width wastes little.
    low, count = (low + offsets).flatten(), (high - low).flatten()
    pred_min = torch.empty(c * blocks, _BLOCK, dtype=tile_dtype, device=device)
    gt_min = torch.full((c * n + 1,), math.inf, dtype=tile_dtype, device=device)
    for group in count.argsort().tensor_split(_WIDTH_GROUPS):
        width = int(count[group].max()) if len(group) else 0
        if not width:
            pred_min.index_fill_(0, group, math.inf)
            continue
        window = torch.arange(width, device=device)
        window = torch.where(window < count[group, None], low[group, None] + window, c * n).flatten()
        tiles = torch.bmm(pred_aug.index_select(0, group),
                          gt_aug.index_select(0, window).reshape(len(group), width, 5).transpose(1, 2))
        pred_min.index_copy_(0, group, tiles.amin(dim=2))
        gt_min.scatter_reduce_(0, window, tiles.amin(dim=1).flatten(), "amin")
    # rounding bound of the expanded form (about 8 units of |p|^2 + |g|^2; generous by 2x)
    tolerance = 16 * torch.finfo(tile_dtype).eps * (pred_sq.amax(dim=(1, 2)) + gt_sq.amax(dim=(1, 2)))
    return (pred_min.reshape(c, -1)[:, :n], gt_min[:-1].reshape(c, n), pred_order, gt_order,
            tolerance.to(pred.dtype)[:, None])


def _exact_nearest_sq(queries: torch.Tensor, targets: torch.Tensor, sample: torch.Tensor) -> torch.Tensor:
    """Squared distance (`_squared_norm`) of each query [q,3] to its nearest point of targets[sample] [q]
    (targets [c,V,3]), by brute force in pieces of a bounded size."""
    step = max(1, (1 << 20) // targets.shape[1])
    return torch.cat([_squared_norm(targets.index_select(0, sample[i:i + step]) - queries[i:i + step, None]).amin(dim=1)
                      for i in range(0, len(queries), step)])


def scale_translation_errors(pred_j: torch.Tensor, gt_j: torch.Tensor, j_valid: torch.Tensor,
                             root_index: int = ROOT_INDEX, bone_end: int = MIDDLE_MCP_INDEX) -> dict[str, torch.Tensor]:
    """Per-joint errors [B,21] after the official scale-translation alignment (module docstring) and
    their 0/1 validity [B,21]: valid joints of samples whose gt root and bone end are valid; NaN elsewhere.
    pred_j, gt_j: [B,21,3] mm, canonical order; j_valid [B,21] bool."""
    def bone(j):
        return _squared_norm(j[:, bone_end] - j[:, root_index]).sqrt()[:, None, None]

    pred_bone, gt_bone = bone(pred_j), bone(gt_j)
    scaled = torch.where(pred_bone > 0, pred_j / pred_bone.clamp(min=1e-300), pred_j) * gt_bone
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
                hits[part] = _f_score_hits(aligned, gt_part, to_own_sq)
            elif bool(usable.any()):
                hits[part][usable] = _f_score_hits(aligned[usable], gt_part[usable], to_own_sq[usable])
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

