"""Batched HO3D metrics (utnet.engine.metrics) against a per-sample numpy/scipy reference.

The reference follows the official HO3D eval.py protocol (docs/evaluation.md) one sample at a
time: root-aligned errors, scipy's orthogonal_procrustes alignment, F-scores with two cKDTrees,
PCK/AUC per keypoint with np.trapezoid. Both run on the same synthetic predictions: a hand-like
point cloud (palm ellipsoid and five bent finger tubes, 21 joints, 778 vertices, mm, camera frame)
and a prediction that is a perturbed similarity transform of it plus per-point noise.

    python benchmarks/bench_metrics.py [--samples 2000] [--threads 2]

Prints one JSON object as its last line:
{"batched_samples_per_s", "reference_samples_per_s", "speedup", "max_abs_diff_mm", ...,
 "batched_profile": {stage: share of the batched time}}. The profile comes from one extra batched run
under cProfile: the cumulative time of each stage function (utnet.engine.metrics, .nearest) over the run's total
(stages nest: `_polar_factor` is inside `procrustes_align` (utnet.geometry); `_window_minima` (with `_sort_order`) and
`_exact_nearest_sq` are inside `hits_within`; everything but `summarize` is inside `per_sample_errors`).
"""
from __future__ import annotations

import argparse
import cProfile
import json
import os
import pstats
import time

import numpy as np
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from utnet import geometry
from utnet.engine import metrics, nearest
from utnet.engine.metrics import per_sample_errors, summarize

MM_METRICS = ("mpjpe", "mpvpe", "pa_mpjpe", "pa_mpvpe")
UNITLESS_METRICS = ("f_5mm", "f_15mm", "auc_j", "auc_v")


# ---------------------------------------------------------------- synthetic hands
def _tube(rng, start, end, radius, n):
    """n points on the surface of a tube from start to end (mm)."""
    axis = end - start
    length = np.linalg.norm(axis)
    axis = axis / length
    helper = np.array([1.0, 0.0, 0.0]) if abs(axis[0]) < 0.9 else np.array([0.0, 1.0, 0.0])
    u = np.cross(axis, helper)
    u /= np.linalg.norm(u)
    v = np.cross(axis, u)
    t = rng.uniform(0, 1, n)[:, None]
    phi = rng.uniform(0, 2 * np.pi, n)[:, None]
    return start + t * axis * length + radius * (np.cos(phi) * u + np.sin(phi) * v)


