"""Optimizer steps per second: the engine's training loop against a plain PyTorch loop.

Engine: `python -m utnet train` as a user runs it (accelerate, loss set, targets, clipping, the
per-step agreement on non-finite values and signals, logging as configured), with evaluation,
checkpoints and images switched off; its rate is read from the wall times tensorboard recorded for
`loss/total` between the first and the last logged step, so building, evaluating and saving are
not counted. Plain: the same model, data loader, targets, loss set, forward, backward and AdamW
step with its LR schedule (the engine's build_optimizer: same parameter groups) and the configured
gradient clipping (optim.clip_grad_norm) in a bare loop, timed over the same steps. Each side runs in a fresh
process; with --repeats R both run R times alternately and the best rate of each is kept (the
machine is shared: ratios, not absolute times).

    python benchmarks/bench_step.py [--config PATH] [--set K=V ...] [--steps 75] [--repeats 1]

Prints one JSON object as its last line: {"engine_steps_per_s", "plain_steps_per_s", "ratio", ...}.
"""
from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent


def plain_loop(config: str | None, overrides: list[str]) -> dict:
    """The plain PyTorch loop (run in its own process); returns the logged steps' times."""
    import torch

    from _experiment import build_experiment
    from utnet.engine.targets import add_mano_targets

    cfg, dataset, model, loss_set, optimizer, scheduler = build_experiment(config, overrides)
    loader = torch.utils.data.DataLoader(dataset, batch_size=cfg.data.batch_size, shuffle=True, drop_last=True,
                                         num_workers=cfg.data.num_workers)
    step, times = 0, {}
    model.train()
    while step < cfg.train.max_steps:
        for batch in loader:
            add_mano_targets(batch, model.mano)
            pred = model(batch)
            total, _ = loss_set(pred, batch)
            total.backward()
            if cfg.optim.clip_grad_norm > 0:  # the engine clips as configured: the same arithmetic here
                torch.nn.utils.clip_grad_norm_(model.parameters(), cfg.optim.clip_grad_norm)
            optimizer.step()
            scheduler.step()
            optimizer.zero_grad(set_to_none=True)
            step += 1
            if step % cfg.train.log_every == 0 or step == cfg.train.max_steps:
                total.item()
                times[step] = time.perf_counter()
            if step == cfg.train.max_steps:
                break
    return times


def rate(times: dict) -> float:
    steps = sorted(times)
    return (steps[-1] - steps[0]) / (times[steps[-1]] - times[steps[0]])


def config_args(config: str | None, overrides: list[str]) -> list[str]:
    """--config/--set arguments shared by the engine run and the plain worker."""
    args = ["--config", config] if config else []
    for item in overrides:
        args += ["--set", item]
    return args


def engine_rate(config: str | None, overrides: list[str], out: Path) -> float:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    cmd = [sys.executable, "-m", "utnet", "train", "--resume", "none", "--output-dir", str(out),
           *config_args(config, overrides)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"engine run failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}")
    events = EventAccumulator(str(out / "tensorboard"), size_guidance={"scalars": 0})
    events.Reload()
    return rate({e.step: e.wall_time for e in events.Scalars("loss/total")})


def plain_rate(config: str | None, overrides: list[str]) -> float:
    cmd = [sys.executable, __file__, "--plain-worker", *config_args(config, overrides)]
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    if proc.returncode != 0:
        raise SystemExit(f"plain loop failed:\n{proc.stderr[-3000:]}")
    return float(proc.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[])
    parser.add_argument("--steps", type=int, default=75, help="optimizer steps per run (timed after the first log)")
    parser.add_argument("--repeats", type=int, default=1)
    parser.add_argument("--plain-worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.plain_worker:
        print(rate(plain_loop(args.config, args.overrides)))
        return

    overrides = list(args.overrides) + [f"train.max_steps={args.steps}", "train.eval_every=0",
                                        "train.checkpoint_every=0", "train.image_every=0", "train.debug_batches=0"]
    from utnet.config import load_config

    cfg = load_config(args.config, overrides)
    if args.steps < 2 * cfg.train.log_every:
        raise SystemExit(f"--steps {args.steps}: needs at least two logged steps (train.log_every {cfg.train.log_every})")
    engine, plain = [], []
    with tempfile.TemporaryDirectory(prefix="bench_step_") as tmp:
        for r in range(args.repeats):
            plain.append(plain_rate(args.config, overrides))
            engine.append(engine_rate(args.config, overrides, Path(tmp) / f"engine{r}"))
    result = {
        "engine_steps_per_s": round(max(engine), 4),
        "plain_steps_per_s": round(max(plain), 4),
        "ratio": round(max(engine) / max(plain), 4),
        "steps": args.steps, "timed_from_step": cfg.train.log_every, "repeats": args.repeats,
        "batch_size": cfg.data.batch_size, "image_size": list(cfg.data.image_size),
        "backbone": cfg.model.backbone.name, "cores": os.cpu_count(),
        "engine_runs": engine, "plain_runs": plain,
    }
    print(json.dumps(result))


if __name__ == "__main__":
    main()
