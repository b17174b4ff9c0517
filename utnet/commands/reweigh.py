"""`utnet reweigh`: move a loss recipe to another reduction without changing its balance."""
from __future__ import annotations

import argparse
import functools
from pathlib import Path

import torch

from utnet.commands.common import add_config_arguments, config_from_args
from utnet.config import config_to_yaml
from utnet.errors import UserError

HELP = ("switch every loss term to another reduction (sum / batch_mean / mean) with its weight converted so that "
        "it keeps its weighted value, and its share of the gradient, on real train batches")

REDUCTIONS = ("sum", "batch_mean", "mean")
DIGITS = 4  # significant digits of the written weights (the conversion itself is exact to float32)

RULE = """\
Why: a weight is in the units of its reduction. Under `mean` a term is divided by the total weight
of its elements (a vertex term by 778 x 3 per sample), under `sum` it is not, so the same weight
under `sum` gives the vertex term 111x the say of a term with 21 elements per sample (the heatmaps)
and grows with the batch size. Weights copied across reductions put terms at 0% or 99% of the gradient.

What it does: --batches full batches of data.batch_size train samples (no augmentation; evenly
spread over the split) go through the untrained model. A term with one part gets weight x (its
denominator under --to) / (its denominator now) (1 for sum, the batch size for batch_mean, the total
weight of its elements for mean), averaged over the batches: it holds for every prediction. `aux`
reduces its sub-terms apart under `mean`, so its one factor matches their reduced total on these
batches only. Under `mean` a masked term's denominator (keypoints outside the crop, samples without
MANO) varies from batch to batch: more --batches give the average. Ramps, sub-weights and every
other key are kept. Prints the table and the new `loss:` section; --out FILE writes the whole config
with it (`utnet train --config FILE --output-dir DIR` trains it); check its `loss balance` table."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--to", required=True, choices=REDUCTIONS, help="the reduction every term gets")
    parser.add_argument("--batches", type=int, default=4, metavar="N",
                        help="train batches the values are measured on (default 4)")
    parser.add_argument("--out", default=None, metavar="FILE",
                        help="write the full config with the converted loss section here (never overwrites)")
    parser.epilog = RULE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args) -> int:
    cfg = config_from_args(args)
    if args.batches < 1:
        raise UserError(f"--batches: must be at least 1 (got {args.batches})")
    out = Path(args.out) if args.out else None
    if out is not None and out.exists():
        raise UserError(f"--out: {out} exists; reweigh never overwrites a file (choose another name)")
    if out is not None and not out.parent.is_dir():
        raise UserError(f"--out: the folder {out.parent} does not exist")
    say = functools.partial(print, flush=True)
    rows = measure(cfg, args.to, args.batches, say)
    unconverted = [name for name, row in rows.items() if row["new_weight"] is None and row["weight"] > 0]
    say(table(rows, args.to))
    if unconverted:
        raise UserError(f"not converted: {', '.join(unconverted)} is 0 under {args.to} on every measured sample "
                        f"(nothing to match); measure on more --batches or check the term's inputs")
    section = converted_section(cfg.loss, rows, args.to)
    say(config_to_yaml_section(section))
    if out is not None:
        converted = cfg.model_copy(deep=True)
        converted.loss = section
        out.write_text(config_to_yaml(converted))
        say(f"wrote {out}: train it with `utnet train --config {out} --output-dir DIR`")
    return 0


def rounded(value: float) -> float:
    return float(f"{value:.{DIGITS}g}")


def converted_section(loss: dict, rows: dict, reduction: str) -> dict:
    """The loss section with every term's reduction set to `reduction` and its weight converted (rounded)."""
    section = {}
    for name, options in loss.items():
        row = rows[name]
        weight = options["weight"] if row["new_weight"] is None else rounded(row["new_weight"])
        section[name] = {**options, "weight": weight, "reduction": reduction}
    return section


def config_to_yaml_section(section: dict) -> str:
    """The `loss:` section as YAML, one flow mapping per term (paste-able into an experiment file)."""
    import yaml

    lines = ["loss:"]
    for name, options in section.items():
        body = yaml.safe_dump(options, default_flow_style=True, sort_keys=False, width=10_000).strip()
        lines.append(f"  {name}: {body}")
    return "\n".join(lines)


def table(rows: dict, reduction: str) -> str:
    lines = [f"{'term':<20} {'reduction':<19} {'weight':>10} {'new weight':>12} {'factor':>12}"]
    for name, row in rows.items():
        new = "-" if row["new_weight"] is None else f"{rounded(row['new_weight']):.{DIGITS}g}"
        factor = "-" if row["factor"] is None else f"{row['factor']:.6g}"
        lines.append(f"{name:<20} {row['reduction'] + ' -> ' + reduction:<19} {row['weight']:>10.4g} "
                     f"{new:>12} {factor:>12}")
    return "\n".join(lines)


@torch.no_grad()
def measure(cfg, reduction: str, batches: int, say) -> dict[str, dict]:
    """balance.converted_weights on `batches` evenly spread train batches through the untrained model."""
    from torch.utils.data import default_collate

    import losses
    from utnet.data import build_dataset, ensure_dataset
    from utnet.engine.balance import converted_weights
    from utnet.engine.targets import add_mano_targets
    from utnet.model import initial_model

    cfg = cfg.model_copy(deep=True)
    cfg.data.augment.enabled = False
    ensure_dataset(cfg, say)
    dataset = build_dataset(cfg, "train")
    size = cfg.data.batch_size
    count = min(len(dataset), batches * size)
    if count >= size:  # full batches only, as training sees them (its loader drops the last partial one)
        count -= count % size
    stride = len(dataset) / count
    indices = [int(i * stride) for i in range(count)]
    say(f"reweigh: {count} of {len(dataset)} train samples of {cfg.data.root} ({-(-count // size)} batch(es) "
        f"of {min(size, count)}, no augmentation), the untrained model")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model = initial_model(cfg).to(device).eval()
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins).to(device)
    samples = []
    for start in range(0, count, size):
        batch = default_collate([dataset[i] for i in indices[start:start + size]])
        batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}
        add_mano_targets(batch, model.mano)
        samples.append((model(batch), batch))
    return converted_weights(loss_set, samples, reduction)
