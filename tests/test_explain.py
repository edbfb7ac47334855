"""Explanations: exact decomposition, and the faithfulness acceptance test (removing
the cited history items lowers the explained score), on random and planted data."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest

from fedrec.recommend import (
    Recommendation,
    contributions,
    explain,
    item_based_scores,
    recommend_with_explanations,
    with_original_ids,
)

Cited = list[list[tuple[int, float]]]


def removal_lowers(
    vectors: npt.NDArray[np.float64],
    history: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    cited: Cited,
) -> bool:
    """The acceptance predicate: dropping an item's citations lowers its explained score."""
    full = item_based_scores(vectors, history)
    for item, because in zip(items, cited, strict=True):
        if not because:
            continue
        kept = np.setdiff1d(history, [j for j, _ in because])
        if not item_based_scores(vectors, kept)[item] < full[item]:
            return False
    return True


def random_case(seed: int) -> tuple[npt.NDArray[np.float64], npt.NDArray[np.int64]]:
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(80, 6))
    history = rng.choice(80, size=12, replace=False).astype(np.int64)
    return vectors, history


def test_contributions_sum_exactly_to_the_explained_score(rng: np.random.Generator) -> None:
    vectors = rng.normal(size=(40, 5))
    history = np.array([3, 7, 7, 20], dtype=np.int64)  # a repeat counts once

    used, weights = contributions(vectors, history, np.arange(40))

    np.testing.assert_array_equal(used, [3, 7, 20])
    np.testing.assert_allclose(weights.sum(axis=1), item_based_scores(vectors, history))


def test_removing_cited_items_lowers_the_score_by_their_weights_on_random_data() -> None:
    for seed in range(20):
        # Prepare: recommend the top unseen items by explained score.
        vectors, history = random_case(seed)
        scores = item_based_scores(vectors, history)
        scores[history] = -np.inf
        items = np.argsort(-scores)[:10]

        # Execute
        cited = explain(vectors, history, items, top=3)

        # Assert: the predicate holds, and the drop is exactly the sum of the weights.
        assert removal_lowers(vectors, history, items, cited)
        for item, because in zip(items, cited, strict=True):
            kept = np.setdiff1d(history, [j for j, _ in because])
            before = item_based_scores(vectors, history)[item]
            after = item_based_scores(vectors, kept)[item]
            assert before - after == pytest.approx(sum(w for _, w in because))
            assert all(w > 0 for _, w in because)
            assert [w for _, w in because] == sorted((w for _, w in because), reverse=True)


def test_the_acceptance_predicate_fails_for_an_unfaithful_explainer() -> None:
    # Prepare: cite the *least* supportive history items instead (negative weights).
    vectors, history = random_case(0)
    items = np.arange(10, dtype=np.int64)
    used, weights = contributions(vectors, history, items)
    wrong: Cited = [[(int(used[np.argmin(row)]), float(row.min()))] for row in weights]

    # Execute / Assert: the test is able to fail.
    assert not removal_lowers(vectors, history, items, wrong)


def test_planted_clusters_cite_the_same_cluster_history() -> None:
    # Prepare: items 0-9 lie in the e0-e1 plane (cluster A), 10-19 in e2-e3 (cluster B).
    rng = np.random.default_rng(1)
    vectors = np.zeros((20, 4))
    vectors[:10, :2] = rng.uniform(0.1, 1.0, size=(10, 2))
    vectors[10:, 2:] = rng.uniform(0.1, 1.0, size=(10, 2))
    history = np.array([0, 1, 2, 10, 11], dtype=np.int64)

    # Execute: explain an unseen cluster-A item and an unseen cluster-B item.
    cited = explain(vectors, history, np.array([5, 15]), top=3)

    # Assert
    assert {j for j, _ in cited[0]} == {0, 1, 2}
    assert {j for j, _ in cited[1]} == {10, 11}
    assert removal_lowers(vectors, history, np.array([5, 15]), cited)


def test_recommend_with_explanations_ranks_by_scores_and_excludes_seen() -> None:
    vectors = np.array([[1.0, 0.0], [1.0, 0.1], [0.0, 1.0], [-1.0, 0.0]])
    scores = np.array([9.0, 5.0, 5.0, -np.inf])

    recs = recommend_with_explanations(scores, np.array([0]), vectors, k=5)

    assert [r.item for r in recs] == [1, 2]  # seen 0 and -inf 3 never shown; tie by index
    assert recs[0].because[0][0] == 0 and not recs[0].fallback
    assert recs[1].because == [] and recs[1].fallback  # cosine 0: nothing supports it


def test_recommend_without_history_falls_back_and_maps_original_ids() -> None:
    vectors = np.eye(3)

    recs = recommend_with_explanations(np.array([0.1, 0.3, 0.2]), np.array([], int), vectors, k=2)
    mapped = with_original_ids(recs, np.array([101, 102, 103]))

    assert mapped == [Recommendation(102, 0.3, [], True), Recommendation(103, 0.2, [], True)]
