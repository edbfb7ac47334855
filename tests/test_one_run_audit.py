"""The one-run audit (Steinke, Nasr & Jagielski 2023): its p-value, power and validity."""

from __future__ import annotations

import math

import numpy as np
import pytest
from scipy.stats import binom

from fedrec.audit.one_run import epsilon_lower_bound, one_run_bound, p_value
from fedrec.errors import ConfigError


def test_without_delta_the_p_value_is_the_randomized_response_tail() -> None:
    # Execute / Assert: eps 0 is a fair coin; eps 1 is randomized response with e/(1+e)
    assert p_value(100, 40, 25, 0.0, 0.0) == pytest.approx(binom.sf(24, 40, 0.5))
    q = math.e / (1 + math.e)
    assert p_value(100, 40, 30, 1.0, 0.0) == pytest.approx(binom.sf(29, 40, q))
    assert p_value(100, 40, 30, 1.0, 1e-5) > p_value(100, 40, 30, 1.0, 0.0)  # delta costs


def test_all_guesses_right_bound_epsilon_as_the_binomial_tail_allows() -> None:
    # Prepare: r perfect guesses, delta 0: q^r <= beta, eps = log(q / (1 - q))
    q = 0.05 ** (1 / 1000)
    # Execute
    eps = epsilon_lower_bound(1000, 1000, 1000, delta=0.0, beta=0.05)
    # Assert
    assert eps == pytest.approx(math.log(q / (1 - q)), abs=1e-3)


def test_the_bound_is_valid_for_randomized_response() -> None:
    # Prepare: a 1-DP mechanism, each canary's coin reported truthfully w.p. e/(1+e)
    rng = np.random.default_rng(0)
    q = math.e / (1 + math.e)
    bounds = []
    # Execute
    for _ in range(200):
        coins = rng.random(200) < 0.5
        report = np.where(rng.random(200) < q, coins, ~coins)
        bounds.append(one_run_bound(report + 1e-3 * rng.random(200), coins, delta=0.0).epsilon)
    # Assert: above the true epsilon in at most about beta of the audits
    assert np.mean(np.array(bounds) > 1.0) <= 0.05 + 0.03
    assert np.median(bounds) > 0.3  # and the audit has power


def test_bad_counts_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="0 <= v <= r <= m"):
        p_value(10, 20, 5, 1.0, 0.0)
    with pytest.raises(ConfigError, match="canaries"):
        one_run_bound([1.0], [True], delta=0.0)
