"""`utnet eval`: score a checkpoint on the val or evaluation split (any number of processes)."""
from __future__ import annotations

from pathlib import Path

from utnet.commands.common import add_config_arguments
from utnet.config import load_config

HELP = "evaluate a checkpoint: HO3D metrics, prediction grid, per-joint chart, HO3D submission"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--checkpoint", required=True, metavar="PATH",
                        help="checkpoint directory (<run>/checkpoints/step_N or <run>/best)")
    parser.add_argument("--split", choices=("val", "evaluation"), default=None,
                        help="split to score (default: eval.split of the config)")
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="where metrics.json and the figures go (default: <checkpoint>-eval-<split> "
                             "beside the checkpoint)")


def run_config(args):
    """--config, else the config.yaml of the run the checkpoint belongs to, else the default."""
    config = args.config
    if config is None:
        checkpoint = Path(args.checkpoint)
        for run_dir in (checkpoint.parent, checkpoint.parent.parent):
            if (run_dir / "config.yaml").is_file():
                config = run_dir / "config.yaml"
                print(f"config: {config} (the checkpoint's run)")
                break
    return load_config(config, args.overrides)


def run(args) -> int:
    from utnet.engine import checkpoint as ckpt

    ckpt.model_weights_file(args.checkpoint)  # a bad path fails before anything is built
    cfg = run_config(args)
    split = args.split or cfg.eval.split
    checkpoint = Path(args.checkpoint)
    out = Path(args.output_dir) if args.output_dir else checkpoint.with_name(f"{checkpoint.name}-eval-{split}")
    from utnet.engine.evaluator import evaluate_checkpoint

    evaluate_checkpoint(cfg, checkpoint, split, out)
    return 0
