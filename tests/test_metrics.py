"""HO3D metrics against an independent numpy/scipy computation, the submission writer, the visuals."""
import json
import math
import zipfile

import numpy as np
import pytest
import torch
from scipy.linalg import orthogonal_procrustes
from scipy.spatial import cKDTree
from scipy.spatial.transform import Rotation

from utnet.engine import metrics as M
from utnet.engine import nearest as N
from utnet.engine import submission as S
from utnet.engine import visualize as V
from utnet.geometry import flip_opengl_opencv, procrustes_align
from utnet.joints import CANONICAL_NAMES, CANONICAL_TO_HO3D, HO3D_TO_CANONICAL

METRIC_KEYS = ("mpjpe", "mpvpe", "pa_mpjpe", "pa_mpvpe", "f_5mm", "f_15mm", "auc_j", "auc_v")


def _hands(n, seed=0, noise=4.0, num_verts=150):
    """Random gt (joints [n,21,3], verts [n,V,3], mm, ~0.5 m from the camera) and noisy similarity predictions."""
    rng = np.random.default_rng(seed)
    gt_j = rng.normal(scale=40.0, size=(n, 21, 3)) + [0.0, 0.0, 500.0]
    gt_v = rng.normal(scale=40.0, size=(n, num_verts, 3)) + gt_j[:, :1]
    R = Rotation.from_rotvec(rng.normal(scale=0.2, size=(n, 3))).as_matrix()
    s = rng.uniform(0.9, 1.1, (n, 1, 1))
    t = rng.normal(scale=15.0, size=(n, 1, 3))

    def move(x):
        return np.einsum("nij,nkj->nki", R, x - gt_j[:, :1]) * s + gt_j[:, :1] + t + rng.normal(scale=noise, size=x.shape)

    return move(gt_j), gt_j, move(gt_v), gt_v


def _t(*arrays):
    return [torch.from_numpy(np.asarray(a)) for a in arrays]


# ------------------------------------------------------------- independent reference (EvalUtil style)
def _ref_align(gt, pred):
    gt_c, pred_c = gt - gt.mean(0), pred - pred.mean(0)
    gt_n, pred_n = np.linalg.norm(gt_c) + 1e-8, np.linalg.norm(pred_c) + 1e-8
    R, s = orthogonal_procrustes(gt_c / gt_n, pred_c / pred_n)
    return (pred_c / pred_n) @ R.T * s * gt_n + gt.mean(0)


class _Keypoints:
    """Per-keypoint lists of errors, as the official EvalUtil keeps them."""

    def __init__(self, k):
        self.data = [[] for _ in range(k)]

    def feed(self, gt, pred, vis):
        for k, d in enumerate(np.linalg.norm(gt - pred, axis=1)):
            if vis[k]:
                self.data[k].append(d)

    def measures(self):
        t = np.linspace(0, 50, 100)
        norm = np.trapezoid(np.ones_like(t), t)
        used = [np.array(d) for d in self.data if len(d)]
        if not used:
            return math.nan, math.nan
        auc = [np.trapezoid([np.mean(d <= x) for x in t], t) / norm for d in used]
        return float(np.mean([d.mean() for d in used])), float(np.mean(auc))


def _ref_f(gt, pred, th):
    d1 = cKDTree(gt).query(pred)[0]
    d2 = cKDTree(pred).query(gt)[0]
    p, r = np.mean(d1 < th), np.mean(d2 < th)
    return 2 * p * r / (p + r) if p + r > 0 else 0.0


def reference(pred_j, gt_j, pred_v, gt_v, vis=None):
    n = len(gt_j)
    vis = np.ones(gt_j.shape[:2], bool) if vis is None else vis
    ra_j, pa_j, ra_v, pa_v = _Keypoints(21), _Keypoints(21), _Keypoints(gt_v.shape[1]), _Keypoints(gt_v.shape[1])
    f5, f15 = [], []
    for i in range(n):
        ra_j.feed(gt_j[i] - gt_j[i, 0], pred_j[i] - pred_j[i, 0], vis[i])
        ra_v.feed(gt_v[i] - gt_j[i, 0], pred_v[i] - pred_j[i, 0], np.ones(gt_v.shape[1]))
        pa_j.feed(gt_j[i], _ref_align(gt_j[i], pred_j[i]), np.ones(21) * vis[i].all())
        aligned = _ref_align(gt_v[i], pred_v[i])
        pa_v.feed(gt_v[i], aligned, np.ones(gt_v.shape[1]))
        f5.append(_ref_f(gt_v[i], aligned, 5.0))
        f15.append(_ref_f(gt_v[i], aligned, 15.0))
    (mpjpe, _), (mpvpe, _) = ra_j.measures(), ra_v.measures()
    (pa_mpjpe, auc_j), (pa_mpvpe, auc_v) = pa_j.measures(), pa_v.measures()
    return dict(mpjpe=mpjpe, mpvpe=mpvpe, pa_mpjpe=pa_mpjpe, pa_mpvpe=pa_mpvpe, f_5mm=np.mean(f5),
                f_15mm=np.mean(f15), auc_j=auc_j, auc_v=auc_v)


