"""`utnet config`: print the fully resolved experiment config."""
from __future__ import annotations

from utnet.commands.common import add_config_arguments, config_from_args
from utnet.config import config_to_yaml

HELP = "print the fully resolved experiment config (defaults filled in) as YAML"


def add_arguments(parser):
    add_config_arguments(parser)


def run(args) -> int:
    cfg = config_from_args(args)
    print(config_to_yaml(cfg), end="")
    return 0
