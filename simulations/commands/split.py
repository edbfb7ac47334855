"""``fedrec split``: write the train/test split of a data set as two CSV files."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.data import random_split, temporal_split, write_split
from simulations.commands.common import add_data_arguments, load_data

NAME = "split"
HELP = "Split a data set per user into DIR/train.csv and DIR/test.csv (original ids)."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new folder")
    parser.add_argument("--seed", type=int, default=0, help="random split seed (default 0)")
    parser.add_argument(
        "--test-fraction",
        type=float,
        default=0.2,
        metavar="F",
        help="fraction of each user's interactions held out, in (0, 1) (default 0.2)",
    )
    parser.add_argument(
        "--split",
        choices=("random", "temporal"),
        default="random",
        help="random holdout (default) or each user's latest interactions",
    )


def run(args: argparse.Namespace) -> int:
    data = load_data(args)
    if args.split == "temporal":
        split = temporal_split(data, test_fraction=args.test_fraction)
    else:
        split = random_split(data, test_fraction=args.test_fraction, seed=args.seed)
    write_split(split, args.out)
    how = f"random, seed {args.seed}" if args.split == "random" else "temporal"
    print(
        f"wrote {args.out}/train.csv ({split.train.nnz} interactions) and test.csv "
        f"({split.test.nnz}): {data.n_users} users, {data.n_items} items, "
        f"{len(split.test_users())} test users ({how}, test fraction {args.test_fraction})"
    )
    return 0
