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
                             "PATH: that checkpoint; none: start from scratch (refused in a directory that "
                             "holds a run, unless --overwrite)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start a new run even if the run directory holds one: the old run is moved "
                             "aside to <DIR>.old-<UTC time> (nothing is deleted)")


def run(args) -> int:
    cfg = config_from_args(args)
    if args.output_dir is not None:
        cfg.output_dir = args.output_dir
    from utnet.engine import rundir
    from utnet.engine.trainer import train

    with rundir.guarded_run_dir(cfg, args.resume, args.overwrite) as resume_from:
        try:
            train(cfg, resume=str(resume_from) if resume_from is not None else "none")
        except BaseException as err:
            if rundir.is_main_rank():
                rundir.mark_failed(cfg.output_dir, err)
            raise
    return 0
