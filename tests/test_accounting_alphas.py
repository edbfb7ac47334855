"""RDP over a wider range of orders: Opacus's "optimal order is the largest alpha"
warning no longer fires, and epsilons stay identical (or get tighter), never looser."""

from __future__ import annotations

import warnings

import pytest
from opacus.accountants import RDPAccountant
from opacus.accountants.analysis import rdp as opacus_rdp
from opacus.accountants.utils import get_noise_multiplier

from fedrec.privacy.accounting import WIDER_ALPHAS, calibrate_noise, epsilon_from_history

LARGEST = "Optimal order is the largest alpha"


def _opacus_default(history: list[list[float]], delta: float) -> float:
    fresh = RDPAccountant()
    fresh.history = [(z, q, int(t)) for z, q, t in history]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return float(fresh.get_epsilon(delta=delta))


def test_large_noise_is_tighter_than_opacus_defaults_and_still_opacus() -> None:
    # Prepare: z = 20, one release: Opacus's default orders (up to 63) are too few
    history, delta = [[20.0, 1.0, 1]], 1e-5
    orders = [*RDPAccountant.DEFAULT_ALPHAS, *WIDER_ALPHAS]
    rdp = opacus_rdp.compute_rdp(q=1.0, noise_multiplier=20.0, steps=1, orders=orders)
    wide, best = opacus_rdp.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    # Execute
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = epsilon_from_history(history, delta, "rdp")
    # Assert: no warning; Opacus's own epsilon over the wider orders; tighter than before
    assert not [w for w in caught if LARGEST in str(w.message)]
    assert 63 < best < max(WIDER_ALPHAS)
    assert ours == pytest.approx(float(wide), rel=1e-12)
    assert ours < _opacus_default(history, delta)


@pytest.mark.parametrize(
    "history", [[[1.0, 1.0, 3]], [[2.0, 1.0, 25]], [[0.7, 1.0, 1], [3.0, 1.0, 2]]]
)
def test_moderate_noise_is_bit_for_bit_opacus(history: list[list[float]]) -> None:
    assert epsilon_from_history(history, 1e-5, "rdp") == _opacus_default(history, 1e-5)


@pytest.mark.parametrize(("target", "steps"), [(8.0, 3), (1.0, 1), (0.3, 1)])
def test_calibration_matches_opacus_or_is_tighter_and_does_not_warn(
    target: float, steps: int
) -> None:
    # Prepare
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        theirs = get_noise_multiplier(
            target_epsilon=target, target_delta=1e-5, sample_rate=1.0, steps=steps
        )
    # Execute
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        ours = calibrate_noise(target_epsilon=target, delta=1e-5, sample_rate=1.0, steps=steps)
    # Assert: never more noise than Opacus asks for, never over the target
    assert not [w for w in caught if LARGEST in str(w.message)]
    assert ours <= theirs
    assert epsilon_from_history([[ours, 1.0, steps]], 1e-5, "rdp") <= target
