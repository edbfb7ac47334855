"""``fedrec recommend RUN_DIR --user U``: a user's top-k from a simulation run.

The user's scores are those of the run's final evaluation (:mod:`simulations.run_model`);
the user's train items are never recommended. A user with fewer than
``--min-interactions`` train items gets the "most popular" fallback, from the signal the
run's privacy mode allows (:mod:`fedrec.recommend.cold_start`), marked ``fallback``.
Ids in and out are the data's original ids.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.recommend import recommend_with_explanations, with_original_ids

NAME = "recommend"
HELP = "top-k recommendations for one user of a simulation run"
DEFAULT_MIN_INTERACTIONS = 3
"""As on a device (``clients.device.DeviceClient``): below 3 items, popularity."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    parser.add_argument("--user", required=True, metavar="U", help="original user id")
    parser.add_argument("--k", type=int, default=10, help="how many items (default: 10)")
    parser.add_argument("--explain", action="store_true", help="cite the user's items (because)")
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.add_argument(
        "--min-interactions",
        type=int,
        default=DEFAULT_MIN_INTERACTIONS,
        metavar="N",
        help="below N train items, recommend by (private) popularity "
        f"(default: {DEFAULT_MIN_INTERACTIONS})",
    )


def recommendations(
    run_dir: Path, user_id: str, *, k: int, explain: bool, min_interactions: int
) -> list[dict[str, Any]]:
    """``[{"item", "score", "fallback"[, "because"]}]`` for ``user_id``, best first."""
    from simulations.run_model import load_run_model

    if k < 1:
        raise ConfigError(f"must be >= 1, got {k}", where="--k")
    model = load_run_model(run_dir)
    user = model.user_index(user_id)
    history = model.split.train_items(user)
    fallback = len(history) < min_interactions
    scores = model.popularity() if fallback else model.user_scores(user)
    recs = recommend_with_explanations(
        scores, history, model.item_vectors, k=k, top=3 if explain else 0
    )
    out = []
    for rec in with_original_ids(recs, model.split.data.item_ids):
        row: dict[str, Any] = {"item": rec.item, "score": rec.score, "fallback": fallback}
        if explain:
            row["because"] = [{"item": j, "weight": w} for j, w in rec.because]
        out.append(row)
    return out


def _table(rows: list[dict[str, Any]], explain: bool) -> str:
    lines = ["rank  item        score      " + ("because" if explain else "")]
    for rank, row in enumerate(rows, start=1):
        because = ", ".join(f"{c['item']} ({c['weight']:.2f})" for c in row.get("because", []))
        lines.append(f"{rank:>4}  {row['item']!s:<10}  {row['score']:>9.4f}  {because}".rstrip())
    if rows and rows[0]["fallback"]:
        lines.append(
            "(fallback: too few interactions; ranked by popularity, DP under a privacy mode)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    rows = recommendations(
        args.run_dir,
        args.user,
        k=args.k,
        explain=args.explain,
        min_interactions=args.min_interactions,
    )
    print(json.dumps(rows) if args.json else _table(rows, args.explain))
    return 0
