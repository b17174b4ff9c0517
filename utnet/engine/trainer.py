"""`train(cfg)`: the whole training run in one function, top to bottom.

build (data, model, loss, optimizer, schedule) -> accelerator.prepare -> resume -> evaluate the untrained
model -> loop: accumulate, backward, clip when gradients sync, agree on non-finite steps and signals,
step, log, evaluate, checkpoint -> final metrics beside the untrained ones.

Every distributed decision is a visible accelerator call. Exact resume rests on three things: the
accelerate checkpoint (weights, optimizer, scheduler, every rank's RNG states), the registered
TrainState (step, epoch, batches consumed in the epoch) with skip_first_batches, and a data order and
augmentation that depend only on (seed, epoch, sample): see EpochSampler and SeededSamples.
"""
from __future__ import annotations

import json
import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Sampler, Subset

from utnet.config import ExperimentConfig, config_to_yaml
from utnet.engine import balance
from utnet.engine import checkpoint as ckpt
from utnet.engine.evaluator import evaluate
from utnet.engine.signals import StopOnSignal, agree_max, ignore_in_worker
from utnet.engine.targets import add_mano_targets
from utnet.engine.tracking import (Progress, comparison_table, data_statistics, log_image, log_scalars,
                                   metric_scalars, start_tracking, summary_line)
from utnet.errors import UserError

_MIX = 1_000_003


class EpochSampler(Sampler):
    """A permutation of range(n) that depends only on (seed, epoch); yields (epoch, index) pairs.

    Every rank draws the same permutation (accelerate shards its batches), and a resumed run draws the
    same one again. The epoch travels with the index so that SeededSamples can seed the augmentation.
    """

    def __init__(self, num_samples: int, seed: int):
        self.num_samples, self.seed, self.epoch = num_samples, seed, 0

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def __len__(self) -> int:
        return self.num_samples

    def __iter__(self):
        generator = torch.Generator().manual_seed(self.seed * _MIX + self.epoch)
        epoch = self.epoch
        return iter([(epoch, i) for i in torch.randperm(self.num_samples, generator=generator).tolist()])


class SeededSamples(Dataset):
    """dataset[(epoch, index)] with torch's RNG seeded from (seed, epoch, index) while the sample is made.

    The data pipeline draws its augmentation from torch's RNG; seeding it per sample makes the
    augmentation independent of worker count, process count and of skipped batches (exact resume).
    """

    def __init__(self, dataset: Dataset, seed: int):
        self.dataset, self.seed = dataset, seed

    def __len__(self) -> int:
        return len(self.dataset)

    def __getitem__(self, key):
        epoch, index = key
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(((self.seed * _MIX + epoch) * _MIX + index) % (2**63 - 1))
            return self.dataset[index]


def lr_factor(step: int, warmup_steps: int, max_steps: int, schedule: str) -> float:
    """LR multiplier at optimizer step `step`: linear warmup, then constant or cosine to 0 at max_steps."""
    if step < warmup_steps:
        return (step + 1) / warmup_steps
    if schedule == "constant":
        return 1.0
    progress = min(1.0, (step - warmup_steps) / max(1, max_steps - warmup_steps))
    return 0.5 * (1.0 + math.cos(math.pi * progress))


