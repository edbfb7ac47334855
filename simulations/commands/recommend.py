"""``fedrec recommend RUN_DIR --user U``: a user's top-k from a simulation run.

The user's scores are those of the run's final evaluation (:mod:`simulations.run_model`);
the user's train items are never recommended. A user with fewer than
``--min-interactions`` train items gets the "most popular" fallback, from the signal the
run's privacy mode allows (:mod:`fedrec.recommend.cold_start`), marked ``fallback``.
Ids in and out are the data's original ids. ``--explain`` cites, per item, the user's
items that support it most (:meth:`simulations.run_model.RunModel.explain`): item-space
cosines for the trained models, EASE's exact score terms ``B_ij`` for an ``ease`` run.

``--diversify LAMBDA`` re-ranks the user's top-``--pool`` candidates by Maximal Marginal
Relevance (Carbonell & Goldstein 1998) in the library's default mean-redundancy form
(:mod:`fedrec.recommend.diversity`; Ziegler et al. 2005), with genre similarity where the
run's data have genres, else learned item vectors (:func:`simulations.beyond.mmr_features`).
``LAMBDA = 1`` is the plain relevance order. A re-ranked item keeps its model ``score``, so
scores need not decrease down the list; the JSON stays a list of items.
"""

from __future__ import annotations

import argparse
import inspect
import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError
from fedrec.recommend import (
    Recommendation,
    candidate_pools,
    mmr_rerank,
    recommend_with_explanations,
    with_original_ids,
)

if TYPE_CHECKING:
    from simulations.run_model import RunModel

NAME = "recommend"
HELP = "top-k recommendations for one user of a simulation run"
DEFAULT_MIN_INTERACTIONS = 3
"""As on a device (``clients.device.DeviceClient``): below 3 items, popularity."""
DEFAULT_POOL: int = inspect.signature(candidate_pools).parameters["size"].default
"""MMR's candidate pool, the library's (:func:`fedrec.recommend.candidate_pools`)."""


@dataclass(frozen=True)
class Diversify:
    """MMR re-ranking asked for on the command line: trade-off and pool size."""

    lam: float
    pool: int = DEFAULT_POOL

    def check(self, k: int) -> None:
        """Raise :class:`ConfigError` unless ``0 <= lam <= 1`` and ``pool >= k``."""
        if not 0.0 <= self.lam <= 1.0:
            raise ConfigError(
                f"lambda {self.lam} is outside [0, 1]",
                where="--diversify",
                fix="use 0 <= LAMBDA <= 1 (1 = plain relevance order, lower = more diverse)",
            )
        if self.pool < k:
            raise ConfigError(
                f"pool {self.pool} is smaller than the list length {k}",
                where="--pool",
                fix=f"use --pool >= --k (default {DEFAULT_POOL})",
            )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("run_dir", type=Path, metavar="RUN_DIR", help="a run directory")
    who = parser.add_mutually_exclusive_group(required=True)
    who.add_argument("--user", metavar="U", help="original user id of the run")
    who.add_argument(
        "--items",
        metavar="A,B,C",
        help="a new user's history: original item ids, comma separated (no user id needed)",
    )
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
    parser.add_argument(
        "--diversify",
        type=float,
        metavar="LAMBDA",
        help="MMR re-ranking, LAMBDA in [0, 1]: 1 = relevance order, lower = more diverse",
    )
    parser.add_argument(
        "--pool",
        type=int,
        default=DEFAULT_POOL,
        metavar="N",
        help=f"with --diversify, re-rank the top N candidates (default: {DEFAULT_POOL})",
    )


