"""`utnet synth`: write the synthetic HO3D-format stand-in data set."""
from __future__ import annotations

import json

from utnet.commands.common import add_config_arguments, config_from_args

HELP = "render a synthetic data set in HO3D's on-disk format (a stand-in for HO3D) into a folder"


def add_arguments(parser):
    parser.add_argument("--out", required=True, metavar="DIR", help="new or empty folder to write")
    parser.add_argument("--version", choices=["v2", "v3"], default="v2", help="HO3D layout to follow (v3 adds the contact fields; RGB is .jpg in both)")
    parser.add_argument("--sequences", type=int, default=8, metavar="N", help="train sequences SYN10, SYN11, ... (default 8)")
    parser.add_argument("--frames", type=int, default=60, metavar="M", help="frames per sequence (default 60)")
    parser.add_argument("--seed", type=int, default=0, metavar="S", help="the same seed writes the same files (default 0)")
    add_config_arguments(parser)  # mano.model_path: render a real MANO file instead of the stand-in


def run(args) -> int:
    from utnet.data import write_synthetic

    cfg = config_from_args(args)
    summary = write_synthetic(args.out, version=args.version, sequences=args.sequences, frames=args.frames,
                              seed=args.seed, mano_model_path=cfg.mano.model_path)
    print(f"wrote {summary['train_frames']} train frames ({len(summary['train_sequences'])} sequences) and "
          f"{summary['evaluation_frames']} evaluation frames to {args.out} in {summary['seconds']:.1f} s "
          f"({summary['frames_per_s']:.1f} frames/s, {summary['frames_per_cpu_s']:.1f} per CPU-second; "
          f"MANO {summary['mano_source']}). This is a synthetic stand-in, not HO3D.")
    for path in summary["removed_partials"]:
        print(f"removed {path}: left by a killed run (its process is gone)")
    print(json.dumps(summary))
    return 0
