"""`utnet overfit`: can this configuration learn at all? Fit K fixed train samples, then score them."""
from __future__ import annotations

import argparse
import functools
import math
import time
from pathlib import Path

import torch

from utnet.commands.common import add_config_arguments, config_from_args
from utnet.errors import UserError

HELP = ("train the experiment's model, loss and optimizer on K fixed train samples for N steps, score the same "
        "samples and print PASS (exit 0) or FAIL (exit 1): run it (and `utnet doctor`) before long runs")

LOSS_RATIO = 0.3   # the total weighted loss must fall to at most this fraction of its first-step value
MPJPE_RATIO = 0.5  # and the refined train-set MPJPE (root-aligned) to at most this fraction of the untrained model's

RULE = f"""\
What it does: the first K samples of the train split (no augmentation) form one fixed batch; the
experiment's model, loss terms and optimizer (AdamW with optim.lr, lr_mult, weight decay, gradient
clipping; warmup capped at N/10 steps, then a constant lr) train on it for N steps; the K samples are
scored (eval mode) before and after. Under `accelerate launch` every process trains on the same K
samples, so the verdict does not depend on the process count while DDP itself is exercised.

PASS rule: the total weighted loss ends at most {LOSS_RATIO:g}x its first-step value AND the refined
train-set MPJPE (root-aligned, mm) ends at most {MPJPE_RATIO:g}x the untrained model's. Why: a model, loss
and optimizer that can learn memorise a handful of samples quickly; a loss that does not fall means
nothing reaches the weights (lr 0, a detached output, a broken term), and a loss that falls while the
3D error does not means the terms do not constrain the hand (wrong units or weights). Each term's
ratio and PA-MPJPE are printed but not required: terms compete (a prior towards the mean pose may
rise while the fit improves), and PA-MPJPE (scale and rotation removed) moves slowly from the mean
pose on the synthetic set. A non-finite loss is a FAIL at once. Measured on configs/synthetic.yaml
with the defaults (16 samples, 80 steps): total loss 0.07x, refined MPJPE 156.0 -> 36.7 mm (0.24x),
PA-MPJPE 19.6 -> 12.2 mm; 80 steps of batch 16 at the default's ~1.3-1.5 steps/s on 2 free cores
take about a minute; lr 0 leaves the loss at 1.00x."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_config_arguments(parser)
    parser.add_argument("--samples", type=int, default=16, metavar="K", help="train samples to fit (default 16)")
    parser.add_argument("--steps", type=int, default=80, metavar="N", help="optimizer steps (default 80)")
    parser.epilog = RULE
    parser.formatter_class = argparse.RawDescriptionHelpFormatter


def run(args) -> int:
    from utnet.engine.setup import make_accelerator

    cfg = config_from_args(args)
    if args.samples < 1:
        raise UserError(f"--samples: must be at least 1 (got {args.samples})")
    if args.steps < 1:
        raise UserError(f"--steps: must be at least 1 (got {args.steps})")
    cfg.data.augment.enabled = False
    cfg.train.max_steps = args.steps
    cfg.optim.warmup_steps = min(cfg.optim.warmup_steps, args.steps // 10)
    cfg.optim.schedule = "constant"
    accelerator = make_accelerator(cfg, Path(cfg.output_dir))
    say = functools.partial(print, flush=True) if accelerator.is_main_process else (lambda *a, **k: None)
    passed, reason = overfit(cfg, accelerator, args.samples, args.steps, say)
    say(f"{'PASS' if passed else 'FAIL'}: {reason}")
    return 0 if passed else 1


def fixed_batch(cfg, samples: int, device, say) -> dict:
    """The first `samples` samples of the train split as one batch on `device` (data set written if missing)."""
    from torch.utils.data import default_collate

    from utnet.data import build_dataset, ensure_dataset

    ensure_dataset(cfg, say)
    dataset = build_dataset(cfg, "train")
    if samples > len(dataset):
        raise UserError(f"--samples: {samples} is more than the train split has ({len(dataset)} samples)")
    say(f"overfit: the first {samples} of {len(dataset)} train samples of {cfg.data.root} (no augmentation)")
    batch = default_collate([dataset[i] for i in range(samples)])
    return {k: v.to(device) if torch.is_tensor(v) else v for k, v in batch.items()}


@torch.no_grad()
def score(model, batch: dict) -> dict[str, float]:
    """Refined and coarse mpjpe / pa_mpjpe (mm) of the model (eval mode) on the batch."""
    from utnet.engine import metrics as M

    model.eval()
    pred = model(batch)
    verts_valid = batch["has_mano"] > 0
    out = {}
    for output, p in (("refined", pred), ("coarse", pred["coarse"])):
        errors = M.per_sample_errors(p["joints_3d"].float(), batch["joints_3d"], p["verts_3d"].float(),
                                     batch["verts_3d"], joints_valid=batch["joints_3d_valid"], verts_valid=verts_valid)
        summary = M.summarize({k: v.cpu() for k, v in errors.items()})
        out.update({f"{output}/{name}": summary[name] for name in ("mpjpe", "pa_mpjpe")})
    model.train()
    return out


def overfit(cfg, accelerator, samples: int, steps: int, say) -> tuple[bool, str]:
    """Train on the fixed batch for `steps` steps; returns (passed, reason) and prints the report."""
    import losses
    from utnet.engine.targets import add_mano_targets
    from utnet.engine.setup import build_optimizer
    from utnet.model import initial_model

    batch = fixed_batch(cfg, samples, accelerator.device, say)
    model = initial_model(cfg)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins).to(accelerator.device)
    optimizer, scheduler = build_optimizer(cfg, model, accelerator.num_processes)
    model, optimizer, scheduler = accelerator.prepare(model, optimizer, scheduler)
    add_mano_targets(batch, accelerator.unwrap_model(model).mano)
    # every term at its full weight, past any `ramp` (the lr schedule is replaced by a constant too)
    ramp_ends = [term.config.ramp[1] for term in loss_set.terms.values() if term.config.ramp]
    loss_set.set_step(max(ramp_ends, default=0))
    weighted = [name for name, term in loss_set.terms.items() if term.config.weight > 0]
    if not weighted:
        return False, "no loss term has weight > 0: nothing trains the model"
    clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
    before = score(model, batch)
    say(f"overfit: {steps} steps on {samples} samples, {accelerator.num_processes} process(es), lr {cfg.optim.lr:g} "
        f"(warmup {cfg.optim.warmup_steps} steps, then constant{'; loss weights past their ramps' if ramp_ends else ''})")
    first = last = None
    start = time.perf_counter()
    model.train()
    for step in range(1, steps + 1):
        total, logs = loss_set(model(batch), batch)
        if not torch.isfinite(total.detach()):
            return False, f"the loss is not finite at step {step} ({total.item()})"
        accelerator.backward(total)
        accelerator.clip_grad_norm_(model.parameters(), clip)
        optimizer.step()
        scheduler.step()
        optimizer.zero_grad(set_to_none=True)
        last = {"loss/total": total.item(), **{k: v.item() for k, v in logs.items()}}
        first = first or last
        if step == 1 or step % max(1, steps // 5) == 0:
            say(f"overfit: step {step}/{steps} loss {last['loss/total']:.4g} ({time.perf_counter() - start:.0f} s)")
    seconds = time.perf_counter() - start
    after = score(model, batch)
    say(f"overfit: {steps} steps in {seconds:.1f} s ({steps / seconds:.2f} steps/s)")
    say(report_table(loss_set, first, last, before, after))
    return verdict(first, last, before, after)


def report_table(loss_set, first: dict, last: dict, before: dict, after: dict) -> str:
    lines = [f"{'term':<20} {'weight':>8} {'first (weighted)':>17} {'last (weighted)':>16} {'last/first':>11}"]
    weights = {name: f"{term.config.weight:>8.4g}" for name, term in loss_set.terms.items()}
    for name in [*loss_set.terms, "total"]:
        a, b = first[f"loss/{name}"], last[f"loss/{name}"]
        shown = f"{b / a:>11.3f}" if a > 0 else f"{'-':>11}"
        lines.append(f"{name:<20} {weights.get(name, ''):>8} {a:>17.6g} {b:>16.6g} {shown}")
    lines.append(f"{'train samples (mm)':<20} {'before':>26} {'after':>16} {'after/before':>11}")
    for key in before:
        ratio = after[key] / before[key] if before[key] > 0 else float("nan")
        lines.append(f"{key:<20} {before[key]:>26.2f} {after[key]:>16.2f} {ratio:>11.3f}")
    return "\n".join(lines)


def verdict(first: dict, last: dict, before: dict, after: dict) -> tuple[bool, str]:
    """(passed, reason) by the PASS rule of RULE."""
    loss_ratio = last["loss/total"] / first["loss/total"] if first["loss/total"] > 0 else float("nan")
    mpjpe_ratio = after["refined/mpjpe"] / before["refined/mpjpe"]
    loss_text = (f"the total weighted loss {first['loss/total']:.4g} -> {last['loss/total']:.4g} ({loss_ratio:.2f}x, "
                 f"needs <= {LOSS_RATIO:g}x)")
    mpjpe_text = (f"the refined train-set MPJPE {before['refined/mpjpe']:.2f} -> {after['refined/mpjpe']:.2f} mm "
                  f"({mpjpe_ratio:.2f}x, needs <= {MPJPE_RATIO:g}x)")
    checks = ((loss_text, loss_ratio, LOSS_RATIO), (mpjpe_text, mpjpe_ratio, MPJPE_RATIO))
    problems = [text for text, ratio, limit in checks if not ratio <= limit]
    if problems:
        return False, "this configuration does not fit its training samples: " + "; ".join(problems)
    return True, f"{loss_text}; {mpjpe_text}"
