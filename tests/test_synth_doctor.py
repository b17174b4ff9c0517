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

    rgb = cv2.imread(str(root / "train" / "SYN10" / "rgb" / "0001.jpg"))
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
    assert not list(root.glob("train/*/rgb/*.png"))  # RGB is JPEG in the v2 layout too
    frame_bytes = [sum(p.stat().st_size for p in (root / split / seq).glob(f"*/{frame}.*"))
                   for split in ("train", "evaluation")
                   for seq, frame in (line.split("/") for line in (root / f"{split}.txt").read_text().split())]
    assert len(frame_bytes) == 9 and max(frame_bytes) < 0.8e6  # rgb + depth + meta of every frame (was 1.85 MB)


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
    for rel in ("train/SYN11/rgb/0002.jpg", "train/SYN11/depth/0002.png", "train/SYN10/meta/0000.pkl", "evaluation_xyz.json"):
        assert md5(root / rel) == md5(tmp_path / "again" / rel), rel
    assert md5(root / "train/SYN10/rgb/0000.jpg") != md5(tmp_path / "other" / "train/SYN10/rgb/0000.jpg")
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


def test_ensure_dataset_refuses_a_synthetic_set_written_with_other_settings(tmp_path, cli):
    """A run asking for 3 synthetic sequences must not train on the 2 written earlier at its data.root."""
    from utnet.data import ensure_dataset
    from utnet.errors import UserError

    root = tmp_path / "auto"
    written = {"enabled": True, "sequences": 2, "frames": 1, "seed": 3}
    ensure_dataset(cfg_for(root, synthetic=written), log=lambda *_: None)
    ensure_dataset(cfg_for(root, synthetic=written, version="v2"), log=lambda *_: None)  # the same: accepted
    ensure_dataset(cfg_for(root, synthetic={**written, "enabled": False, "sequences": 5}))  # not synthetic's to check
    for key, value in (("sequences", 3), ("frames", 2), ("seed", 4)):
        with pytest.raises(UserError) as err:
            ensure_dataset(cfg_for(root, synthetic={**written, key: value}), log=lambda *_: None)
        message = str(err.value)
        assert message.startswith(f"data.synthetic.{key}: {value}, but data.root {root} holds a synthetic set "
                                  f"written with {key} {written[key]}"), message
    with pytest.raises(UserError, match=r"^data\.version: v3, but data\.root .* written with version v2"):
        ensure_dataset(cfg_for(root, synthetic=written, version="v3"), log=lambda *_: None)
    assert (root / "train.txt").read_text().split() == ["SYN10/0000", "SYN11/0000"]  # nothing rewritten

    r = cli("train", "--output-dir", tmp_path / "run", "--set", f"data.root={root}",
            "--set", "data.val_sequences=[SYN11]", "--set", "data.synthetic.seed=3",
            "--set", "data.synthetic.frames=1", "--set", "data.synthetic.sequences=3")
    assert r.returncode == 2 and "Traceback" not in r.stderr, r.stderr[-2000:]
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("utnet train: data.synthetic.sequences: 3, but data.root"), r.stderr