def _summary(pred_j, gt_j, pred_v, gt_v, **kw):
    return M.summarize(M.per_sample_errors(*_t(pred_j, gt_j, pred_v, gt_v), **kw))


# ------------------------------------------------------------------------------ metrics
def test_matches_independent_reference():
    data = _hands(5, seed=1)
    ours, ref = _summary(*data), reference(*data)
    assert ours["num_samples"] == 5
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key
    # realistic regime: neither F-score is trivially 0 or 1
    assert 0.05 < ours["f_5mm"] < 0.95 and ours["pa_mpjpe"] > 1.0


def test_float32_inputs_match_too():
    data = [a.astype(np.float32) for a in _hands(3, seed=2)]
    ours, ref = _summary(*data), reference(*[a.astype(np.float64) for a in data])
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-6), key


def test_identical_prediction():
    _, gt_j, _, gt_v = _hands(3)
    out = _summary(gt_j, gt_j, gt_v, gt_v)
    for key in ("mpjpe", "mpvpe", "pa_mpjpe", "pa_mpvpe"):
        assert out[key] == pytest.approx(0.0, abs=1e-6)
    assert out["f_5mm"] == out["f_15mm"] == 1.0
    # Procrustes leaves ~1e-9 mm, so PCK at the 0 mm threshold is 0, as in the official eval
    assert 0.994 < out["auc_j"] <= 1.0 and 0.994 < out["auc_v"] <= 1.0
    root_aligned = M.per_sample_errors(*_t(gt_j, gt_j))
    assert M.summarize(root_aligned)["mpjpe"] == 0.0


def test_similarity_transform_is_removed_by_procrustes_only():
    _, gt_j, _, gt_v = _hands(3, seed=3)
    R = Rotation.from_rotvec([0.3, -0.2, 0.5]).as_matrix()
    move = lambda x: (x - 7.0) @ R.T * 1.08 + [10.0, -20.0, 30.0]  # noqa: E731
    out = _summary(move(gt_j), gt_j, move(gt_v), gt_v)
    assert out["pa_mpjpe"] < 1e-6 and out["pa_mpvpe"] < 1e-6 and out["f_5mm"] == 1.0
    assert out["mpjpe"] > 5.0 and out["mpvpe"] > 5.0


def test_translation_only_gives_zero_root_aligned_error():
    pred_j, gt_j, pred_v, gt_v = _hands(3, seed=4)
    shift = np.array([[[35.0, -12.0, 80.0]]])
    out = _summary(gt_j + shift, gt_j, gt_v + shift, gt_v)
    assert out["mpjpe"] < 1e-9 and out["mpvpe"] < 1e-9 and out["pa_mpjpe"] < 1e-6
    # the vertices are centred on the JOINT root: a vertex-only shift is a root-aligned error
    assert _summary(gt_j, gt_j, gt_v + shift, gt_v)["mpvpe"] == pytest.approx(np.linalg.norm(shift), rel=1e-9)


def test_partial_joint_masks_follow_the_official_per_keypoint_means():
    data = _hands(6, seed=5)
    rng = np.random.default_rng(0)
    vis = rng.uniform(size=(6, 21)) > 0.3
    vis[:, 0] = True
    vis[1] = True
    ours = _summary(*data, joints_valid=torch.from_numpy(vis))
    ref = reference(*data, vis=vis)
    for key in METRIC_KEYS:
        assert ours[key] == pytest.approx(ref[key], abs=1e-9), key


def test_evaluation_split_without_ground_truth_gives_nan_and_none():
    pred_j, gt_j, pred_v, _ = _hands(4, seed=6)
    root_only = torch.zeros(4, 21)
    root_only[:, 0] = 1
    errors = M.per_sample_errors(*_t(pred_j, gt_j, pred_v), None, joints_valid=root_only)
    assert all(isinstance(v, torch.Tensor) and v.shape[0] == 4 for v in errors.values())
    out = M.summarize(errors)
    assert out["num_samples"] == 4
    assert all(math.isnan(out[k]) for k in METRIC_KEYS)
    as_json = json.loads(json.dumps(M.metrics_for_json({"refined": out})))
    assert as_json["refined"]["mpjpe"] is None and as_json["refined"]["num_samples"] == 4


