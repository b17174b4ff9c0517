"""Two gloo ranks on the CPU (docs/distributed.md): train a few steps, then evaluate the checkpoint
on a val split of odd size (7, batch 4 per rank) with 2 processes and with 1: every sample is
counted once and the metrics agree."""
from __future__ import annotations

import json
import os
import subprocess
import sys

import pytest
from accelerate.test_utils import get_torch_dist_unique_port

from conftest import REPO, run_cli
from test_engine import NAN_PLUGIN, TINY, VAL_SIZE, max_diff, ok, tiny_data, weights, write_config  # noqa: F401  (tiny_data is a fixture)


def accelerate_launch(*args, timeout=600, env=None):
    """`ACCELERATE_USE_CPU=1 accelerate launch --multi_gpu --num_processes 2 ... -m utnet ARGS`."""
    env = dict(os.environ, ACCELERATE_USE_CPU="1", PYTHONWARNINGS="ignore", OMP_NUM_THREADS="1", **(env or {}))
    command = [sys.executable, "-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2",
               "--num_machines", "1", "--mixed_precision", "no", "--dynamo_backend", "no",
               "--main_process_port", str(get_torch_dist_unique_port()), "-m", "utnet", *map(str, args)]
    return subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)


def test_two_processes_train_and_evaluate_every_sample_once(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data, train={"max_steps": 3, "eval_every": 0, "checkpoint_every": 0,
                                                      "image_every": 2, "log_every": 1})
    run = tmp_path / "run"
    proc = accelerate_launch("train", "--config", config, "--output-dir", run)
    ok(proc)
    assert "training on 2 process(es)" in proc.stdout
    assert f"Evaluated on {VAL_SIZE} samples from 2 processes (val)" in proc.stdout
    assert proc.stdout.count("data statistics, batch 1") == 1  # the main process reports, not every rank
    metrics = json.loads((run / "metrics.json").read_text())
    assert metrics["num_samples"] == VAL_SIZE and metrics["num_processes"] == 2
    checkpoint = run / "checkpoints" / "step_00000003"
    assert sorted(p.name for p in checkpoint.glob("random_states_*.pkl")) == ["random_states_0.pkl",
                                                                             "random_states_1.pkl"]

    two = accelerate_launch("eval", "--config", config, "--checkpoint", checkpoint, "--split", "val",
                            "--output-dir", tmp_path / "eval2")
    ok(two)
    assert f"Evaluated on {VAL_SIZE} samples from 2 processes (val)" in two.stdout
    one = run_cli("eval", "--config", config, "--checkpoint", checkpoint, "--split", "val",
                  "--output-dir", tmp_path / "eval1")
    ok(one)
    m2 = json.loads((tmp_path / "eval2" / "metrics.json").read_text())
    m1 = json.loads((tmp_path / "eval1" / "metrics.json").read_text())
    assert m2["num_samples"] == m1["num_samples"] == VAL_SIZE
    assert (m2["num_processes"], m1["num_processes"]) == (2, 1)
    # float32 forward passes of other batch shapes (2 ranks pad the last 3 samples to 4) and thread counts agree to
    # a few 1e-6 relative (2e-6 seen on pa_mpjpe), not to 1e-5 mm; a lost or doubled sample moves them by ~10%
    for output in ("refined", "coarse"):
        for name, value in m1[output].items():
            assert m2[output][name] == pytest.approx(value, rel=1e-5, abs=1e-5), (output, name)
    # the final training eval used the same weights and the same code
    for name, value in metrics["refined"].items():
        assert m1["refined"][name] == pytest.approx(value, rel=1e-5, abs=1e-5), name


def test_a_nan_loss_on_one_rank_skips_the_step_on_every_rank(tiny_data, tmp_path):  # noqa: F811
    """Rank 1's loss is NaN on its 3rd training call, rank 0's is finite. The ranks agree (agree_max):
    the main process, whose own loss was fine, reports the skip and its weights do not move at step 3
    (without the agreement rank 0 would step alone and the replicas would part)."""
    (tmp_path / "nan_plugin_for_test.py").write_text(NAN_PLUGIN)
    loss = dict(TINY["loss"], nan_on_calls={"weight": 1.0, "rank": 1, "calls": [3]})
    config = write_config(tmp_path, tiny_data, loss_plugins=["nan_plugin_for_test"], loss=loss,
                          train={"max_steps": 4, "eval_every": 0, "image_every": 0, "checkpoint_every": 1,
                                 "log_every": 1})
    run = tmp_path / "run"
    proc = accelerate_launch("train", "--config", config, "--output-dir", run,
                             env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    ok(proc)
    assert proc.stdout.count("non-finite loss or gradient norm on some rank: step skipped") == 1, proc.stdout[-3000:]
    assert "step 3: non-finite loss or gradient norm on some rank: step skipped (1 in a row, 1 in total)" in proc.stdout
    ckpts = run / "checkpoints"
    w2, w3, w4 = (weights(ckpts / f"step_{s:08d}") for s in (2, 3, 4))
    assert max_diff(w2, w3) == 0.0 and max_diff(w3, w4) > 0.0
