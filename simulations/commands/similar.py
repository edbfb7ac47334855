"""``fedrec similar RUN_DIR --item ID``: the items closest to one item in a run's model.

Cosine of the learned item vectors of the run's final global model
(:func:`fedrec.recommend.similar_items`); for an ``ease`` run, the largest entries of the
item's row of ``B`` (:func:`fedrec.federated.gram.similar_items`): the items EASE would
recommend to someone whose history is that item alone, in the same units as
``fedrec recommend``'s scores. Ids in and out are the data's original ids. Needs no user
data: only the global item parameters.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError

NAME = "similar"
HELP = "items most similar to one item in a simulation run's global model"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--item", required=True, metavar="ID", help="original item id")
    parser.add_argument("--k", type=int, default=10, help="how many items (default: 10)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


def similar(run_dir: Path, item_id: str, *, k: int) -> list[dict[str, Any]]:
    """``[{"item", "similarity"}]`` for ``item_id``, most similar first.

    ``similarity`` is a cosine, or for an ``ease`` run the EASE weight ``B[item, j]``.
    """
    from simulations.run_model import load_run_model

    if k < 1:
        raise ConfigError(f"must be >= 1, got {k}", where="--k")
    model = load_run_model(run_dir)
    ids = list(model.item_ids)
    neighbours = model.similar(model.item_index(item_id), k)
    return [{"item": ids[j], "similarity": cos} for j, cos in neighbours]


def _table(rows: list[dict[str, Any]]) -> str:
    lines = ["rank  item        similarity"]
    lines += [
        f"{rank:>4}  {row['item']!s:<10}  {row['similarity']:>10.4f}"
        for rank, row in enumerate(rows, start=1)
    ]
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = similar(args.run_dir, args.item, k=args.k)
    print(json.dumps(rows) if args.json else _table(rows))
    return 0
