"""Hypothesis properties of the ranking and beyond-accuracy metrics."""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.metrics import (
    USER_METRIC_KEYS,
    coverage,
    evaluate_user,
    f1_at_k,
    gini,
    intra_list_diversity,
    ndcg_at_k,
    novelty,
    precision_at_k,
    recall_at_k,
    reciprocal_rank,
    user_metrics,
)
from tests.metrics_reference import full_ranking, list_metrics

SETTINGS = settings(max_examples=60, deadline=None)


@st.composite
def ranking_case(draw: st.DrawFn) -> tuple[np.ndarray, np.ndarray]:
    """A ranking (a permutation of the catalogue) and a non-empty relevant set."""
    n_items = draw(st.integers(1, 40))
    order = draw(st.permutations(range(n_items)))
    relevant = draw(st.sets(st.integers(0, n_items - 1), min_size=1))
    return np.array(order, dtype=np.int64), np.array(sorted(relevant), dtype=np.int64)


@SETTINGS
@given(ranking_case())
def test_perfect_ranking_scores_one(case: tuple[np.ndarray, np.ndarray]) -> None:
    order, relevant = case
    perfect = np.concatenate([relevant, order[~np.isin(order, relevant)]])
    got = user_metrics(perfect, relevant)
    for key in ("ndcg@10", "recall@20", "hr@10", "mrr"):
        assert got[key] == pytest.approx(1.0), key
    scores = torch.zeros(len(order))
    scores[torch.as_tensor(relevant)] = 1.0
    local, _ = evaluate_user(scores, np.array([], dtype=np.int64), relevant)
    assert local == pytest.approx(got)


@SETTINGS
@given(ranking_case())
def test_metrics_lie_in_unit_interval_and_match_units(case: tuple[np.ndarray, np.ndarray]) -> None:
    order, relevant = case
    got = user_metrics(order, relevant)
    assert all(0.0 <= got[key] <= 1.0 for key in USER_METRIC_KEYS)
    assert got["ndcg@10"] == pytest.approx(ndcg_at_k(order, relevant, 10))
    assert got["recall@20"] == pytest.approx(recall_at_k(order, relevant, 20))
    assert got["precision@10"] == pytest.approx(precision_at_k(order, relevant, 10))
    assert got["f1@10"] == pytest.approx(f1_at_k(order, relevant, 10))
    assert got["mrr"] == pytest.approx(reciprocal_rank(order, relevant))


@SETTINGS
@given(ranking_case(), st.integers(0, 2**32 - 1))
def test_permuting_non_relevant_items_changes_nothing(
    case: tuple[np.ndarray, np.ndarray], seed: int
) -> None:
    order, relevant = case
    slots = np.flatnonzero(~np.isin(order, relevant))
    shuffled = order.copy()
    shuffled[slots] = order[slots][np.random.default_rng(seed).permutation(len(slots))]
    assert user_metrics(shuffled, relevant) == user_metrics(order, relevant)


@SETTINGS
@given(st.data())
def test_evaluate_user_matches_reference_with_ties(data: st.DataObject) -> None:
    n_items = data.draw(st.integers(1, 40))
    scores = data.draw(st.lists(st.integers(-2, 2), min_size=n_items, max_size=n_items))
    items = st.sets(st.integers(0, n_items - 1))
    train = data.draw(items)
    test = data.draw(items.filter(lambda s: len(s - train) > 0)) - train
    local, top = evaluate_user(
        torch.tensor(scores, dtype=torch.float32),
        np.array(sorted(train), dtype=np.int64),
        np.array(sorted(test), dtype=np.int64),
    )
    ranking = full_ranking([float(s) for s in scores], train)
    assert local == pytest.approx(list_metrics(ranking, train, test), abs=1e-9)
    assert top[top >= 0].tolist() == ranking[:10]


@st.composite
def lists_case(draw: st.DrawFn) -> tuple[np.ndarray, int]:
    n_items = draw(st.integers(1, 30))
    n_users = draw(st.integers(1, 12))
    cells = st.integers(-1, n_items - 1)
    lists = draw(
        st.lists(st.lists(cells, min_size=10, max_size=10), min_size=n_users, max_size=n_users)
    )
    return np.array(lists, dtype=np.int64), n_items


@SETTINGS
@given(lists_case())
def test_beyond_metrics_lie_in_unit_interval(case: tuple[np.ndarray, int]) -> None:
    lists, n_items = case
    assert 0.0 <= coverage(lists, n_items) <= 1.0
    assert 0.0 <= gini(lists, n_items) <= 1.0
    genres = np.random.default_rng(n_items).random((n_items, 5)) < 0.5
    diversity = intra_list_diversity(lists, genres)
    assert diversity is not None and -1e-12 <= diversity <= 1.0 + 1e-12
    train = sp.csr_matrix(np.random.default_rng(0).random((4, n_items)) < 0.5, dtype=np.float32)
    assert novelty(lists, train) >= 0.0
