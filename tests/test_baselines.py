"""Contract tests for the centralized baselines, and the ``fedrec baseline`` command."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.baselines import BASELINES, EASE, ItemKNN, Popularity, fit_baseline, make_baseline
from fedrec.baselines.base import Baseline
from fedrec.baselines.ease import ease_weights
from fedrec.baselines.itemknn import cosine_neighbours
from fedrec.data.interactions import Interactions
from fedrec.data.split import Split, random_split
from simulations.seeds import parse_seeds, summarize

ML100K = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"


N_USERS, N_ITEMS, N_CLUSTERS, BLOCK, N_POPULAR = 160, 65, 4, 15, 5


def block_of(user: int) -> range:
    """The planted items of ``user``'s cluster."""
    start = N_POPULAR + (user % N_CLUSTERS) * BLOCK
    return range(start, start + BLOCK)


def planted_split(seed: int = 0) -> Split:
    """4 user clusters, each liking 8 items of its own 15-item block, plus 5 popular items.

    Each user also has each popular item with probability 0.3, so popularity ranks
    those first; a collaborative model must instead recommend the unseen items of
    the user's block (each liked by 8/15 of the cluster).
    """
    rng = np.random.default_rng(seed)
    users, items = [], []
    for u in range(N_USERS):
        liked = rng.choice(np.asarray(block_of(u)), size=8, replace=False)
        popular = np.flatnonzero(rng.random(N_POPULAR) < 0.3)
        items.extend(int(i) for i in np.concatenate([liked, popular]))
        users.extend([u] * (len(liked) + len(popular)))
    data = Interactions(
        user=np.asarray(users, dtype=np.int64),
        item=np.asarray(items, dtype=np.int64),
        user_ids=np.arange(N_USERS, dtype=np.int64),
        item_ids=np.arange(N_ITEMS, dtype=np.int64),
        source="planted",
    )
    return random_split(data, seed=seed)


def block_precision(model: Baseline, split: Split, k: int = 5) -> float:
    """Share of each user's top-k unseen items that lie in the user's planted block."""
    users = np.arange(split.n_users, dtype=np.int64)
    scores = model.score(users).clone()
    scores[torch.from_numpy(split.train.toarray() > 0)] = -torch.inf
    top = scores.topk(k, dim=1).indices.numpy()
    return float(np.mean([[i in block_of(u) for i in top[u]] for u in users]))


@pytest.fixture(scope="module")
def split() -> Split:
    return planted_split()


@pytest.fixture(params=sorted(BASELINES))
def model(request: pytest.FixtureRequest, split: Split) -> Baseline:
    return fit_baseline(make_baseline(request.param), split)


def test_score_contract(model: Baseline, split: Split) -> None:
    # Prepare
    users = np.array([0, 3, 7], dtype=np.int64)
    # Execute
    scores = model.score(users)
    # Assert
    assert isinstance(model, Baseline)
    assert scores.dtype == torch.float32
    assert tuple(scores.shape) == (3, split.n_items)
    assert torch.isfinite(scores).all()


@pytest.mark.parametrize("name", sorted(set(BASELINES) - {"popularity", "markov"}))
def test_collaborative_baselines_beat_popularity(name: str, split: Split) -> None:
    # Prepare
    model = make_baseline(name).fit(split.train)
    floor = block_precision(Popularity().fit(split.train), split)
    # Execute
    precision = block_precision(model, split)
    # Assert
    assert floor < 0.1
    assert precision > 0.8, (model.name, precision, floor)


def test_popularity_scores_are_train_counts() -> None:
    # Prepare
    train = sp.csr_matrix(np.array([[1, 1, 0], [1, 0, 0], [1, 0, 1]], dtype=np.float32))
    # Execute
    scores = Popularity().fit(train).score(np.array([0, 2]))
    # Assert
    assert scores.tolist() == [[3.0, 1.0, 1.0], [3.0, 1.0, 1.0]]


def test_popularity_from_given_counts() -> None:
    model = Popularity.from_counts([2.5, -0.5, 7.0])
    assert model.score(np.array([4])).tolist() == [[2.5, -0.5, 7.0]]


def test_ease_two_items_by_hand() -> None:
    # Prepare: G = X^T X + I = [[3, 1], [1, 2]]; B_01 = 1 / (2 + 1), B_10 = 1 / (1 + 1)
    train = sp.csr_matrix(np.array([[1, 1], [1, 0]], dtype=np.float32))
    # Execute
    weights = ease_weights(train, lam=1.0)
    # Assert
    torch.testing.assert_close(weights, torch.tensor([[0.0, 1 / 3], [1 / 2, 0.0]]))


