"""`utnet synth` writes HO3D's format and round-trips through the reader; `utnet doctor` passes on
good data and diagnoses joints multiplied by 1000 twice and pre-centred ground truth."""
from __future__ import annotations

import hashlib
import json
import pickle
import shutil

import numpy as np
import pytest
import torch

from utnet.config import ExperimentConfig
from utnet.geometry import axis_angle_to_matrix

TRAIN_KEYS = {"handPose": (48,), "handBeta": (10,), "handTrans": (3,), "handJoints3D": (21, 3), "camMat": (3, 3)}
EVAL_KEYS = {"handJoints3D": (3,), "handBoundingBox": (4,), "camMat": (3, 3)}
OBJECT_KEYS = {"objRot", "objTrans", "objCorners3D", "objCorners3DRest", "objName", "objLabel", "camIDList"}
V3_KEYS = {"handVertContact", "handVertDist", "handVertIntersec", "handVertObjSurfProj"}


@pytest.fixture(scope="module")
def synth_root(tmp_path_factory):
    from utnet.data import write_synthetic

    root = tmp_path_factory.mktemp("syn") / "set"
    summary = write_synthetic(root, sequences=2, frames=3, seed=5)
    return root, summary


def cfg_for(root, **data):
    return ExperimentConfig.model_validate(
        {"data": {"root": str(root), "val_sequences": ["SYN11"], "image_size": [128, 96], **data}})


def md5(path):
    return hashlib.md5(path.read_bytes()).hexdigest()


def test_synth_writes_ho3d_format(synth_root):
    root, summary = synth_root
    assert summary["train_frames"] == 6 and summary["evaluation_frames"] == 3
    assert (root / "train.txt").read_text().split() == [f"SYN{s}/{f:04d}" for s in (10, 11) for f in range(3)]
    eval_names = (root / "evaluation.txt").read_text().split()
    assert eval_names == [f"SYE10/{f:04d}" for f in range(3)]
    with open(root / "train" / "SYN10" / "meta" / "0001.pkl", "rb") as f:
        raw = f.read()
    assert raw[:2] == b"\x80\x02"  # pickle protocol 2
    meta = pickle.loads(raw, encoding="latin1")
    for key, shape in TRAIN_KEYS.items():
        assert np.asarray(meta[key]).shape == shape, key
    assert OBJECT_KEYS <= set(meta)
    assert np.asarray(meta["handJoints3D"])[:, 2].max() < 0  # OpenGL: the hand at negative z
    import cv2

    rgb = cv2.imread(str(root / "train" / "SYN10" / "rgb" / "0001.png"))
    depth = cv2.imread(str(root / "train" / "SYN10" / "depth" / "0001.png"), cv2.IMREAD_UNCHANGED)
    assert rgb.shape == (480, 640, 3) and depth.shape == (480, 640, 3) and depth.dtype == np.uint8
    depth_m = (depth[..., 2].astype(np.int32) + 256 * depth[..., 1].astype(np.int32)) * 0.00012498664727900177
    hand_z = -np.asarray(meta["handJoints3D"])[:, 2]
    uv = (np.asarray(meta["handJoints3D"]) * [1, -1, -1]) @ np.asarray(meta["camMat"]).T
    u, v = (uv[0, :2] / uv[0, 2]).round().astype(int)
    window = depth_m[v - 3:v + 4, u - 3:u + 4]
    assert np.abs(np.median(window[window > 0]) - hand_z[0]) < 0.03  # the wrist's depth, 3 cm of skin/noise
    assert 0.3 < hand_z.mean() < 0.85
    with open(root / "evaluation" / "SYE10" / "meta" / "0002.pkl", "rb") as f:
        emeta = pickle.load(f, encoding="latin1")
    for key, shape in EVAL_KEYS.items():
        assert np.asarray(emeta[key]).shape == shape, key
    assert "handPose" not in emeta and OBJECT_KEYS <= set(emeta)
    xyz = np.asarray(json.loads((root / "evaluation_xyz.json").read_text()))
    verts = np.asarray(json.loads((root / "evaluation_verts.json").read_text()))
    assert xyz.shape == (3, 21, 3) and verts.shape == (3, 778, 3)
    np.testing.assert_allclose(xyz[2, 0], np.asarray(emeta["handJoints3D"]), atol=1e-6)
    assert json.loads((root / "synthetic_info.json").read_text())["mano_source"] == "stand-in"


def test_synth_round_trips_through_reader(synth_root):
    from utnet.data import build_dataset
    from utnet.mano import ManoLayer

    root, _ = synth_root
    layer = ManoLayer()
    val = build_dataset(cfg_for(root), "val")
    assert len(val) == 3 and len(build_dataset(cfg_for(root), "train")) == 3
    batch = torch.utils.data.default_collate([val[i] for i in range(3)])
    root_rot = axis_angle_to_matrix(batch["mano_global_orient"])[:, None]  # [3,3] axis-angle would be ambiguous
    _, joints_mm = layer.mesh_mm(root_rot, batch["mano_hand_pose"], batch["mano_betas"], batch["mano_transl"])
    assert (joints_mm - batch["joints_3d"]).norm(dim=-1).max() < 0.1  # mm: parameters and joints agree
    assert (batch["keypoints_2d"].abs() <= 0.5).all()
    ev = build_dataset(cfg_for(root), "evaluation")
    s = ev[2]
    assert s["joints_3d_valid"].sum() == 21 and s["verts_3d"].shape == (778, 3)
    joints_from_verts = layer.joints_from_vertices(s["verts_3d"][None].double())[0]
    assert (joints_from_verts - s["joints_3d"].double()).norm(dim=-1).max() < 1.0