def hand_like_sample(rng):
    """(joints [21,3], verts [778,3]) mm: canonical joint order, hand about 0.5 m in front of the camera."""
    palm = rng.normal(size=(300, 3))
    palm /= np.linalg.norm(palm, axis=1, keepdims=True)
    palm = palm * np.array([40.0, 45.0, 12.0]) + np.array([0.0, 45.0, 0.0])
    joints = [np.zeros(3)]
    verts = [palm]
    per_finger = [96, 96, 96, 95, 95]  # 300 + 478 = 778
    bases = [(-38, 25), (-20, 88), (0, 92), (18, 88), (34, 80)]  # thumb ... pinky (x, y)
    lengths = [65, 75, 82, 76, 62]
    for (x, y), length, n in zip(bases, lengths, per_finger):
        point = np.array([x, y, 0.0])
        direction = np.array([-0.6, 0.8, 0.0]) if x < -30 else np.array([x / 200.0, 1.0, 0.0])
        direction /= np.linalg.norm(direction)
        chain = [point]
        for _ in range(3):
            bend = Rotation.from_rotvec([rng.uniform(0, 0.8), 0, rng.uniform(-0.1, 0.1)]).as_matrix()
            direction = bend @ direction
            point = point + direction * length / 3
            chain.append(point)
        joints.extend(chain)
        counts = np.full(3, n // 3)
        counts[: n - counts.sum()] += 1
        verts.extend(_tube(rng, a, b, 8.0, c) for a, b, c in zip(chain[:-1], chain[1:], counts))
    joints = np.stack(joints)
    verts = np.concatenate(verts)
    R = Rotation.random(random_state=rng).as_matrix()
    t = np.array([0.0, 0.0, 500.0]) + rng.uniform(-80, 80, 3)
    return joints @ R.T + t, verts @ R.T + t


def make_predictions(num_samples, seed=0, noise_mm=5.0):
    """Ground truth and predictions: (pred_j [N,21,3], gt_j, pred_v [N,778,3], gt_v), float64 mm."""
    rng = np.random.default_rng(seed)
    gt_j, gt_v = zip(*(hand_like_sample(rng) for _ in range(num_samples)))
    gt_j, gt_v = np.stack(gt_j), np.stack(gt_v)
    R = Rotation.from_rotvec(rng.normal(scale=0.15, size=(num_samples, 3))).as_matrix()
    scale = rng.uniform(0.9, 1.1, (num_samples, 1, 1))
    shift = rng.normal(scale=20.0, size=(num_samples, 1, 3))
    root = gt_j[:, :1]

    def perturb(points):
        moved = np.einsum("nij,nkj->nki", R, points - root) * scale + root + shift
        return moved + rng.normal(scale=noise_mm, size=points.shape)

    return perturb(gt_j), gt_j, perturb(gt_v), gt_v


# ---------------------------------------------------------------- per-sample reference
def _align_w_scale(gt, pred):
    """Official-protocol Procrustes of one sample: pred [N,3] mapped onto gt [N,3]."""
    gt_mean, pred_mean = gt.mean(0), pred.mean(0)
    gt_c, pred_c = gt - gt_mean, pred - pred_mean
    gt_norm = np.linalg.norm(gt_c) + 1e-8
    pred_norm = np.linalg.norm(pred_c) + 1e-8
    gt_c, pred_c = gt_c / gt_norm, pred_c / pred_norm
    R, s = orthogonal_procrustes(gt_c, pred_c)
    return (pred_c @ R.T) * s * gt_norm + gt_mean


def _f_scores(gt, pred, thresholds):
    """F-score of one sample at each threshold (nearest neighbours by cKDTree, strict <)."""
    d_pred = cKDTree(gt).query(pred)[0]
    d_gt = cKDTree(pred).query(gt)[0]
    scores = []
    for threshold in thresholds:
        precision = np.mean(d_pred < threshold)
        recall = np.mean(d_gt < threshold)
        scores.append(2 * precision * recall / (precision + recall) if precision + recall > 0 else 0.0)
    return scores


def _auc(errors):
    """Mean over keypoints of the normalised trapezoid integral of each keypoint's PCK curve."""
    thresholds = np.linspace(0.0, 50.0, 100)
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    aucs = [np.trapezoid(np.mean(errors[:, k, None] <= thresholds, axis=0), thresholds) / norm
            for k in range(errors.shape[1])]
    return float(np.mean(aucs))


def reference_metrics(pred_j, gt_j, pred_v, gt_v):
    n = len(pred_j)
    j_err, v_err = np.empty(gt_j.shape[:2]), np.empty(gt_v.shape[:2])
    j_pa, v_pa = np.empty_like(j_err), np.empty_like(v_err)
    f5, f15 = np.empty(n), np.empty(n)
    for i in range(n):
        pred_root, gt_root = pred_j[i, 0], gt_j[i, 0]
        j_err[i] = np.linalg.norm((pred_j[i] - pred_root) - (gt_j[i] - gt_root), axis=1)
        v_err[i] = np.linalg.norm((pred_v[i] - pred_root) - (gt_v[i] - gt_root), axis=1)
        j_pa[i] = np.linalg.norm(_align_w_scale(gt_j[i], pred_j[i]) - gt_j[i], axis=1)
        verts_aligned = _align_w_scale(gt_v[i], pred_v[i])
        v_pa[i] = np.linalg.norm(verts_aligned - gt_v[i], axis=1)
        f5[i], f15[i] = _f_scores(gt_v[i], verts_aligned, (5.0, 15.0))
    return {
        "mpjpe": j_err.mean(0).mean(), "mpvpe": v_err.mean(0).mean(),
        "pa_mpjpe": j_pa.mean(0).mean(), "pa_mpvpe": v_pa.mean(0).mean(),
        "f_5mm": f5.mean(), "f_15mm": f15.mean(), "auc_j": _auc(j_pa), "auc_v": _auc(v_pa),
    }


def batched_metrics(pred_j, gt_j, pred_v, gt_v):
    errors = per_sample_errors(torch.from_numpy(pred_j), torch.from_numpy(gt_j),
                               torch.from_numpy(pred_v), torch.from_numpy(gt_v))
    return summarize(errors)


PROFILED_STAGES = ("per_sample_errors", "procrustes_align", "_polar_factor", "hits_within", "_window_minima",
                   "_sort_order", "_exact_nearest_sq", "summarize", "_auc_scores")


def batched_profile(data) -> dict[str, float]:
    """Share of one batched run's time spent in each stage function (utnet.engine.metrics and .nearest, utnet.geometry)."""
    profiler = cProfile.Profile()
    start = time.perf_counter()
    profiler.runcall(batched_metrics, *data)
    total = time.perf_counter() - start
    shares = {}
    for (filename, _, name), (_, _, _, cumulative, _) in pstats.Stats(profiler).stats.items():
        if filename in (metrics.__file__, nearest.__file__, geometry.__file__) and name in PROFILED_STAGES:
            shares[name] = shares.get(name, 0.0) + cumulative / total
    return {name: round(shares.get(name, 0.0), 3) for name in PROFILED_STAGES}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--threads", type=int, default=os.cpu_count())
    parser.add_argument("--repeats", type=int, default=3, help="best of this many runs for each side")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    data = make_predictions(args.samples)

    # Interleaved, best of `repeats`: the machine is shared, so both sides see the same load.
    batched_times, reference_times = [], []
    for _ in range(args.repeats):
        start = time.perf_counter()
        batched = batched_metrics(*data)
        batched_times.append(time.perf_counter() - start)
        start = time.perf_counter()
        reference = reference_metrics(*data)
        reference_times.append(time.perf_counter() - start)
    batched_s, reference_s = min(batched_times), min(reference_times)
    print("metric      batched      reference")
    for key in MM_METRICS + UNITLESS_METRICS:
        print(f"{key:10s} {batched[key]:12.6f} {reference[key]:12.6f}")
    result = {
        "batched_samples_per_s": round(args.samples / batched_s, 1),
        "reference_samples_per_s": round(args.samples / reference_s, 1),
        "speedup": round(reference_s / batched_s, 2),
        "max_abs_diff_mm": max(abs(batched[k] - reference[k]) for k in MM_METRICS),
        "max_abs_diff_f_auc": max(abs(batched[k] - reference[k]) for k in UNITLESS_METRICS),
        "batched_profile": batched_profile(data),
        "samples": args.samples,
        "threads": args.threads,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
