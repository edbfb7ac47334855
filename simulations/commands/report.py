"""``fedrec report RUN_DIR``: (re)render a run's (or a sweep directory's) report.md and plots."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.data.atomic import private_files

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

    with private_files():  # the report and its plots describe the users' data
        path = write_report(args.run_dir, tradeoff=args.tradeoff)
    print(path)
    return 0