def test_synth_frame_images_round_trip(tmp_path):
    """The depth PNG the writer makes decodes exactly to HO3D's encoding of the depth it was given (an 8-bit
    three-channel PNG, compressed); the RGB JPEG decodes to the image it was given up to JPEG's loss."""
    import cv2

    from utnet.data.ho3d import DEPTH_UNIT_M, decode_depth_m, encode_depth_m
    from utnet.data.synth import write_frame_images

    rng = np.random.default_rng(0)
    yy, xx = np.mgrid[0:480, 0:640]
    bgr8 = np.clip(np.stack([xx // 3, yy // 2, (xx + yy) // 5], axis=-1) + rng.normal(0, 3, (480, 640, 3)), 0, 255).astype(np.uint8)
    # a tilted plane 0.9-1.3 m with sensor-like noise and holes, and a random-depth block (incompressible)
    depth_m = (0.9 + 0.0004 * xx + 0.0003 * yy + rng.normal(0, 0.004, (480, 640))).astype(np.float32)
    depth_m[:, ::5] = 0.0  # no measurement
    depth_m[100:200, 300:500] = rng.uniform(0.0, 8.0, size=(100, 200))
    seq = tmp_path / "seq"
    for d in ("rgb", "depth"):
        (seq / d).mkdir(parents=True)
    write_frame_images(seq, "0007", bgr8, depth_m)
    depth_png = seq / "depth" / "0007.png"
    assert depth_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and depth_png.read_bytes()[24:26] == bytes([8, 2])  # 8-bit RGB
    depth_bgr = cv2.imread(str(depth_png), cv2.IMREAD_UNCHANGED)
    np.testing.assert_array_equal(depth_bgr, encode_depth_m(depth_m))
    assert np.abs(decode_depth_m(depth_bgr) - depth_m).max() <= 0.51 * DEPTH_UNIT_M  # rounded to HO3D's unit
    assert depth_png.stat().st_size < 0.6 * 640 * 480 * 3  # compressed (stored: 0.92 MB)
    jpg = seq / "rgb" / "0007.jpg"
    assert jpg.read_bytes()[:3] == b"\xff\xd8\xff" and not (seq / "rgb" / "0007.png").exists()
    decoded = cv2.imread(str(jpg)).astype(np.float64)
    assert decoded.shape == (480, 640, 3) and np.abs(decoded - bgr8).mean() < 3.0  # lossy, like HO3D v3's .jpg
    assert jpg.stat().st_size < 0.25 * 640 * 480 * 3


def test_render_depth_coverage_and_occlusion():
    """Two fronto-parallel squares: the nearer one hides the other, depth is the plane's own, and
    the covered pixels are the pixel centres inside each projected square."""
    from utnet.data.render import box_mesh, shade_meshes

    K = np.array([[500.0, 0.0, 80.0], [0.0, 500.0, 60.0], [0.0, 0.0, 1.0]])
    near = box_mesh([0.02, 0.02, 0.001], np.eye(3), [0.0, 0.0, 0.5], [1.0, 0.0, 0.0])      # 40 px wide, z 0.499
    far = box_mesh([0.03, 0.015, 0.001], np.eye(3), [0.0125, 0.0125, 0.6], [0.0, 1.0, 0.0])  # to the lower right
    pix, color, depth_px, mesh_px = shade_meshes([near, far], K, (120, 160), cull_back=True)
    assert (np.diff(pix) > 0).all() and pix.min() >= 0 and pix.max() < 120 * 160  # each covered pixel once, in order
    assert color.dtype == np.float32 and color.shape == (len(pix), 3) and depth_px.shape == mesh_px.shape == pix.shape
    # the full images, as synth composes them: background first, then the covered pixels
    image = np.full((120, 160, 3), 0.5, np.float32)
    depth = np.full((120, 160), 2.0)
    mesh_id = np.full((120, 160), -1)
    image.reshape(-1, 3)[pix] = color
    depth.reshape(-1)[pix] = depth_px
    mesh_id.reshape(-1)[pix] = mesh_px
    v, u = np.mgrid[0:120, 0:160]
    in_near = (np.abs(u - 80) <= 20) & (np.abs(v - 60) <= 20)  # front face x,y in +-0.02 m at z 0.499
    x_far, y_far = (u - 80) * 0.599 / 500, (v - 60) * 0.599 / 500
    in_far = (np.abs(x_far - 0.0125) < 0.03) & (np.abs(y_far - 0.0125) < 0.015) & ~in_near
    inside = (np.abs(u - 80) < 20) & (np.abs(v - 60) < 20)  # away from the square's edges
    np.testing.assert_array_equal(mesh_id[inside], 0)
    assert (mesh_id[in_near] == 0).mean() > 0.99 and (mesh_id[in_far] == 1).mean() > 0.97
    assert ((mesh_id >= 0) == (in_near | in_far)).mean() > 0.995  # only edge pixels may differ
    np.testing.assert_allclose(depth[inside], 0.499, atol=1e-6)
    np.testing.assert_allclose(depth[in_far & (np.abs(x_far - 0.0125) < 0.029)], 0.599, atol=1e-6)
    assert (image[inside][:, 0] > 0.2).all() and (image[inside][:, 1:] == 0).all()  # lit red


def _sequence_files(seq_dir):
    return {p.relative_to(seq_dir).as_posix(): md5(p) for p in sorted(seq_dir.rglob("*")) if p.is_file()}


@pytest.mark.parametrize("min_frames", [1, None])
def test_write_synthetic_renders_big_sets_on_every_core_and_small_ones_here(tmp_path, monkeypatch, min_frames):
    """The process count write_synthetic hands to _render_jobs: one per core (at most one per
    sequence) once the set reaches PARALLEL_MIN_FRAMES frames, else 1. The render itself runs here
    (processes=1), so no worker is spawned."""
    import os

    from utnet.data import synth

    asked = []
    render_jobs = synth._render_jobs

    def recording(jobs, processes, mano_model_path):
        asked.append((len(jobs), processes))
        return render_jobs(jobs, 1, mano_model_path)

    monkeypatch.setattr(synth, "_render_jobs", recording)
    if min_frames is not None:
        monkeypatch.setattr(synth, "PARALLEL_MIN_FRAMES", min_frames)
    synth.write_synthetic(tmp_path / "syn", sequences=4, frames=1, seed=0)  # 4 train + 1 evaluation sequences
    expected = min(os.cpu_count() or 1, 5) if min_frames == 1 else 1
    assert asked == [(5, expected)]


def test_synth_worker_process_writes_the_same_files(tmp_path):
    """A spawned worker (synth's own initializer and job loop, as `_render_jobs` starts them) writes byte
    for byte what the calling process writes for the same sequence, and returns the same ground truth."""
    import multiprocessing
    import os

    from utnet.data import synth

    def job(root):
        return (str(root), "train", "SYN10", (4, 0, 0), 3, "v3")  # v3: JPEG images and contact fields too

    (here_result,), rendered_by = synth._render_jobs([job(tmp_path / "here")], 1, None)
    assert rendered_by == 1
    ctx = multiprocessing.get_context("spawn")
    with ctx.Pool(1, initializer=synth._init_worker, initargs=(None, ctx.Value("i", 0), [job(tmp_path / "worker")])) as pool:
        (k, worker_pid, worker_result), = pool.apply(synth._run_jobs)  # the caller takes no job: the worker renders it
    assert k == 0 and worker_pid != os.getpid()
    here = _sequence_files(tmp_path / "here" / "train" / "SYN10")
    assert len(here) == 3 * 3  # 3 frames x (rgb, depth, meta)
    assert _sequence_files(tmp_path / "worker" / "train" / "SYN10") == here
    (here_records, _), (worker_records, _) = here_result, worker_result
    assert [r["name"] for r in worker_records] == [r["name"] for r in here_records] == [f"SYN10/{f:04d}" for f in range(3)]
    for ours, theirs in zip(here_records, worker_records):
        np.testing.assert_array_equal(theirs["joints_gl"], ours["joints_gl"])
        np.testing.assert_array_equal(theirs["verts_gl"], ours["verts_gl"])
    # the pool as write_synthetic runs it: whoever renders which job, results come back in job order
    other = (str(tmp_path / "pool"), "evaluation", "SYE10", (4, 1, 0), 1, "v3")
    (pool_result, other_result), rendered_by = synth._render_jobs([job(tmp_path / "pool"), other], 2, None)
    assert rendered_by in (1, 2) and _sequence_files(tmp_path / "pool" / "train" / "SYN10") == here
    assert [r["name"] for r in pool_result[0]] == [r["name"] for r in here_records]
    assert [r["name"] for r in other_result[0]] == ["SYE10/0000"]
