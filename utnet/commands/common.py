"""Options shared by the subcommands that read an experiment config."""
from __future__ import annotations

import argparse

from utnet.config import DEFAULT_CONFIG_PATH, ExperimentConfig, load_config


def add_config_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--config", default=None, metavar="PATH",
        help=f"experiment YAML (default: {DEFAULT_CONFIG_PATH.name} shipped in configs/)",
    )
    parser.add_argument(
        "--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
        help="override a config key, value parsed as YAML (e.g. --set optim.lr=3e-4); may repeat",
    )


def config_from_args(args: argparse.Namespace) -> ExperimentConfig:
    return load_config(args.config, args.overrides)
