"""`train(cfg)`: the whole training run in one function, top to bottom.

build (data, model, loss, optimizer, schedule) -> accelerator.prepare -> resume -> evaluate the untrained
model -> loop: accumulate, backward; at each optimizer step boundary clip, agree on non-finite steps and
signals, step, log, evaluate, checkpoint -> final metrics beside the untrained ones.

Every distributed decision is a visible accelerator call. Exact resume rests on three things: the
accelerate checkpoint (weights, optimizer, scheduler, every rank's RNG states), the registered
TrainState (step, epoch, batches consumed in the epoch) with skip_first_batches, and a data order and
augmentation that depend only on (seed, epoch, sample): see utnet.data.sampling.
"""
from __future__ import annotations

import json
import math
from pathlib import Path
from typing import NamedTuple

import torch

from utnet.config import ExperimentConfig, config_to_yaml
from utnet.data.sampling import epoch_seed
from utnet.engine import balance
from utnet.engine import checkpoint as ckpt
from utnet.engine.evaluator import evaluate, report_skipped
from utnet.engine.setup import build_optimizer, eval_subset, make_accelerator, make_eval_loader, make_train_loader
from utnet.engine.rundir import write_run_state
from utnet.engine.signals import StopOnSignal, agree_max
from utnet.engine.targets import add_mano_targets
from utnet.engine.tracking import (Progress, comparison_table, data_statistics, log_image, log_scalars,
                                   metric_scalars, start_tracking, summary_line)
from utnet.engine.visualize import training_panel
from utnet.errors import UserError


class Agreed(NamedTuple):
    """What every rank agrees on at an optimizer step boundary (the maximum over the ranks)."""

    nonfinite: bool  # some rank's loss or gradient norm is NaN/inf: every rank skips the step
    signal: int  # a stop signal some rank received (0: none): every rank saves this step and stops


def agree(accelerator, loss_nonfinite: torch.Tensor, grad_norm, signum: int) -> Agreed:
    """One small collective: non-finite loss (0/1 tensor) or gradient norm on any rank, and any rank's signal."""
    norm_nonfinite = (~torch.isfinite(grad_norm.detach())).float() if torch.is_tensor(grad_norm) else 0.0
    nonfinite = torch.maximum(loss_nonfinite, torch.as_tensor(norm_nonfinite, device=loss_nonfinite.device))
    nonfinite, signal = agree_max(accelerator, [nonfinite, signum])
    return Agreed(nonfinite=bool(nonfinite), signal=int(signal))


def skip_step(accelerator, state: ckpt.TrainState) -> None:
    """Count a skipped non-finite step; the weights, the optimizer state and the schedule stay untouched.

    Under fp16, accelerator.clip_grad_norm_ has already called the GradScaler's unscale_; the scaler's
    update() normally runs inside optimizer.step(), so a skipped step calls it here: without it the next
    unscale_ raises and the loss scale would never drop.
    """
    state.nonfinite_in_row += 1
    state.nonfinite_total += 1
    if accelerator.scaler is not None:
        accelerator.scaler.update()


def metric_value(metrics: dict, dotted: str) -> float:
    """metrics["refined"]["pa_mpjpe"] for "refined/pa_mpjpe" (a train.best_metric, validated by the config)."""
    output, name = dotted.split("/", 1)
    return float(metrics[output][name])


def train(cfg: ExperimentConfig, resume: str = "auto", log=print) -> dict:
    """Train as configured; returns {"baseline": metrics, "final": metrics, "stopped_on_signal": int}.

    resume: "auto" (newest complete checkpoint under output_dir, if any), "none", or a checkpoint path.
    Bad input raises UserError before anything is written.
    """
    from utnet.data import ensure_dataset

    out = Path(cfg.output_dir)
    resume_from = ckpt.resolve_resume(resume, out)
    accelerator = make_accelerator(cfg, out, log_with="tensorboard")
    say = log if accelerator.is_main_process else (lambda *a, **k: None)

    # ---------------------------------------------------------------- build
    with accelerator.main_process_first():
        ensure_dataset(cfg, say)
    # From here on a signal only sets a flag (the untrained evaluation can take minutes): the run saves and
    # stops at its first optimizer step. Synthesis stays outside: a closed terminal's SIGHUP would kill its
    # pool workers and leave the parent waiting on them, so there the whole process dies, as before.
    with StopOnSignal() as stop:
        return _train_after_data(cfg, accelerator, resume_from, say, stop)


