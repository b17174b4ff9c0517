"""`utnet score`: the official HO3D protocol on a submission file, against an independent per-sample
numpy/scipy implementation; `utnet eval --split evaluation` then `utnet score` on its pred.json gives
eval's numbers; bad files are one line, exit 2; both outputs record their provenance."""
from __future__ import annotations

import hashlib
import json
import math
import zipfile

import numpy as np
import pytest
import torch
from scipy.spatial.transform import Rotation

from conftest import run_cli
from test_engine import tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from test_metrics import METRIC_KEYS, _Keypoints, reference
from utnet.engine import metrics as M

N = 9
HO3D_MIDDLE_MCP = 4  # HO3D order: wrist, index1-3, middle1 (joint 4), ...


def _gt_and_prediction(seed=0):
    """HO3D-format gt and a noisy similarity-moved prediction ([N,21,3], [N,778,3]; OpenGL metres, HO3D order)."""
    rng = np.random.default_rng(seed)
    xyz = rng.normal(scale=0.04, size=(N, 21, 3)) + [0.0, 0.0, -0.5]
    verts = rng.normal(scale=0.04, size=(N, 778, 3)) + xyz[:, :1]
    R = Rotation.from_rotvec(rng.normal(scale=0.2, size=(N, 3))).as_matrix()
    s = rng.uniform(0.9, 1.1, (N, 1, 1))
    t = rng.normal(scale=0.015, size=(N, 1, 3))

    def move(x):
        return np.einsum("nij,nkj->nki", R, x - xyz[:, :1]) * s + xyz[:, :1] + t + rng.normal(scale=0.004, size=x.shape)

    return xyz, verts, move(xyz), move(verts)


def _write_root(root, xyz, verts):
    root.mkdir(parents=True, exist_ok=True)
    (root / "evaluation.txt").write_text("".join(f"EV{i // 4}/{i % 4:04d}\n" for i in range(len(xyz))))
    (root / "evaluation_xyz.json").write_text(json.dumps(xyz.tolist()))
    (root / "evaluation_verts.json").write_text(json.dumps(verts.tolist()))
    return root


def _reference_scores(xyz, verts, pred_xyz, pred_verts):
    """The official eval.py's computations per sample, in the file's own frame and order (mm)."""
    gt_j, gt_v, p_j, p_v = (np.asarray(a) * 1000.0 for a in (xyz, verts, pred_xyz, pred_verts))
    scores = reference(p_j, gt_j, p_v, gt_v)
    st, raw_j, raw_v = _Keypoints(21), _Keypoints(21), _Keypoints(778)
    for i in range(len(gt_j)):
        pred = p_j[i].copy()  # align_sc_tr: scale by the wrist -> middle MCP bone, then onto the gt root
        s = np.linalg.norm(pred[HO3D_MIDDLE_MCP] - pred[0])
        pred = (pred / s if s > 0 else pred) * np.linalg.norm(gt_j[i, HO3D_MIDDLE_MCP] - gt_j[i, 0])
        st.feed(gt_j[i], pred - pred[:1] + gt_j[i, :1], np.ones(21))
        raw_j.feed(gt_j[i], p_j[i], np.ones(21))
        raw_v.feed(gt_v[i], p_v[i], np.ones(778))
    scores["st_mpjpe"] = st.measures()[0]
    scores["unaligned_mpjpe"], scores["unaligned_mpvpe"] = raw_j.measures()[0], raw_v.measures()[0]
    return scores


def _ok(proc):
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


