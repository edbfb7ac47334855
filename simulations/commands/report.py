"""``fedrec report RUN_DIR``: (re)render a run's (or a sweep directory's) report.md and plots."""

from __future__ import annotations

import argparse
import os
from pathlib import Path

NAME = "report"
HELP = "render RUN_DIR/report.md and its plots from the run's files (or a sweep directory's)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "run_dir", type=Path, metavar="RUN_DIR", help="a run directory, or a fedrec sweep --out"
    )
    parser.add_argument(
        "--tradeoff",
        action="store_true",
        help="also compute the federated model's MMR accuracy-diversity curve (slow)",
    )


def run(args: argparse.Namespace) -> int:
    from simulations.report import write_report

    umask = os.umask(0o077)  # the report and its plots describe the users' data: 0600
    try:
        path = write_report(args.run_dir, tradeoff=args.tradeoff)
    finally:
        os.umask(umask)
    print(path)
    return 0