def test_mixed_validity_equals_the_valid_part_alone():
    pred_j, gt_j, pred_v, gt_v = _hands(6, seed=7)
    valid = torch.ones(6, 21)
    valid[3:, 1:] = 0
    has_verts = torch.tensor([1, 1, 1, 0, 0, 0])
    mixed = _summary(pred_j, gt_j, pred_v, gt_v, joints_valid=valid, verts_valid=has_verts)
    alone = _summary(pred_j[:3], gt_j[:3], pred_v[:3], gt_v[:3])
    for key in METRIC_KEYS:
        assert mixed[key] == pytest.approx(alone[key], abs=1e-12), key


def test_non_finite_prediction_is_not_hidden():
    pred_j, gt_j, pred_v, gt_v = _hands(3, seed=8)
    pred_j[1, 4, 0] = np.nan
    pred_v[2, 10, 1] = np.inf
    out = _summary(pred_j, gt_j, pred_v, gt_v)
    assert math.isnan(out["mpjpe"]) and math.isnan(out["pa_mpjpe"])
    assert math.isnan(out["pa_mpvpe"]) and math.isnan(out["f_5mm"])


def test_gathered_halves_equal_the_whole():
    data = _hands(7, seed=9)
    whole = _summary(*data)
    halves = [M.per_sample_errors(*_t(*(a[s] for a in data))) for s in (slice(0, 4), slice(4, 7))]
    gathered = {k: torch.cat([h[k] for h in halves]) for k in halves[0]}
    assert M.summarize(gathered) == pytest.approx(whole, abs=1e-12)
    assert M.per_joint_errors_mm(gathered).shape == (21,)


def _brute_force_hits(pred, gt, thresholds=M.F_THRESHOLDS_MM):
    """[n, 2, T] counts by an all-pairs search: pred within t of some gt (strict <), and the reverse."""
    d = pred[:, :, None] - gt[:, None]
    sq = d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]
    return np.stack([np.stack([(sq.min(axis=2) < t * t).sum(1), (sq.min(axis=1) < t * t).sum(1)], 1)
                     for t in thresholds], -1)


def _fast_hits(pred, gt):
    pred, gt = _t(pred, gt)
    return N.hits_within(pred, gt, N.squared_norm(pred - gt), M.F_THRESHOLDS_MM).numpy()


def _near_threshold_pairs(n, num_verts, seed):
    """gt hands far from the origin and predictions whose nearest gt vertex is about 5 or 15 mm away,
    many exactly at 5 or 15 mm (a squared distance of exactly 25 or 225: a tie, which is a miss)."""
    rng = np.random.default_rng(seed)
    # elongated along x, so that x is the principal axis the search projects on
    gt = np.round(rng.normal(scale=[120.0, 40.0, 30.0], size=(n, num_verts, 3)) * 8) / 8 + [300.0, -200.0, 900.0]
    offsets = np.array([[5, 0, 0], [0, -5, 0], [3, 4, 0], [0, 0, 15], [9, -12, 0], [0, 12, 9],
                        [4.875, 0, 0], [-4.875, 0.5, 0], [-14.875, 0, 1]], dtype=float)
    choice = rng.integers(len(offsets), size=(n, num_verts))
    nudge = 1.0 + rng.choice([-1e-9, 1e-9, -1e-15, 3e-16], size=(n, num_verts, 1))
    step = offsets[choice] * np.where(rng.uniform(size=(n, num_verts, 1)) < 0.5, 1.0, nudge)
    pred = gt[:, rng.permutation(num_verts)] + step  # a shuffled correspondence: the own vertex is no hint
    keep = rng.uniform(size=(n, num_verts)) < 0.5
    pred = np.where(keep[..., None], gt + step, pred)
    return pred, gt


