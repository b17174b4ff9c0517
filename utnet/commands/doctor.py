"""`utnet doctor`: check samples of a data split through the real pipeline."""
from __future__ import annotations

from utnet.commands.common import add_config_arguments, config_from_args

HELP = "read samples through the data pipeline and print PASS/WARN/FAIL checks (exit 1 on any FAIL)"


def add_arguments(parser):
    add_config_arguments(parser)
    parser.add_argument("--split", choices=["train", "val", "evaluation"], default="train", help="split to check (default train)")
    parser.add_argument("--samples", type=int, default=32, metavar="N", help="samples to read, evenly spaced (default 32)")


def run(args) -> int:
    from utnet.data.doctor import run_checks

    cfg = config_from_args(args)
    checks = run_checks(cfg, args.split, max(1, args.samples))
    for check in checks:
        print(check.line())
    failed = sum(c.status == "FAIL" for c in checks)
    warned = sum(c.status == "WARN" for c in checks)
    print(f"doctor: {len(checks) - failed - warned} passed, {warned} warnings, {failed} failed")
    return 1 if failed else 0
