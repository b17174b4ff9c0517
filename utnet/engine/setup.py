"""What a run is built from before `accelerator.prepare`: the Accelerator, the data loaders, the
optimizer and its LR schedule. Shared by `utnet train` (utnet.engine.trainer) and `utnet eval`
(utnet.commands.eval).
"""
from __future__ import annotations

import math
from pathlib import Path

import torch
from torch.utils.data import DataLoader, Dataset, Subset

from utnet.config import ExperimentConfig
from utnet.data.sampling import EpochSampler, SeededSamples
from utnet.engine.signals import ignore_in_worker
from utnet.errors import UserError


def mixed_precision(cfg: ExperimentConfig) -> str:
    """The precision a run uses: an accelerate launch config that asks for mixed precision (launch/4gpu.yaml:
    bf16) wins over train.mixed_precision "no"; config.yaml records this value."""
    from accelerate.utils import parse_choice_from_env

    launcher = parse_choice_from_env("ACCELERATE_MIXED_PRECISION", "no")
    return launcher if cfg.train.mixed_precision == "no" else cfg.train.mixed_precision


def make_accelerator(cfg: ExperimentConfig, output_dir: Path, log_with=None):
    from accelerate import Accelerator
    from accelerate.utils import DistributedDataParallelKwargs, ProjectConfiguration

    cfg.train.mixed_precision = precision = mixed_precision(cfg)
    return Accelerator(
        mixed_precision=precision,
        gradient_accumulation_steps=cfg.train.grad_accum,
        log_with=log_with,
        # a model with parameters outside the graph stops DDP at its second step unless told (train.find_unused_parameters)
        kwargs_handlers=[DistributedDataParallelKwargs(find_unused_parameters=cfg.train.find_unused_parameters)],
        project_config=ProjectConfiguration(project_dir=str(output_dir), logging_dir=str(output_dir),
                                            automatic_checkpoint_naming=False),
    )


def make_train_loader(cfg: ExperimentConfig, train_set: Dataset,
                      num_processes: int) -> tuple[DataLoader, torch.Generator]:
    """The training DataLoader (EpochSampler order, SeededSamples augmentation, whole batches only) and
    the generator its workers' base seed is drawn from, which the loop reseeds every epoch.

    Every iterator of a DataLoader draws its worker base seed from `generator`, or from the global torch
    RNG when it has none. A private generator keeps that draw off the global RNG (the model's stream,
    restored from a checkpoint mid-epoch) so resumed and uninterrupted runs agree.
    Raises UserError when one batch per process does not fit in the split.
    """
    worker_seeds = torch.Generator()
    loader = DataLoader(SeededSamples(train_set, cfg.seed), batch_size=cfg.data.batch_size,
                        sampler=EpochSampler(len(train_set), cfg.seed), num_workers=cfg.data.num_workers,
                        drop_last=True, generator=worker_seeds, worker_init_fn=ignore_in_worker)
    if len(loader) // num_processes == 0:
        raise UserError(f"data.batch_size: {cfg.data.batch_size} x {num_processes} processes is larger "
                        f"than the train split ({len(train_set)} samples)")
    return loader, worker_seeds


def make_eval_loader(cfg: ExperimentConfig, dataset: Dataset) -> DataLoader:
    """A split in dataset order, eval.batch_size per process (the last batch may be short)."""
    return DataLoader(dataset, batch_size=cfg.eval.batch_size, shuffle=False, num_workers=cfg.data.num_workers,
                      worker_init_fn=ignore_in_worker)


def eval_subset(dataset: Dataset, max_samples: int | None, log) -> Dataset:
    """The first eval.max_samples samples of a split, said out loud (never a silent truncation)."""
    if max_samples is None or max_samples >= len(dataset):
        return dataset
    log(f"eval.max_samples: scoring the first {max_samples} of {len(dataset)} {dataset.split} samples")
    return Subset(dataset, range(max_samples))


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