@pytest.mark.parametrize("num_verts, block", [(7, None), (150, None), (778, None), (150, 1)])
def test_fast_f_score_search_equals_brute_force_at_and_near_the_thresholds(num_verts, block, monkeypatch):
    if block is not None:  # one vertex per block: every window edge is tested
        monkeypatch.setattr(N, "_BLOCK", block)
    pred, gt = _near_threshold_pairs(3, num_verts, seed=num_verts)
    d = pred[:, :, None] - gt[:, None]
    nearest = (d[..., 0] * d[..., 0] + d[..., 1] * d[..., 1] + d[..., 2] * d[..., 2]).min(axis=2)
    assert (nearest == 25.0).any() and (nearest == 225.0).any()  # exact ties are in the data
    assert (np.abs(nearest - 25.0) < 1e-6).sum() > (nearest == 25.0).sum()  # and near misses / near hits
    np.testing.assert_array_equal(_fast_hits(pred, gt), _brute_force_hits(pred, gt))
    # the reverse roles (gt -> pred ties) too
    np.testing.assert_array_equal(_fast_hits(gt, pred), _brute_force_hits(gt, pred))
    # part of the prediction far away: windows without any gt vertex
    pred[:, : num_verts // 2] += [0.0, 0.0, 400.0]
    np.testing.assert_array_equal(_fast_hits(pred, gt), _brute_force_hits(pred, gt))


def test_fast_f_score_search_equals_brute_force_on_realistic_hands():
    pred_j, gt_j, pred_v, gt_v = _hands(4, seed=12, noise=3.0, num_verts=778)
    aligned = M._procrustes_aligned(*_t(pred_v, gt_v), torch.ones(4, dtype=torch.bool)).numpy()
    counts = _brute_force_hits(aligned, gt_v)
    np.testing.assert_array_equal(_fast_hits(aligned, gt_v), counts)
    assert 0 < counts[:, :, 0].min() and counts[:, :, 0].max() < 778  # neither trivially 0 nor all


def test_procrustes_wrapper_aligns_the_asked_samples_and_leaves_nan_elsewhere():
    """`_procrustes_aligned` is geometry.procrustes_align (checked against scipy, with reflections and
    degenerate samples, in test_geometry.py) on the samples marked ok and NaN on the others."""
    pred_j, gt_j, _, _ = _hands(3, seed=13)
    pred, gt = _t(pred_j, gt_j)
    out = M._procrustes_aligned(pred, gt, torch.tensor([True, False, True]))
    assert torch.isnan(out[1]).all()
    torch.testing.assert_close(out[[0, 2]], procrustes_align(pred[[0, 2]], gt[[0, 2]]), rtol=0, atol=1e-12)


def test_auc_scores_at_the_thresholds_follow_the_trapezoid_of_pck():
    thresholds = M.AUC_THRESHOLDS_MM
    err = np.concatenate([thresholds, np.nextafter(thresholds, -1), np.nextafter(thresholds, 99), [60.0, 0.0]])
    norm = np.trapezoid(np.ones_like(thresholds), thresholds)
    expected = [np.trapezoid((e <= thresholds).astype(float), thresholds) / norm for e in err]
    np.testing.assert_allclose(M._auc_scores(torch.from_numpy(err)).numpy(), expected, rtol=0, atol=1e-15)


# --------------------------------------------------------------------------- submission
def test_submission_round_trip_frame_order_and_root(tmp_path):
    pred_j, gt_j, pred_v, _ = _hands(4, seed=10, num_verts=778)
    root = gt_j[:, 0] + [3.0, -4.0, 5.0]
    json_path, zip_path = S.write_ho3d_submission(tmp_path / "sub", pred_j, pred_v, root)
    xyz, verts = S.load_ho3d_prediction(json_path)
    assert xyz.shape == (4, 21, 3) and verts.shape == (4, 778, 3)
    assert (xyz[..., 2] < 0).all() and (verts[..., 2] < 0).all()  # OpenGL: the hand is at negative z
    np.testing.assert_allclose(xyz[:, 0], flip_opengl_opencv(root) / 1000.0, atol=1e-6)  # root, metres
    # HO3D order: index 16 is the thumb tip (canonical 4), 17 the index tip (canonical 8)
    back_j = flip_opengl_opencv(xyz[:, HO3D_TO_CANONICAL]) * 1000.0
    back_v = flip_opengl_opencv(verts) * 1000.0
    offset = (root - pred_j[:, 0])[:, None]
    np.testing.assert_allclose(back_j, pred_j + offset, atol=1e-3)
    np.testing.assert_allclose(back_v, pred_v + offset, atol=1e-3)
    np.testing.assert_allclose(xyz[:, 16], xyz[:, CANONICAL_TO_HO3D.index(4)])
    np.testing.assert_allclose(back_j[:, 4], pred_j[:, 4] + offset[:, 0], atol=1e-3)
    with zipfile.ZipFile(zip_path) as archive:
        assert archive.namelist() == ["pred.json"]
    zxyz, zverts = S.load_ho3d_prediction(zip_path)
    np.testing.assert_array_equal(zxyz, xyz)
    np.testing.assert_array_equal(zverts, verts)
    assert sorted(p.name for p in (tmp_path / "sub").iterdir()) == ["pred.json", "pred.zip"]


def test_submission_rejects_a_hand_behind_the_camera_and_bad_shapes(tmp_path):
    pred_j, gt_j, pred_v, _ = _hands(2, seed=11)
    with pytest.raises(ValueError, match="z >= 0"):
        S.write_ho3d_submission(tmp_path, pred_j, pred_v, -gt_j[:, 0])
    with pytest.raises(ValueError, match="gt_root_cam_mm"):
        S.write_ho3d_submission(tmp_path, pred_j, pred_v, gt_j[:1, 0])
    assert not (tmp_path / "pred.json").exists()


# ------------------------------------------------------------------------------ visuals
def _grid_mesh(n=12):
    """A small triangulated square (verts [n*n,3] mm at z = 400, faces)."""
    ys, xs = np.mgrid[0:n, 0:n]
    verts = np.stack([xs.ravel() * 6.0 - 33, ys.ravel() * 6.0 - 33, 400.0 + xs.ravel()], -1)
    quads = (ys[:-1, :-1] * n + xs[:-1, :-1]).ravel()
    faces = np.concatenate([np.stack([quads, quads + 1, quads + n], 1), np.stack([quads + 1, quads + n + 1, quads + n], 1)])
    return verts, faces


def test_denormalize_and_depth_images():
    rng = np.random.default_rng(0)
    rgb01 = rng.uniform(size=(3, 20, 10))
    normalized = torch.from_numpy((rgb01 - V.IMAGENET_MEAN_RGB[:, None, None]) / V.IMAGENET_STD_RGB[:, None, None])
    bgr = V.denormalize_rgb(normalized)
    assert bgr.shape == (20, 10, 3) and bgr.dtype == np.uint8
    np.testing.assert_allclose(bgr[..., ::-1].transpose(2, 0, 1) / 255.0, rgb01, atol=1 / 255)
    depth = torch.linspace(0, 1, 200).reshape(1, 20, 10)
    image = V.depth_to_bgr(depth)
    assert image.shape == (20, 10, 3) and (image[0, 0] == 0).all() and len(np.unique(image.reshape(-1, 3), axis=0)) > 20


def test_skeleton_and_mesh_drawing():
    canvas = np.zeros((64, 48, 3), np.uint8)
    keypoints = np.random.default_rng(0).uniform(5, 40, size=(21, 2))
    V.draw_skeleton(canvas, keypoints, (0, 255, 0))
    assert (canvas[..., 1] > 0).sum() > 100 and canvas[..., [0, 2]].max() == 0
    verts, faces = _grid_mesh()
    image = np.full((100, 100, 3), 50, np.uint8)
    px = verts[:, :2] + 50
    V.draw_mesh(image, px, faces, alpha=0.5, verts_depth=verts[:, 2])
    assert (image[50, 50] != 50).any() and (image[2, 2] == 50).all()  # inside covered, outside untouched


def test_prediction_panel_grid_and_chart():
    H, W = 64, 48
    verts, faces = _grid_mesh()
    K = np.array([[300.0, 0, W / 2], [0, 300.0, H / 2], [0, 0, 1]])
    rng = np.random.default_rng(2)
    sample = {
        "rgb": torch.zeros(3, H, W), "depth": torch.rand(1, H, W),
        "keypoints_2d": torch.from_numpy(rng.uniform(-0.4, 0.4, (21, 2))), "keypoints_2d_valid": torch.ones(21),
    }
    pred = {"keypoints_2d": torch.from_numpy(rng.uniform(-0.4, 0.4, (21, 2))), "verts_3d": torch.from_numpy(verts)}
    panel = V.prediction_panel(sample, pred, torch.from_numpy(faces), torch.from_numpy(K))  # the model's camera
    assert panel.shape == (H, 2 * W, 3) and panel.dtype == np.uint8
    green = (panel[..., 1] > 150) & (panel[..., 0] < 80) & (panel[..., 2] < 80)
    red = (panel[..., 2] > 150) & (panel[..., 0] < 80) & (panel[..., 1] < 80)
    assert green[:, :W].sum() > 20 and red[:, :W].sum() > 20 and green[:, W:].sum() > 20
    grid = V.prediction_grid([panel] * 5, cols=2)
    assert grid.shape == (3 * (H + 4) + 4, 2 * (2 * W + 4) + 4, 3)
    chart = V.per_joint_error_chart(np.linspace(2, 20, 21), CANONICAL_NAMES)
    bars = (chart[..., 0] > 150) & (chart[..., 2] < 100)
    assert chart.ndim == 3 and chart.shape[1] > 21 * 20 and bars.sum() > 2000
    # a larger error draws a taller bar
    column = lambda i: bars[:, 70 + i * 34 + 10].sum()  # noqa: E731
    assert column(20) > column(0) > 0
