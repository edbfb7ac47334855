"""On-device recommendation helpers: explanations, diversity re-ranking, similar items.

Pure functions of the global item parameters and one user's history (no Flower, no
training), so a device can serve them locally and the server can evaluate them.
"""

from __future__ import annotations

from fedrec.recommend.diversity import (
    candidate_pools,
    mmr_rerank,
    mmr_rerank_batch,
    plot_tradeoff,
    tradeoff_curve,
)
from fedrec.recommend.explain import (
    contributions,
    explain,
    item_based_scores,
    recommend_with_explanations,
)
from fedrec.recommend.similar import item_vectors, similar_items
from fedrec.recommend.types import Recommendation, with_original_ids

__all__ = [
    "Recommendation",
    "candidate_pools",
    "contributions",
    "explain",
    "item_based_scores",
    "item_vectors",
    "mmr_rerank",
    "mmr_rerank_batch",
    "plot_tradeoff",
    "recommend_with_explanations",
    "similar_items",
    "tradeoff_curve",
    "with_original_ids",
]
