"""The run directory through the CLI: a new run never replaces an old one (--overwrite moves it aside), a
resume refuses config changes its checkpoint cannot honour and applies the harmless ones, one run at a
time holds the directory (lock naming the holder's pid), and an error exit leaves run_state `failed`."""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys

import pytest
import yaml

from conftest import REPO, run_cli
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)

SHORT = {"max_steps": 2, "eval_every": 0, "checkpoint_every": 1, "image_every": 0, "debug_batches": 0}


def one_line_error(proc, *needles):
    assert proc.returncode == 2, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert proc.stderr.strip().count("\n") == 0 and "Traceback" not in proc.stderr, proc.stderr
    for needle in needles:
        assert needle in proc.stderr, (needle, proc.stderr)


def tree(directory):
    """{relative path: bytes} of every file under directory."""
    return {str(p.relative_to(directory)): p.read_bytes() for p in sorted(directory.rglob("*")) if p.is_file()}


def test_a_new_run_in_a_run_directory_is_refused_and_overwrite_moves_the_old_run_aside(tiny_data, tmp_path):
    from utnet.engine.rundir import LOCK_NAME

    config = write_config(tmp_path, tiny_data, train=dict(SHORT, max_steps=1))
    run = tmp_path / "run"
    (run / "checkpoints" / "step_00000005").mkdir(parents=True)  # no completion marker: nothing to resume
    (run / "checkpoints" / "step_00000005" / "model.safetensors").write_bytes(b"old weights")
    (run / "config.yaml").write_text("old: run\n")
    (run / "notes.txt").write_text("mine\n")
    before = tree(run)

    for resume, why in (("none", "--resume none would start a new run in it"),
                        ("auto", "holds no complete checkpoint to resume")):
        proc = run_cli("train", "--config", config, "--output-dir", run, "--resume", resume)
        one_line_error(proc, f"--output-dir {run}: holds a run (config.yaml, checkpoints/)", why, "--overwrite")
        after = tree(run)
        after.pop(LOCK_NAME, None)
        assert after == before

    proc = run_cli("train", "--config", config, "--output-dir", run, "--overwrite")
    ok(proc)
    moved = [p for p in tmp_path.iterdir() if p.name.startswith("run.old-")]
    assert len(moved) == 1, list(tmp_path.iterdir())
    assert f"--overwrite: moved the previous run {run} to {moved[0]}" in proc.stdout
    kept = tree(moved[0])
    kept.pop(LOCK_NAME, None)
    assert kept == before  # every old file, unchanged
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 1
    assert [p.name for p in (run / "checkpoints").iterdir()] == ["step_00000001"]


HOLD_IN_EVAL = """
import os, sys, time
import utnet.engine.evaluator as evaluator
real_evaluate = evaluator.evaluate
def evaluate(*args, **kwargs):  # the first evaluation waits for the test: the run holds its lock meanwhile
    if not getattr(evaluate, "held", False):
        evaluate.held = True
        print("HOLDING", flush=True)
        while not os.path.exists({go!r}):
            time.sleep(0.05)
    return real_evaluate(*args, **kwargs)
evaluator.evaluate = evaluate
from utnet.cli import main
sys.exit(main(sys.argv[1:]))
"""


