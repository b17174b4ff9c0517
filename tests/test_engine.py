"""The engine through the CLI, as a user runs it: train, resume, signals, NaN steps, eval, submission.

One tiny synthetic set (3 sequences x 7 frames, 64x48 crops) is written once per session; val is
SYN12 (7 samples: odd, not a multiple of the batch size 4). Every run is a real `python -m utnet`
subprocess on a tiny model.
"""
from __future__ import annotations

import json
import math
import os
import pickle
import shutil
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from conftest import REPO, run_cli

TINY = {
    "seed": 0,
    "data": {"val_sequences": ["SYN12"], "image_size": [64, 48], "batch_size": 4, "num_workers": 0,
             "synthetic": {"enabled": False, "sequences": 3, "frames": 7, "seed": 0}},
    "model": {"backbone": {"name": "test_vit", "fusion": "early"},
              "head": {"depth": 1, "dim": 32, "heads": 2},
              "refiner": {"enabled": True, "hidden": 8, "layers": 1, "coarse_vertices": 64}},
    "loss": {"keypoint_2d": {"weight": 10.0, "reduction": "mean"}, "joint_3d": {"weight": 0.1, "reduction": "mean"},
             "vertex_3d": {"weight": 0.05, "reduction": "mean"}, "mano_prior": {"weight": 1.0, "reduction": "mean"},
             "aux": {"weight": 0.5, "reduction": "mean"}},
    "optim": {"lr": 1e-3, "warmup_steps": 2, "schedule": "cosine"},
    "train": {"max_steps": 6, "log_every": 1, "eval_every": 3, "checkpoint_every": 1, "keep_checkpoints": 10,
              "image_every": 3, "debug_batches": 1},
    "eval": {"batch_size": 4, "grid_samples": 4},
}
VAL_SIZE = 7


def deep_update(base: dict, extra: dict) -> dict:
    out = json.loads(json.dumps(base))
    for key, value in extra.items():
        out[key] = deep_update(out.get(key, {}), value) if isinstance(value, dict) else value
    return out


@pytest.fixture(scope="session")
def tiny_data(tmp_path_factory) -> Path:
    from utnet.data import write_synthetic

    root = tmp_path_factory.getbasetemp() / "engine_data" / "synthetic"  # shared by both engine test files
    if not (root / "train.txt").is_file():
        write_synthetic(root, sequences=3, frames=7, seed=0)
    return root


def write_config(tmp_path: Path, tiny_data: Path, name: str = "tiny.yaml", **extra) -> Path:
    cfg = deep_update(TINY, {"data": {"root": str(tiny_data)}, "output_dir": str(tmp_path / "run"), **extra})
    path = tmp_path / name
    path.write_text(yaml.safe_dump(cfg))
    return path


def weights(checkpoint: Path) -> dict:
    from safetensors.torch import load_file

    return load_file(str(checkpoint / "model.safetensors"))


def max_diff(a: dict, b: dict) -> float:
    assert a.keys() == b.keys()
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a if a[k].numel())


def ok(proc) -> None:
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]


@pytest.fixture(scope="session")
def trained_run(tiny_data, tmp_path_factory):
    """One uninterrupted 6-step run with a checkpoint at every step."""
    tmp = tmp_path_factory.mktemp("engine_run")
    config = write_config(tmp, tiny_data)
    proc = run_cli("train", "--config", config, "--output-dir", tmp / "run")
    ok(proc)
    return tmp / "run", config, proc


# ------------------------------------------------------------------------------------- in-process units
def test_lr_schedule_warmup_then_cosine_and_constant():
    from utnet.engine.setup import lr_factor

    assert [lr_factor(s, 4, 20, "cosine") for s in range(4)] == [0.25, 0.5, 0.75, 1.0]
    assert lr_factor(4, 4, 20, "cosine") == 1.0
    assert lr_factor(12, 4, 20, "cosine") == pytest.approx(0.5)
    assert lr_factor(20, 4, 20, "cosine") == pytest.approx(0.0)
    assert lr_factor(15, 4, 20, "constant") == 1.0


