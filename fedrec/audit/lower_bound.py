"""Empirical lower bounds on epsilon from a distinguishing test's error rates.

Design rule: a bound is only as good as its trials. An ``(epsilon, delta)``-DP
mechanism ``M`` forces every test between neighbouring inputs ``D`` and ``D'`` to
satisfy ``TPR <= e^eps FPR + delta`` and ``TNR <= e^eps FNR + delta`` (Kairouz, Oh &
Viswanath 2015). Given the scores of independent runs of ``M`` on ``D`` ("members")
and on ``D'`` ("non-members"), we choose a threshold on one half of the trials and
bound the rates on the *other* half with Clopper-Pearson intervals, each at level
``1 - alpha / 2`` so that both hold together with probability ``1 - alpha``. The
bound then uses the pessimistic end of each interval (Jagielski, Ullman & Oprea,
NeurIPS 2020; Nasr et al., IEEE S&P 2021)::

    eps_lb = max(log((TPR_lo - delta) / FPR_hi), log((1 - FPR_hi - delta) / (1 - TPR_lo)))

With probability at least ``1 - alpha`` the mechanism's true epsilon is at least
``eps_lb``; a bound above the accountant's epsilon means a bug in the mechanism or
in the accounting. The bound is clamped at 0 (no evidence).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import beta

from fedrec.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


@dataclass(frozen=True)
class LowerBound:
    """An empirical epsilon lower bound and the test that gave it.

    Attributes
    ----------
    epsilon
        The bound (``>= 0``), valid with probability ``1 - alpha``.
    threshold
        Scores ``>= threshold`` are called members (chosen on the calibration half).
    tpr, fpr
        Point estimates on the held-out half.
    members, nonmembers
        Held-out trials of each kind the rates were measured on.
    """

    epsilon: float
    threshold: float
    tpr: float
    fpr: float
    members: int
    nonmembers: int
    alpha: float
    delta: float


def clopper_pearson(successes: int, trials: int, alpha: float) -> tuple[float, float]:
    """Exact two-sided ``1 - alpha`` interval of a binomial proportion (Clopper & Pearson 1934)."""
    if trials < 1 or not 0 <= successes <= trials:
        raise ConfigError(f"need 0 <= successes <= trials >= 1, got {successes}/{trials}")
    lo = 0.0 if successes == 0 else float(beta.ppf(alpha / 2, successes, trials - successes + 1))
    hi = (
        1.0
        if successes == trials
        else float(beta.ppf(1 - alpha / 2, successes + 1, trials - successes))
    )
    return lo, hi


def _log_ratio(num: float, den: float) -> float:
    if num <= 0.0:
        return 0.0
    if den <= 0.0:
        return math.inf
    return max(0.0, math.log(num / den))


def epsilon_from_counts(
    tp: int, members: int, fp: int, nonmembers: int, *, delta: float, alpha: float = 0.05
) -> float:
    """The ``1 - alpha`` lower bound on epsilon of ``tp / members`` vs ``fp / nonmembers``."""
    tpr_lo, _ = clopper_pearson(tp, members, alpha / 2)
    _, fpr_hi = clopper_pearson(fp, nonmembers, alpha / 2)
    # TPR <= e^eps FPR + delta  and  (1 - FPR) <= e^eps (1 - TPR) + delta, pessimistic ends
    return max(
        _log_ratio(tpr_lo - delta, fpr_hi),
        _log_ratio(1.0 - fpr_hi - delta, 1.0 - tpr_lo),
    )


def _counts(members: FloatArray, nonmembers: FloatArray, threshold: float) -> tuple[int, int]:
    return int(np.sum(members >= threshold)), int(np.sum(nonmembers >= threshold))


def _bounds(
    tp: FloatArray, m: int, fp: FloatArray, n: int, delta: float, alpha: float
) -> FloatArray:
    """Vectorized :func:`epsilon_from_counts` over arrays of counts."""
    a = alpha / 4  # two intervals, each two-sided at level 1 - alpha / 2
    tpr_lo = np.where(tp > 0, beta.ppf(a, np.maximum(tp, 1), m - tp + 1), 0.0)
    fpr_hi = np.where(fp < n, beta.ppf(1 - a, fp + 1, np.maximum(n - fp, 1)), 1.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        first = np.log(np.maximum(tpr_lo - delta, 0.0) / fpr_hi)
        second = np.log(np.maximum(1.0 - fpr_hi - delta, 0.0) / (1.0 - tpr_lo))
    return np.asarray(np.maximum(np.maximum(first, second), 0.0), dtype=np.float64)


def best_threshold(
    members: FloatArray, nonmembers: FloatArray, *, delta: float, alpha: float = 0.05
) -> float:
    """The threshold with the largest bound on these trials (used on the calibration half)."""
    candidates = np.unique(np.concatenate([members, nonmembers]))
    tp = len(members) - np.searchsorted(np.sort(members), candidates, side="left")
    fp = len(nonmembers) - np.searchsorted(np.sort(nonmembers), candidates, side="left")
    eps = _bounds(tp.astype(float), len(members), fp.astype(float), len(nonmembers), delta, alpha)
    return float(candidates[int(np.argmax(eps))])


def _halves(
    n: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    order = rng.permutation(n)
    return order[: n // 2], order[n // 2 :]


def epsilon_lower_bound(
    members: npt.ArrayLike,
    nonmembers: npt.ArrayLike,
    *,
    delta: float,
    rng: np.random.Generator,
    alpha: float = 0.05,
) -> LowerBound:
    """Threshold chosen on a random half of the trials, bound measured on the other half.

    Parameters
    ----------
    members, nonmembers
        Test scores of independent runs of the mechanism on ``D`` and on ``D'``
        (higher = "member").
    delta
        The mechanism's delta.
    rng
        Splits the trials (public randomness).
    """
    m = np.asarray(members, dtype=np.float64)
    n = np.asarray(nonmembers, dtype=np.float64)
    if len(m) < 2 or len(n) < 2:
        raise ConfigError(
            f"need at least 2 trials of each kind, got {len(m)} and {len(n)}",
            where="audit",
            fix="audit more clients",
        )
    m_cal, m_test = _halves(len(m), rng)
    n_cal, n_test = _halves(len(n), rng)
    threshold = best_threshold(m[m_cal], n[n_cal], delta=delta, alpha=alpha)
    return bound_at_threshold(m[m_test], n[n_test], threshold, delta=delta, alpha=alpha)


def bound_at_threshold(
    members: npt.ArrayLike,
    nonmembers: npt.ArrayLike,
    threshold: float,
    *,
    delta: float,
    alpha: float = 0.05,
) -> LowerBound:
    """The bound of the test ``score >= threshold`` (threshold chosen on *other* trials)."""
    m = np.asarray(members, dtype=np.float64)
    n = np.asarray(nonmembers, dtype=np.float64)
    tp, fp = _counts(m, n, threshold)
    eps = epsilon_from_counts(tp, len(m), fp, len(n), delta=delta, alpha=alpha)
    return LowerBound(
        epsilon=eps,
        threshold=threshold,
        tpr=tp / len(m),
        fpr=fp / len(n),
        members=len(m),
        nonmembers=len(n),
        alpha=alpha,
        delta=delta,
    )
