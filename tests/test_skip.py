"""data.on_error: skip through the CLI. Training may put a neighbour in place of a bad frame; val and
evaluation DROP it from the metrics and say so (N of M, K unreadable, which), the evaluation split's
submission keeps one entry per line of evaluation.txt (dropped ones listed with the frame that filled
them), with 1 and 2 processes, and every run ends with the unreadable frames per split."""
from __future__ import annotations

import json
import shutil

import numpy as np
import pytest

from conftest import run_cli
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from test_engine_multiprocess import accelerate_launch

BAD_VAL = "SYN12/0003"  # a corrupt RGB file: found unreadable when loaded (in a DataLoader worker)
LEFT_OUT_TRAIN = "SYN10/0002"  # a missing depth file: left out of train when listed
BAD_EVALUATION = ["SYE10/0002", "SYE10/0005"]  # one corrupt RGB file, one missing depth file
TRAIN = {"max_steps": 2, "eval_every": 0, "checkpoint_every": 0, "image_every": 0, "debug_batches": 0}


def skip_config(tmp_path, root, name="skip.yaml"):
    return write_config(tmp_path, root, name=name, data={"root": str(root), "on_error": "skip", "num_workers": 1},
                        train=TRAIN)


@pytest.fixture(scope="module")
def skip_run(tiny_data, tmp_path_factory):  # noqa: F811
    """A copy of the tiny set with bad frames in every split, and a 2-step skip-mode run on it."""
    tmp = tmp_path_factory.mktemp("skip")
    root = tmp / "data"
    shutil.copytree(tiny_data, root)
    (root / "train" / "SYN12" / "rgb" / "0003.png").write_bytes(b"\x89PNG broken")
    (root / "train" / "SYN10" / "depth" / "0002.png").unlink()
    (root / "evaluation" / "SYE10" / "rgb" / "0002.png").write_bytes(b"\x89PNG broken")
    (root / "evaluation" / "SYE10" / "depth" / "0005.png").unlink()
    config = skip_config(tmp, root)
    proc = run_cli("train", "--config", config, "--output-dir", tmp / "run")
    ok(proc)
    return tmp, root, config, proc


def test_val_drops_the_unreadable_frame_and_the_run_reports_skips_per_split(skip_run, tmp_path):
    tmp, root, config, proc = skip_run
    run = tmp / "run"
    line = f"Evaluated on 6 of 7 samples from 1 process (val; 1 unreadable, dropped: first {BAD_VAL})"
    assert proc.stdout.count(line) == 2, proc.stdout[-3000:]  # the untrained and the final evaluation
    assert ("data.on_error=skip: unreadable frames in this run: train 1 (left out or replaced by the next "
            "readable frame), val 1 (dropped)") in proc.stdout
    metrics = json.loads((run / "metrics.json").read_text())
    assert (metrics["num_samples"], metrics["num_listed"], metrics["num_unreadable"]) == (6, 7, 1)
    assert metrics["unreadable"] == [BAD_VAL]

    # Dropped, not replaced: the same weights on a val split without that frame score the same.
    clean = tmp_path / "clean"
    shutil.copytree(root, clean)
    train_txt = clean / "train.txt"
    train_txt.write_text("".join(f"{n}\n" for n in train_txt.read_text().split() if n != BAD_VAL))
    other = run_cli("eval", "--config", skip_config(tmp_path, clean, "clean.yaml"), "--checkpoint",
                    run / "checkpoints" / "step_00000002", "--split", "val", "--output-dir", tmp_path / "eval")
    ok(other)
    assert "Evaluated on 6 samples from 1 process (val)" in other.stdout
    reference = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    for output in ("refined", "coarse"):
        for name, value in reference[output].items():
            if value is not None:  # float32 forward passes over other batch shapes: ~1e-7 relative
                assert metrics[output][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (output, name)


def check_evaluation_outputs(out, stdout, processes):
    from utnet.engine.submission import load_ho3d_prediction

    listed = 7
    dropped = ", ".join(BAD_EVALUATION)
    assert (f"Evaluated on {listed - 2} of {listed} samples from {processes} "
            f"(evaluation; 2 unreadable, dropped: first {dropped})") in stdout, stdout[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert (metrics["num_samples"], metrics["num_listed"], metrics["num_unreadable"]) == (listed - 2, listed, 2)
    assert metrics["unreadable"] == BAD_EVALUATION
    assert metrics["submission_filled"] == [{"entry": 2, "frame": "SYE10/0002", "filled_from": "SYE10/0003"},
                                            {"entry": 5, "frame": "SYE10/0005", "filled_from": "SYE10/0006"}]
    xyz, verts = load_ho3d_prediction(out / "pred.zip")
    assert xyz.shape == (listed, 21, 3) and verts.shape == (listed, 778, 3)  # one entry per evaluation.txt line
    for entry in (2, 5):  # a filled entry holds its neighbour's prediction (1 micrometre rounding)
        np.testing.assert_allclose(xyz[entry], xyz[entry + 1], atol=2e-6)
    return metrics, xyz


def test_evaluation_split_drops_unreadable_frames_and_keeps_the_submission_length(skip_run):
    tmp, _, config, _ = skip_run
    checkpoint = tmp / "run" / "checkpoints" / "step_00000002"
    one = run_cli("eval", "--config", config, "--checkpoint", checkpoint, "--split", "evaluation",
                  "--output-dir", tmp / "eval1")
    ok(one)
    assert "2 of 7 entries are unreadable frames filled with the prediction for the next readable frame" in one.stdout
    check_evaluation_outputs(tmp / "eval1", one.stdout, "1 process")


def test_two_processes_drop_the_same_frames_and_score_each_readable_one_once(skip_run):
    """7 listed evaluation frames on 2 ranks (batch 4): the gathered ids are exactly 0..6 (the evaluator
    checks), the 2 unreadable are dropped, and metrics and submission agree with one process."""
    from utnet.engine.submission import load_ho3d_prediction

    tmp, _, config, _ = skip_run
    checkpoint = tmp / "run" / "checkpoints" / "step_00000002"
    one = tmp / "eval1"
    if not (one / "metrics.json").is_file():
        ok(run_cli("eval", "--config", config, "--checkpoint", checkpoint, "--split", "evaluation",
                   "--output-dir", one))
    two = accelerate_launch("eval", "--config", config, "--checkpoint", checkpoint, "--split", "evaluation",
                            "--output-dir", tmp / "eval2")
    ok(two)
    m2, xyz2 = check_evaluation_outputs(tmp / "eval2", two.stdout, "2 processes")
    m1 = json.loads((one / "metrics.json").read_text())
    xyz1, _ = load_ho3d_prediction(one / "pred.zip")
    # float32 forward passes over other batch shapes differ by micrometres (6 um seen); samples lie centimetres
    # apart, so 0.1 mm still tells each entry's own prediction from any other's
    np.testing.assert_allclose(xyz2, xyz1, rtol=0, atol=1e-4)
    for output in ("refined", "coarse"):
        for name, value in m1[output].items():
            if value is not None:
                assert m2[output][name] == pytest.approx(value, rel=5e-5, abs=1e-6), (output, name)
