"""`utnet train`: train UTNet as configured (single process, or under `accelerate launch -m utnet train`)."""
from __future__ import annotations

from utnet.commands.common import add_config_arguments, config_from_args

HELP = "train UTNet (resumes the newest checkpoint in the output directory by default)"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--output-dir", default=None, metavar="DIR",
                        help="run directory (default: output_dir of the config)")
    parser.add_argument("--resume", default="auto", metavar="auto|PATH|none",
                        help="auto: newest complete checkpoint in the run directory (default); "
                             "PATH: that checkpoint; none: start from scratch")


def run(args) -> int:
    cfg = config_from_args(args)
    if args.output_dir is not None:
        cfg.output_dir = args.output_dir
    from utnet.engine.trainer import train

    train(cfg, resume=args.resume)
    return 0
