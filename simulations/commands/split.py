"""``fedrec split``: write the train/test split of a data set as two CSV files."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.errors import ConfigError
from simulations.commands.common import add_data_arguments, load_data

NAME = "split"
HELP = (
    "Split a data set per user into DIR/train.csv and DIR/test.csv (original ids); "
    "--validation also writes DIR/valid.csv, carved from train."
)


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
    parser.add_argument(
        "--validation",
        action="store_true",
        help="also hold out part of each user's train items as DIR/valid.csv (train.csv, "
        "valid.csv, test.csv are then disjoint; docs/PROTOCOL.md)",
    )
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=None,
        metavar="F",
        help="fraction of each user's train items held out as validation (default 0.2)",
    )


def run(args: argparse.Namespace) -> int:
    from fedrec.data import random_split, temporal_split, validation_split, write_split

    if args.validation_fraction is not None and not args.validation:
        raise ConfigError(
            "given without --validation",
            where="--validation-fraction",
            fix="add --validation (or drop --validation-fraction)",
        )
    data = load_data(args)
    if args.split == "temporal":
        split = temporal_split(data, test_fraction=args.test_fraction)
    else:
        split = random_split(data, test_fraction=args.test_fraction, seed=args.seed)
    how = f"random, seed {args.seed}" if args.split == "random" else "temporal"
    if not args.validation:
        write_split(split, args.out)
        print(
            f"wrote {args.out}/train.csv ({split.train.nnz} interactions) and test.csv "
            f"({split.test.nnz}): {data.n_users} users, {data.n_items} items, "
            f"{len(split.test_users())} test users ({how}, test fraction {args.test_fraction})"
        )
        return 0
    fraction = 0.2 if args.validation_fraction is None else args.validation_fraction
    try:
        valid = validation_split(split, seed=args.seed, test_fraction=fraction)
    except ConfigError as err:
        raise ConfigError(err.what, where="--validation-fraction", fix=err.fix) from err
    write_split(split, args.out, validation=valid)
    print(
        f"wrote {args.out}/train.csv ({valid.train.nnz} interactions), valid.csv "
        f"({valid.test.nnz}, carved from train, fraction {fraction}, seed {args.seed}) and "
        f"test.csv ({split.test.nnz}): {data.n_users} users, {data.n_items} items, "
        f"{len(split.test_users())} test users ({how}, test fraction {args.test_fraction})"
    )
    return 0
