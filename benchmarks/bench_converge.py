"""Does the default experiment learn? Train the synthetic default from scratch with every loss term's
reduction set to `sum`, then to `mean`, and report the val metrics of the untrained model and after
N steps.

Each run is `python -m utnet train` as a user runs it (fresh output directory, --resume none); the
untrained metrics are the ones the run itself measures before its first step.

    python benchmarks/bench_converge.py [--steps N] [--config PATH] [--set K=V ...]
                                        [--sum-set K=V ...] [--mean-set K=V ...] [--reweigh] [--keep DIR]
                                        [--heldout-sequences N [--heldout-root DIR]]

With --reweigh each run's config is `utnet reweigh --to <reduction>` of the given one (every term's
weight converted so that it keeps its value and gradient share); without it the config's weights
are used as they are under both reductions (what a user gets by switching `reduction` alone).

With --heldout-sequences N each run's untrained model (`utnet eval --untrained`) and final checkpoint are
also scored on a larger held-out set: a synthetic set of N sequences written with the run's
data.synthetic frames/seed and data.version (at --heldout-root; written there when missing), minus the
sequences the run trained on. The synthetic writer renders each sequence from its own seed, so a sequence
name holds the same frames in every set of the same seed: the run's val sequences are among the held-out
ones (checked: their ground-truth files must be byte-identical), and none of its training frames is. At
N = 40 on the default config that is 1,560 frames against the 120 of the val split (~100 s per run for
its two evaluations on 2 cores).

Prints one JSON object as its last line:
{"steps", "wall_s", "sum": {"baseline": {...}, "final": {...}, "wall_s", "loss_weights", "goal_met", ...},
"mean": {...}}; with --heldout-sequences each run also has "heldout": {"sequences", "num_samples", "baseline",
"final", the ratios, "goal_met", "wall_s"}.
Goal (issues 8 and 15): refined mpjpe <= 0.5 x, refined and coarse pa_mpjpe <= 0.75 x the untrained
model's, and refined pa_mpjpe <= 1.05 x coarse pa_mpjpe (the refiner does not hurt the shape).
"""
from __future__ import annotations

import argparse
import filecmp
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
    weights = {name: term["weight"] for name, term in yaml.safe_load((out / "config.yaml").read_text())["loss"].items()}
    return {"baseline": baseline, "final": final, "wall_s": round(wall, 1), "loss_weights": weights} | ratios(
        baseline, final)


def ratios(baseline: dict, final: dict) -> dict:
    """The goal's ratios of final to untrained metrics, and whether all of them are met."""
    goal = (final["mpjpe"] <= 0.5 * baseline["mpjpe"] and final["pa_mpjpe"] <= 0.75 * baseline["pa_mpjpe"]
            and final["coarse_pa_mpjpe"] <= 0.75 * baseline["coarse_pa_mpjpe"]
            and final["pa_mpjpe"] <= 1.05 * final["coarse_pa_mpjpe"])
    return {"mpjpe_ratio": round(final["mpjpe"] / baseline["mpjpe"], 4),
            "pa_mpjpe_ratio": round(final["pa_mpjpe"] / baseline["pa_mpjpe"], 4),
            "coarse_pa_mpjpe_ratio": round(final["coarse_pa_mpjpe"] / baseline["coarse_pa_mpjpe"], 4),
            "refined_vs_coarse_pa": round(final["pa_mpjpe"] / final["coarse_pa_mpjpe"], 4), "goal_met": bool(goal)}


def sequences_of(root: Path) -> list[str]:
    """The train sequences listed in root/train.txt, in order."""
    from utnet.data.ho3d import read_split_file

    return list(dict.fromkeys(seq for seq, _ in read_split_file(root, "train")))


def score_heldout(out: Path, sequences: int, heldout_root: Path) -> dict:
    """Score the run in `out` (untrained model and final checkpoint) on the sequences of a `sequences`-sequence
    synthetic set at heldout_root that the run did not train on."""
    from utnet.config import load_config
    from utnet.engine import checkpoint as ckpt

    start = time.perf_counter()
    config = out / "config.yaml"
    cfg = load_config(config, [])
    run_root = REPO / cfg.data.root  # relative to the repository, where the runs start; an absolute root stays
    if not (heldout_root / "train.txt").is_file():
        syn = cfg.data.synthetic
        run_logged([sys.executable, "-m", "utnet", "synth", "--out", str(heldout_root), "--version", cfg.data.version,
                    "--sequences", str(sequences), "--frames", str(syn.frames), "--seed", str(syn.seed)],
                   "held-out set", out.parent / f"{out.name}.heldout_synth.log")
    trained_on = set(sequences_of(run_root)) - set(cfg.data.val_sequences)
    heldout = [name for name in sequences_of(heldout_root) if name not in trained_on]
    for name in cfg.data.val_sequences:  # the same sequence in both sets, or the comparison means nothing
        if name not in heldout:
            raise SystemExit(f"{heldout_root}: holds no sequence {name} (the run's val split): "
                             f"--heldout-sequences {sequences} is too few")
        ours, theirs = run_root / "train" / name / "meta", heldout_root / "train" / name / "meta"
        files = sorted(p.name for p in ours.iterdir())
        _, mismatch, errors = filecmp.cmpfiles(ours, theirs, files, shallow=False)
        if mismatch or errors:
            raise SystemExit(f"{heldout_root}: val sequence {name} differs from the one in {run_root} (another "
                             f"synthetic seed, frame count or version?): the held-out scores would not extend the val split")
    sets = ["--set", f"data.root={heldout_root}", "--set", f"data.synthetic.sequences={sequences}",
            "--set", f"data.val_sequences=[{','.join(heldout)}]", "--set", "eval.max_samples=null"]
    metrics = {}
    for stage, model in (("baseline", ["--untrained"]), ("final", ["--checkpoint", str(ckpt.resolve_resume("auto", out))])):
        target = out.parent / f"{out.name}.heldout_{stage}"
        run_logged([sys.executable, "-m", "utnet", "eval", "--config", str(config), *model, "--split", "val",
                    "--output-dir", str(target), *sets], f"held-out {stage} eval", target.with_suffix(".log"))
        metrics[stage] = json.loads((target / "metrics.json").read_text())
    baseline, final = headline(metrics["baseline"]), headline(metrics["final"])
    return {"sequences": heldout, "num_samples": metrics["final"]["num_samples"], "baseline": baseline, "final": final,
            **ratios(baseline, final), "wall_s": round(time.perf_counter() - start, 1)}


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
    parser.add_argument("--heldout-sequences", type=int, default=None, metavar="N",
                        help="also score each run on the sequences of an N-sequence synthetic set it did not train on")
    parser.add_argument("--heldout-root", default=None, metavar="DIR",
                        help="where that set is (written when missing; default data/synthetic_ho3d_<N>)")
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
            if args.heldout_sequences:
                heldout_root = Path(args.heldout_root or REPO / "data" / f"synthetic_ho3d_{args.heldout_sequences}")
                result[reduction]["heldout"] = score_heldout(root / reduction, args.heldout_sequences,
                                                             heldout_root.resolve())
            print(f"{reduction}: {json.dumps(result[reduction])}", file=sys.stderr, flush=True)
    result["wall_s"] = round(time.perf_counter() - start, 1)
    print(json.dumps(result))


if __name__ == "__main__":
    main()
