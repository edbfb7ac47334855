"""Accounting as data: calibration, recomputation from history, exact restore."""

from __future__ import annotations

import json

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from opacus.accountants import RDPAccountant

from fedrec.errors import ConfigError
from fedrec.privacy.accounting import (
    PrivacyAccount,
    Release,
    calibrate_noise,
    default_delta,
    epsilon_from_history,
)

EPS = st.floats(0.5, 32.0)
RATE = st.floats(0.001, 1.0, exclude_min=True)
STEPS = st.integers(1, 500)
QUICK = settings(max_examples=4, derandomize=True, deadline=None)
THOROUGH = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def _never_overshoots(eps: float, q: float, steps: int) -> None:
    # Prepare / Execute
    z = calibrate_noise(target_epsilon=eps, delta=1e-5, sample_rate=q, steps=steps)
    # Assert
    assert epsilon_from_history([[z, q, steps]], 1e-5, "rdp") <= eps


@QUICK
@given(eps=EPS, q=RATE, steps=STEPS)
def test_calibrated_noise_never_overshoots(eps: float, q: float, steps: int) -> None:
    _never_overshoots(eps, q, steps)


@pytest.mark.slow
@THOROUGH
@given(eps=EPS, q=RATE, steps=STEPS)
def test_calibrated_noise_never_overshoots_thoroughly(eps: float, q: float, steps: int) -> None:
    _never_overshoots(eps, q, steps)


def test_calibrated_noise_is_tight() -> None:
    z = calibrate_noise(target_epsilon=2.0, delta=1e-5, sample_rate=0.01, steps=100)
    assert 1.9 < epsilon_from_history([[z, 0.01, 100]], 1e-5) <= 2.0


@pytest.mark.parametrize("accountant", ["rdp", "prv"])
def test_epsilon_from_history_reproduces_account(accountant: str) -> None:
    # Prepare
    account = PrivacyAccount(accountant=accountant)
    account.record(1.1, 0.05, 20)
    account.record(1.1, 0.05, 10)  # merges with the previous entry, like Opacus
    account.record_release(Release(2.0, 0.2, 5))
    # Execute
    history = json.loads(json.dumps(account.history))
    # Assert
    assert history == [[1.1, 0.05, 30], [2.0, 0.2, 5]]
    assert epsilon_from_history(history, 1e-5, accountant) == pytest.approx(
        account.epsilon(1e-5), rel=1e-9
    )


@pytest.mark.parametrize("history", [[[1.0, 0.3, 7]], [[0.8, 0.05, 40], [1.3, 1.0, 3]]])
def test_rdp_equals_a_fresh_opacus_accountant(history: list[list[float]]) -> None:
    # Prepare
    fresh = RDPAccountant()
    fresh.history = [(z, q, int(t)) for z, q, t in history]
    # Execute / Assert
    assert epsilon_from_history(history, 1e-6, "rdp") == fresh.get_epsilon(delta=1e-6)


def test_json_round_trip_is_exact() -> None:
    account = PrivacyAccount()
    account.record(0.7312345678901234, 0.0123456789, 17)
    restored = PrivacyAccount.from_json(json.loads(json.dumps(account.to_json())))
    assert restored == account
    assert restored.epsilon(1e-6) == account.epsilon(1e-6)


def test_after_does_not_change_the_account() -> None:
    account = PrivacyAccount()
    account.record(1.0, 0.1, 10)
    more = account.after(Release(1.0, 0.1, 10))
    assert account.steps == 10 and more.steps == 20
    assert more.epsilon(1e-5) > account.epsilon(1e-5)


def test_empty_history_spends_nothing() -> None:
    assert PrivacyAccount().epsilon(1e-5) == 0.0
    assert epsilon_from_history([], 1e-5, "prv") == 0.0


@pytest.mark.parametrize(
    "kwargs",
    [
        {"target_epsilon": 0.0},
        {"target_epsilon": -1.0},
        {"delta": 0.0},
        {"delta": 1.0},
        {"sample_rate": 0.0},
        {"sample_rate": 1.5},
        {"steps": 0},
        {"accountant": "moments"},
    ],
)
def test_calibrate_rejects_bad_values(kwargs: dict[str, float]) -> None:
    args = {"target_epsilon": 1.0, "delta": 1e-5, "sample_rate": 0.1, "steps": 10}
    args.update(kwargs)
    with pytest.raises(ConfigError):
        calibrate_noise(**args)  # type: ignore[arg-type]


def test_release_is_validated() -> None:
    with pytest.raises(ConfigError):
        Release(0.0, 0.1, 1)
    with pytest.raises(ConfigError):
        Release(1.0, 0.1, -1)


def test_default_delta_shrinks_with_users() -> None:
    assert default_delta(943) == 1e-5
    assert default_delta(1_000_000) == pytest.approx(1e-7)
    with pytest.raises(ConfigError):
        default_delta(0)
