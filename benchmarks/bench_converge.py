"""Does the default experiment learn? Train the synthetic default from scratch with every loss term's
reduction set to `sum`, then to `mean`, and report the val metrics of the untrained model and after
N steps.

Each run is `python -m utnet train` as a user runs it (fresh output directory, --resume none); the
untrained metrics are the ones the run itself measures before its first step.

    python benchmarks/bench_converge.py [--steps N] [--config PATH] [--set K=V ...]
                                        [--sum-set K=V ...] [--mean-set K=V ...] [--reweigh] [--keep DIR]

With --reweigh each run's config is `utnet reweigh --to <reduction>` of the given one (every term's
weight converted so that it keeps its value and gradient share); without it the config's weights
are used as they are under both reductions (what a user gets by switching `reduction` alone).

Prints one JSON object as its last line:
{"steps", "wall_s", "sum": {"baseline": {...}, "final": {...}, "wall_s", "loss_weights", "goal_met", ...},
"mean": {...}}.
Goal (issues 8 and 15): refined mpjpe <= 0.5 x, refined and coarse pa_mpjpe <= 0.75 x the untrained
model's, and refined pa_mpjpe <= 1.05 x coarse pa_mpjpe (the refiner does not hurt the shape).
"""
from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parent.parent
HEADLINE = ("mpjpe", "pa_mpjpe", "mpvpe", "pa_mpvpe", "f_5mm", "f_15mm", "auc_j", "auc_v")


def headline(metrics: dict) -> dict:
    return {name: metrics["refined"][name] for name in HEADLINE} | {
        f"coarse_{name}": metrics["coarse"][name] for name in ("mpjpe", "pa_mpjpe")}


def run_logged(cmd: list[str], what: str, log: Path) -> None:
    proc = subprocess.run(cmd, cwd=REPO, capture_output=True, text=True)
    log.write_text(proc.stdout + proc.stderr)
    if proc.returncode != 0:
        raise SystemExit(f"{what} failed (log: {log}):\n{proc.stderr[-2000:]}")


def train_once(reduction: str, steps: int | None, config: str | None, overrides: list[str], out: Path,
               reweigh: bool = False) -> dict:
    from utnet.config import load_config

    if reweigh:  # the run's config: `utnet reweigh --to <reduction>` of the given one (overrides applied)
        written = out.parent / f"{out.name}.yaml"
        cmd = [sys.executable, "-m", "utnet", "reweigh", "--to", reduction, "--out", str(written)]
        cmd += (["--config", config] if config else []) + [arg for item in overrides for arg in ("--set", item)]
        run_logged(cmd, f"{reduction} reweigh", out.parent / f"{out.name}.reweigh.log")
        config, sets = str(written), []
    else:
        cfg = load_config(config, overrides)
        sets = list(overrides) + [f"loss.{term}.reduction={reduction}" for term in cfg.loss]
    if steps is not None:
        sets.append(f"train.max_steps={steps}")
    cmd = [sys.executable, "-m", "utnet", "train", "--resume", "none", "--output-dir", str(out)]
    if config:
        cmd += ["--config", config]
    for item in sets:
        cmd += ["--set", item]
    start = time.perf_counter()
    run_logged(cmd, f"{reduction} run", out.parent / f"{out.name}.log")
    wall = time.perf_counter() - start
    baseline = headline(json.loads((out / "metrics_untrained.json").read_text()))
    final = headline(json.loads((out / "metrics.json").read_text()))
    goal = (final["mpjpe"] <= 0.5 * baseline["mpjpe"] and final["pa_mpjpe"] <= 0.75 * baseline["pa_mpjpe"]
            and final["coarse_pa_mpjpe"] <= 0.75 * baseline["coarse_pa_mpjpe"]
            and final["pa_mpjpe"] <= 1.05 * final["coarse_pa_mpjpe"])
    weights = {name: term["weight"] for name, term in yaml.safe_load((out / "config.yaml").read_text())["loss"].items()}
    return {"baseline": baseline, "final": final, "wall_s": round(wall, 1), "loss_weights": weights,
            "mpjpe_ratio": round(final["mpjpe"] / baseline["mpjpe"], 4),
            "pa_mpjpe_ratio": round(final["pa_mpjpe"] / baseline["pa_mpjpe"], 4),
            "coarse_pa_mpjpe_ratio": round(final["coarse_pa_mpjpe"] / baseline["coarse_pa_mpjpe"], 4),
            "refined_vs_coarse_pa": round(final["pa_mpjpe"] / final["coarse_pa_mpjpe"], 4), "goal_met": bool(goal)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--steps", type=int, default=None, help="optimizer steps (default: train.max_steps)")
    parser.add_argument("--config", default=None)
    parser.add_argument("--set", dest="overrides", action="append", default=[], help="for both runs")
    parser.add_argument("--sum-set", action="append", default=[], help="for the sum run only")
    parser.add_argument("--mean-set", action="append", default=[], help="for the mean run only")
    parser.add_argument("--reweigh", action="store_true",
                        help="each run's loss weights converted to its reduction by `utnet reweigh` (same balance) "
                             "instead of the config's weights with the reduction switched")
    parser.add_argument("--keep", default=None, metavar="DIR", help="keep the run directories here")
    args = parser.parse_args()

    from utnet.config import load_config

    steps = args.steps if args.steps is not None else load_config(args.config, args.overrides).train.max_steps
    start = time.perf_counter()
    with tempfile.TemporaryDirectory(prefix="bench_converge_") as tmp:
        root = Path(args.keep) if args.keep else Path(tmp)
        root.mkdir(parents=True, exist_ok=True)
        result = {"steps": steps}
        for reduction, extra in (("sum", args.sum_set), ("mean", args.mean_set)):
            result[reduction] = train_once(reduction, args.steps, args.config, args.overrides + extra,
                                           root / reduction, args.reweigh)
            print(f"{reduction}: {json.dumps(result[reduction])}", file=sys.stderr, flush=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
