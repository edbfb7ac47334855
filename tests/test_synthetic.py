"""The synthetic generator: deterministic, planted signal a collaborative model can learn."""

from __future__ import annotations

import numpy as np

from fedrec.data import Interactions, random_split, synthetic
from fedrec.data.split import Split


def ndcg_at_10(scores: np.ndarray, split: Split) -> float:
    values = []
    for u in split.test_users():
        s = scores[u].astype(np.float64).copy()
        s[split.train_items(u)] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        rel = set(split.test_items(u).tolist())
        dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(top) if i in rel)
        values.append(dcg / sum(1 / np.log2(r + 2) for r in range(min(len(rel), 10))))
    return float(np.mean(values))


def test_deterministic_given_seed() -> None:
    a, b, c = synthetic(seed=3), synthetic(seed=3), synthetic(seed=4)
    assert np.array_equal(a.user, b.user) and np.array_equal(a.item, b.item)
    assert not np.array_equal(a.item, c.item)


def test_shapes_ground_truth_and_metadata(synthetic_data: Interactions) -> None:
    data = synthetic_data
    assert (data.n_users, data.n_items) == (100, 60)
    assert np.bincount(data.user, minlength=data.n_users).min() >= 5
    assert data.user_ids.tolist() == list(range(1, 101))  # 1-based ids, not indices
    assert np.asarray(data.extra["user_factors"]).shape == (100, 4)
    assert np.asarray(data.extra["item_factors"]).shape == (60, 4)
    assert data.item_genres is not None and data.item_genres.any(axis=1).all()
    assert data.timestamp is not None and np.all(np.diff(data.timestamp) >= 0)
    pairs = data.user * data.n_items + data.item
    assert len(np.unique(pairs)) == len(pairs)


def test_popularity_is_skewed() -> None:
    counts = np.sort(np.bincount(synthetic().item, minlength=200))[::-1]
    assert counts[:20].sum() > 0.25 * counts.sum()  # top 10% of items: > 25% of traffic
    assert counts[0] > 5 * np.median(counts)


def test_collaborative_signal_beats_popularity() -> None:
    # Prepare
    data = synthetic()
    split = random_split(data, seed=0)
    x = split.train.toarray().astype(np.float64)
    # Execute: popularity, item-kNN (cosine), and the planted truth
    popularity = np.broadcast_to(x.sum(0), x.shape)
    normed = x / np.maximum(np.linalg.norm(x, axis=0), 1e-12)
    sim = normed.T @ normed
    np.fill_diagonal(sim, 0.0)
    truth = np.asarray(data.extra["user_factors"]) @ np.asarray(data.extra["item_factors"]).T
    truth = truth + np.asarray(data.extra["item_popularity"])
    pop, knn, true = (ndcg_at_10(s, split) for s in (popularity, x @ sim, truth))
    # Assert
    assert knn > pop + 0.1 and true > pop + 0.1
