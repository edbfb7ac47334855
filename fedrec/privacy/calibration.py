"""One-shot releases: calibrated and accounted with the tighter of Opacus's accountants.

Design rule: a release made once, with every user in it (``q = 1``, one step: the Gram
release of federated EASE, the DP popularity release) is a single Gaussian mechanism.
RDP's conversion to ``(epsilon, delta)`` (Mironov 2017; Balle et al. 2020) is loose for
it; Opacus's PRV accountant (Gopi, Lee & Wutschitz, NeurIPS 2021), whose upper bound is
numerically tight for one Gaussian, certifies the same budget with less noise: at
epsilon 8, delta 1e-4, ``z`` 0.544 against RDP's 0.582 (the exact Gaussian mechanism of
Balle & Wang 2018 needs 0.543). So a one-shot release is calibrated with *every*
accountant of :data:`fedrec.privacy.accounting.ACCOUNTANTS`, and the smallest ``z`` that
its own accountant certifies (recomputed by :func:`epsilon_from_history`) is kept,
together with the name of that accountant: ``privacy.json`` records it, and
``verify_privacy_json`` recomputes the epsilon with it. With ``z`` given instead of a
target, the accountant certifying the smaller epsilon is recorded. Composed mechanisms
(DP-FedAvg, DP-SGD) keep the run's configured accountant.
"""

from __future__ import annotations

import warnings
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

from fedrec.errors import ConfigError
from fedrec.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccount,
    Release,
    calibrate_noise,
    check_delta,
    epsilon_from_history,
)

PRV_MAX_EPSILON = 100.0
"""PRV is compared only up to this epsilon: its grid spans the privacy loss, so its cost
grows as ``z`` shrinks (0.8 s at ``z`` = 0.05, epsilon ~280; 2.5 PiB at ``z`` = 1e-6)."""
RULE = (
    "one-shot release: calibrated with each Opacus accountant "
    f"({', '.join(ACCOUNTANTS)}); the smallest noise multiplier its own accountant "
    "certifies is used, and that accountant is recorded"
)


@dataclass(frozen=True)
class OneShot:
    """A one-shot Gaussian release's noise multiplier, accountant and epsilon.

    Attributes
    ----------
    noise_multiplier
        ``z``: noise std divided by the sensitivity.
    accountant
        The Opacus accountant that certifies :attr:`epsilon` (``"rdp"`` or ``"prv"``).
    epsilon
        Epsilon of ``[[z, 1.0, 1]]`` at :attr:`delta` under :attr:`accountant`.
    delta
        The delta of the statement.
    epsilon_by_accountant
        ``(accountant, epsilon at z)`` for every accountant: the comparison made.
    noise_multiplier_by_accountant
        ``(accountant, z calibrated to the target)``; empty when ``z`` was given.
    """

    noise_multiplier: float
    accountant: str
    epsilon: float
    delta: float
    epsilon_by_accountant: tuple[tuple[str, float], ...]
    noise_multiplier_by_accountant: tuple[tuple[str, float], ...] = ()

    @property
    def release(self) -> Release:
        """What the release spends: ``(z, 1.0, 1)``."""
        return Release(self.noise_multiplier, 1.0, 1)

    @property
    def account(self) -> PrivacyAccount:
        """The release as history ``[[z, 1.0, 1]]`` under :attr:`accountant`."""
        return PrivacyAccount(accountant=self.accountant, history=[self.release.entry()])

    def record(self) -> dict[str, Any]:
        """The ``calibration`` entry of ``privacy.json``: what was compared and chosen."""
        out: dict[str, Any] = {
            "rule": RULE,
            "accountant": self.accountant,
            "noise_multiplier": self.noise_multiplier,
            "epsilon_by_accountant": dict(self.epsilon_by_accountant),
        }
        if self.noise_multiplier_by_accountant:
            out["noise_multiplier_by_accountant"] = dict(self.noise_multiplier_by_accountant)
        return out


