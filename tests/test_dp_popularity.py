"""The DP item-popularity release: contribution bound, calibration, accounting, report."""

from __future__ import annotations

import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.errors import ConfigError
from fedrec.privacy.accounting import PrivacyAccount, epsilon_from_history
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.popularity import clip_rows, dp_item_counts, scale_rows
from fedrec.privacy.report import central_report, verify_privacy_json, write_privacy_json


def _random_matrix(users: int, items: int, density: float, seed: int) -> sp.csr_matrix:
    rng = np.random.default_rng(seed)
    return sp.csr_matrix((rng.random((users, items)) < density).astype(np.float32))


@given(seed=st.integers(0, 2**32 - 1), max_items=st.integers(1, 12))
@settings(max_examples=30, deadline=None)
def test_clipped_rows_are_binary_subsets_of_at_most_max_items(seed: int, max_items: int) -> None:
    # Prepare
    train = _random_matrix(8, 15, 0.5, seed)
    # Execute
    clipped = clip_rows(train, max_items, np.random.default_rng(seed))
    # Assert
    lengths = np.diff(clipped.indptr)
    assert (lengths == np.minimum(np.diff(train.indptr), max_items)).all()
    assert set(np.unique(clipped.data)) <= {1.0}
    assert (clipped.multiply(train) != 0).sum() == clipped.nnz  # only the user's own items


def test_scaled_rows_keep_every_item_within_the_l2_bound() -> None:
    # Prepare: users with 1, 4 and 16 items, bound 4 (norm <= 2)
    rows = np.zeros((3, 16))
    rows[0, 0], rows[1, :4], rows[2, :] = 1, 1, 1
    # Execute
    scaled = scale_rows(sp.csr_matrix(rows), 4).toarray()
    # Assert
    assert np.linalg.norm(scaled, axis=1) == pytest.approx([1.0, 2.0, 2.0])
    assert ((scaled > 0) == (rows > 0)).all()


@pytest.mark.parametrize("bound", ["scale", "subsample"])
def test_without_noise_to_speak_of_small_users_are_counted_exactly(bound: str) -> None:
    # Prepare: every user below the bound
    train = _random_matrix(40, 6, 0.4, 1)
    # Execute
    release = dp_item_counts(
        train, noise_multiplier=1e-6, delta=1e-5, max_items=6, bound=bound, rng=secure_rng(0)
    )
    # Assert
    assert release.counts == pytest.approx(np.asarray(train.sum(axis=0)).ravel(), abs=1e-3)


def test_noise_has_the_calibrated_scale_and_is_unbiased() -> None:
    # Prepare: 200 users x 4 items, every user has every item
    train = sp.csr_matrix(np.ones((200, 4)))

    # Execute
    def release(seed: int) -> np.ndarray:
        rng = secure_rng(seed)
        return dp_item_counts(train, noise_multiplier=2.0, delta=1e-5, max_items=4, rng=rng).counts

    draws = np.stack([release(s) for s in range(400)])
    # Assert: mean 200, std z * sqrt(max_items) = 4
    assert draws.mean() == pytest.approx(200.0, abs=0.5)
    assert draws.std() == pytest.approx(4.0, rel=0.05)


@pytest.mark.parametrize("epsilon", [1.0, 4.0, 16.0])
def test_calibrated_release_spends_at_most_epsilon(epsilon: float) -> None:
    # Execute
    release = dp_item_counts(_random_matrix(30, 10, 0.3, 0), epsilon=epsilon, delta=1e-5)
    # Assert
    assert release.account.history == [[release.noise_multiplier, 1.0, 1]]
    assert release.epsilon <= epsilon
    assert release.epsilon == pytest.approx(epsilon, rel=0.05)
    history = [[release.noise_multiplier, 1.0, 1]]
    assert epsilon_from_history(history, 1e-5, release.accountant) == release.epsilon


def test_release_is_recorded_in_privacy_json_and_verifies(tmp_path: Path) -> None:
    # Prepare
    release = dp_item_counts(_random_matrix(30, 10, 0.3, 0), epsilon=2.0, delta=1e-5)
    report = central_report(
        PrivacyAccount(history=[[1.0, 0.1, 5]]), delta=1e-5, other_releases=[release.report_entry()]
    )
    # Execute
    write_privacy_json(tmp_path / "privacy.json", report)
    # Assert
    entry = report["other_releases"][0]
    assert entry["name"] == "item popularity" and math.isclose(entry["epsilon"], release.epsilon)
    assert verify_privacy_json(tmp_path / "privacy.json") == []


@pytest.mark.parametrize(
    ("kwargs", "where"),
    [
        ({}, "exactly one of epsilon and noise_multiplier"),
        ({"epsilon": 1.0, "noise_multiplier": 1.0}, "exactly one"),
        ({"epsilon": 1.0, "max_items": 0}, "max_items"),
        ({"noise_multiplier": -1.0}, "noise_multiplier"),
        ({"epsilon": 1.0, "bound": "drop"}, "unknown bound"),
        ({"epsilon": 1.0, "delta": 2.0}, "delta"),
    ],
)
def test_bad_parameters_are_config_errors(kwargs: dict[str, float], where: str) -> None:
    # Execute / Assert
    args: dict[str, object] = {"delta": 1e-5, **kwargs}
    with pytest.raises(ConfigError, match=where):
        dp_item_counts(sp.csr_matrix(np.ones((2, 2))), **args)  # type: ignore[arg-type]


@pytest.mark.realdata
@pytest.mark.slow
@pytest.mark.parametrize("epsilon", [1.0, 4.0, 16.0])
def test_dp_popularity_keeps_popularity_quality_on_ml100k(epsilon: float) -> None:
    # Prepare
    data_dir = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
    if not data_dir.exists():
        pytest.skip("ml-100k not present")
    from fedrec.baselines import Popularity
    from fedrec.data import resolve_data
    from fedrec.data.split import random_split
    from fedrec.metrics import evaluate_scores
    from fedrec.privacy.accounting import default_delta

    split = random_split(resolve_data(str(data_dir)), seed=0)
    # Execute
    release = dp_item_counts(split.train, epsilon=epsilon, delta=default_delta(split.n_users))
    ndcg = evaluate_scores(Popularity.from_counts(release.counts).score, split)["ndcg@10"]
    # Assert: raw-count popularity is 0.2167; measured 0.199 (eps 1) to 0.21 (eps 16)
    assert ndcg is not None and ndcg > 0.185
