"""``fedrec evaluate``: score given recommendation lists on a split.

Reads ``--recs``, a CSV with columns ``user,item,rank`` (original ids, rank 1 best,
any number of items per user), and prints one JSON object with every metric of
:data:`fedrec.metrics.METRIC_KEYS`. Lists are scored as given: a train item in a
list stays there and counts as not relevant; MRR looks only within the list; a test
user without any row scores 0.
"""

from __future__ import annotations

import argparse
import csv
import json
from collections.abc import Callable
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedrec.errors import DataError
from simulations.commands.common import add_data_arguments, load_data

NAME = "evaluate"
HELP = "Evaluate recommendation lists (user,item,rank CSV) on a split; prints JSON metrics."
COLUMNS = ("user", "item", "rank")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--split",
        required=True,
        type=Path,
        metavar="DIR",
        help="split folder (train.csv, test.csv)",
    )
    parser.add_argument(
        "--recs", required=True, type=Path, metavar="FILE", help="CSV with columns user,item,rank"
    )
    # Optional here: without it the catalogue is the items of the split files, no genres.
    add_data_arguments(
        parser,
        default=None,
        help="the data set the split was made from (same --min-rating/--k-core), for the "
        "full item catalogue and genres; without it the catalogue is the items in the split "
        "files and diversity is null",
    )


def _lookup(ids: npt.NDArray[np.generic]) -> Callable[[str], int | None]:
    """Original id, exactly as written in a CSV field -> index (``None`` when unknown)."""
    table = {str(v): j for j, v in enumerate(ids.tolist())}
    return lambda text: table.get(text.strip())


def _parse_rank(text: str, where: str) -> int:
    try:
        rank = int(text)
    except ValueError:
        rank = 0
    if rank < 1:
        raise DataError(
            f"rank {text!r} is not a positive integer",
            where=where,
            fix="write ranks as integers 1, 2, ... with 1 the best item",
        )
    return rank


def read_recs(
    path: Path, split_users: npt.NDArray[np.generic], split_items: npt.NDArray[np.generic]
) -> dict[int, npt.NDArray[np.int64]]:
    """Ranked lists by user index from a ``user,item,rank`` CSV (original ids)."""
    user_of, item_of = _lookup(split_users), _lookup(split_items)
    rows: dict[int, dict[int, int]] = {}
    items_seen: dict[int, set[int]] = {}
    try:
        handle = path.open(newline="")
    except OSError as err:
        raise DataError(
            f"cannot read recommendations ({err.strerror})",
            where=str(path),
            fix="pass an existing CSV file to --recs",
        ) from err
    with handle:
        reader = csv.DictReader(handle)
        missing = [c for c in COLUMNS if c not in (reader.fieldnames or [])]
        if missing:
            raise DataError(
                f"missing column(s) {', '.join(missing)}",
                where=f"{path}:1",
                fix="start the file with the header line user,item,rank",
            )
        for line, record in enumerate(reader, start=2):
            where = f"{path}:{line}"
            user, item = user_of(record["user"] or ""), item_of(record["item"] or "")
            if user is None:
                raise DataError(
                    f"unknown user id {record['user']!r}",
                    where=where,
                    fix="use the original user ids of the split's train.csv/test.csv",
                )
            if item is None:
                raise DataError(
                    f"unknown item id {record['item']!r}",
                    where=where,
                    fix="use the original item ids of the split's train.csv/test.csv",
                )
            rank = _parse_rank(record["rank"] or "", where)
            ranks, seen = rows.setdefault(user, {}), items_seen.setdefault(user, set())
            if rank in ranks or item in seen:
                raise DataError(
                    f"user {record['user']} repeats rank {rank} or item {record['item']}",
                    where=where,
                    fix="give each user's items distinct ranks, each item once",
                )
            ranks[rank] = item
            seen.add(item)
    return {u: np.array([r[k] for k in sorted(r)], dtype=np.int64) for u, r in rows.items()}


def run(args: argparse.Namespace) -> int:
    from fedrec.data import read_split
    from fedrec.metrics import evaluate_lists

    split = read_split(args.split, load_data(args) if args.data else None)
    lists = read_recs(args.recs, split.data.user_ids, split.data.item_ids)
    print(json.dumps(evaluate_lists(lists, split)))
    return 0