PRV_DOMAIN_WARNING = "Optimal order is the largest alpha"
"""Opacus's PRV accountant sizes its discretization domain with an internal
default-orders ``RDPAccountant`` (``compute_safe_domain_size``, no way to pass orders),
which warns at large noise. That bound only makes the domain larger (safer); the PRV
epsilon is unaffected, so the warning is ignored there only. RDP epsilons and the RDP
calibration use wider orders and no longer raise it (``accounting.WIDER_ALPHAS``)."""


def _epsilon(z: float, delta: float, accountant: str) -> float:
    with warnings.catch_warnings():  # PRV at q = 1 takes log(1 - q) = -inf, harmlessly
        warnings.simplefilter("ignore", RuntimeWarning)
        if accountant != "rdp":  # PRV's own domain bound: see PRV_DOMAIN_WARNING
            warnings.filterwarnings("ignore", message=PRV_DOMAIN_WARNING)
        return epsilon_from_history([[z, 1.0, 1]], delta, accountant)


def _epsilons(z: float, delta: float) -> dict[str, float]:
    """Epsilon of ``[[z, 1.0, 1]]`` under RDP, and under the others where usable."""
    out = {"rdp": _epsilon(z, delta, "rdp")}
    if out["rdp"] <= PRV_MAX_EPSILON:
        out.update({a: _epsilon(z, delta, a) for a in ACCOUNTANTS if a != "rdp"})
    return out


@lru_cache(maxsize=64)
def calibrate_one_shot(target_epsilon: float, delta: float) -> OneShot:
    """The smallest ``z`` for one Gaussian release (``q = 1``) that an accountant certifies.

    Each accountant calibrates ``z`` (:func:`calibrate_noise`, never overshooting its own
    epsilon); the smallest ``z`` whose recomputed epsilon is ``<= target_epsilon`` wins
    (ties: the first of :data:`ACCOUNTANTS`). Above :data:`PRV_MAX_EPSILON` only RDP.

    Raises
    ------
    ConfigError
        When no accountant reaches the target (the first accountant's error), or on a
        bad epsilon or delta.
    """
    check_delta(delta)
    usable = ACCOUNTANTS if target_epsilon <= PRV_MAX_EPSILON else ("rdp",)
    calibrated: dict[str, float] = {}
    first_error: ConfigError | None = None
    for accountant in usable:
        try:
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", RuntimeWarning)
                if accountant != "rdp":  # PRV's own domain bound: see PRV_DOMAIN_WARNING
                    warnings.filterwarnings("ignore", message=PRV_DOMAIN_WARNING)
                z = calibrate_noise(
                    target_epsilon=target_epsilon,
                    delta=delta,
                    sample_rate=1.0,
                    steps=1,
                    accountant=accountant,
                )
        except ConfigError as exc:
            first_error = first_error or exc
            continue
        if _epsilon(z, delta, accountant) <= target_epsilon:
            calibrated[accountant] = z
    if not calibrated:
        assert first_error is not None
        raise first_error
    best = min(calibrated, key=lambda a: (calibrated[a], ACCOUNTANTS.index(a)))
    eps = _epsilons(calibrated[best], delta)
    return OneShot(
        calibrated[best],
        best,
        eps[best],
        delta,
        tuple(eps.items()),
        tuple(calibrated.items()),
    )


@lru_cache(maxsize=256)
def one_shot_epsilon(noise_multiplier: float, delta: float) -> OneShot:
    """Epsilon of one Gaussian release ``(z, 1, 1)`` under the accountant certifying least.

    Ties go to the first of :data:`ACCOUNTANTS`; PRV is not tried when RDP's epsilon
    exceeds :data:`PRV_MAX_EPSILON`.
    """
    check_delta(delta)
    Release(noise_multiplier, 1.0, 1)  # validates z
    eps = _epsilons(float(noise_multiplier), delta)
    best = min(eps, key=lambda a: (eps[a], ACCOUNTANTS.index(a)))
    return OneShot(float(noise_multiplier), best, eps[best], delta, tuple(eps.items()))


__all__ = ["RULE", "OneShot", "calibrate_one_shot", "one_shot_epsilon"]
