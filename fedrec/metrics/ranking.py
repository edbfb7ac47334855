"""Per-user top-k ranking metrics with binary relevance.

Design rule (after LensKit's ``lenskit.metrics.ranking``): a metric is a tiny typed
unit ``(ranked, relevant, k) -> float`` for one user; averaging over users is a
separate step (:mod:`fedrec.metrics.evaluate`). ``ranked`` is a ranked list of
distinct item indices, best first; entries ``< 0`` are padding and never relevant.
An empty ``relevant`` set gives NaN, because the metric is undefined for that user.

:func:`metrics_from_hits` is the same maths vectorised over many users; the batched
evaluator and :func:`user_metrics` both go through it, so a single user evaluated on
a device and the same user evaluated centrally get identical numbers.

Definitions (Järvelin & Kekäläinen 2002 for (N)DCG; Krichene & Rendle 2020 for the
full-ranking protocol): DCG@k sums ``1 / log2(rank + 1)`` over relevant items in the
top k; ideal DCG@k places ``min(|relevant|, k)`` relevant items first.
Recall@k is ``hits / min(|relevant|, k)``; precision@k is ``hits / k``; F1@k is their
harmonic mean (0 when both are 0); HR@k is 1 when any relevant item is in the top k;
the reciprocal rank is ``1 / rank`` of the first relevant item (0 when none).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt

#: Length of the ranked list every per-user metric needs (the largest cut-off).
LIST_LENGTH = 20

#: The per-user keys produced by :func:`user_metrics` / :func:`metrics_from_hits`.
USER_METRIC_KEYS = ("ndcg@10", "recall@20", "hr@10", "precision@10", "f1@10", "mrr")

ItemSet = set[int] | npt.NDArray[np.int64]


def _hits(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> npt.NDArray[np.bool_]:
    top = np.asarray(ranked, dtype=np.int64)[:k]
    rel = np.fromiter(relevant, dtype=np.int64) if isinstance(relevant, set) else relevant
    return np.isin(top, np.asarray(rel, dtype=np.int64)) & (top >= 0)


def _n_relevant(relevant: ItemSet) -> int:
    return len(relevant) if isinstance(relevant, set) else int(np.unique(relevant).size)


def ndcg_at_k(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> float:
    """Normalised DCG@k with binary gains (Järvelin & Kekäläinen, TOIS 2002)."""
    n_rel = _n_relevant(relevant)
    if n_rel == 0:
        return math.nan
    hits = _hits(ranked, relevant, k)
    discounts = 1.0 / np.log2(np.arange(2, k + 2, dtype=np.float64))
    dcg = float(discounts[: hits.size][hits].sum())
    return dcg / float(discounts[: min(n_rel, k)].sum())


def recall_at_k(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> float:
    """Hits in the top k divided by ``min(|relevant|, k)``."""
    n_rel = _n_relevant(relevant)
    if n_rel == 0:
        return math.nan
    return float(_hits(ranked, relevant, k).sum()) / min(n_rel, k)


def hit_rate_at_k(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> float:
    """1.0 when any relevant item is in the top k, else 0.0."""
    if _n_relevant(relevant) == 0:
        return math.nan
    return float(_hits(ranked, relevant, k).any())


def precision_at_k(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> float:
    """Hits in the top k divided by k (a short list is not rescaled)."""
    if _n_relevant(relevant) == 0:
        return math.nan
    return float(_hits(ranked, relevant, k).sum()) / k


def f1_at_k(ranked: npt.NDArray[np.int64], relevant: ItemSet, k: int) -> float:
    """Harmonic mean of :func:`precision_at_k` and :func:`recall_at_k` (0 when both 0)."""
    p = precision_at_k(ranked, relevant, k)
    r = recall_at_k(ranked, relevant, k)
    if math.isnan(p):
        return math.nan
    return 0.0 if p + r == 0 else 2 * p * r / (p + r)


def reciprocal_rank(ranked: npt.NDArray[np.int64], relevant: ItemSet) -> float:
    """``1 / rank`` of the first relevant item anywhere in ``ranked`` (0 when absent)."""
    if _n_relevant(relevant) == 0:
        return math.nan
    hits = _hits(ranked, relevant, len(ranked))
    return 1.0 / (int(np.argmax(hits)) + 1) if hits.any() else 0.0


def metrics_from_hits(
    hits: npt.NDArray[np.bool_],
    n_relevant: npt.NDArray[np.int64],
    first_hit_rank: npt.NDArray[np.int64],
) -> dict[str, npt.NDArray[np.float64]]:
    """All per-user metrics of many users at once.

    Parameters
    ----------
    hits
        ``[n_users, >= 20]``: whether position ``j`` (0-based) of each user's ranked
        list holds a relevant item.
    n_relevant
        ``[n_users]``: number of relevant (test) items of each user, ``>= 1``.
    first_hit_rank
        ``[n_users]``: 1-based rank of the first relevant item in the full ranking,
        0 when there is none.

    Returns
    -------
    dict
        One ``float64`` array ``[n_users]`` per key of :data:`USER_METRIC_KEYS`.
    """
    hits = np.asarray(hits, dtype=bool)
    if hits.shape[1] < LIST_LENGTH:
        hits = np.pad(hits, ((0, 0), (0, LIST_LENGTH - hits.shape[1])))
    n_rel = np.asarray(n_relevant, dtype=np.float64)
    discounts = 1.0 / np.log2(np.arange(2, 12, dtype=np.float64))
    ideal = np.cumsum(discounts)[np.minimum(n_rel, 10).astype(np.int64) - 1]
    hits10 = hits[:, :10].sum(axis=1).astype(np.float64)
    precision = hits10 / 10.0
    recall10 = hits10 / np.minimum(n_rel, 10.0)
    denom = precision + recall10
    f1 = np.divide(2 * precision * recall10, denom, out=np.zeros_like(denom), where=denom > 0)
    rank = np.asarray(first_hit_rank, dtype=np.float64)
    return {
        "ndcg@10": (hits[:, :10] * discounts).sum(axis=1) / ideal,
        "recall@20": hits[:, :20].sum(axis=1) / np.minimum(n_rel, 20.0),
        "hr@10": (hits10 > 0).astype(np.float64),
        "precision@10": precision,
        "f1@10": f1,
        "mrr": np.divide(1.0, rank, out=np.zeros_like(rank), where=rank > 0),
    }


def user_metrics(
    ranked_items: npt.NDArray[np.int64],
    relevant_items: npt.NDArray[np.int64],
    *,
    first_hit_rank: int | None = None,
) -> dict[str, float]:
    """ndcg@10, recall@20, hr@10, precision@10, f1@10 and mrr of one user.

    Parameters
    ----------
    ranked_items
        The user's ranking, best first, at least its top 20 (``-1`` pads).
    relevant_items
        The user's relevant (test) items; must not be empty.
    first_hit_rank
        1-based rank of the first relevant item in the *full* ranking, which may lie
        beyond ``ranked_items``; ``None`` (default) takes it from ``ranked_items``,
        0 meaning no hit.
    """
    ranked = np.asarray(ranked_items, dtype=np.int64)
    relevant = np.unique(np.asarray(relevant_items, dtype=np.int64))
    if relevant.size == 0:
        raise ValueError("user_metrics needs at least one relevant item")
    hits = np.isin(ranked, relevant) & (ranked >= 0)
    if first_hit_rank is None:
        first_hit_rank = int(np.argmax(hits)) + 1 if hits.any() else 0
    arrays = metrics_from_hits(
        hits[None, :LIST_LENGTH],
        np.array([relevant.size], dtype=np.int64),
        np.array([first_hit_rank], dtype=np.int64),
    )
    return {key: float(value[0]) for key, value in arrays.items()}
