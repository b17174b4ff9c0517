"""Per-term weight ramps (`loss.<term>.ramp: [start, end]`): the weight a term trains with at each step."""
from __future__ import annotations

import pytest
import torch

import losses
from conftest import run_cli
from losses.base import ramp_factor
from test_balance import scalars
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)


def test_ramp_factor_is_0_before_start_linear_then_1():
    assert [ramp_factor((2, 6), s) for s in range(8)] == [0, 0, 0, 0.25, 0.5, 0.75, 1, 1]
    assert [ramp_factor((3, 3), s) for s in (0, 2, 3, 4)] == [0, 0, 1, 1]  # a step at 3
    assert ramp_factor(None, 0) == 1.0


def test_a_term_trains_with_its_weight_times_the_ramp_factor():
    term = losses.registered_losses()["joint_3d"]({"weight": 0.5, "ramp": [10, 20]})
    pred = {"joints_3d": torch.arange(63, dtype=torch.float32).reshape(1, 21, 3)}
    batch = {"joints_3d": torch.zeros(1, 21, 3), "joints_3d_valid": torch.ones(1, 21)}
    values = {}
    loss_set = losses.LossSet({"joint_3d": term})
    for step in (0, 10, 15, 20, 1000):
        loss_set.set_step(step)
        value, raw, _ = term(pred, batch)
        values[step] = (value.item(), raw.item())
    raw = values[0][1]
    assert raw > 0 and all(r == raw for _, r in values.values())  # the unweighted error does not ramp
    assert [v for v, _ in values.values()] == pytest.approx([0, 0, 0.25 * raw, 0.5 * raw, 0.5 * raw], rel=1e-6)
    assert term.weight == 0.5 and loss_set.terms["joint_3d"].config.weight == 0.5


@pytest.mark.parametrize("ramp, message", [("[300, 100]", "needs 0 <= start <= end (got [300, 100])"),
                                           ("[-5, 10]", "needs 0 <= start <= end (got [-5, 10])"),
                                           ("[1, 2, 3]", "at most 2 items")])
def test_a_bad_ramp_is_one_line_naming_the_key(cli, ramp, message):
    proc = cli("config", "--set", f"loss.joint_3d.ramp={ramp}")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("loss.joint_3d.ramp"), proc.stderr
    assert message in lines[0]


def test_training_logs_the_ramped_weight_step_by_step(tiny_data, tmp_path):  # noqa: F811
    """joint_3d weight 1 ramped over steps [1, 3]: the step computed after 0, 1, 2, 3 optimizer steps trains
    with factor 0, 0, 0.5, 1 (logged at steps 1-4); the other terms are untouched; the loss balance table
    at step 1 leaves the term out (weight 0 then) and grad_share/joint_3d appears once it has weight."""
    config = write_config(tmp_path, tiny_data, train={"max_steps": 4, "log_every": 1, "eval_every": 0,
                                                      "checkpoint_every": 0, "image_every": 0,
                                                      "loss_balance_every": 1})
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "run",
                   "--set", "loss.joint_3d.weight=1.0", "--set", "loss.joint_3d.ramp=[1, 3]")
    ok(proc)
    logged = scalars(tmp_path / "run")
    weighted, raw = logged["loss/joint_3d"], logged["loss_raw/joint_3d"]
    assert sorted(weighted) == [1, 2, 3, 4] and all(raw[s] > 0 for s in raw)
    assert [weighted[s] / raw[s] for s in (1, 2, 3, 4)] == pytest.approx([0, 0, 0.5, 1], abs=1e-6)
    assert logged["loss/mano_prior"][1] == pytest.approx(logged["loss_raw/mano_prior"][1], rel=1e-6)  # weight 1
    table = [line.split()[2] for line in proc.stdout.splitlines() if line.startswith("loss balance   ")][1:]
    assert "joint_3d" not in table and "mano_prior" in table
    assert sorted(logged["grad_share/joint_3d"]) == [3, 4]