def _train_after_data(cfg: ExperimentConfig, accelerator, resume_from, say, stop) -> dict:
    """`train` once the data set exists, with the signal handlers installed (`stop`)."""
    from accelerate.data_loader import skip_first_batches

    import losses
    from utnet.data import build_dataset
    from utnet.model import initial_model

    out = Path(cfg.output_dir)
    t = cfg.train
    main = accelerator.is_main_process
    train_set = build_dataset(cfg, "train")
    val_set = eval_subset(build_dataset(cfg, "val"), cfg.eval.max_samples, say)
    model = initial_model(cfg)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins).to(accelerator.device)
    optimizer, scheduler = build_optimizer(cfg, model, accelerator.num_processes)
    train_loader, worker_seeds = make_train_loader(cfg, train_set, accelerator.num_processes)
    val_loader = make_eval_loader(cfg, val_set)

    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    state = ckpt.TrainState()  # saved as train_state.json by ckpt (not registered: accelerate pickles custom states)
    net = accelerator.unwrap_model(model)
    mano = net.mano

    if main:
        out.mkdir(parents=True, exist_ok=True)
        write_run_state(out, "running")
    if resume_from is not None:
        ckpt.load_checkpoint(accelerator, resume_from, state, cfg.data.batch_size, say)
        say(f"resumed from {resume_from} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
    if main:  # only now: a failed resume leaves the run's config.yaml as it was
        (out / "config.yaml").write_text(config_to_yaml(cfg))
    start_tracking(accelerator, cfg)
    say(f"training on {accelerator.num_processes} process(es), {accelerator.device}, mixed precision "
        f"{accelerator.mixed_precision}: {len(train_set)} train / {len(val_set)} val samples, "
        f"{t.max_steps} steps of {cfg.data.batch_size} x {accelerator.num_processes} x {t.grad_accum} samples")

    # ---------------------------------------------------------------- the untrained model
    baseline_file = out / "metrics_untrained.json"
    if state.step == 0:
        baseline = evaluate(accelerator, model, val_loader, "val", len(val_set), out_dir=out / "untrained",
                            grid_samples=cfg.eval.grid_samples, log=say)
        if main:
            baseline_file.write_text(json.dumps(baseline, indent=2))
        say(summary_line(0, "val", baseline).replace("eval step 0", "untrained model"))
    else:  # resumed: the untrained metrics of this run, or of the run the checkpoint came from
        found = [f for f in (baseline_file, resume_from.parent / baseline_file.name,
                             resume_from.parent.parent / baseline_file.name) if f.is_file()]
        baseline = json.loads(found[0].read_text()) if found else None
        if main and found and found[0] != baseline_file:
            baseline_file.write_text(found[0].read_text())
    if state.step == 0:
        log_scalars(accelerator, metric_scalars(baseline, "val"), step=0)

    # ---------------------------------------------------------------- the loop
    clip = cfg.optim.clip_grad_norm if cfg.optim.clip_grad_norm > 0 else math.inf
    progress = Progress(t.max_steps, state.step, main)
    last_metrics = None
    agreed = Agreed(nonfinite=False, signal=0)
    debug_left = t.debug_batches

    def running() -> bool:
        """Steps left to take, and no stop signal agreed on."""
        return state.step < t.max_steps and not agreed.signal

    loss_balance = balance.LossBalance(loss_set, balance.every(t), say if main else None)
    unused = balance.UnusedParameters(t.find_unused_parameters, say if main else None)
    model.train()
    while running():
        # one epoch, or the rest of it when resuming mid-epoch
        train_loader.set_epoch(state.epoch)  # reaches the EpochSampler through the prepared loader
        worker_seeds.manual_seed(epoch_seed(cfg.seed, state.epoch))
        batches = skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch else train_loader
        loss_nonfinite = torch.zeros((), device=accelerator.device)  # 0/1 over the accumulated micro-batches
        for batch in batches:
            with accelerator.accumulate(model):
                add_mano_targets(batch, mano)
                loss_set.set_step(state.step)  # per-term weight ramps follow the optimizer step
                pred = model(batch)
                total, terms = loss_set(pred, batch)
                loss_balance.measure(pred, batch, state.step + 1, accelerator.sync_gradients)
                accelerator.backward(total)
                unused.check(net)
            state.batch_in_epoch += 1
            # kept on the device: reading it here would wait for every micro-batch's backward
            loss_nonfinite = torch.maximum(loss_nonfinite, (~torch.isfinite(total.detach())).float())
            if debug_left > 0:
                debug_left -= 1
                say(data_statistics(t.debug_batches - debug_left, batch, pred, net.focal_length))

            if accelerator.sync_gradients:
                # ---- the optimizer step boundary: every rank reaches it together
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                agreed = agree(accelerator, loss_nonfinite, grad_norm, stop.signum)
                if agreed.nonfinite:
                    skip_step(accelerator, state)
                else:
                    optimizer.step()
                    scheduler.step()
                    state.nonfinite_in_row = 0
                optimizer.zero_grad(set_to_none=True)
                loss_nonfinite = torch.zeros((), device=accelerator.device)
                state.step += 1

                # ---- after the step: give up, log, evaluate, save
                if agreed.nonfinite:
                    _check_nonfinite_steps(state, t.max_nonfinite_steps, out, main, say)
                if state.step % t.log_every == 0 or state.step == t.max_steps:
                    scalars = _step_scalars(accelerator, terms, total, grad_norm, optimizer, state)
                    log_scalars(accelerator, scalars, step=state.step)
                    progress.update(state.step, scalars["loss/total"], optimizer.param_groups[0]["lr"])
                else:
                    progress.update(state.step)
                loss_balance.log(accelerator, state.step)
                if t.image_every and state.step % t.image_every == 0 and main:
                    log_image(accelerator, "images/train", training_panel(batch, pred, net), state.step)
                if (t.eval_every and state.step % t.eval_every == 0) or state.step == t.max_steps:
                    last_metrics = evaluate(accelerator, model, val_loader, "val", len(val_set), out_dir=out,
                                            grid_samples=cfg.eval.grid_samples, log=progress.write)
                    log_scalars(accelerator, metric_scalars(last_metrics, "val"), step=state.step)
                    progress.write(summary_line(state.step, "val", last_metrics))
                    model.train()
                    _keep_best(accelerator, out, state, cfg, last_metrics)
                if (t.checkpoint_every and state.step % t.checkpoint_every == 0) or not running():
                    ckpt.save_step_checkpoint(accelerator, out, state, cfg.data.batch_size, t.keep_checkpoints)
                if agreed.signal:
                    progress.write(f"saved checkpoint on signal {agreed.signal} at step {state.step}")
                if not running():
                    break
        if running():  # the epoch ran out, the run did not: the next epoch starts at its first batch
            state.epoch += 1
            state.batch_in_epoch = 0

    # ---------------------------------------------------------------- the end
    progress.close()
    if agreed.signal:
        report_skipped(accelerator, {"train": train_set, "val": val_set}, say)
        if main:
            write_run_state(out, "stopped_on_signal", step=state.step, signal=agreed.signal)
        accelerator.end_training()
        return {"baseline": baseline, "final": last_metrics, "stopped_on_signal": agreed.signal}
    if last_metrics is None:  # resumed from a checkpoint at or past train.max_steps: the loop did not run
        last_metrics = evaluate(accelerator, model, val_loader, "val", len(val_set), out_dir=out,
                                grid_samples=cfg.eval.grid_samples, log=say)
    report_skipped(accelerator, {"train": train_set, "val": val_set}, say)
    if baseline is not None:
        say(f"final validation metrics after {state.step} steps (mm; {state.nonfinite_total} non-finite steps "
            f"skipped), beside the untrained model:\n" + comparison_table(baseline, last_metrics))
    else:
        say(summary_line(state.step, "val", last_metrics) + " (untrained metrics unknown: resumed from a "
            "checkpoint without metrics_untrained.json)")
    if main:
        write_run_state(out, "finished", step=state.step)
    accelerator.end_training()
    return {"baseline": baseline, "final": last_metrics, "stopped_on_signal": 0}


def _check_nonfinite_steps(state: ckpt.TrainState, max_in_row: int, out: Path, main: bool, say) -> None:
    """Report a skipped non-finite step; after train.max_nonfinite_steps of them in a row, fail the run."""
    if state.nonfinite_in_row >= max_in_row:
        good = ckpt.list_checkpoints(out)
        if main:
            write_run_state(out, "failed", step=state.step)
        raise UserError(
            f"train.max_nonfinite_steps: {state.nonfinite_in_row} non-finite steps in a row at step "
            f"{state.step} (loss or gradient norm NaN/inf); weights not updated by them; last good "
            f"checkpoint: {good[-1] if good else 'none'}", exit_code=1)
    say(f"step {state.step}: non-finite loss or gradient norm on some rank: step skipped "
        f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")


def _step_scalars(accelerator, terms: dict, total, grad_norm, optimizer, state: ckpt.TrainState) -> dict:
    """The logged scalars of a step: loss terms, total and gradient norm averaged over the ranks (of the
    step's last micro-batch), the learning rate of each parameter group and the skipped-step count."""
    scalars = {**terms, "loss/total": total.detach(), "grad_norm": torch.as_tensor(grad_norm).float()}
    scalars = dict(zip(scalars, accelerator.reduce(
        torch.stack([v.float().reshape(()) for v in scalars.values()]), reduction="mean").tolist()))
    scalars.update({f"lr/{g['name']}": g["lr"] for g in optimizer.param_groups})
    scalars["nonfinite_steps"] = state.nonfinite_total
    return scalars


def _keep_best(accelerator, out: Path, state: ckpt.TrainState, cfg: ExperimentConfig, metrics: dict) -> None:
    """Save <out>/best (with its metrics.json) when train.best_metric improved on the best so far."""
    best_metric = cfg.train.best_metric
    value = metric_value(metrics, best_metric)
    if value < state.best_metric:
        state.best_metric = value
        ckpt.save_checkpoint(accelerator, out / "best", state, cfg.data.batch_size, extra={best_metric: value})
        if accelerator.is_main_process:
            (out / "best" / "metrics.json").write_text((out / "metrics.json").read_text())
