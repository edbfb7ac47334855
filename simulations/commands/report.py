"""``fedrec report RUN_DIR``: (re)render a run's report.md and PNG plots."""

from __future__ import annotations

import argparse
from pathlib import Path

NAME = "report"
HELP = "render RUN_DIR/report.md and its plots from the run's files"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")


def run(args: argparse.Namespace) -> int:
    from simulations.report import write_report

    path = write_report(args.run_dir)
    print(path)
    return 0
