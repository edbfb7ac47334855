"""MMR re-ranking: hand-computed lists, batch = single user, the accuracy/diversity
trade-off on synthetic data, and the ml-100k acceptance measurement."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.baselines import EASE, Popularity
from fedrec.data import Interactions, random_split, resolve_data
from fedrec.errors import ConfigError
from fedrec.metrics import evaluate_scores
from fedrec.recommend import mmr_rerank, mmr_rerank_batch, plot_tradeoff, tradeoff_curve
from fedrec.training.centralized import central_preset, train_centralized

# Items 0-2 genre A, 3-4 genre B, 5 genre C; scores already in [0, 1] (min-max = identity).
SCORES = np.array([1.0, 0.9, 0.8, 0.6, 0.5, 0.0])
GENRES = np.array([[1, 0, 0]] * 3 + [[0, 1, 0]] * 2 + [[0, 0, 1]], dtype=bool)
POOL = np.arange(6)


def test_lambda_one_keeps_the_score_order() -> None:
    assert mmr_rerank(SCORES, POOL, GENRES, k=6, lam=1.0).tolist() == [0, 1, 2, 3, 4, 5]


def test_max_redundancy_matches_the_hand_computed_list() -> None:
    # 0 first; then B (0.3 > A's -0.05), then C (0 > -0.05), then the rest by score.
    result = mmr_rerank(SCORES, POOL, GENRES, k=6, lam=0.5, redundancy="max")

    assert result.tolist() == [0, 3, 5, 1, 2, 4]


def test_mean_redundancy_matches_the_hand_computed_list() -> None:
    # Step 2: A and B both have mean similarity 1/2, so item 1 (0.45 - 0.25) wins.
    result = mmr_rerank(SCORES, POOL, GENRES, k=6, lam=0.5, redundancy="mean")

    assert result.tolist() == [0, 3, 1, 4, 2, 5]


def test_default_redundancy_is_the_mean_form() -> None:
    default = mmr_rerank(SCORES, POOL, GENRES, k=6, lam=0.5)

    assert (
        default.tolist()
        == mmr_rerank(SCORES, POOL, GENRES, k=6, lam=0.5, redundancy="mean").tolist()
    )
    assert default.tolist() == [0, 3, 1, 4, 2, 5]


def test_batch_equals_one_user_at_a_time_and_skips_padding(rng: np.random.Generator) -> None:
    # Prepare: 7 users, pools with -1 padding and a -inf (masked) candidate.
    scores = rng.normal(size=(7, 40))
    scores[:, 3] = -np.inf
    pools = np.stack([rng.permutation(40)[:12] for _ in range(7)])
    pools[0, -4:] = -1
    vectors = rng.normal(size=(40, 5))

    # Execute
    batch = mmr_rerank_batch(scores, pools, vectors, k=10, lam=0.6)

    # Assert: same lists as single calls; padding and -inf never chosen.
    for user in range(7):
        single = mmr_rerank(scores[user], pools[user], vectors, k=10, lam=0.6)
        assert batch[user][batch[user] >= 0].tolist() == single.tolist()
        assert 3 not in single
    assert (batch[0] == -1).sum() == 10 - int(((pools[0] >= 0) & (pools[0] != 3)).sum())


def test_constant_pool_scores_and_bad_arguments() -> None:
    flat = mmr_rerank(np.ones(6), POOL, GENRES, k=3, lam=0.5)
    assert flat.tolist() == [0, 3, 5]  # all rel = 1: pure diversity, ties by position
    with pytest.raises(ConfigError, match="lambda"):
        mmr_rerank(SCORES, POOL, GENRES, lam=1.5)
    with pytest.raises(ValueError, match="candidates"):
        mmr_rerank(SCORES, np.array([0, 6]), GENRES)


def test_tradeoff_curve_on_synthetic_data(synthetic_data: Interactions, tmp_path: Path) -> None:
    # Prepare
    split = random_split(synthetic_data, seed=0)
    model = Popularity().fit(split.train)

    # Execute
    curve = tradeoff_curve(model.score, split, None, lambdas=(1.0, 0.3), candidates=40)
    png = plot_tradeoff(curve, tmp_path / "tradeoff.png")

    # Assert: lambda 1 is exactly the plain full ranking; lower lambda is more diverse.
    plain = evaluate_scores(model.score, split)
    assert curve[0]["ndcg@10"] == pytest.approx(plain["ndcg@10"])
    assert curve[0]["diversity@10"] == pytest.approx(plain["diversity@10"])
    assert float(curve[1]["diversity@10"] or 0) > float(curve[0]["diversity@10"] or 0)
    assert png.stat().st_size > 0


@pytest.fixture(scope="module")
def ml100k_ease_curves(ml100k_dir: Path) -> dict[str, list[dict[str, float | int | None]]]:
    split = random_split(resolve_data(ml100k_dir), seed=0)
    model = EASE(500.0).fit(split.train)
    return {
        how: tradeoff_curve(model.score, split, None, (1.0, 0.5, 0.3), redundancy=how)
        for how in ("max", "mean")
    }


def _change(curve: list[dict[str, float | int | None]], index: int, key: str) -> float:
    return float(curve[index][key] or 0) / float(curve[0][key] or 1) - 1.0


@pytest.mark.realdata
def test_ml100k_mmr_paper_form_at_half(
    ml100k_ease_curves: dict[str, list[dict[str, float | int | None]]],
) -> None:
    # Measured (EASE 500, seed 0, top-100 pool, min-max relevance, genre cosine):
    # NDCG@10 0.4505 -> 0.3908 (-13.3%), diversity@10 0.7208 -> 0.8645 (+19.9%).
    # The brief's target (+20% / -10%) is NOT met by the max form at lambda 0.5.
    curve = ml100k_ease_curves["max"]
    assert curve[0]["ndcg@10"] == pytest.approx(0.4505, abs=2e-3)
    assert _change(curve, 1, "diversity@10") == pytest.approx(0.199, abs=0.01)
    assert _change(curve, 1, "ndcg@10") == pytest.approx(-0.133, abs=0.01)


@pytest.mark.realdata
def test_ml100k_mean_redundancy_reaches_the_target(
    ml100k_ease_curves: dict[str, list[dict[str, float | int | None]]],
) -> None:
    # Greedy-ILD form; lambda 0.3 was chosen on a validation split (see module docs).
    curve = ml100k_ease_curves["mean"]
    assert _change(curve, 2, "diversity@10") >= 0.20
    assert _change(curve, 2, "ndcg@10") >= -0.10


@pytest.mark.realdata
@pytest.mark.slow
def test_ml100k_mmr_on_the_mf_twin(ml100k_dir: Path) -> None:
    # Prepare: the centralized MF twin (NDCG@10 0.4360), the model fedrec reranks.
    split = random_split(resolve_data(ml100k_dir), seed=0)
    model_cfg, train_cfg = central_preset("mf")
    score = train_centralized(model_cfg, train_cfg, split, seed=0)

    # Execute
    curves = {
        how: tradeoff_curve(score, split, None, (1.0, 0.5, 0.3), redundancy=how)
        for how in ("max", "mean")
    }

    # Assert (measured -12.9% / +21.5% max at 0.5, -4.4% / +16.0% and -10.2% / +23.8%
    # mean at 0.5 and 0.3): lambda 0.5 misses the +20% / -10% target in both forms.
    assert curves["max"][0]["ndcg@10"] == pytest.approx(0.436, abs=0.01)
    assert _change(curves["max"], 1, "ndcg@10") < -0.10 < _change(curves["mean"], 1, "ndcg@10")
    assert (
        _change(curves["max"], 1, "diversity@10")
        > 0.20
        > _change(curves["mean"], 1, "diversity@10")
    )
    assert _change(curves["mean"], 2, "diversity@10") >= 0.20
    assert _change(curves["mean"], 2, "ndcg@10") == pytest.approx(-0.10, abs=0.015)
