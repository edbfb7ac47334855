"""``fedrec download``: fetch a public MovieLens archive, verified by SHA-256."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.data.archives import ARCHIVES, download

NAME = "download"
HELP = "Download a MovieLens data set from GroupLens into the data directory."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("name", metavar="NAME", help=f"one of {', '.join(ARCHIVES)}")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=None,
        metavar="DIR",
        help="where data sets live (default: $FEDREC_DATA_DIR or ~/.fedrec/data)",
    )


def run(args: argparse.Namespace) -> int:
    path = download(args.name, args.data_dir)
    print(f"{args.name} is ready in {path} (use --data {args.name})")
    return 0
