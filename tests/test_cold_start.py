"""The cold-start popularity signal never reads raw counts under a privacy mode."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import scipy.sparse as sp

from fedrec.errors import ConfigError
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.popularity import dp_item_counts
from fedrec.recommend import cold_start
from fedrec.recommend.cold_start import popularity_source, raw_counts


class Untouchable:
    """A stand-in train matrix: any use of it fails the test."""

    def __getattr__(self, name: str) -> Any:
        raise AssertionError(f"raw interactions read ({name})")

    def __array__(self, *args: Any, **kwargs: Any) -> Any:
        raise AssertionError("raw interactions read (__array__)")


TRAIN = sp.csr_matrix(np.array([[1, 1, 0, 0], [1, 0, 1, 0], [1, 0, 0, 0]], dtype=np.float32))


def test_mode_none_ranks_by_raw_user_counts() -> None:
    # Execute
    scores = popularity_source("none", train=TRAIN)
    # Assert
    assert scores.tolist() == [3.0, 1.0, 1.0, 0.0]


@pytest.mark.parametrize("mode", ["local", "central"])
def test_private_modes_never_read_raw_counts(mode: str, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare
    def forbidden(train: object) -> None:
        raise AssertionError("raw_counts called under a privacy mode")

    monkeypatch.setattr(cold_start, "raw_counts", forbidden)
    bias = np.array([0.5, -1.0, 2.0, 0.0])
    # Execute
    scores = popularity_source(mode, train=Untouchable(), item_bias=bias)  # type: ignore[arg-type]
    # Assert
    assert scores.tolist() == bias.tolist()


def test_central_prefers_the_dp_release_over_the_biases() -> None:
    # Prepare
    release = dp_item_counts(TRAIN, noise_multiplier=1.0, delta=1e-5, rng=secure_rng(0))
    # Execute
    scores = popularity_source(
        "central",
        train=Untouchable(),
        dp_counts=release,
        item_bias=np.zeros(4),  # type: ignore[arg-type]
    )
    # Assert
    assert scores.tolist() == release.counts.tolist()


def test_local_mode_refuses_a_count_release() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="no trusted curator"):
        popularity_source("local", dp_counts=np.ones(4), item_bias=np.zeros(4))


@pytest.mark.parametrize("mode", ["local", "central"])
def test_private_mode_without_a_dp_signal_is_an_error(mode: str) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="needs a DP popularity signal"):
        popularity_source(mode, train=TRAIN)


def test_new_items_are_excluded_from_the_fallback() -> None:
    # Execute: a catalog grown by two items since the release; item 0 marked new
    scores = popularity_source(
        "local", item_bias=np.array([3.0, 2.0, 1.0]), n_items=5, new_items=[0]
    )
    # Assert
    assert scores.tolist() == [-np.inf, 2.0, 1.0, -np.inf, -np.inf]


def test_raw_counts_count_users_not_repeats() -> None:
    # Prepare: user 0 has item 1 twice (duplicate entries), and a stored zero
    m = sp.csr_matrix((np.array([1.0, 1.0, 0.0]), (np.array([0, 0, 1]), np.array([1, 1, 2]))),
                      shape=(2, 3))  # fmt: skip
    # Execute / Assert
    assert raw_counts(m).tolist() == [0.0, 1.0, 0.0]


def test_run_model_fallback_uses_the_learned_bias_under_local_dp(tmp_path: Any) -> None:
    # Prepare
    from simulations.run_model import load_run_model
    from tests.test_recommend_cli import make_run_dir

    run = make_run_dir(tmp_path / "run", privacy="local", **{"privacy.noise-multiplier": 1.0})
    model = load_run_model(run)
    # Execute
    scores = model.popularity()
    # Assert
    bias = model.item_arrays[1].reshape(-1)  # MF upload order: Q, b
    assert scores == pytest.approx(bias.astype(np.float64))
