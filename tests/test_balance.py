"""Who drives the gradient (`loss balance`), parameters without a gradient, and the first batches' debug block."""
from __future__ import annotations

import pytest
import torch

import losses
from conftest import run_cli
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from test_engine_multiprocess import accelerate_launch
from utnet.config import load_config
from utnet.engine import balance
from utnet.engine.targets import add_mano_targets
from utnet.engine.tracking import data_statistics
from utnet.model import build_model


def scalars(run_dir) -> dict[str, dict[int, float]]:
    """Tensorboard scalars of a run: tag -> {step: value}."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(run_dir / "tensorboard"), size_guidance={"scalars": 0}).Reload()
    return {tag: {e.step: e.value for e in events.Scalars(tag)} for tag in events.Tags()["scalars"]}


def balance_lines(stdout: str) -> list[str]:
    return [line for line in stdout.splitlines() if line.startswith("loss balance")]


def default_model_batch(*overrides):
    """The default experiment's model (CPU-sized crops) and a batch of its own shape with MANO ground truth."""
    from test_model import mano_batch

    cfg = load_config(None, ["data.image_size=[64, 48]", *overrides])
    torch.manual_seed(0)
    model = build_model(cfg)
    return cfg, model, mano_batch(model, 2)


# ------------------------------------------------------------------------------------- gradient shares
def test_shares_are_the_gradient_norms_on_the_tokens_and_sum_to_one():
    """Doubling a term's weight doubles its gradient norm; shares sum to 1; weight-0 terms are left out."""
    cfg, model, batch = default_model_batch()
    mapping = dict(cfg.loss, keypoint_2d=dict(cfg.loss["keypoint_2d"], weight=2.0))
    rows = {}
    for name, loss_config in (("default", cfg.loss), ("doubled", mapping)):
        loss_set = losses.LossSet.from_config(loss_config)
        pred = model(batch)
        rows[name] = balance.gradient_shares(loss_set, pred, batch, pred["tokens"])
    default, doubled = rows["default"], rows["doubled"]
    assert list(default) == [n for n, t in cfg.loss.items() if t["weight"] > 0]  # joint_3d etc. have weight 0
    assert sum(r["share"] for r in default.values()) == pytest.approx(1.0, abs=1e-6)
    assert doubled["keypoint_2d"]["grad_norm"] == pytest.approx(2 * default["keypoint_2d"]["grad_norm"], rel=1e-4)
    assert doubled["mano_prior"]["grad_norm"] == pytest.approx(default["mano_prior"]["grad_norm"], rel=1e-4)
    assert doubled["keypoint_2d"]["share"] > default["keypoint_2d"]["share"]
    # by hand: one term's gradient on the tokens
    loss_set = losses.LossSet.from_config(cfg.loss)
    pred = model(batch)
    value = loss_set.terms["mano_prior"](pred, batch)[0]
    (grad,) = torch.autograd.grad(value, pred["tokens"], retain_graph=True)
    assert balance.gradient_shares(loss_set, pred, batch, pred["tokens"])["mano_prior"]["grad_norm"] == \
        pytest.approx(grad.norm().item(), rel=1e-5)


def test_warnings_name_a_starved_and_a_dominant_term():
    rows = {"keypoint_2d": {"share": 0.0004, "weight": 1e-7}, "joint_3d": {"share": 0.9696, "weight": 0.05},
            "mano_prior": {"share": 0.03, "weight": 0.001}}
    warnings = balance.balance_warnings(rows)
    assert set(warnings) == {"keypoint_2d", "joint_3d"}
    assert warnings["keypoint_2d"].startswith("loss balance WARNING: keypoint_2d gets 0.0% of the gradient")
    assert warnings["joint_3d"].startswith("loss balance WARNING: joint_3d gets 97.0% of the gradient")
    assert all(line.endswith("convert them with `utnet reweigh`") for line in warnings.values())