def test_synth_is_deterministic(synth_root, tmp_path):
    from utnet.data import write_synthetic

    root, _ = synth_root
    again = write_synthetic(tmp_path / "again", sequences=2, frames=3, seed=5)
    other = write_synthetic(tmp_path / "other", sequences=2, frames=1, seed=6)
    for rel in ("train/SYN11/rgb/0002.png", "train/SYN11/depth/0002.png", "train/SYN10/meta/0000.pkl", "evaluation_xyz.json"):
        assert md5(root / rel) == md5(tmp_path / "again" / rel), rel
    assert md5(root / "train/SYN10/rgb/0000.png") != md5(tmp_path / "other" / "train/SYN10/rgb/0000.png")
    assert again["train_frames"] == 6 and other["train_frames"] == 2


def test_synth_v3_and_refusals(tmp_path):
    from utnet.data import write_synthetic
    from utnet.errors import UserError

    write_synthetic(tmp_path / "v3", version="v3", sequences=1, frames=1, seed=0)
    assert (tmp_path / "v3" / "train" / "SYN10" / "rgb" / "0000.jpg").is_file()
    with open(tmp_path / "v3" / "train" / "SYN10" / "meta" / "0000.pkl", "rb") as f:
        assert V3_KEYS <= set(pickle.load(f, encoding="latin1"))
    with pytest.raises(UserError, match="already holds a data set"):
        write_synthetic(tmp_path / "v3", sequences=1, frames=1)


def _rewrite_joints(root, fn):
    for pkl in root.glob("train/*/meta/*.pkl"):
        with open(pkl, "rb") as f:
            meta = pickle.load(f, encoding="latin1")
        meta["handJoints3D"] = fn(np.asarray(meta["handJoints3D"], dtype=np.float64)).astype(np.float32)
        with open(pkl, "wb") as f:
            pickle.dump(meta, f, protocol=2)


def _by_name(checks):
    return {c.name: c for c in checks}


def test_doctor_passes_on_good_data_and_diagnoses_bad(synth_root, tmp_path):
    from utnet.data.doctor import run_checks

    root, _ = synth_root
    good = _by_name(run_checks(cfg_for(root), "train", 3, log=lambda m: None))
    assert all(c.status == "PASS" for c in good.values()), [c.line() for c in good.values()]
    assert set(good) >= {"rgb range", "depth range", "joint units", "absolute root", "bone lengths", "2D in crop",
                         "projection", "mano reproduces joints"}

    mm = tmp_path / "mm"
    shutil.copytree(root, mm)
    _rewrite_joints(mm, lambda j: j * 1000.0)  # a writer that stored millimetres where HO3D has metres
    checks = _by_name(run_checks(cfg_for(mm), "train", 3, log=lambda m: None))
    assert checks["joint units"].status == "FAIL" and "multiplied by 1000 twice" in checks["joint units"].message
    assert checks["mano reproduces joints"].status == "FAIL"

    centred = tmp_path / "centred"
    shutil.copytree(root, centred)
    _rewrite_joints(centred, lambda j: j - j[:1])  # root-relative ground truth
    checks = _by_name(run_checks(cfg_for(centred), "train", 3, log=lambda m: None))
    assert checks["absolute root"].status == "FAIL" and "root-centred" in checks["absolute root"].message
    assert checks["joint units"].status == "PASS"  # the hand size is still right: the diagnosis is the root


def test_cli_synth_then_doctor(tmp_path, cli):
    out = tmp_path / "cli_set"
    r = cli("synth", "--out", out, "--sequences", "2", "--frames", "2", "--seed", "1")
    assert r.returncode == 0, r.stderr
    assert "synthetic stand-in" in r.stdout and (out / "train.txt").is_file()
    args = ["--set", f"data.root={out}", "--set", "data.val_sequences=[SYN11]"]
    r = cli("doctor", *args, "--samples", "2")
    assert r.returncode == 0, r.stdout + r.stderr
    assert r.stdout.count("PASS") >= 7 and "FAIL" not in r.stdout
    _rewrite_joints(out, lambda j: j - j[:1])
    r = cli("doctor", *args, "--samples", "2")
    assert r.returncode == 1 and "FAIL  absolute root" in r.stdout
    r = cli("doctor", "--set", f"data.root={tmp_path / 'nothing'}")
    assert r.returncode == 2 and "data.root" in r.stderr


def test_ensure_dataset_writes_the_synthetic_set_once(tmp_path):
    from utnet.data import ensure_dataset

    root = tmp_path / "auto"
    cfg = cfg_for(root, synthetic={"enabled": True, "sequences": 2, "frames": 1, "seed": 3})
    lines = []
    assert ensure_dataset(cfg, log=lines.append) == root
    assert "no train.txt" in lines[0] and "2 sequences x 1 frames" in lines[0]
    assert lines[1].startswith("wrote 2 train + 1 evaluation synthetic frames") and " s" in lines[1]
    assert (root / "train.txt").read_text().split() == ["SYN10/0000", "SYN11/0000"]
    lines.clear()
    ensure_dataset(cfg, log=lines.append)  # present now: nothing written, nothing said
    assert lines == []
