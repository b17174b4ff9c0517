"""Opening a file runs no code from it, and bad values in it are named: every entry point through the CLI.

A pickle's __reduce__ may name any importable function; the malicious files here name os.system to
create a marker file. Each entry point (HO3D meta via `train` / `doctor`, a MANO file via `train`,
`doctor`, `mano info`, `mano convert`, a checkpoint via `train --resume`) must refuse the file with one
line naming it and exit 2, and the marker must never appear. The runs are independent, so each group
runs its CLI calls concurrently.
"""
from __future__ import annotations

import json
import os
import pickle
import shutil
import subprocess
import sys

import numpy as np
import pytest
import torch

from conftest import REPO
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

VAL_SEQ, TRAIN_SEQ = "SYN12", "SYN10"  # test_engine's tiny set: SYN10, SYN11 train, SYN12 val
FAST = {"train": {"max_steps": 1, "eval_every": 0, "checkpoint_every": 1, "image_every": 0, "log_every": 1}}


class _Payload:
    """Unpickling this calls os.system: it creates `marker` (the proof that code ran)."""

    def __init__(self, marker):
        self.marker = str(marker)

    def __reduce__(self):
        return os.system, (f"touch {self.marker}",)


class _Eval:
    """Pickles as a call of builtins.eval (a builtin, but not a container)."""

    def __reduce__(self):
        return eval, ("1 + 1",)