def test_scheduler_is_sized_for_the_number_of_processes():
    """A prepared scheduler steps num_processes times per optimizer step: the lr must not run ahead."""
    from utnet.config import load_config
    from utnet.engine.setup import build_optimizer

    cfg = load_config(None, ["train.max_steps=10", "optim.warmup_steps=4", "optim.lr=1.0",
                             "optim.lr_mult.head=2.0"])

    class Tiny(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.a, self.b = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2)

        def param_groups(self):
            return {"backbone": list(self.a.parameters()), "head": list(self.b.parameters()), "refiner": []}

    for processes in (1, 4):
        optimizer, scheduler = build_optimizer(cfg, Tiny(), processes)
        seen = []
        for _ in range(3):  # 3 optimizer steps, each = `processes` scheduler steps
            seen.append([g["lr"] for g in optimizer.param_groups])
            optimizer.step()
            for _ in range(processes):
                scheduler.step()
        assert seen == [[0.25, 0.5], [0.5, 1.0], [0.75, 1.5]], processes
        assert [g["name"] for g in optimizer.param_groups] == ["backbone", "head"]


def test_epoch_sampler_and_seeded_samples_are_deterministic():
    from utnet.data.sampling import EpochSampler, SeededSamples

    sampler = EpochSampler(10, seed=3)
    first = list(sampler)
    assert sorted(i for _, i in first) == list(range(10)) and {e for e, _ in first} == {0}
    sampler.set_epoch(1)
    second = list(sampler)
    assert [i for _, i in second] != [i for _, i in first]
    sampler.set_epoch(0)
    assert list(sampler) == first

    class Noise(torch.utils.data.Dataset):
        def __len__(self):
            return 10

        def __getitem__(self, i):
            return torch.rand(3)

    data = SeededSamples(Noise(), seed=3)
    before = torch.get_rng_state()
    a = data[(2, 5)]
    assert torch.equal(torch.get_rng_state(), before)  # the caller's RNG stream is untouched
    assert torch.equal(a, data[(2, 5)]) and not torch.equal(a, data[(3, 5)])


def test_resume_resolution_ignores_partial_checkpoints(tmp_path):
    from utnet.engine import checkpoint as ckpt
    from utnet.errors import UserError

    root = tmp_path / "checkpoints"
    for name, complete in [("step_00000002", True), ("step_00000004", True), ("step_00000009", False),
                           (".tmp-step_00000010", True)]:
        (root / name).mkdir(parents=True)
        if complete:
            (root / name / ckpt.MARKER).write_text("{}")
    assert ckpt.resolve_resume("auto", tmp_path) == root / "step_00000004"
    assert ckpt.resolve_resume("none", tmp_path) is None
    assert ckpt.resolve_resume("auto", tmp_path / "elsewhere") is None
    with pytest.raises(UserError, match="not a complete checkpoint"):
        ckpt.resolve_resume(str(root / "step_00000009"), tmp_path)
    with pytest.raises(UserError, match="no such checkpoint"):
        ckpt.resolve_resume(str(tmp_path / "missing"), tmp_path)


def test_skipped_step_updates_the_fp16_grad_scaler():
    """Under fp16 accelerator.clip_grad_norm_ has unscaled the gradients before the step is judged; a
    skipped step must still update() the GradScaler, or the next unscale_ raises and the scale never drops.
    (That a skipped step leaves weights and schedule alone is checked through the CLI below.)"""
    from types import SimpleNamespace

    from utnet.engine.checkpoint import TrainState
    from utnet.engine.trainer import skip_step

    torch.manual_seed(0)
    model = torch.nn.Linear(3, 1)
    optimizer = torch.optim.AdamW(model.parameters(), lr=0.1)
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**16)
    accelerator = SimpleNamespace(scaler=scaler)  # skip_step reads accelerator.scaler only
    state = TrainState()
    for poison in (float("nan"), float("inf")):
        scaler.scale(model(torch.ones(2, 3)).sum() * poison).backward()
        scaler.unscale_(optimizer)  # what accelerator.clip_grad_norm_ does under fp16
        skip_step(accelerator, state)
        optimizer.zero_grad(set_to_none=True)
    assert scaler.get_scale() == 2.0**14  # halved by each of the two skipped steps
    assert (state.nonfinite_total, state.nonfinite_in_row) == (2, 2)
    scaler.scale(model(torch.ones(2, 3)).sum()).backward()
    scaler.unscale_(optimizer)  # raises "unscale_() has already been called" without the update
    scaler.step(optimizer)


