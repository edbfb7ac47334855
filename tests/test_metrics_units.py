"""Hand-computed values of every metric unit and beyond-accuracy metric."""

from __future__ import annotations

import math

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.metrics import (
    METRIC_KEYS,
    aggregate,
    coverage,
    evaluate_user,
    f1_at_k,
    gini,
    hit_rate_at_k,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    user_metrics,
)


def arr(*items: int) -> np.ndarray:
    return np.array(items, dtype=np.int64)


def test_single_hit_at_rank_two() -> None:
    ranked, relevant = arr(3, 1, 2), {1}
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(1 / math.log2(3))
    assert recall_at_k(ranked, relevant, 10) == 1.0
    assert hit_rate_at_k(ranked, relevant, 10) == 1.0
    assert precision_at_k(ranked, relevant, 10) == pytest.approx(0.1)
    assert f1_at_k(ranked, relevant, 10) == pytest.approx(2 * 0.1 / 1.1)
    assert reciprocal_rank(ranked, relevant) == 0.5


def test_two_of_three_relevant() -> None:
    ranked, relevant = arr(5, 6, 7, 8), arr(6, 8, 9)
    ideal = 1 + 1 / math.log2(3) + 1 / math.log2(4)
    assert ndcg_at_k(ranked, relevant, 10) == pytest.approx(
        (1 / math.log2(3) + 1 / math.log2(5)) / ideal
    )
    assert ndcg_at_k(ranked, relevant, 2) == pytest.approx(
        (1 / math.log2(3)) / (1 + 1 / math.log2(3))
    )
    assert recall_at_k(ranked, relevant, 10) == pytest.approx(2 / 3)
    assert recall_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)  # 1 hit / min(3, 2)
    assert precision_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)
    assert f1_at_k(ranked, relevant, 2) == pytest.approx(1 / 2)


def test_cut_off_and_padding() -> None:
    ranked = np.concatenate([np.arange(100, 110), arr(7), arr(-1, -1)])
    assert ndcg_at_k(ranked, {7}, 10) == 0.0
    assert hit_rate_at_k(ranked, {7}, 10) == 0.0
    assert f1_at_k(ranked, {7}, 10) == 0.0
    assert reciprocal_rank(ranked, {7}) == pytest.approx(1 / 11)
    assert recall_at_k(arr(-1, -1), {-1}, 10) == 0.0  # padding never counts


def test_empty_truth_is_nan() -> None:
    for value in (
        ndcg_at_k(arr(1), set(), 10),
        recall_at_k(arr(1), arr(), 10),
        reciprocal_rank(arr(1), set()),
    ):
        assert math.isnan(value)


def test_user_metrics_matches_units_and_overrides_mrr() -> None:
    ranked = arr(4, 9, 2, 8, 0, 1, 3, 5, 6, 7, 10, 11, 12, 13, 14, 15, 16, 17, 18, 19)
    relevant = arr(8, 15, 30)
    got = user_metrics(ranked, relevant)
    assert got["ndcg@10"] == pytest.approx(ndcg_at_k(ranked, relevant, 10))
    assert got["recall@20"] == pytest.approx(2 / 3)
    assert got["hr@10"] == 1.0
    assert got["precision@10"] == pytest.approx(0.1)
    assert got["f1@10"] == pytest.approx(f1_at_k(ranked, relevant, 10))
    assert got["mrr"] == pytest.approx(1 / 4)
    assert user_metrics(ranked, relevant, first_hit_rank=50)["mrr"] == pytest.approx(1 / 50)
    assert user_metrics(ranked, relevant, first_hit_rank=0)["mrr"] == 0.0


def test_coverage_and_gini() -> None:
    lists = np.array([[0, 1], [1, -1]])
    assert coverage(lists, 4) == 0.5
    # exposure [1, 2, 0, 0] sorted [0, 0, 1, 2]: ((2*3-5)*1 + (2*4-5)*2) / (4*3)
    assert gini(lists, 4) == pytest.approx(7 / 12)
    assert gini(np.array([[0, 1], [2, 3]]), 4) == 0.0
    assert gini(np.array([[2], [2]]), 4) == pytest.approx(3 / 4)
    assert gini(np.full((2, 3), -1), 4) == 0.0


def test_novelty_counts_unseen_items_as_one_user() -> None:
    # train users: 0 has {0, 1}, 1 has {1}, 2 has nothing -> 2 train users
    train = sp.csr_matrix(np.array([[1, 1, 0, 0], [0, 1, 0, 0], [0, 0, 0, 0]], dtype=np.float32))
    lists = np.array([[0, 1], [3, -1]])
    # -log2: item 0 -> 1, item 1 -> 0, item 3 (unseen, p = 1/2) -> 1
    assert novelty(lists, train) == pytest.approx(2 / 3)


def test_intra_list_diversity_is_one_minus_cosine() -> None:
    genres = np.array([[1, 0], [1, 1], [0, 1]], dtype=bool)
    lists = np.array([[0, 1, 2], [0, -1, -1]])  # the one-item list has no pairs
    expected = (2 * (1 - 1 / math.sqrt(2)) + 1) / 3
    assert intra_list_diversity(lists, genres) == pytest.approx(expected)
    assert intra_list_diversity(lists, None) is None


def test_evaluate_user_breaks_ties_by_lower_index() -> None:
    # Prepare: all scores equal, item 0 in train, item 5 the only test item
    scores = torch.zeros(30)
    # Execute
    metrics, top = evaluate_user(scores, arr(0), arr(5))
    # Assert: ranking 1, 2, 3, 4, 5, ... -> item 5 at rank 5
    assert top.tolist() == list(range(1, 11))
    assert metrics["mrr"] == pytest.approx(1 / 5)
    assert metrics["ndcg@10"] == pytest.approx(1 / math.log2(6))


def test_evaluate_user_short_catalogue_pads_and_ranks_beyond_list() -> None:
    scores = torch.tensor([5.0, 4.0, 3.0, -torch.inf, 1.0])
    metrics, top = evaluate_user(scores, arr(0, 1, 2), arr(4))
    assert top.tolist() == [4, 3] + [-1] * 8  # -inf candidate kept, train items dropped
    assert metrics["mrr"] == 1.0
    # a test item far down the full ranking
    metrics, _ = evaluate_user(-torch.arange(40.0), arr(), arr(30))
    assert metrics["mrr"] == pytest.approx(1 / 31)
    assert metrics["recall@20"] == 0.0


def test_aggregate_averages_uniformly() -> None:
    per_user = [user_metrics(arr(1, 2), arr(1)), user_metrics(arr(3, 2), arr(1))]
    train = sp.csr_matrix(np.ones((2, 4), dtype=np.float32))
    got = aggregate(per_user, [arr(1, 2), arr(3, 2)], (train, 4, None))
    assert list(got) == list(METRIC_KEYS)
    assert got["ndcg@10"] == pytest.approx(0.5)
    assert got["mrr"] == pytest.approx(0.5)
    assert got["coverage@10"] == pytest.approx(3 / 4)
    assert got["novelty@10"] == 0.0  # every train user has every item
    assert got["users_evaluated"] == 2
    with pytest.raises(ValueError, match="top lists"):
        aggregate(per_user, [arr(1)], (train, 4, None))