def test_score_equals_the_per_sample_reference_and_records_its_provenance(tmp_path):
    xyz, verts, pred_xyz, pred_verts = _gt_and_prediction()
    root = _write_root(tmp_path / "ho3d", xyz, verts)
    pred = tmp_path / "sub" / "pred.json"
    pred.parent.mkdir()
    pred.write_text(json.dumps([pred_xyz.tolist(), pred_verts.tolist()]))
    proc = run_cli("score", pred, "--root", root)
    _ok(proc)
    scores = json.loads((tmp_path / "sub" / "scores.json").read_text())
    expected = _reference_scores(xyz, verts, pred_xyz, pred_verts)
    for key in (*METRIC_KEYS, "st_mpjpe", "unaligned_mpjpe", "unaligned_mpvpe"):
        assert scores[key] == pytest.approx(expected[key], abs=1e-6), key
        assert f"{key:<16}{scores[key]:>10.4f}" in proc.stdout
    assert scores["num_samples"] == N
    # the alignments matter here: the three joint errors differ
    assert scores["pa_mpjpe"] < scores["st_mpjpe"] < scores["unaligned_mpjpe"]
    prov = scores["provenance"]
    assert prov["prediction"] == {"path": str(pred.resolve()), "sha256": hashlib.sha256(pred.read_bytes()).hexdigest()}
    assert prov["data_root"] == str(root.resolve())
    assert prov["ground_truth"]["evaluation_verts.json"] == hashlib.sha256(
        (root / "evaluation_verts.json").read_bytes()).hexdigest()

    zipped = tmp_path / "pred.zip"  # the same submission zipped, scores written elsewhere
    with zipfile.ZipFile(zipped, "w") as archive:
        archive.write(pred, arcname="pred.json")
    _ok(run_cli("score", zipped, "--root", root, "--output-dir", tmp_path / "zip_scores"))
    from_zip = json.loads((tmp_path / "zip_scores" / "scores.json").read_text())
    assert {k: v for k, v in from_zip.items() if k != "provenance"} == {k: v for k, v in scores.items() if k != "provenance"}


def test_st_mpjpe_in_the_batched_metrics_follows_validity_and_a_zero_bone():
    """The eval metric (canonical order): the scale bone is wrist -> middle1; a sample without that gt
    joint does not count; a zero-length predicted bone leaves the prediction unscaled (as eval.py)."""
    rng = np.random.default_rng(1)
    gt = rng.normal(scale=40.0, size=(3, 21, 3)) + [0.0, 0.0, 500.0]
    pred = gt * 1.3 + 7.0  # a scaled, moved copy: st-aligned exactly, but not root-aligned
    pred[2] = gt[2] + 5.0
    pred[2, M.MIDDLE_MCP_INDEX] = pred[2, 0]  # zero bone: unscaled, moved onto the root: error 0
    valid = np.ones((3, 21))
    valid[1, M.MIDDLE_MCP_INDEX] = 0
    errors = M.per_sample_errors(torch.from_numpy(pred), torch.from_numpy(gt), joints_valid=torch.from_numpy(valid))
    assert errors["joints_st_valid"][1].sum() == 0 and errors["joints_st_valid"][0].sum() == 21
    assert errors["joints_st_err_mm"][0].abs().max() < 1e-9
    np.testing.assert_allclose(errors["joints_st_err_mm"][2, M.MIDDLE_MCP_INDEX].item(),
                               np.linalg.norm(gt[2, 0] - gt[2, M.MIDDLE_MCP_INDEX]))
    out = M.summarize(errors)
    assert math.isfinite(out["st_mpjpe"]) and out["mpjpe"] > 1.0


def _bad(tmp_path, name, payload=None, raw=None):
    path = tmp_path / name
    if raw is not None:
        path.write_bytes(raw)
    elif payload is not None:
        path.write_text(json.dumps(payload))
    return path