def recommendations(
    run_dir: Path,
    user_id: str | None,
    *,
    k: int,
    explain: bool,
    min_interactions: int,
    diversify: Diversify | None = None,
    items: str | None = None,
    model: RunModel | None = None,
) -> list[dict[str, Any]]:
    """``[{"item", "score", "fallback"[, "title"][, "because"]}]``, best (or MMR) first.

    The user is a user of the run (``user_id``) or a new user given by the original ids
    of their ``items``. A user id the run does not know gets the cold-start path (no
    history). Fallback rows carry ``score: null``: their order comes from the
    popularity signal, whose values are not shown.
    """
    from simulations.run_model import load_run_model

    if k < 1:
        raise ConfigError(f"must be >= 1, got {k}", where="--k")
    if diversify is not None:
        diversify.check(k)
    if model is None:
        model = load_run_model(run_dir)
    if items is not None:
        history = _history(model, items)
        scores = model.history_scores(history) if len(history) >= min_interactions else None
    elif user_id is not None and model.knows_user(user_id):
        user = model.user_index(user_id)
        history = model.train_items(user)
        scores = model.user_scores(user) if len(history) >= min_interactions else None
    else:  # a user the run never saw: cold start
        history, scores = np.zeros(0, dtype=np.int64), None
    fallback = scores is None
    if scores is None:
        scores = model.popularity()
    top = 3 if explain else 0
    if diversify is None:
        recs = recommend_with_explanations(scores, history, model.item_vectors, k=k, top=0)
        because = model.explain(history, [int(r.item) for r in recs], top)
        recs = [replace(r, because=list(b)) for r, b in zip(recs, because, strict=True)]
    else:
        recs = _diversified(model, scores, history, k=k, top=top, diversify=diversify)
    titles = model.exported.titles
    out = []
    for index, rec in zip(
        [int(r.item) for r in recs],
        with_original_ids(recs, np.array(model.item_ids, dtype=object)),
        strict=True,
    ):
        row: dict[str, Any] = {
            "item": rec.item,
            "score": None if fallback else rec.score,
            "fallback": fallback,
        }
        if titles is not None:
            row["title"] = titles[index]
        if explain:
            row["because"] = [{"item": j, "weight": w} for j, w in rec.because]
        out.append(row)
    return out


def _history(model: RunModel, items: str) -> npt.NDArray[np.int64]:
    """Catalog rows of a comma-separated list of original item ids (unknown ones refused)."""
    ids = [part.strip() for part in items.split(",") if part.strip()]
    if not ids:
        raise ConfigError("no item id given", where="--items", fix="pass e.g. --items 50,172,181")
    return np.unique(np.array([model.item_index(i, flag="--items") for i in ids], dtype=np.int64))


def _diversified(
    model: RunModel,
    scores: npt.NDArray[np.float64],
    history: npt.NDArray[np.int64],
    *,
    k: int,
    top: int,
    diversify: Diversify,
) -> list[Recommendation]:
    """MMR over the top-``pool`` unseen items, each explained as in the plain list."""
    from simulations.beyond import mmr_features

    pool = recommend_with_explanations(scores, history, model.item_vectors, k=diversify.pool, top=0)
    features, _ = mmr_features(model)
    values = np.asarray(scores, dtype=np.float64)
    items = mmr_rerank(values, [r.item for r in pool], features, k=k, lam=diversify.lam)
    because = model.explain(history, [int(i) for i in items], top)
    return [
        Recommendation(item=int(i), score=float(values[i]), because=list(b), fallback=not b)
        for i, b in zip(items, because, strict=True)
    ]


def _table(rows: list[dict[str, Any]], explain: bool) -> str:
    titled = any("title" in row for row in rows)
    head = "rank  item        " + ("title                           " if titled else "")
    lines = [head + "score      " + ("because (weight)" if explain else "")]
    for rank, row in enumerate(rows, start=1):
        because = ", ".join(f"{c['item']} ({c['weight']:.3g})" for c in row.get("because", []))
        title = f"{str(row.get('title', ''))[:30]:<30}  " if titled else ""
        score = "-" if row["score"] is None else f"{row['score']:>9.4f}"
        line = f"{rank:>4}  {row['item']!s:<10}  {title}{score:>9}  {because}"
        lines.append(line.rstrip())
    if rows and rows[0]["fallback"]:
        lines.append(
            "(cold start: too few known interactions; ranked by popularity, DP under a privacy "
            "mode; scores not shown)"
        )
    return "\n".join(lines)


def run(args: argparse.Namespace) -> int:
    import sys

    from simulations.run_model import load_run_model

    diversify = None if args.diversify is None else Diversify(args.diversify, args.pool)
    model = load_run_model(args.run_dir)
    if args.user is not None and not model.knows_user(args.user):
        print(f"user {args.user!r} is not in this run: cold-start recommendations", file=sys.stderr)
    rows = recommendations(
        args.run_dir,
        args.user,
        k=args.k,
        explain=args.explain,
        min_interactions=args.min_interactions,
        diversify=diversify,
        items=args.items,
        model=model,
    )
    if args.json:
        print(json.dumps(rows))
        return 0
    print(_table(rows, args.explain))
    if diversify is not None:
        print(f"(diversified: MMR lambda {diversify.lam} over the top {diversify.pool})")
    return 0