def test_the_step_agreement_names_a_non_finite_loss_or_norm_and_the_signal():
    """One process: the agreement is this rank's own view (two ranks: test_engine_multiprocess.py)."""
    from types import SimpleNamespace

    from utnet.engine.trainer import Agreed, agree

    one = SimpleNamespace(num_processes=1, device=torch.device("cpu"))
    finite, bad = torch.tensor(0.0), torch.tensor(1.0)
    assert agree(one, finite, torch.tensor(2.0), 0) == Agreed(nonfinite=False, signal=0)
    assert agree(one, finite, torch.tensor(float("inf")), 0) == Agreed(nonfinite=True, signal=0)
    assert agree(one, bad, torch.tensor(2.0), signal.SIGTERM) == Agreed(nonfinite=True, signal=int(signal.SIGTERM))
    assert agree(one, finite, None, signal.SIGHUP) == Agreed(nonfinite=False, signal=int(signal.SIGHUP))  # no norm


def test_signal_sets_a_flag_instead_of_killing():
    from utnet.engine.signals import StopOnSignal

    previous = signal.getsignal(signal.SIGUSR1)
    with StopOnSignal() as stop:
        os.kill(os.getpid(), signal.SIGUSR1)
        time.sleep(0.05)
        assert stop.signum == signal.SIGUSR1
    assert signal.getsignal(signal.SIGUSR1) == previous


# ------------------------------------------------------------------------------------- CLI runs
def test_train_writes_a_complete_run(trained_run):
    run, _, proc = trained_run
    out = proc.stdout
    assert (run / "config.yaml").is_file()
    assert yaml.safe_load((run / "config.yaml").read_text())["train"]["max_steps"] == 6
    assert "data statistics, batch 1" in out and "GT root-centred joints mm" in out
    assert f"Evaluated on {VAL_SIZE} samples from 1 process (val)" in out
    assert "untrained" in out and "final validation metrics after 6 steps" in out
    for line in ("step 6/6 loss", "eval step 3 val", "eval step 6 val"):
        assert line in out, line
    metrics = json.loads((run / "metrics.json").read_text())
    assert set(metrics) == {"num_samples", "num_listed", "num_unreadable", "unreadable", "num_processes", "split",
                            "refined", "coarse"}
    assert metrics["num_samples"] == metrics["num_listed"] == VAL_SIZE and metrics["num_unreadable"] == 0
    assert metrics["num_processes"] == 1 and metrics["split"] == "val"
    assert {"mpjpe", "mpvpe", "pa_mpjpe", "pa_mpvpe", "f_5mm", "f_15mm", "auc_j", "auc_v"} <= set(metrics["refined"])
    from utnet.config import BEST_METRICS  # every name train.best_metric accepts is a reported metric

    assert all(math.isfinite(metrics[name.split("/")[0]][name.split("/")[1]]) for name in BEST_METRICS)
    assert (run / "predictions.png").is_file() and (run / "per_joint_error.png").is_file()
    assert (run / "best" / "model.safetensors").is_file() and (run / "best" / "metrics.json").is_file()
    steps = sorted(p.name for p in (run / "checkpoints").iterdir())
    assert steps == [f"step_{s:08d}" for s in range(1, 7)]
    assert json.loads((run / "run_state.json").read_text())["status"] == "finished"


def test_tensorboard_tags(trained_run):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    run, _, _ = trained_run
    events = EventAccumulator(str(run / "tensorboard"), size_guidance={"scalars": 0, "images": 0})
    events.Reload()
    tags = events.Tags()
    scalars = set(tags["scalars"])
    for term in TINY["loss"]:
        assert f"loss/{term}" in scalars and f"loss_raw/{term}" in scalars
    for tag in ("loss/total", "grad_norm", "lr/backbone", "lr/head", "lr/refiner",
                "metrics/val/refined/pa_mpjpe", "metrics/val/coarse/mpjpe", "metrics/val/refined/f_15mm"):
        assert tag in scalars, tag
    assert [e.step for e in events.Scalars("loss/total")] == [1, 2, 3, 4, 5, 6]
    assert [e.step for e in events.Scalars("metrics/val/refined/mpjpe")] == [0, 3, 6]
    lr = [e.value for e in events.Scalars("lr/head")]
    assert lr[0] == pytest.approx(1e-3) and lr[-1] < lr[1]  # after step 1 of warmup: full lr; cosine decays
    assert "images/train" in tags["images"]


