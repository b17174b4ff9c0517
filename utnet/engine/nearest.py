"""Windowed nearest-neighbour search for the F-score (utnet.engine.metrics): for each vertex of one set,
is some vertex of the other set closer than a threshold? Exact, without an all-pairs search.

Both sets are projected on one axis and sorted; a block of points only meets the points of the other set
whose projections lie within the threshold of the block's (its window), as float32 matrix products of
padded tiles. Where float32 rounding could flip a decision, an exact search in the input dtype decides.
"""
from __future__ import annotations

import math

import numpy as np
import torch

# Predicted vertices per block of the windowed search.
_BLOCK = 32
# Groups of blocks of similar window width, one padded matrix product each.
_WIDTH_GROUPS = 8


def squared_norm(d: torch.Tensor) -> torch.Tensor:
    """|d|^2 over the last dimension (3) [...], always summed as x*x + y*y + z*z.

    One fixed rounding: a vertex's distance to its own gt vertex and the exact nearest-neighbour
    re-check of `hits_within` both use it, so the two agree to the last bit on a tie.
    """
    x, y, z = d.unbind(-1)
    return x * x + y * y + z * z


def hits_within(pred: torch.Tensor, gt: torch.Tensor, pred_to_own_sq: torch.Tensor,
                thresholds_mm: tuple[float, ...]) -> torch.Tensor:
    """Per sample, how many predicted vertices have a gt vertex closer than each of `thresholds_mm`
    (strictly), and how many gt vertices have a predicted one: [c, 2, len(thresholds_mm)] int64.

    pred, gt: [c,V,3] finite, the same frame (mm), float64 (or the metric dtype); pred_to_own_sq [c,V]:
    `squared_norm(pred - gt)`; thresholds_mm ascending. Exactly the counts of a brute-force search over
    all pairs with `squared_norm` distances, found without one:
    - `_window_minima`: nearest squared distances within the smallest (first) threshold's windows, float32.
    - A vertex's distance to its own counterpart is an upper bound: below a threshold it is a hit.
    - Every decision the float32 minimum cannot make for sure (within its rounding bound of a
      threshold, or a larger threshold not settled by the two bounds above) is made by an exact
      search over all vertices of that sample in the input dtype.
    """
    thresholds_sq = [t * t for t in thresholds_mm]
    pred_min, gt_min, pred_order, gt_order, tolerance = _window_minima(pred, gt, thresholds_mm[0])
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
    """Nearest squared distances, exact below `reach_mm`, for the F-score (`hits_within`).

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
    pred_sq, gt_sq = squared_norm(pred_s)[..., None], squared_norm(gt_s)[..., None]
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
    """Squared distance (`squared_norm`) of each query [q,3] to its nearest point of targets[sample] [q]
    (targets [c,V,3]), by brute force in pieces of a bounded size."""
    step = max(1, (1 << 20) // targets.shape[1])
    return torch.cat([squared_norm(targets.index_select(0, sample[i:i + step]) - queries[i:i + step, None]).amin(dim=1)
                      for i in range(0, len(queries), step)])


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
