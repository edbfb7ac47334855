"""A returning user's shorter refit (``warm_refit_steps``) and what it spends under DP."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.federated.client import client_fit
from fedrec.federated.private import planned_releases, planned_steps
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays

MODEL = ModelConfig(kind="mf", dim=4)
ITEMS = np.array([0, 3, 5, 8, 13], dtype=np.int64)
STATE = {"user_emb.weight": np.full((1, 4), 0.05, dtype=np.float32)}


@pytest.mark.parametrize("fast", [True, False])
def test_returning_user_refits_for_warm_steps_first_user_for_refit_steps(fast: bool) -> None:
    # Prepare
    warm = LocalTrainConfig(refit_steps=20, warm_refit_steps=3)
    items = init_item_arrays(MODEL, 20, seed=0)

    # Execute
    returning = client_fit(MODEL, warm, items, STATE, ITEMS, seed=1, fast=fast)
    as_three = client_fit(
        MODEL, replace(warm, refit_steps=3), items, STATE, ITEMS, seed=1, fast=fast
    )
    first = client_fit(MODEL, warm, items, None, ITEMS, seed=1, fast=fast)
    as_twenty = client_fit(
        MODEL, replace(warm, warm_refit_steps=None), items, None, ITEMS, seed=1, fast=fast
    )

    # Assert
    np.testing.assert_array_equal(returning.item_arrays[0], as_three.item_arrays[0])
    np.testing.assert_array_equal(first.item_arrays[0], as_twenty.item_arrays[0])


def test_dp_accounting_counts_the_warm_refit() -> None:
    # Prepare
    train = LocalTrainConfig(epochs=2, refit_steps=6, warm_refit_steps=2, batch_size=1000)

    # Execute
    first = planned_releases(MODEL, train, 1.0, 10, first=True)
    later = planned_releases(MODEL, train, 1.0, 10, first=False)
    steps = planned_steps(MODEL, train, rounds=4, client_sample_rate=1.0)

    # Assert: full-batch steps; a first refit of 6, three warm refits of 2, 4 x 2 epochs
    assert [r.steps for r in first] == [6, 2] and [r.steps for r in later] == [2, 2]
    assert steps == 6 + 3 * 2 + 4 * 2


def test_negative_warm_refit_is_a_config_error() -> None:
    with pytest.raises(ConfigError, match="warm_refit_steps"):
        LocalTrainConfig(warm_refit_steps=-1)