def test_measured_every_100_steps_by_default_and_every_log_step_when_null():
    """Each measurement costs a partial backward per term (~0.3 of a step): every 100 steps keeps it under 1% of the run."""
    from utnet.config import TrainConfig

    assert balance.every(TrainConfig(log_every=25)) == 100
    assert balance.every(TrainConfig(log_every=25, loss_balance_every=None)) == 25
    assert balance.every(TrainConfig(log_every=25, loss_balance_every=0)) == 0


def test_measured_at_the_first_step_and_every_n_on_syncing_micro_batches_only():
    report = balance.LossBalance(loss_set=None, every=5, say=print)
    assert report.due(1, True) and not report.due(1, False)
    report.measured = True
    assert [s for s in range(1, 16) if report.due(s, True)] == [5, 10, 15]
    assert not report.due(5, False)  # a micro-batch that does not complete the step (accumulation)
    assert not balance.LossBalance(None, every=0, say=print).due(1, True)  # disabled
    assert not balance.LossBalance(None, every=5, say=None).due(1, True)   # not the main process


def test_train_prints_the_table_warns_and_logs_grad_shares(tiny_data, tmp_path):  # noqa: F811
    """A 4-step run (gradient accumulation 2) with keypoint_2d weighted 1e-7 and a model output no term
    uses (model.token_keypoints without its loss term)."""
    config = write_config(tmp_path, tiny_data, model={"token_keypoints": True},
                          train={"max_steps": 4, "grad_accum": 2, "log_every": 2, "eval_every": 0,
                                 "checkpoint_every": 0, "image_every": 0, "loss_balance_every": None})
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "run", "--set", "loss.keypoint_2d.weight=1e-7")
    ok(proc)
    lines = balance_lines(proc.stdout)
    terms = ["keypoint_2d", "joint_3d", "vertex_3d", "mano_prior", "aux"]
    assert lines[0].startswith("loss balance at step 1")
    table = {line.split()[2]: line.split() for line in lines[2:2 + len(terms)]}
    assert sorted(table) == sorted(terms) and table["keypoint_2d"][3:5] == ["1e-07", "mean"]
    assert sum(float(row[-1].rstrip("%")) for row in table.values()) == pytest.approx(100, abs=0.3)
    assert any(line.startswith("loss balance WARNING: keypoint_2d gets 0.0% of the gradient") for line in lines)
    assert len(lines) == 2 + len(terms) + sum("WARNING" in line for line in lines)  # the table once
    logged = scalars(tmp_path / "run")
    for name in terms:
        assert sorted(logged[f"grad_share/{name}"]) == [1, 2, 4]  # the first step, then every log_every
    for step in (1, 2, 4):
        assert sum(logged[f"grad_share/{n}"][step] for n in terms) == pytest.approx(1.0, abs=1e-5)
    unused = [line for line in proc.stdout.splitlines() if "no gradient" in line]
    assert len(unused) == 1 and "token_keypoints.weight, token_keypoints.bias" in unused[0], unused


def test_loss_balance_every_0_measures_nothing(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data, train={"max_steps": 1, "eval_every": 0, "checkpoint_every": 0,
                                                      "image_every": 0, "loss_balance_every": 0})
    proc = run_cli("train", "--config", config, "--output-dir", tmp_path / "run")
    ok(proc)
    assert not balance_lines(proc.stdout)
    assert not any(tag.startswith("grad_share/") for tag in scalars(tmp_path / "run"))


def test_two_processes_report_once_from_the_main_process(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data, train={"max_steps": 2, "grad_accum": 2, "log_every": 1,
                                                      "eval_every": 0, "checkpoint_every": 0, "image_every": 0,
                                                      "loss_balance_every": 1})
    proc = accelerate_launch("train", "--config", config, "--output-dir", tmp_path / "run")
    ok(proc)
    assert proc.stdout.count("loss balance at step 1") == 1
    logged = scalars(tmp_path / "run")
    assert sorted(logged["grad_share/keypoint_2d"]) == [1, 2]
    assert "no gradient" not in proc.stdout


