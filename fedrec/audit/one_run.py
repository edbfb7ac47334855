"""Privacy auditing with one run (Steinke, Nasr & Jagielski, NeurIPS 2023).

Design rule: ``m`` canaries are each included in the mechanism's input independently
with probability 1/2 (secret coin flips); the mechanism runs **once**; the auditor
scores every canary from that one output, guesses "included" for its ``k+`` highest
scores and "excluded" for its ``k-`` lowest, and abstains on the rest. If the mechanism
is ``(epsilon, delta)``-DP with respect to each canary, the number ``W`` of correct
guesses among ``r = k+ + k-`` satisfies ``P[W >= v] <= p(m, r, v, epsilon, delta)``,
the tail of ``Binomial(r, e^eps / (1 + e^eps))`` plus a delta term (their Theorem 3 and
its ``(epsilon, delta)`` extension, the p-value of their Algorithm 1's analysis). The
largest ``epsilon`` with ``p <= beta`` is a ``1 - beta`` lower bound. Several guess
sizes are tried with a Bonferroni split of ``beta``, so the bound stays valid.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
from scipy.stats import binom

from fedrec.errors import ConfigError


def p_value(m: int, r: int, v: int, epsilon: float, delta: float) -> float:
    """Bound on ``P[W >= v]``: ``v`` correct of ``r`` guesses, ``m`` canaries, (eps, delta)-DP."""
    if not 0 <= v <= r <= m or epsilon < 0 or not 0 <= delta <= 1:
        raise ConfigError(
            f"need 0 <= v <= r <= m, epsilon >= 0, delta in [0, 1]; got m={m}, r={r}, v={v}, "
            f"epsilon={epsilon}, delta={delta}",
            where="one-run audit",
        )
    q = 1.0 / (1.0 + math.exp(-epsilon))  # accuracy of epsilon-DP randomized response
    tail = float(binom.sf(v - 1, r, q))  # P[Binomial(r, q) >= v]
    if v == 0 or delta == 0:
        return min(1.0, tail)
    below = np.cumsum(binom.pmf(np.arange(v - 1, -1, -1), r, q))  # P[v > B >= v - i]
    alpha = float(np.max(below / np.arange(1, v + 1)))
    return min(1.0, tail + alpha * delta * 2 * m)


def epsilon_lower_bound(m: int, r: int, v: int, *, delta: float, beta: float) -> float:
    """The largest ``epsilon`` with :func:`p_value` ``<= beta`` (0 when none), to 1e-4."""
    if p_value(m, r, v, 0.0, delta) > beta:
        return 0.0
    low, high = 0.0, 1.0
    while p_value(m, r, v, high, delta) <= beta:
        low, high = high, 2 * high
        if high > 1e3:
            return math.inf
    while high - low > 1e-4:
        mid = (low + high) / 2
        low, high = (mid, high) if p_value(m, r, v, mid, delta) <= beta else (low, mid)
    return low


@dataclass(frozen=True)
class OneRunBound:
    """A one-run audit's bound and the guesses that gave it."""

    epsilon: float
    canaries: int
    guesses: int
    correct: int
    beta: float
    delta: float


def one_run_bound(
    scores: npt.ArrayLike,
    included: npt.ArrayLike,
    *,
    delta: float,
    beta: float = 0.05,
    guess_fractions: Sequence[float] = (0.1, 0.2, 0.5),
) -> OneRunBound:
    """The best bound over guess sizes ``r = fraction * m`` (half "in", half "out").

    ``scores[i]`` is the auditor's score of canary ``i`` (higher = "included"),
    ``included[i]`` its secret coin. Each guess size is tested at ``beta / len(sizes)``.
    """
    s = np.asarray(scores, dtype=np.float64)
    truth = np.asarray(included, dtype=bool)
    m = len(s)
    if m < 2 or len(truth) != m:
        raise ConfigError(f"need >= 2 canaries with one coin each, got {m}", where="one-run audit")
    order = np.argsort(-s, kind="stable")
    sizes = sorted({max(2, int(f * m)) // 2 * 2 for f in guess_fractions if 0 < f <= 1})
    best = OneRunBound(0.0, m, 0, 0, beta, delta)
    for r in sizes:
        k = r // 2
        correct = int(truth[order[:k]].sum() + (~truth[order[m - k :]]).sum())
        eps = epsilon_lower_bound(m, r, correct, delta=delta, beta=beta / len(sizes))
        if eps > best.epsilon:
            best = OneRunBound(eps, m, r, correct, beta, delta)
    return best
