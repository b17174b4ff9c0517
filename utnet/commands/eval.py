"""`utnet eval`: score a checkpoint (or the untrained model) on the val or evaluation split (any number of processes)."""
from __future__ import annotations

from pathlib import Path

from utnet.commands.common import add_config_arguments
from utnet.config import load_config

HELP = "evaluate a checkpoint or the untrained model: HO3D metrics, prediction grid, per-joint chart, HO3D submission"


def add_arguments(parser):
    add_config_arguments(parser)
    scored = parser.add_mutually_exclusive_group(required=True)
    scored.add_argument("--checkpoint", metavar="PATH",
                        help="checkpoint directory (<run>/checkpoints/step_N or <run>/best)")
    scored.add_argument("--untrained", action="store_true",
                        help="score the model `utnet train` starts from (the config's seed, no training): "
                             "the baseline for any data set")
    parser.add_argument("--split", choices=("val", "evaluation"), default=None,
                        help="split to score (default: eval.split of the config)")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where metrics.json and the figures go (default: <checkpoint>-eval-<split> "
                             "beside the checkpoint; with --untrained <output_dir>/untrained-eval-<split>)")


def run_config(args):
    """--config, else the config.yaml of the run the checkpoint belongs to, else the default."""
    config = args.config
    if config is None and args.checkpoint is not None:
        checkpoint = Path(args.checkpoint)
        for run_dir in (checkpoint.parent, checkpoint.parent.parent):
            if (run_dir / "config.yaml").is_file():
                config = run_dir / "config.yaml"
                print(f"config: {config} (the checkpoint's run)")
                break
    return load_config(config, args.overrides)


def run(args) -> int:
    from utnet.engine import checkpoint as ckpt

    if args.checkpoint is not None:
        ckpt.model_weights_file(args.checkpoint)  # a bad path fails before anything is built
    cfg = run_config(args)
    split = args.split or cfg.eval.split
    checkpoint = Path(args.checkpoint) if args.checkpoint is not None else None
    if args.output_dir:
        out = Path(args.output_dir)
    elif checkpoint is None:
        out = Path(cfg.output_dir) / f"untrained-eval-{split}"
    else:
        out = checkpoint.with_name(f"{checkpoint.name}-eval-{split}")
    evaluate_checkpoint(cfg, checkpoint, split, out)
    return 0


def evaluate_checkpoint(cfg, checkpoint: str | Path | None, split: str, out_dir: str | Path, log=print) -> dict:
    """Load a checkpoint's weights (None: the untrained model `utnet train` starts from, cfg.seed), score
    `split` (utnet.engine.evaluator.evaluate), write the outputs to out_dir and print the metrics table;
    returns evaluate's metrics."""
    import numpy as np

    from utnet.data import build_dataset, ensure_dataset
    from utnet.engine.checkpoint import load_model_weights
    from utnet.engine.evaluator import evaluate
    from utnet.engine.provenance import add_provenance, eval_provenance
    from utnet.engine.setup import eval_subset, make_accelerator, make_eval_loader
    from utnet.model import build_model, initial_model

    out_dir = Path(out_dir)
    accelerator = make_accelerator(cfg, out_dir)
    say = log if accelerator.is_main_process else (lambda *a, **k: None)
    with accelerator.main_process_first():
        ensure_dataset(cfg, say)
    dataset = eval_subset(build_dataset(cfg, split), cfg.eval.max_samples, say)
    if checkpoint is None:
        model = initial_model(cfg)
        say(f"scoring the untrained model (seed {cfg.seed})")
    else:
        model = build_model(cfg)
        load_model_weights(model, checkpoint)
    model, loader = accelerator.prepare(model, make_eval_loader(cfg, dataset))
    result = evaluate(accelerator, model, loader, split, len(dataset), out_dir=out_dir,
                      grid_samples=cfg.eval.grid_samples, write_submission=(split == "evaluation"), log=say)
    if accelerator.is_main_process:  # what metrics.json scored: checkpoint, config, data root
        add_provenance(out_dir / "metrics.json", eval_provenance(cfg, checkpoint))
    r, c = result["refined"], result["coarse"]
    if split == "evaluation" and not np.isfinite(r["pa_mpjpe"]):
        say("no released evaluation ground truth (evaluation_xyz.json / evaluation_verts.json) in data.root: "
            "submit pred.zip to the HO3D challenge for scores")
    say("metric        refined     coarse   (mm; f and auc in [0,1])")
    for name in r:
        if name != "num_samples":
            say(f"{name:<12}{r[name]:>10.4f}{c[name]:>11.4f}")
    say(f"wrote {out_dir / 'metrics.json'}")
    accelerator.end_training()
    return result