def test_bad_input_is_one_line_naming_the_file_exit_2(tmp_path, capsys):
    xyz, verts, pred_xyz, pred_verts = _gt_and_prediction()
    root = _write_root(tmp_path / "ho3d", xyz, verts)
    nan_xyz = pred_xyz.copy()
    nan_xyz[3, 5, 1] = np.nan
    no_json = tmp_path / "nojson.zip"
    with zipfile.ZipFile(no_json, "w") as archive:
        archive.writestr("predictions.json", "[]")
    cases = [
        (_bad(tmp_path, "short.json", [pred_xyz[:-1].tolist(), pred_verts[:-1].tolist()]), "8 entries, but"),
        (_bad(tmp_path, "uneven.json", [pred_xyz.tolist(), pred_verts[:-1].tolist()]), "9 entries but verts_list 8"),
        (_bad(tmp_path, "swapped.json", [pred_verts.tolist(), pred_xyz.tolist()]), "the lists are swapped"),
        (_bad(tmp_path, "joints20.json", [pred_xyz[:, :20].tolist(), pred_verts.tolist()]), "expected [21, 3]"),
        (_bad(tmp_path, "nan.json", [nan_xyz.tolist(), pred_verts.tolist()]), "xyz_list entry 3 holds non-finite"),
        (_bad(tmp_path, "one.json", [pred_xyz.tolist()]), "expected [xyz_list, verts_list]"),
        (_bad(tmp_path, "broken.json", raw=b"[[[0.1, 0.2"), "cannot read"),
        (no_json, "the zip holds no pred.json"),
        (tmp_path / "missing.json", "prediction file not found"),
    ]
    for path, message in cases:  # the CLI's main in this process (a subprocess each would take minutes)
        code, line = _main("score", path, "--root", root, "--output-dir", tmp_path / "out", capsys=capsys)
        assert code == 2 and line.startswith(f"utnet score: {path}: ") and message in line, (path.name, line)
    assert not (tmp_path / "out").exists()
    proc = run_cli("score", cases[4][0], "--root", root)  # and once as a user runs it
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr
    assert proc.stderr.startswith(f"utnet score: {cases[4][0]}: xyz_list entry 3 holds non-finite")

    good = _bad(tmp_path, "good.json", [pred_xyz.tolist(), pred_verts.tolist()])
    (root / "evaluation_verts.json").unlink()
    code, line = _main("score", good, "--root", root, capsys=capsys)
    assert code == 2 and line == f"utnet score: {root / 'evaluation_verts.json'}: not found (the released HO3D evaluation ground truth)"
    (root / "evaluation.txt").write_text("EV0/0000\n")
    code, line = _main("score", good, "--root", root, capsys=capsys)
    assert code == 2 and line.startswith(f"utnet score: {root / 'evaluation_xyz.json'}: shape [9, 21, 3], expected [1, K, 3]")
    code, line = _main("score", good, "--root", tmp_path / "nowhere", capsys=capsys)
    assert code == 2 and line == f"utnet score: --root {tmp_path / 'nowhere'}: no such directory"


def _main(*args, capsys):
    """`utnet ARGS` through the CLI's main in this process: (exit code, the one stderr line)."""
    from utnet.cli import main

    code = main([str(a) for a in args])
    err = capsys.readouterr().err.strip()
    assert err.count("\n") == 0 and "Traceback" not in err, err
    return code, err


def test_eval_then_score_reproduces_eval_and_both_record_provenance(tiny_data, tmp_path):  # noqa: F811
    """A checkpoint of a freshly built model (no training needed to compare two scorers)."""
    from safetensors.torch import save_model

    from utnet.config import config_to_yaml, load_config
    from utnet.model import build_model

    config = write_config(tmp_path, tiny_data)
    cfg = load_config(config)
    torch.manual_seed(0)
    checkpoint = tmp_path / "run" / "checkpoints" / "step_00000007"
    checkpoint.mkdir(parents=True)
    save_model(build_model(cfg), str(checkpoint / "model.safetensors"))
    (checkpoint / "utnet_checkpoint.json").write_text(json.dumps({"step": 7}))
    proc = run_cli("eval", "--config", config, "--checkpoint", checkpoint, "--split", "evaluation",
                   "--output-dir", tmp_path / "eval")
    _ok(proc)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    proc = run_cli("score", tmp_path / "eval" / "pred.json", "--root", tiny_data)
    _ok(proc)
    scores = json.loads((tmp_path / "eval" / "scores.json").read_text())
    refined = metrics["refined"]
    assert scores["num_samples"] == refined["num_samples"] == metrics["num_samples"]
    for key in (*METRIC_KEYS, "st_mpjpe"):
        # pred.json holds micrometres: mm errors agree to ~1e-3 mm; a rare F/AUC threshold crossing moves
        # a share by 1/(778 N)
        assert scores[key] == pytest.approx(refined[key], abs=1e-2 if "mp" in key else 1e-3), key
    assert math.isfinite(refined["st_mpjpe"]) and scores["pa_mpjpe"] <= scores["st_mpjpe"]
    prov = metrics["provenance"]
    assert prov["checkpoint"] == {"path": str(checkpoint.resolve()), "step": 7, "weights": "model.safetensors",
                                  "weights_sha256": hashlib.sha256((checkpoint / "model.safetensors").read_bytes()).hexdigest()}
    assert prov["config_sha256"] == hashlib.sha256(config_to_yaml(cfg).encode()).hexdigest()
    assert prov["data_root"] == str(tiny_data.resolve())
    assert scores["provenance"]["prediction"]["path"] == str((tmp_path / "eval" / "pred.json").resolve())
