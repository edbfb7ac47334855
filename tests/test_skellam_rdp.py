"""The Skellam RDP bound (``fedrec.privacy.distributed.skellam_rdp``) against exact numbers.

Agarwal, Kairouz & Liu (NeurIPS 2021), Theorem 3.5 / Corollary 3.6, bound the Renyi
divergence of order ``alpha`` between ``Sk(mu) + Delta`` and ``Sk(mu)`` (independent
Skellam noise of variance ``mu`` per coordinate, integer shift ``Delta`` with L2 / L1
norms ``l2`` / ``l1``) and call the bound sharp. The paper gives its guarantee as a
formula and plots, not a table of values, so these tests check the formula against an
independent computation instead: the exact divergence, summed over the support from
the Skellam pmf ``P(k) = e^(-mu) I_|k|(mu)`` (scipy's exponentially scaled Bessel
function ``ive``; coordinates are independent, so a vector's divergence is the sum of
its coordinates'). The bound must never be below the exact value (a smaller one would
under-report epsilon) and must approach it as ``mu`` grows (the paper's sharpness).
"""

from __future__ import annotations

import numpy as np
import pytest
from scipy.special import ive, logsumexp

from fedrec.privacy.distributed import skellam_rdp


def _logpmf(k: np.ndarray, mu: float) -> np.ndarray:
    with np.errstate(divide="ignore"):
        return np.asarray(np.log(ive(np.abs(k), mu)))


def exact_rdp(alpha: int, shift: int, mu: float) -> float:
    """``D_alpha(Sk(mu) + shift || Sk(mu))`` by summation over the support."""
    half_width = int(30 * np.sqrt(mu) + 4 * abs(shift) + 50)  # the rest is below 1e-190
    k = np.arange(-half_width, half_width + 1)
    lp, lq = _logpmf(k - shift, mu), _logpmf(k, mu)
    ok = np.isfinite(lp) & np.isfinite(lq)
    return float(logsumexp(alpha * lp[ok] + (1 - alpha) * lq[ok]) / (alpha - 1))


def test_the_exact_divergence_is_right_where_it_is_known() -> None:
    # Assert: as mu grows the Skellam tends to the Gaussian, whose divergence is
    # alpha shift^2 / (2 mu); at shift 0 the divergence is 0
    assert exact_rdp(4, 0, 10.0) == pytest.approx(0.0, abs=1e-12)
    assert exact_rdp(8, 3, 1e4) == pytest.approx(8 * 9 / 2e4, rel=1e-3)


@pytest.mark.parametrize("mu", [1.0, 10.0, 100.0, 1000.0])
@pytest.mark.parametrize("alpha", [2, 8, 64])
def test_the_bound_is_never_below_the_exact_divergence(alpha: int, mu: float) -> None:
    # Prepare: one-coordinate shifts and a 3-coordinate one (l2 = sqrt 6, l1 = 4)
    vector = (1, 2, -1)
    # Execute
    one_d = {d: (exact_rdp(alpha, d, mu), skellam_rdp(alpha, d, d, mu)) for d in (1, 3)}
    exact_vec = sum(exact_rdp(alpha, d, mu) for d in vector)
    bound_vec = skellam_rdp(alpha, float(np.sqrt(6.0)), 4.0, mu)
    # Assert
    for d, (exact, bound) in one_d.items():
        assert bound >= exact * (1 - 1e-9), (d, exact, bound)
    assert bound_vec >= exact_vec * (1 - 1e-9)


def test_the_bound_is_sharp_for_large_variance() -> None:
    # Execute / Assert: within 1% of the exact divergence at mu = 1000, 0.03% at 10^4
    for alpha in (2, 8, 64):
        for d in (1, 3):
            assert skellam_rdp(alpha, d, d, 1000.0) <= exact_rdp(alpha, d, 1000.0) * 1.01
            assert skellam_rdp(alpha, d, d, 1e4) <= exact_rdp(alpha, d, 1e4) * 1.0003


def test_the_units_match_the_authors_accounting_code() -> None:
    # Prepare: the authors' implementation (google-research/federated,
    # distributed_dp/accounting_utils.py, `_skellam_rdp(l1, l2, central_var, scale,
    # order)`) takes sensitivities before scaling and the variance in those units;
    # fedrec passes both in ring units (after scaling by s): l2 s, l1 s, var s^2
    def authors(l1: float, l2: float, var: float, s: float, a: int) -> float:
        rdp = a / (2 * var) * l2**2
        return rdp + min(((2 * a - 1) * s * l2**2 + 6 * l1) / (4 * s**3 * var**2),
                         3 * l1 / (2 * s * var))  # fmt: skip

    # Execute / Assert
    for l1, l2, var, s, a in [(3.0, 1.0, 0.5, 100.0, 4), (40.0, 1.0, 0.3, 2e4, 32)]:
        ours = skellam_rdp(a, l2 * s, l1 * s, var * s**2)
        assert ours == pytest.approx(authors(l1, l2, var, s, a), rel=1e-12)