def test_resume_mid_epoch_is_exact(trained_run, tmp_path):
    """Resume from step 4 (epoch 1, batch 1 of 3) in a fresh directory: same weights at step 6."""
    run, config, _ = trained_run
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "resumed",
                   "--resume", run / "checkpoints" / "step_00000004")
    ok(proc)
    assert "epoch 1, batch 1" in proc.stdout
    # no resume warning (changed batch size or process count); the loss-balance report may warn about shares
    assert not [line for line in proc.stdout.splitlines() if "WARNING" in line and not line.startswith("loss balance")]
    diff = max_diff(weights(run / "checkpoints" / "step_00000006"), weights(tmp_path / "resumed" / "checkpoints" /
                                                                             "step_00000006"))
    assert diff <= 1e-6, diff


def test_resume_with_another_process_count_or_batch_size_warns(trained_run, tmp_path):
    """Allowed (a run may move to another GPU count) but said loudly: the skipped batches cover other samples."""
    run, config, _ = trained_run
    checkpoint = tmp_path / "step_00000006"
    shutil.copytree(run / "checkpoints" / "step_00000006", checkpoint)
    info = json.loads((checkpoint / "utnet_checkpoint.json").read_text())
    assert (info["num_processes"], info["batch_size"]) == (1, TINY["data"]["batch_size"])
    (checkpoint / "utnet_checkpoint.json").write_text(json.dumps(dict(info, num_processes=2)))
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "resumed", "--resume", checkpoint,
                   "--set", "data.batch_size=2")
    ok(proc)
    warning = [line for line in proc.stdout.splitlines() if line.startswith("WARNING: resuming")]
    assert len(warning) == 1, proc.stdout[-3000:]
    assert "num_processes 2 -> 1" in warning[0] and "batch_size 4 -> 2" in warning[0]
    assert "data order is not exact" in warning[0]