def test_ease_matches_numpy_closed_form(split: Split) -> None:
    # Prepare
    x = split.train.toarray().astype(np.float64)
    p = np.linalg.inv(x.T @ x + 30.0 * np.eye(x.shape[1]))
    expected = -p / np.diag(p)[None, :]
    np.fill_diagonal(expected, 0.0)
    # Execute
    model = EASE(30.0).fit(split.train)
    # Assert
    assert model.weights is not None
    assert torch.all(model.weights.diagonal() == 0)
    np.testing.assert_allclose(model.weights.numpy(), expected, atol=1e-6)
    np.testing.assert_allclose(model.score(np.array([1])).numpy(), x[[1]] @ expected, atol=1e-5)


def test_itemknn_full_similarity_is_symmetric_cosine(split: Split) -> None:
    # Prepare
    x = split.train.toarray().astype(np.float64)
    norms = np.sqrt(np.maximum(x.sum(axis=0), 1.0))
    expected = (x.T @ x) / np.outer(norms, norms)
    np.fill_diagonal(expected, 0.0)
    # Execute
    sim = cosine_neighbours(split.train, k=None).toarray()
    # Assert
    np.testing.assert_allclose(sim, sim.T, atol=1e-6)
    np.testing.assert_allclose(sim, expected, atol=1e-6)


def test_itemknn_keeps_the_k_nearest_per_item(split: Split) -> None:
    full = cosine_neighbours(split.train, k=None).toarray()
    pruned = ItemKNN(k=3).fit(split.train).similarity
    assert pruned is not None
    dense = pruned.toarray()
    assert (np.count_nonzero(dense, axis=1) <= 3).all()
    kept_min = np.where(dense > 0, dense, np.inf).min(axis=1)
    dropped_max = np.where(dense == 0, full, 0.0).max(axis=1)
    assert (dropped_max <= kept_min + 1e-6).all()


def test_unfitted_baseline_says_so() -> None:
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match="fit"):
        EASE().score(np.array([0]))


def test_seeds_parse_and_summarize() -> None:
    assert parse_seeds("0,1,2") == (0, 1, 2)
    assert parse_seeds("3-5") == (3, 4, 5)
    summary = summarize({0: {"ndcg@10": 0.2}, 1: {"ndcg@10": 0.4}})
    assert summary.mean["ndcg@10"] == pytest.approx(0.3)
    assert summary.std["ndcg@10"] == pytest.approx(np.sqrt(0.02))


def test_reference_metrics_give_every_key(split: Split) -> None:
    from fedrec.baselines import reference_metrics
    from fedrec.metrics import METRIC_KEYS

    ref = reference_metrics(split, ease_lambda=50)
    assert set(ref) == {"popularity", "ease"}
    assert all(set(METRIC_KEYS) <= set(m) for m in ref.values())
    assert ref["ease"]["ndcg@10"] > ref["popularity"]["ndcg@10"]


@pytest.fixture(scope="module")
def ml100k_split() -> Split:
    if not (ML100K / "u.data").exists():
        pytest.skip(f"{ML100K} not present")
    from fedrec.data import resolve_data

    return random_split(resolve_data(str(ML100K)), test_fraction=0.2, seed=0)


@pytest.mark.realdata
def test_ml100k_reference_numbers(ml100k_split: Split) -> None:
    from fedrec.baselines import reference_metrics

    # Execute
    ref = reference_metrics(ml100k_split, ease_lambda=500)
    # Assert: the numbers of docs/PROTOCOL.md
    pop, ease = ref["popularity"], ref["ease"]
    assert pop["users_evaluated"] == ease["users_evaluated"] == 943
    assert pop["ndcg@10"] == pytest.approx(0.2167, abs=0.003)
    assert ease["ndcg@10"] == pytest.approx(0.4505, abs=0.003)
    assert ease["recall@20"] == pytest.approx(0.4550, abs=0.003)
    assert ease["hr@10"] == pytest.approx(0.9449, abs=0.003)
    assert ease["mrr"] == pytest.approx(0.7153, abs=0.003)


def test_cli_baseline_writes_run_directory(tmp_path: Path) -> None:
    from fedrec.metrics import METRIC_KEYS
    from simulations.cli import main

    # Execute
    rc = main(
        ["baseline", "--data", "synthetic", "--model", "ease", "--out", str(tmp_path / "run")]
    )
    # Assert
    assert rc == 0
    metrics = json.loads((tmp_path / "run" / "metrics.json").read_text())
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert set(METRIC_KEYS) <= set(metrics)
    assert config["model"] == "ease" and config["seeds"] == [0]


def test_cli_baseline_with_seeds_reports_mean_and_std(tmp_path: Path) -> None:
    from fedrec.metrics import METRIC_KEYS
    from simulations.cli import main

    out = tmp_path / "run"
    rc = main(["baseline", "--data", "synthetic", "--model", "popularity", "--out", str(out),
               "--seeds", "0,1"])  # fmt: skip
    assert rc == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert set(metrics["per_seed"]) == {"0", "1"}
    assert set(METRIC_KEYS) <= set(metrics) and set(METRIC_KEYS) <= set(metrics["std"])