def build_optimizer(cfg: ExperimentConfig, model, num_processes: int):
    """AdamW over model.param_groups() with lr * optim.lr_mult[group], and its LambdaLR schedule.

    A prepared scheduler steps num_processes times per optimizer step (split_batches off), so the
    schedule is written over optimizer steps = scheduler steps // num_processes.
    """
    o = cfg.optim
    groups = [{"params": params, "lr": o.lr * getattr(o.lr_mult, name), "name": name}
              for name, params in model.param_groups().items() if params]
    optimizer = torch.optim.AdamW(groups, lr=o.lr, betas=tuple(o.betas), weight_decay=o.weight_decay)
    schedule = torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: lr_factor(s // num_processes, o.warmup_steps, cfg.train.max_steps, o.schedule))
    return optimizer, schedule


def eval_subset(dataset: Dataset, max_samples: int | None, log) -> Dataset:
    """The first eval.max_samples samples of a split, said out loud (never a silent truncation)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    log(f"eval.max_samples: scoring the first {max_samples} of {len(dataset)} {dataset.split} samples")
    return Subset(dataset, range(max_samples))


def make_accelerator(cfg: ExperimentConfig, output_dir: Path, log_with=None):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration, parse_choice_from_env

    # An accelerate launch config that asks for mixed precision (launch/4gpu.yaml: bf16) wins over
    # train.mixed_precision "no"; config.yaml then records what was used.
    precision = cfg.train.mixed_precision
    launcher = parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")
    if precision == "no" and launcher != "no":
        cfg.train.mixed_precision = precision = launcher
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=log_with,
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)],
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir),
                                            automatic_checkpoint_naming=False),
    )


def write_run_state(output_dir: Path, status: str, **fields) -> None:
    """<output_dir>/run_state.json: running | finished | stopped_on_signal | failed (read by train_detached.sh)."""
    tmp = output_dir / "run_state.json.part"
    tmp.write_text(json.dumps({"status": status, **fields}))
    tmp.replace(output_dir / "run_state.json")


def metric_value(metrics: dict, dotted: str) -> float:
    """metrics["refined"]["pa_mpjpe"] for "refined/pa_mpjpe" (a train.best_metric, validated by the config)."""
    output, name = dotted.split("/", 1)
    return float(metrics[output][name])


def finish_step(accelerator, optimizer, scheduler, state: ckpt.TrainState, nonfinite: bool) -> None:
    """The optimizer step boundary, after accelerator.clip_grad_norm_: step, or skip a non-finite step.

    Every rank passes the same `nonfinite` (agreed with agree_max). A skipped step leaves the weights,
    the optimizer state and the schedule untouched. Under fp16, clip_grad_norm_ has already called the
    GradScaler's unscale_; the scaler's update() normally runs inside optimizer.step(), so a skipped
    step calls it here: without it the next unscale_ raises and the loss scale would never drop.
    """
    if nonfinite:
        state.nonfinite_in_row += 1
        state.nonfinite_total += 1
        if accelerator.scaler is not None:
            accelerator.scaler.update()
    else:
        optimizer.step()
        scheduler.step()
        state.nonfinite_in_row = 0
    optimizer.zero_grad(set_to_none=True)


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
    from accelerate.utils import set_seed

    import losses
    from utnet.data import build_dataset
    from utnet.model import build_model

    out = Path(cfg.output_dir)
    t = cfg.train
    main = accelerator.is_main_process
    train_set = build_dataset(cfg, "train")
    val_set = eval_subset(build_dataset(cfg, "val"), cfg.eval.max_samples, say)
    set_seed(cfg.seed)
    model = build_model(cfg)
    loss_set = losses.LossSet.from_config(cfg.loss, cfg.loss_plugins).to(accelerator.device)
    optimizer, scheduler = build_optimizer(cfg, model, accelerator.num_processes)
    sampler = EpochSampler(len(train_set), cfg.seed)
    # Every iterator of a DataLoader draws its worker base seed from `generator`, or from the global torch RNG
    # when it has none. A private generator, reseeded each epoch, keeps that draw off the global RNG (the
    # model's stream, restored from a checkpoint mid-epoch) so resumed and uninterrupted runs agree.
    worker_seeds = torch.Generator()
    train_loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_size=cfg.data.batch_size, sampler=sampler,
                              num_workers=cfg.data.num_workers, drop_last=True, generator=worker_seeds,
                              worker_init_fn=ignore_in_worker)
    val_loader = DataLoader(val_set, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                            worker_init_fn=ignore_in_worker)
    if len(train_loader) // accelerator.num_processes == 0:
        raise UserError(f"data.batch_size: {cfg.data.batch_size} x {accelerator.num_processes} processes is larger "
                        f"than the train split ({len(train_set)} samples)")

    model, optimizer, train_loader, val_loader, scheduler = accelerator.prepare(
        model, optimizer, train_loader, val_loader, scheduler)
    state = ckpt.TrainState()
    accelerator.register_for_checkpointing(state)
    net = accelerator.unwrap_model(model)
    mano = net.mano
    group_names = [g["name"] for g in optimizer.param_groups]

    if main:
        out.mkdir(parents=True, exist_ok=True)
        (out / "config.yaml").write_text(config_to_yaml(cfg))
        write_run_state(out, "running")
    if resume_from is not None:
        ckpt.load_checkpoint(accelerator, resume_from, cfg.data.batch_size, say)
        say(f"resumed from {resume_from} (step {state.step}, epoch {state.epoch}, batch {state.batch_in_epoch})")
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
    last_metrics, stopped_on = None, 0
    debug_left = t.debug_batches
    loss_balance = balance.LossBalance(loss_set, balance.every(t), say if main else None)
    unused = balance.UnusedParameters(t.find_unused_parameters, say if main else None)
    model.train()
    while state.step < t.max_steps and not stopped_on:
        train_loader.set_epoch(state.epoch)  # reaches `sampler` through the prepared loader
        worker_seeds.manual_seed(cfg.seed * _MIX + state.epoch)
        batches = skip_first_batches(train_loader, state.batch_in_epoch) if state.batch_in_epoch else train_loader
        bad_loss = torch.zeros((), device=accelerator.device)
        for batch in batches:
            with accelerator.accumulate(model):
                add_mano_targets(batch, mano)
                pred = model(batch)
                total, terms = loss_set(pred, batch)
                bad_loss = torch.maximum(bad_loss, (~torch.isfinite(total.detach())).float())
                loss_balance.measure(pred, batch, state.step + 1, accelerator.sync_gradients)
                accelerator.backward(total)
                unused.check(net)
                state.batch_in_epoch += 1
                if debug_left > 0:
                    debug_left -= 1
                    say(data_statistics(t.debug_batches - debug_left, batch, pred, net.focal_length))
                if not accelerator.sync_gradients:
                    continue

                # ---- optimizer step boundary: every rank reaches it together
                grad_norm = accelerator.clip_grad_norm_(model.parameters(), clip)
                bad_norm = (~torch.isfinite(grad_norm.detach())).float() if torch.is_tensor(grad_norm) else 0.0
                nonfinite, stopped_on = agree_max(accelerator, [torch.maximum(bad_loss, torch.as_tensor(
                    bad_norm, device=bad_loss.device)), stop.signum])
                stopped_on = int(stopped_on)
                finish_step(accelerator, optimizer, scheduler, state, bool(nonfinite))
                bad_loss = torch.zeros((), device=accelerator.device)
                state.step += 1

            if state.nonfinite_in_row >= t.max_nonfinite_steps:
                good = ckpt.list_checkpoints(out)
                if main:
                    write_run_state(out, "failed", step=state.step)
                raise UserError(
                    f"train.max_nonfinite_steps: {state.nonfinite_in_row} non-finite steps in a row at step "
                    f"{state.step} (loss or gradient norm NaN/inf); weights not updated by them; last good "
                    f"checkpoint: {good[-1] if good else 'none'}", exit_code=1)
            if nonfinite:
                say(f"step {state.step}: non-finite loss or gradient norm on some rank: step skipped "
                    f"({state.nonfinite_in_row} in a row, {state.nonfinite_total} in total)")

            logging_now = state.step % t.log_every == 0 or state.step == t.max_steps
            if logging_now:
                scalars = {**terms, "loss/total": total.detach(), "grad_norm": torch.as_tensor(grad_norm).float()}
                scalars = dict(zip(scalars, accelerator.reduce(
                    torch.stack([v.float().reshape(()) for v in scalars.values()]), reduction="mean").tolist()))
                scalars.update({f"lr/{n}": g["lr"] for n, g in zip(group_names, optimizer.param_groups)})
                scalars["nonfinite_steps"] = state.nonfinite_total
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
                value = metric_value(last_metrics, t.best_metric)
                if value < state.best_metric:
                    state.best_metric = value
                    ckpt.save_checkpoint(accelerator, out / "best", state, cfg.data.batch_size,
                                         extra={t.best_metric: value})
                    if main:
                        (out / "best" / "metrics.json").write_text((out / "metrics.json").read_text())

            if (t.checkpoint_every and state.step % t.checkpoint_every == 0) or state.step == t.max_steps \
                    or stopped_on:
                ckpt.save_step_checkpoint(accelerator, out, state, cfg.data.batch_size, t.keep_checkpoints)
            if stopped_on:
                progress.write(f"saved checkpoint on signal {stopped_on} at step {state.step}")
                break
            if state.step >= t.max_steps:
                break
        else:
            state.epoch += 1
            state.batch_in_epoch = 0

    # ---------------------------------------------------------------- the end
    progress.close()
    if stopped_on:
        if main:
            write_run_state(out, "stopped_on_signal", step=state.step, signal=stopped_on)
        accelerator.end_training()
        return {"baseline": baseline, "final": last_metrics, "stopped_on_signal": stopped_on}
    if last_metrics is None:  # resumed from a checkpoint at or past train.max_steps: the loop did not run
        last_metrics = evaluate(accelerator, model, val_loader, "val", len(val_set), out_dir=out,
                                grid_samples=cfg.eval.grid_samples, log=say)
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


def training_panel(batch: dict, pred: dict, net):
    """The tensorboard image (uint8 RGB [H,2W,3]) of the first training sample: crop with GT and predicted skeletons and the
    predicted mesh projected through the model's camera, beside the depth crop (utnet.engine.visualize).
    net: the unwrapped model (mano, intrinsics())."""
    from utnet.engine.visualize import prediction_panel

    sample = {k: v[0].detach().float().cpu() for k, v in batch.items() if torch.is_tensor(v) and v.dim() > 0}
    prediction = {k: v[0].detach().float().cpu() for k, v in pred.items() if torch.is_tensor(v)}
    return prediction_panel(sample, prediction, net.mano.faces.cpu(),
                            net.intrinsics())[..., ::-1].copy()  # BGR -> RGB