# ------------------------------------------------------------------------------------- no gradient
def test_the_default_model_reports_no_parameter_without_gradient_and_an_unused_module_is_named():
    cfg, model, batch = default_model_batch()
    loss_set = losses.LossSet.from_config(cfg.loss)
    loss_set(model(batch), batch)[0].backward()
    assert balance.parameters_without_gradient(model) == []
    # the refiner's zero-initialised output layer gives the layers before it a zero gradient: in the graph
    zero = [n for n, p in model.named_parameters() if p.grad is not None and not p.grad.any()]
    assert any(n.startswith("refiner.") for n in zero), zero

    model.zero_grad(set_to_none=True)
    model.unused_head = torch.nn.Linear(4, 4)
    loss_set(model(batch), batch)[0].backward()
    assert balance.parameters_without_gradient(model) == ["unused_head.weight", "unused_head.bias"]
    said = []
    checker = balance.UnusedParameters(find_unused_parameters=False, say=said.append)
    checker.check(model)
    checker.check(model)  # once, after the first backward
    assert len(said) == 1 and "no gradient" in said[0] and "unused_head.weight, unused_head.bias" in said[0]
    assert "train.find_unused_parameters" in said[0]


def test_find_unused_parameters_reaches_ddp():
    from utnet.engine.setup import make_accelerator

    cfg = load_config(None, ["train.find_unused_parameters=true"])
    accelerator = make_accelerator(cfg, cfg.output_dir)
    assert accelerator.ddp_handler.find_unused_parameters is True
    assert make_accelerator(load_config(), cfg.output_dir).ddp_handler.find_unused_parameters is False


# ------------------------------------------------------------------------------------- debug block
def debug_block(scale: float = 1.0) -> str:
    cfg, model, batch = default_model_batch()
    batch = add_mano_targets(batch, model.mano)
    with torch.no_grad():
        pred = model(batch)
    pred = dict(pred, joints_3d=pred["joints_3d"] * scale)
    return data_statistics(1, batch, pred, model.focal_length)


def test_debug_block_compares_root_centred_joints_and_spans():
    block = debug_block()
    assert "GT root-centred joints mm:" in block and "predicted root-centred joints mm:" in block
    span = next(line for line in block.splitlines() if "hand span wrist -> middle tip mm" in line)
    gt, pred = (float(x) for x in span.split("GT ")[1].split(" (ratio")[0].replace("predicted ", "").split(", "))
    assert 100 < gt < 300 and 100 < pred < 300  # both a hand's span in mm
    depth = next(line for line in block.splitlines() if "predicted camera depth" in line)
    assert "weak-perspective camera (f = 5000 px" in depth
    assert "predicted 3D joints mm" not in block  # no absolute prediction beside the GT root
    assert "WARN" not in block


def test_debug_block_warns_when_the_prediction_is_1000x_the_ground_truth():
    block = debug_block(scale=1000.0)
    warn = [line for line in block.splitlines() if "WARN" in line]
    assert len(warn) == 1 and "mm vs m" in warn[0] and "double scaling" in warn[0], block


def test_bench_balance_prints_one_json_object(tmp_path, tiny_data):  # noqa: F811
    from test_benchmarks import positive, run_bench

    config = write_config(tmp_path, tiny_data)
    r = run_bench("bench_balance.py", "--config", config, "--repeats", 1)
    assert positive(r["plain_step_s"], r["measured_step_s"]) and r["every"] == 100 and r["terms_measured"] == 5
    assert r["measure_s"] > 0 and r["run_overhead_fraction"] == pytest.approx(r["measure_over_plain"] / 100, abs=2e-4)
    r = run_bench("bench_balance.py", "--config", config, "--repeats", 1, "--set", "train.loss_balance_every=null")
    assert r["every"] == 1 and r["run_overhead_fraction"] == pytest.approx(r["measure_over_plain"], abs=2e-3)