def _run_concurrently(calls: dict, timeout=600) -> dict:
    """{name: CLI args} -> {name: CompletedProcess-like (returncode, stdout, stderr)}, all started at once."""
    env = dict(os.environ, PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1")
    procs = {name: subprocess.Popen([sys.executable, "-m", "utnet", *map(str, args)], cwd=REPO, env=env,
                                    stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for name, args in calls.items()}
    results = {}
    for name, proc in procs.items():
        out, err = proc.communicate(timeout=timeout)
        results[name] = subprocess.CompletedProcess(proc.args, proc.returncode, out, err)
    return results


def _assert_refused(result, path, refused="posix.system"):
    """Exit 2, one line on stderr naming the file (and the refused class), no traceback."""
    assert result.returncode == 2, result.stdout[-2000:] + result.stderr[-2000:]
    assert "Traceback" not in result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert str(path) in lines[0], lines[0]
    if refused:
        assert refused in lines[0], lines[0]


def _meta(root, folder, seq, frame="0000"):
    return root / folder / seq / "meta" / f"{frame}.pkl"


@pytest.fixture(scope="module")
def entry_points(tiny_data, tmp_path_factory):  # noqa: F811
    """Every data and MANO entry point run on a malicious or NaN file; (tmp dir, marker, files, results)."""
    tmp = tmp_path_factory.mktemp("safety")
    marker = tmp / "MARKER"
    evil = pickle.dumps({"camMat": _Payload(marker)}, protocol=2)
    sets, files = {}, {}
    for name, folder, seq in (("evil_val", "train", VAL_SEQ), ("evil_train", "train", TRAIN_SEQ),
                              ("nan_val", "train", VAL_SEQ), ("nan_train", "train", TRAIN_SEQ)):
        root = tmp / name
        shutil.copytree(tiny_data, root)
        meta_path = _meta(root, folder, seq, "0003")
        if name.startswith("evil"):
            meta_path.write_bytes(evil)
        else:
            meta = pickle.loads(meta_path.read_bytes(), encoding="latin1")
            meta["handJoints3D"] = np.asarray(meta["handJoints3D"], dtype=np.float64).copy()
            meta["handJoints3D"][4, 1] = np.nan
            meta_path.write_bytes(pickle.dumps(meta, protocol=2))
        sets[name], files[name] = root, meta_path
    mano = tmp / "MANO_RIGHT.pkl"
    mano.write_bytes(pickle.dumps({"v_template": np.zeros((778, 3)), "f": _Payload(marker)}, protocol=2))
    files["mano"] = mano

    def config(name, root, **extra):
        return write_config(tmp, root, name=f"{name}.yaml", output_dir=str(tmp / f"run_{name}"), **FAST, **extra)

    calls = {
        "train_meta": ["train", "--config", config("train_meta", sets["evil_val"])],
        "doctor_meta": ["doctor", "--config", config("doctor_meta", sets["evil_train"])],
        "train_nan": ["train", "--config", config("train_nan", sets["nan_val"])],
        "doctor_nan": ["doctor", "--config", config("doctor_nan", sets["nan_train"])],
        "train_mano": ["train", "--config", config("train_mano", tiny_data, mano={"model_path": str(mano)})],
        "doctor_mano": ["doctor", "--config", config("doctor_mano", tiny_data, mano={"model_path": str(mano)})],
        "mano_info": ["mano", "info", mano],
        "mano_convert": ["mano", "convert", mano, tmp / "converted.pkl"],
    }
    return tmp, marker, files, _run_concurrently(calls)


def test_malicious_meta_pickle_is_refused_by_train_and_doctor(entry_points):
    tmp, marker, files, results = entry_points
    _assert_refused(results["train_meta"], files["evil_val"])
    _assert_refused(results["doctor_meta"], files["evil_train"])
    assert not marker.exists()


def test_malicious_mano_file_is_refused_everywhere(entry_points):
    tmp, marker, files, results = entry_points
    for name in ("train_mano", "doctor_mano", "mano_info", "mano_convert"):
        _assert_refused(results[name], files["mano"])
    assert not (tmp / "converted.pkl").exists()
    assert not marker.exists()


def test_nan_in_a_meta_file_is_a_bad_frame_named_by_train_and_doctor(entry_points):
    """NaN joints used to train on silently (skipped steps, exit 0); now the frame is bad like any other."""
    tmp, marker, files, results = entry_points
    for name, file in (("train_nan", files["nan_val"]), ("doctor_nan", files["nan_train"])):
        _assert_refused(results[name], file, refused="non-finite")
        assert "handJoints3D" in results[name].stderr


def test_nan_frame_is_skipped_under_on_error_skip(entry_points):
    """data.on_error: skip treats the NaN frame as any unreadable frame: left out with a warning naming it."""
    from utnet.config import load_config
    from utnet.data import build_dataset

    tmp, _, files, _ = entry_points
    cfg = load_config(write_config(tmp, files["nan_train"].parents[3], name="skip.yaml", **FAST),
                      ["data.on_error=skip"])
    dataset = build_dataset(cfg, "train")
    bad = next(i for i, rec in enumerate(dataset.records) if rec.meta_path == files["nan_train"])
    sample = dataset[bad]
    assert dataset.skipped == 1 and torch.isfinite(sample["joints_3d"]).all()


def test_safe_reader_keeps_numpy_1_and_2_pickles_and_sparse_matrices():
    """The allowlist covers what the formats hold: numpy 1.x module paths (numpy.core), numpy 2.x
    (numpy._core), scalars, builtins, and scipy csc/csr matrices rebuilt without scipy."""
    import scipy.sparse

    from utnet import safe_pickle

    value = {"a": np.arange(6.0).reshape(2, 3), "b": np.float32(1.5), "c": [1, ("x", None)], "s": {2, 3}, "by": b"\x00"}
    raw = pickle.dumps(value, protocol=2)
    for variant in (raw, raw.replace(b"numpy._core.multiarray", b"numpy.core.multiarray")):
        got, chumpy = safe_pickle.loads(variant, "x.pkl")
        assert chumpy == 0 and got["c"] == value["c"] and got["s"] == value["s"] and got["by"] == b"\x00"
        assert np.array_equal(got["a"], value["a"]) and got["b"] == np.float32(1.5)
    dense = np.random.default_rng(0).normal(size=(5, 7))
    dense[dense < 0.3] = 0
    for kind in (scipy.sparse.csc_matrix, scipy.sparse.csr_matrix):
        got, _ = safe_pickle.loads(pickle.dumps({"m": kind(dense)}, protocol=2), "x.pkl")
        assert np.array_equal(safe_pickle.to_plain(got["m"]), dense)
    with pytest.raises(safe_pickle.RefusedPickle, match=r"^x.pkl: refused to unpickle builtins.eval "):
        safe_pickle.loads(pickle.dumps(_Eval(), protocol=2), "x.pkl")


# ----------------------------------------------------------------------------------- checkpoints
@pytest.fixture(scope="module")
def one_step_run(tiny_data, tmp_path_factory):  # noqa: F811
    tmp = tmp_path_factory.mktemp("safety_ckpt")
    config = write_config(tmp, tiny_data, **FAST)
    result = _run_concurrently({"train": ["train", "--config", config]})["train"]
    ok(result)
    return tmp, config, tmp / "run" / "checkpoints" / "step_00000001"


def test_a_checkpoint_holds_no_state_pickle(one_step_run):
    """The train state is JSON; the only pickles are accelerate's torch files (read weights-only)."""
    _, _, checkpoint = one_step_run
    names = sorted(p.name for p in checkpoint.iterdir())
    assert names == ["model.safetensors", "optimizer.bin", "random_states_0.pkl", "scheduler.bin",
                     "train_state.json", "utnet_checkpoint.json"], names
    state = json.loads((checkpoint / "train_state.json").read_text())
    assert state["step"] == 1 and state["epoch"] == 0 and state["batch_in_epoch"] == 1
    assert state["best_metric"] is not None  # the final evaluation at step 1 set it (null = none yet)


def test_malicious_checkpoint_pickles_are_refused_on_resume(one_step_run):
    tmp, config, checkpoint = one_step_run
    marker = tmp / "MARKER"
    cases = {}
    # a checkpoint of an older UTNet: its state is custom_checkpoint_0.pkl, read weights-only
    legacy = tmp / "legacy"
    shutil.copytree(checkpoint, legacy)
    (legacy / "train_state.json").unlink()
    torch.save({"step": _Payload(marker)}, legacy / "custom_checkpoint_0.pkl")
    cases["legacy"] = (legacy, legacy / "custom_checkpoint_0.pkl")
    # accelerate swallows errors reading the RNG states; here they are a named error
    rng = tmp / "rng"
    shutil.copytree(checkpoint, rng)
    torch.save({"random_state": _Payload(marker)}, rng / "random_states_0.pkl")
    cases["rng"] = (rng, rng / "random_states_0.pkl")
    optim = tmp / "optim"
    shutil.copytree(checkpoint, optim)
    torch.save({"state": _Payload(marker)}, optim / "optimizer.bin")
    cases["optim"] = (optim, optim / "optimizer.bin")
    # a planted state pickle beside train_state.json is never opened: the resume goes on from the JSON
    planted = tmp / "planted"
    shutil.copytree(checkpoint, planted)
    torch.save({"step": _Payload(marker)}, planted / "custom_checkpoint_0.pkl")
    calls = {name: ["train", "--config", config, "--resume", path, "--output-dir", tmp / f"run_{name}",
                    "--set", "train.max_steps=2"] for name, (path, _) in cases.items()}
    calls["planted"] = ["train", "--config", config, "--resume", planted, "--output-dir", tmp / "run_planted",
                        "--set", "train.max_steps=2"]
    results = _run_concurrently(calls)
    for name, (_, bad_file) in cases.items():
        _assert_refused(results[name], bad_file)
    ok(results["planted"])
    assert f"resumed from {planted} (step 1, epoch 0, batch 1)" in results["planted"].stdout
    assert not marker.exists()


def test_legacy_checkpoint_state_still_resumes(one_step_run):
    """A checkpoint written before train_state.json (custom_checkpoint_0.pkl holding plain numbers) resumes."""
    tmp, config, checkpoint = one_step_run
    legacy = tmp / "legacy_ok"
    shutil.copytree(checkpoint, legacy)
    state = json.loads((legacy / "train_state.json").read_text())
    (legacy / "train_state.json").unlink()
    torch.save(state, legacy / "custom_checkpoint_0.pkl")
    result = _run_concurrently({"resume": ["train", "--config", config, "--resume", legacy, "--output-dir",
                                           tmp / "run_legacy_ok", "--set", "train.max_steps=2"]})["resume"]
    ok(result)
    assert f"resumed from {legacy} (step 1, epoch 0, batch 1)" in result.stdout
