"""Centralized reference baselines, fitted on the whole train matrix.

Popularity, item-kNN (Deshpande & Karypis 2004) and EASE (Steck 2019) all keep the
:class:`~fedrec.baselines.base.Baseline` contract. :func:`reference_metrics` gives the
popularity and EASE numbers that every federated report shows beside its own.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from fedrec.baselines.base import Baseline
from fedrec.baselines.ease import EASE
from fedrec.baselines.itemknn import ItemKNN
from fedrec.baselines.popularity import Popularity
from fedrec.data.split import Split
from fedrec.errors import ConfigError
from fedrec.metrics import evaluate_scores
from fedrec.metrics.evaluate import Metrics

BASELINES: dict[str, Callable[..., Baseline]] = {
    "popularity": Popularity,
    "itemknn": ItemKNN,
    "ease": EASE,
}


def make_baseline(name: str, **options: Any) -> Baseline:
    """A new, unfitted baseline by name (``popularity``, ``itemknn``, ``ease``)."""
    if name not in BASELINES:
        raise ConfigError(
            f"unknown baseline {name!r}", where="--model", fix=f"use one of {sorted(BASELINES)}"
        )
    return BASELINES[name](**options)


def evaluate_baseline(model: Baseline, split: Split) -> Metrics:
    """Fit ``model`` on ``split.train`` and return the protocol's metrics on ``split.test``."""
    model.fit(split.train)
    return evaluate_scores(model.score, split)


def reference_metrics(split: Split, *, ease_lambda: float = 500.0) -> dict[str, Metrics]:
    """Popularity and EASE metrics on ``split``: the reference points beside every run.

    Cheap for MovieLens-sized catalogues (ml-100k: well under a second for both);
    EASE's cost grows as ``n_items^3`` time and ``n_items^2`` memory (see
    :mod:`fedrec.baselines.ease`).

    Returns
    -------
    dict
        ``{"popularity": metrics, "ease": metrics}``, each with every key of
        :data:`fedrec.metrics.METRIC_KEYS`.
    """
    return {
        "popularity": evaluate_baseline(Popularity(), split),
        "ease": evaluate_baseline(EASE(ease_lambda), split),
    }


__all__ = [
    "BASELINES",
    "EASE",
    "Baseline",
    "ItemKNN",
    "Popularity",
    "evaluate_baseline",
    "make_baseline",
    "reference_metrics",
]