def test_sigterm_saves_exits_zero_and_resumes_exactly_past_partial_checkpoints(trained_run, tiny_data, tmp_path):
    run, config, _ = trained_run
    out = tmp_path / "signalled"
    env = dict(os.environ, PYTHONWARNINGS="ignore", PYTHONUNBUFFERED="1")
    proc = subprocess.Popen([sys.executable, "-m", "utnet", "train", "--config", str(config), "--output-dir", str(out),
                             "--set", "train.checkpoint_every=0"],
                            cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    lines = []
    for line in proc.stdout:
        lines.append(line)
        if line.startswith("step 1/6"):
            proc.send_signal(signal.SIGTERM)
            break
    rest, _ = proc.communicate(timeout=300)
    text = "".join(lines) + rest
    assert proc.returncode == 0, text[-3000:]
    saved = [line for line in text.splitlines() if line.startswith("saved checkpoint on signal 15 at step")]
    assert saved, text[-3000:]
    step = int(saved[0].split()[-1])
    assert 1 <= step < 6
    assert json.loads((out / "run_state.json").read_text()) == {"status": "stopped_on_signal", "step": step,
                                                                "signal": 15}
    # A partial save (killed mid-write) and a directory without the completion marker are ignored.
    (out / "checkpoints" / ".tmp-step_00000098").mkdir()
    (out / "checkpoints" / "step_00000099").mkdir()
    (out / "checkpoints" / "step_00000099" / "model.safetensors").write_bytes(b"truncated")
    resumed = run_cli("train", "--config", config, "--output-dir", out, "--set", "train.checkpoint_every=0")
    ok(resumed)
    assert f"resumed from {out / 'checkpoints' / f'step_{step:08d}'}" in resumed.stdout
    diff = max_diff(weights(run / "checkpoints" / "step_00000006"), weights(out / "checkpoints" / "step_00000006"))
    assert diff <= 1e-6, diff


NAN_PLUGIN = textwrap.dedent('''
    """Test plugin: a zero loss that is NaN on chosen calls (counted per process), on every rank or
    on one. Its gradient stays finite (0 * joints): only the loss is bad, so DDP's gradient
    all-reduce cannot carry a NaN from one rank to the others."""
    import os
    from typing import Optional

    import torch
    from pydantic import Field

    import losses


    @losses.register_loss("nan_on_calls")
    class NanOnCalls(losses.LossTerm):
        class Config(losses.LossConfig):
            calls: list[int] = Field(default_factory=list, description="1-based calls that return NaN")
            rank: Optional[int] = Field(None, description="only on this RANK (None: every process)")

        def __init__(self, config=None, name=None):
            super().__init__(config, name)
            self.count = 0

        def elementwise(self, pred, batch):
            self.count += 1
            joints = self.from_pred(pred, "joints_3d")
            error = joints * 0.0
            on_this_rank = self.config.rank is None or os.environ.get("RANK") == str(self.config.rank)
            if on_this_rank and self.count in self.config.calls:
                error = error + float("nan")
            return error, torch.ones_like(error)
''')


def test_nonfinite_steps_are_skipped_then_the_run_stops(tiny_data, tmp_path):
    (tmp_path / "nan_plugin_for_test.py").write_text(NAN_PLUGIN)
    loss = dict(TINY["loss"], nan_on_calls={"weight": 1.0, "calls": [3, 5, 6]})
    # The plugin counts its calls, and the loss-balance measurement calls every term once more on its steps.
    config = write_config(tmp_path, tiny_data, loss_plugins=["nan_plugin_for_test"], loss=loss,
                          train={"max_steps": 8, "max_nonfinite_steps": 2, "eval_every": 0, "image_every": 0,
                                 "loss_balance_every": 0})
    proc = run_cli("train", "--config", config, env={"PYTHONPATH": f"{tmp_path}{os.pathsep}{REPO}"})
    assert proc.returncode == 1, proc.stdout[-2000:] + proc.stderr[-2000:]
    assert "step 3: non-finite loss or gradient norm on some rank: step skipped (1 in a row, 1 in total)" in proc.stdout
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("utnet train: train.max_nonfinite_steps: 2 non-finite steps in a row at step 6"), err[-3:]
    ckpts = tmp_path / "run" / "checkpoints"
    assert sorted(p.name for p in ckpts.iterdir()) == [f"step_{s:08d}" for s in range(1, 6)]
    w2, w3, w4, w5 = (weights(ckpts / f"step_{s:08d}") for s in (2, 3, 4, 5))
    assert max_diff(w2, w3) == 0.0 and max_diff(w4, w5) == 0.0  # skipped steps leave the weights alone
    assert max_diff(w3, w4) > 0.0 and all(torch.isfinite(v).all() for v in w5.values())
    assert json.loads((tmp_path / "run" / "run_state.json").read_text())["status"] == "failed"


def test_eval_writes_a_submission_in_the_ho3d_frame(trained_run, tiny_data, tmp_path):
    from utnet.engine.submission import load_ho3d_prediction

    run, config, _ = trained_run
    proc = run_cli("eval", "--config", config, "--checkpoint", run / "best", "--split", "evaluation",
                   "--output-dir", tmp_path / "eval")
    ok(proc)
    names = (tiny_data / "evaluation.txt").read_text().split()
    assert f"Evaluated on {len(names)} samples from 1 process (evaluation)" in proc.stdout
    xyz, verts = load_ho3d_prediction(tmp_path / "eval" / "pred.zip")
    assert xyz.shape == (len(names), 21, 3) and verts.shape == (len(names), 778, 3)
    assert (xyz[..., 2] < 0).all() and (verts[..., 2] < 0).all()  # OpenGL: the hand lies at negative z
    for i, name in enumerate(names):  # translated onto the given root: HO3D's wrist, OpenGL metres
        seq, frame = name.split("/")
        with open(tiny_data / "evaluation" / seq / "meta" / f"{frame}.pkl", "rb") as f:
            root_gl_m = np.asarray(pickle.load(f, encoding="latin1")["handJoints3D"], dtype=np.float64).reshape(3)
        np.testing.assert_allclose(xyz[i, 0], root_gl_m, atol=2e-6)
    metrics = json.loads((tmp_path / "eval" / "metrics.json").read_text())
    assert metrics["split"] == "evaluation" and metrics["num_samples"] == len(names)
    assert math.isfinite(metrics["refined"]["pa_mpjpe"])  # released ground truth present: local scores


def test_eval_untrained_scores_the_model_train_starts_from(trained_run, tmp_path):
    """`utnet eval --untrained` scores the model `utnet train` evaluated before its first step (same seed,
    same config): its metrics equal the run's metrics_untrained.json; another seed is another model."""
    run, config, _ = trained_run
    proc = run_cli("eval", "--config", config, "--untrained", "--split", "val", "--output-dir", tmp_path / "u0")
    ok(proc)
    assert "scoring the untrained model (seed 0)" in proc.stdout
    assert f"Evaluated on {VAL_SIZE} samples from 1 process (val)" in proc.stdout
    scored = json.loads((tmp_path / "u0" / "metrics.json").read_text())
    baseline = json.loads((run / "metrics_untrained.json").read_text())
    assert scored["num_samples"] == baseline["num_samples"] == VAL_SIZE
    assert scored["provenance"]["untrained_seed"] == 0 and "checkpoint" not in scored["provenance"]
    for output in ("refined", "coarse"):  # the same model on the same batches: equal to float32 rounding
        for name, value in baseline[output].items():
            assert scored[output][name] == pytest.approx(value, rel=1e-5, abs=1e-6), (output, name)
    proc = run_cli("eval", "--config", config, "--untrained", "--set", "seed=1", "--split", "val",
                   "--output-dir", tmp_path / "u1")
    ok(proc)
    other = json.loads((tmp_path / "u1" / "metrics.json").read_text())
    assert abs(other["refined"]["mpjpe"] - baseline["refined"]["mpjpe"]) > 1e-3 * baseline["refined"]["mpjpe"]
    # --checkpoint and --untrained name the scored model: exactly one of them
    proc = run_cli("eval", "--config", config, "--untrained", "--checkpoint", run / "best")
    assert proc.returncode == 2 and "not allowed with argument" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("eval", "--config", config)
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr and "--untrained" in proc.stderr


def test_bad_input_is_one_line_exit_2_and_writes_nothing(trained_run, tmp_path):
    run, config, _ = trained_run
    before = sorted(p.name for p in run.iterdir())
    proc = run_cli("train", "--config", config, "--output-dir", run, "--resume", tmp_path / "nope")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "--resume" in proc.stderr and "Traceback" not in proc.stderr
    assert sorted(p.name for p in run.iterdir()) == before
    proc = run_cli("eval", "--config", config, "--checkpoint", tmp_path / "nope")
    assert proc.returncode == 2 and "--checkpoint" in proc.stderr and "Traceback" not in proc.stderr
    # a truncated weights file: one line naming the file, not a safetensors traceback
    broken = tmp_path / "broken"
    shutil.copytree(run / "best", broken)
    weights_file = broken / "model.safetensors"
    weights_file.write_bytes(weights_file.read_bytes()[:100])
    proc = run_cli("eval", "--config", config, "--checkpoint", broken, "--output-dir", tmp_path / "eval_broken")
    assert proc.returncode == 2 and proc.stderr.strip().count("\n") == 0, proc.stderr
    assert "model.safetensors" in proc.stderr and "Traceback" not in proc.stderr


def test_signal_during_the_untrained_evaluation_saves_after_the_first_step(tiny_data, tmp_path):
    """The untrained evaluation runs with the handlers installed: a SIGTERM that lands there (sent here from
    inside the first evaluate call) is honoured at step 1, not a kill with no checkpoint."""
    config = write_config(tmp_path, tiny_data)
    out = tmp_path / "run"
    script = tmp_path / "signal_in_eval.py"
    script.write_text(f"""
import os, signal, sys
import utnet.engine.trainer as trainer
real_evaluate = trainer.evaluate
def evaluate(*args, **kwargs):
    if not getattr(evaluate, "sent", False):
        evaluate.sent = True
        os.kill(os.getpid(), signal.SIGTERM)
    return real_evaluate(*args, **kwargs)
trainer.evaluate = evaluate
from utnet.cli import main
sys.exit(main(["train", "--config", {str(config)!r}, "--output-dir", {str(out)!r}]))
""")
    proc = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=600,
                          env=dict(os.environ, PYTHONWARNINGS="ignore"))
    assert proc.returncode == 0, (proc.returncode, proc.stderr[-3000:])
    assert "saved checkpoint on signal 15 at step 1" in proc.stdout + proc.stderr
    state = json.loads((out / "run_state.json").read_text())
    assert state["status"] == "stopped_on_signal" and state["step"] == 1
    assert (out / "metrics_untrained.json").is_file()
