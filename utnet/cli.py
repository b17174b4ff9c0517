"""The `utnet` command.

Each subcommand is one module in `utnet/commands/` defining `HELP` (one line),
`add_arguments(parser)` and `run(args) -> int`. A subcommand exists in `--help` exactly
when its module exists, so nothing unimplemented is ever advertised.
"""
from __future__ import annotations

import argparse
import importlib
import pkgutil
import sys

from utnet import commands
from utnet.errors import ConfigError, UserError

# Order in --help; modules not listed here come after, alphabetically.
_ORDER = ["train", "eval", "score", "overfit", "reweigh", "synth", "doctor", "config", "plugins", "mano"]


def _command_modules():
    names = [m.name for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    names = [n for n in names if n != "common"]
    names.sort(key=lambda n: (_ORDER.index(n) if n in _ORDER else len(_ORDER), n))
    return [(n, importlib.import_module(f"utnet.commands.{n}")) for n in names]


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="utnet",
        description="UTNet: train and evaluate a 3D hand-mesh network on HO3D (or its synthetic stand-in).",
    )
    sub = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, module in _command_modules():
        p = sub.add_parser(name, help=module.HELP, description=module.HELP)
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if getattr(args, "_run", None) is None:
        parser.print_help()
        return 2
    try:
        code = args._run(args)
    except ConfigError as err:
        for line in err.lines:
            print(line, file=sys.stderr)
        return err.exit_code
    except UserError as err:
        print(f"utnet {args.command}: {err}", file=sys.stderr)
        return err.exit_code
    except BrokenPipeError:
        # `utnet plugins | head`: the reader went away; say nothing more.
        sys.stderr.close()
        return 0
    except KeyboardInterrupt:
        print(f"utnet {args.command}: interrupted", file=sys.stderr)
        return 130
    return int(code or 0)


def entry() -> None:
    sys.exit(main())


if __name__ == "__main__":
    entry()
