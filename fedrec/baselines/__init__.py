"""Centralized reference baselines, fitted on the whole train matrix.

Popularity, item-kNN (Deshpande & Karypis 2004) and EASE (Steck 2019) all keep the
:class:`~fedrec.baselines.base.Baseline` contract; the first-order Markov next-item
baseline (:mod:`fedrec.baselines.markov`) reads each user's train items in time order
instead of the matrix (:func:`fit_baseline`). :func:`reference_metrics` gives the
popularity and EASE numbers that every federated report shows beside its own.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.baselines.base import Baseline
from fedrec.baselines.ease import EASE
from fedrec.baselines.itemknn import ItemKNN
from fedrec.baselines.markov import MarkovNextItem
from fedrec.baselines.popularity import Popularity
from fedrec.data.split import Split
from fedrec.errors import ConfigError
from fedrec.metrics import evaluate_scores
from fedrec.metrics.evaluate import Metrics

EASE_MAX_ITEMS = 10_000
"""Largest catalog :func:`reference_metrics` fits EASE on (~0.8 GB per Gram matrix)."""
SCALABLE_KNN_K = 20
"""Neighbours of the item-kNN reference that replaces EASE above ``EASE_MAX_ITEMS``."""
log = logging.getLogger("fedrec.baselines")

BASELINES: dict[str, Callable[..., Baseline]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
    "markov": MarkovNextItem,
}


def make_baseline(name: str, **options: Any) -> Baseline:
    """A new, unfitted baseline by name (``popularity``, ``itemknn``, ``ease``)."""
    if name not in BASELINES:
        raise ConfigError(
            f"unknown baseline {name!r}", where="--model", fix=f"use one of {sorted(BASELINES)}"
        )
    return BASELINES[name](**options)


def evaluate_baseline(
    model: Baseline, split: Split, *, users: npt.NDArray[np.int64] | None = None
) -> Metrics:
    """Fit ``model`` on ``split.train`` and return the protocol's metrics on ``split.test``
    (on ``users`` only when given)."""
    fit_baseline(model, split)
    return evaluate_scores(model.score, split, users=users)


def fit_baseline(model: Baseline, split: Split) -> Baseline:
    """Fit ``model`` on ``split``: on its train sequences when the model reads the order
    (``fit_split``: the Markov next-item baseline), else on the binary train matrix."""
    fit_split = getattr(model, "fit_split", None)
    if fit_split is not None:
        fitted: Baseline = fit_split(split)
        return fitted
    return model.fit(split.train)


def reference_metrics(
    split: Split,
    *,
    ease_lambda: float = 500.0,
    max_ease_items: int = EASE_MAX_ITEMS,
    users: npt.NDArray[np.int64] | None = None,
) -> dict[str, Metrics]:
    """Popularity and EASE metrics on ``split``: the reference points beside every run.

    Cheap for MovieLens-sized catalogues (ml-100k: well under a second for both);
    EASE's cost grows as ``n_items^3`` time and ``n_items^2`` memory (see
    :mod:`fedrec.baselines.ease`): above ``max_ease_items`` items (27,000 items would
    need several 5.8 GB matrices) it is skipped with a logged note and replaced by
    item-kNN with a sparse similarity (:class:`ItemKNN`, ``k`` = 20; Deshpande &
    Karypis 2004), whose memory follows the co-occurrences.
    ``users`` restricts the evaluation to a sample (a run that evaluated a sample).

    Returns
    -------
    dict
        ``{"popularity": metrics, "ease": metrics}``, each with every key of
        :data:`fedrec.metrics.METRIC_KEYS`; above ``max_ease_items``, ``"itemknn"``
        instead of ``"ease"``.
    """
    out = {"popularity": evaluate_baseline(Popularity(), split, users=users)}
    if split.n_items > max_ease_items:
        log.warning(
            "EASE reference skipped: %d items > %d (its n_items^2 Gram matrices would not "
            "fit in memory); item-kNN (k=%d, sparse similarity) instead",
            split.n_items,
            max_ease_items,
            SCALABLE_KNN_K,
        )
        chosen = split.test_users() if users is None else np.asarray(users, dtype=np.int64)
        knn = ItemKNN(SCALABLE_KNN_K).fit(split.train, items=split.train[chosen].indices)
        out["itemknn"] = evaluate_scores(knn.score, split, users=users)
    else:
        out["ease"] = evaluate_baseline(EASE(ease_lambda), split, users=users)
    return out


__all__ = [
    "BASELINES",
    "EASE",
    "EASE_MAX_ITEMS",
    "Baseline",
    "ItemKNN",
    "MarkovNextItem",
    "Popularity",
    "evaluate_baseline",
    "fit_baseline",
    "make_baseline",
    "reference_metrics",
]