def test_lock_then_resume_with_changed_config(tiny_data, tmp_path):
    """Run A holds the directory: a second train exits 2 naming A's pid. Then resumes of A's run: a change
    the checkpoint cannot honour is refused with config.yaml untouched; harmless changes are applied and
    logged; a resume that dies loading its checkpoint keeps config.yaml and leaves run_state `failed`."""
    config = write_config(tmp_path, tiny_data, train=SHORT)
    run = tmp_path / "run"
    script = tmp_path / "hold.py"
    script.write_text(HOLD_IN_EVAL.format(go=str(tmp_path / "go")))
    holder = subprocess.Popen([sys.executable, str(script), "train", "--config", str(config), "--output-dir", str(run)],
                              cwd=REPO, env=dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1"),
                              stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    try:
        lines = []
        for line in holder.stdout:
            lines.append(line)
            if line.startswith("HOLDING"):
                break
        assert lines and lines[-1].startswith("HOLDING"), "".join(lines)[-3000:]
        second = run_cli("train", "--config", config, "--output-dir", run)
        one_line_error(second, f"--output-dir {run}: another `utnet train` is using this run directory",
                       f"pid {holder.pid} on ")
    finally:
        (tmp_path / "go").touch()
        rest, _ = holder.communicate(timeout=600)
    assert holder.returncode == 0, rest[-3000:]

    saved = (run / "config.yaml").read_text()
    checkpoints = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert checkpoints == ["step_00000001", "step_00000002"]
    refused = run_cli("train", "--config", config, "--output-dir", run,
                      "--set", "optim.lr=0.01", "--set", "model.head.depth=2", "--set", "train.max_steps=3")
    one_line_error(refused, "settings a resumed run cannot change: model.head.depth 1 -> 2, optim.lr 0.001 -> 0.01",
                   str(run / "config.yaml"))
    assert "train.max_steps" not in refused.stderr.split("drop these changes")[0]  # only the refused ones listed
    assert (run / "config.yaml").read_text() == saved
    assert sorted(p.name for p in (run / "checkpoints").iterdir()) == checkpoints
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"

    resumed = run_cli("train", "--config", config, "--output-dir", run,
                      "--set", "train.max_steps=3", "--set", "eval.batch_size=2")
    ok(resumed)
    assert ("resuming with changed settings (vs " + str(run / "config.yaml") + "), applied: "
            "train.max_steps 2 -> 3, eval.batch_size 4 -> 2") in resumed.stdout, resumed.stdout[-3000:]
    assert f"resumed from {run / 'checkpoints' / 'step_00000002'}" in resumed.stdout
    recorded = yaml.safe_load((run / "config.yaml").read_text())
    assert (recorded["train"]["max_steps"], recorded["eval"]["batch_size"]) == (3, 2)
    assert (run / "checkpoints" / "step_00000003").is_dir()

    # A resume that fails while loading its checkpoint: config.yaml keeps the run's settings.
    saved = (run / "config.yaml").read_text()
    weights = run / "checkpoints" / "step_00000003" / "model.safetensors"
    weights.write_bytes(weights.read_bytes()[:64])
    broken = run_cli("train", "--config", config, "--output-dir", run,
                     "--set", "train.max_steps=4", "--set", "eval.batch_size=2")
    assert broken.returncode != 0, broken.stdout[-2000:]
    assert (run / "config.yaml").read_text() == saved
    state = json.loads((run / "run_state.json").read_text())
    assert state["status"] == "failed" and state["reason"] and "\n" not in state["reason"], state


def test_failed_run_state_names_the_error(tiny_data, tmp_path):
    """An exception in the loop (a loss term that raises at its first call): exit 1, run_state `failed`
    with `ExceptionType: message`."""
    (tmp_path / "raising_plugin_for_test.py").write_text('''
import losses


@losses.register_loss("raise_in_loss")
class RaiseInLoss(losses.LossTerm):
    def elementwise(self, pred, batch):
        if pred["joints_3d"].requires_grad:  # training only: evaluation is under no_grad
            raise RuntimeError("boom from the test loss")
        joints = self.from_pred(pred, "joints_3d")
        return joints * 0.0, joints.new_ones(joints.shape)
''')
    from test_engine import TINY

    config = write_config(tmp_path, tiny_data, loss_plugins=["raising_plugin_for_test"],
                          loss=dict(TINY["loss"], raise_in_loss={"weight": 1.0}), train=SHORT)
    proc = run_cli("train", "--config", config, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert proc.returncode == 1 and "boom from the test loss" in proc.stderr, proc.stderr[-3000:]
    state = json.loads((tmp_path / "run" / "run_state.json").read_text())
    assert state == {"status": "failed", "reason": "RuntimeError: boom from the test loss"}


def test_the_lock_names_its_holder_and_dies_with_it(tmp_path):
    from utnet.engine.rundir import LOCK_NAME, RunLock
    from utnet.errors import UserError

    run = tmp_path / "run"
    code = (f"from utnet.engine.rundir import RunLock; import time; lock = RunLock({str(run)!r}).acquire(); "
            f"print('LOCKED', flush=True); time.sleep(600)")
    holder = subprocess.Popen([sys.executable, "-c", code], cwd=REPO, stdout=subprocess.PIPE, text=True)
    try:
        assert holder.stdout.readline().strip() == "LOCKED"
        assert (run / LOCK_NAME).read_text().startswith(f"pid {holder.pid} on ")
        with pytest.raises(UserError, match=f"pid {holder.pid} on "):
            RunLock(run).acquire()
    finally:
        holder.send_signal(signal.SIGKILL)
        holder.wait(timeout=60)
    lock = RunLock(run).acquire()  # released by the OS when the holder died, even by SIGKILL
    assert (run / LOCK_NAME).read_text().startswith(f"pid {os.getpid()} on ")
    lock.release()


def test_the_resume_rule_is_an_allowlist():
    from utnet.config import load_config
    from utnet.engine.rundir import config_changes, resumable

    cfg = load_config(None)
    saved = cfg.model_dump(mode="json")
    changed = load_config(None, ["train.max_steps=7", "eval.grid_samples=2", "data.num_workers=0", "optim.lr=0.5",
                                 "optim.betas=[0.8,0.9]", "data.image_size=[64,48]", "seed=3",
                                 "loss.joint_3d.weight=2.0", "train.best_metric=refined/mpjpe"])
    changes = config_changes(saved, changed)
    assert {k for k in changes if resumable(k)} == {"train.max_steps", "eval.grid_samples", "data.num_workers"}
    assert {k for k in changes if not resumable(k)} == {"optim.lr", "optim.betas", "data.image_size", "seed",
                                                        "loss.joint_3d.weight", "train.best_metric"}
    assert changes["optim.betas"] == ([0.9, 0.999], [0.8, 0.9])
    assert config_changes(saved, cfg) == {}


def test_two_processes_stop_before_anything_is_written_when_the_directory_is_locked(tiny_data, tmp_path):
    """Under accelerate launch only RANK 0 locks. Its one-line error ends it before the Accelerator
    exists; rank 1, waiting for it in the process group's rendezvous, is stopped by the launcher."""
    from test_engine_multiprocess import accelerate_launch
    from utnet.engine.rundir import LOCK_NAME, RunLock

    config = write_config(tmp_path, tiny_data, train=SHORT)
    run = tmp_path / "run"
    lock = RunLock(run).acquire()
    try:
        proc = accelerate_launch("train", "--config", config, "--output-dir", run, timeout=300)
    finally:
        lock.release()
    assert proc.returncode != 0
    ours = [line for line in proc.stderr.splitlines() if line.startswith("utnet train:")]
    assert len(ours) == 1 and f"pid {os.getpid()} on " in ours[0], proc.stderr[-3000:]
    assert [p.name for p in run.iterdir()] == [LOCK_NAME]
