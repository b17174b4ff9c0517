"""`utnet reweigh`: a recipe moved to another reduction keeps every term's weighted value (and so its balance)."""
from __future__ import annotations

import pytest
import torch
import yaml

import losses
from conftest import run_cli
from test_balance import default_model_batch
from test_engine import ok, tiny_data, write_config  # noqa: F401  (tiny_data is a fixture)
from utnet.config import load_config
from utnet.engine import balance


def weighted_values(loss_config: dict, samples) -> dict[str, float]:
    """Each term's weighted value summed over the (pred, batch) samples."""
    loss_set = losses.LossSet.from_config(loss_config)
    return {name: sum(term(pred, batch)[0].item() for pred, batch in samples) for name, term in loss_set.terms.items()}


@pytest.mark.parametrize("reduction", ["sum", "batch_mean"])
def test_converted_weights_are_the_ratio_of_denominators_and_keep_every_value(reduction):
    """Every default term, weight > 0 or not: mean -> `reduction` multiplies a one-part term's weight by
    (its denominator under `reduction`) / (the total weight of its elements); the weighted values stay; and
    converting back gives the original weights."""
    cfg, model, batch = default_model_batch()
    with torch.no_grad():
        samples = [(model(batch), batch)]
    rows = balance.converted_weights(losses.LossSet.from_config(cfg.loss), samples, reduction)
    assert list(rows) == list(cfg.loss)
    batch_size = batch["joints_3d"].shape[0]
    for name, row in rows.items():
        assert row["reduction"] == "mean" and row["weight"] == cfg.loss[name]["weight"]
        if name == "aux":  # two parts reduced apart under mean: only their total is matched
            continue
        stats = losses.LossSet.from_config({name: cfg.loss[name]}).terms[name](*samples[0])[2]
        element_weight = stats["weight_sum"].item()
        denominator = 1.0 if reduction == "sum" else batch_size
        assert row["factor"] == pytest.approx(denominator / element_weight, rel=1e-5), name
    converted = {name: dict(cfg.loss[name], weight=row["new_weight"], reduction=reduction) for name, row in rows.items()}
    before, after = weighted_values(cfg.loss, samples), weighted_values(converted, samples)
    for name in cfg.loss:
        assert after[name] == pytest.approx(before[name], rel=1e-5, abs=1e-12), name
    back = balance.converted_weights(losses.LossSet.from_config(converted), samples, "mean")
    for name, row in back.items():
        assert row["new_weight"] == pytest.approx(cfg.loss[name]["weight"], rel=1e-5), name


def test_reweigh_writes_a_config_whose_terms_keep_their_values_on_the_train_batches(tiny_data, tmp_path):  # noqa: F811
    """Through the CLI on the tiny set: the written config differs only in the loss section (every term under
    sum), loads, and gives every term the weighted value it had under mean on the same train batches (3 full
    batches of 4: the first sample of each twelfth of the 14-sample train split; weights rounded to 4 digits)."""
    from accelerate.utils import set_seed

    from utnet.data import build_dataset
    from utnet.engine.targets import add_mano_targets
    from utnet.model import build_model

    config = write_config(tmp_path, tiny_data)
    out = tmp_path / "sum.yaml"
    proc = run_cli("reweigh", "--config", config, "--to", "sum", "--batches", "4", "--out", out)  # 14 samples: 3 full batches
    ok(proc)
    assert "12 of 14 train samples" in proc.stdout and "(3 batch(es) of 4," in proc.stdout and f"wrote {out}" in proc.stdout
    assert "mean -> sum" in proc.stdout and "\nloss:\n  aux: {weight: " in proc.stdout
    original, converted = load_config(config), load_config(out)
    assert {n: t["reduction"] for n, t in converted.loss.items()} == {n: "sum" for n in original.loss}
    strip = lambda cfg: {k: v for k, v in cfg.model_dump(mode="json").items() if k != "loss"}  # noqa: E731
    assert strip(converted) == strip(original)
    for name in original.loss:  # every option but weight and reduction kept
        assert {k: v for k, v in converted.loss[name].items() if k not in ("weight", "reduction")} == \
            {k: v for k, v in original.loss[name].items() if k not in ("weight", "reduction")}
    # the conversion is not a no-op: under sum the weights shrink by each term's element count
    assert converted.loss["vertex_3d"]["weight"] < original.loss["vertex_3d"]["weight"] / 100

    cfg = original.model_copy(deep=True)
    cfg.data.augment.enabled = False
    dataset = build_dataset(cfg, "train")
    assert len(dataset) == 14
    set_seed(cfg.seed)
    model = build_model(cfg).eval()
    samples = []
    with torch.no_grad():
        indices = [int(i * 14 / 12) for i in range(12)]
        for start in range(0, 12, 4):
            batch = torch.utils.data.default_collate([dataset[i] for i in indices[start:start + 4]])
            add_mano_targets(batch, model.mano)
            samples.append((model(batch), batch))
    before, after = weighted_values(original.loss, samples), weighted_values(converted.loss, samples)
    for name in original.loss:
        assert after[name] == pytest.approx(before[name], rel=1e-3), name
    # and the printed section is the written one
    printed = yaml.safe_load(proc.stdout[proc.stdout.index("\nloss:\n"):].split("\nwrote ")[0])
    assert printed["loss"] == converted.loss


def test_reweigh_refuses_to_overwrite_and_bad_batches(tiny_data, tmp_path):  # noqa: F811
    config = write_config(tmp_path, tiny_data)
    existing = tmp_path / "existing.yaml"
    existing.write_text("keep me\n")
    proc = run_cli("reweigh", "--config", config, "--to", "sum", "--out", existing)
    assert proc.returncode == 2 and existing.read_text() == "keep me\n"
    assert proc.stderr.strip() == f"utnet reweigh: --out: {existing} exists; reweigh never overwrites a file (choose another name)"
    proc = run_cli("reweigh", "--config", config, "--to", "sum", "--batches", "0")
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert proc.stderr.strip() == "utnet reweigh: --batches: must be at least 1 (got 0)"
    proc = run_cli("reweigh", "--config", config, "--to", "sum", "--out", tmp_path / "missing" / "x.yaml")
    assert proc.returncode == 2 and "--out: the folder" in proc.stderr and "Traceback" not in proc.stderr
    proc = run_cli("reweigh", "--config", config, "--to", "median")
    assert proc.returncode == 2 and "invalid choice: 'median'" in proc.stderr
