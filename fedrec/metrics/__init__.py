"""Evaluation metrics: per-user ranking units, beyond-accuracy metrics, and the
batched full-ranking evaluator (protocol in ``docs/PROTOCOL.md``)."""

from __future__ import annotations

from fedrec.metrics.beyond import coverage, gini, intra_list_diversity, novelty
from fedrec.metrics.evaluate import (
    METRIC_KEYS,
    aggregate,
    evaluate_lists,
    evaluate_scores,
    evaluate_user,
)
from fedrec.metrics.ranking import (
    USER_METRIC_KEYS,
    f1_at_k,
    hit_rate_at_k,
    metrics_from_hits,
    ndcg_at_k,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    user_metrics,
)

__all__ = [
    "METRIC_KEYS",
    "USER_METRIC_KEYS",
    "aggregate",
    "coverage",
    "evaluate_lists",
    "evaluate_scores",
    "evaluate_user",
    "f1_at_k",
    "gini",
    "hit_rate_at_k",
    "intra_list_diversity",
    "metrics_from_hits",
    "ndcg_at_k",
    "novelty",
    "precision_at_k",
    "recall_at_k",
    "reciprocal_rank",
    "user_metrics",
]
