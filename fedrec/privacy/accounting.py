"""Privacy accounting as data: frozen release records composed by an Opacus accountant.

Design rule (after Google's ``dp_accounting``): what a mechanism spent is *data*, a list
of :class:`Release` records ``(noise_multiplier, sample_rate, steps)``, each one a
Poisson-subsampled Gaussian mechanism applied ``steps`` times. Epsilon is never stored
as the source of truth: it is recomputed from that list by a fresh Opacus accountant
(:func:`epsilon_from_history`), so a report, a ledger or a resumed run can always be
re-checked from its recorded history alone. No epsilon formula is written here; RDP
(Mironov 2017; Mironov, Talwar & Zhang 2019) and PRV (Gopi, Lee & Wutschitz, NeurIPS
2021) are Opacus's.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from functools import lru_cache
from typing import Any

import numpy as np
from opacus.accountants import RDPAccountant, create_accountant
from opacus.accountants.analysis import rdp as rdp_analysis
from opacus.accountants.utils import MAX_SIGMA, get_noise_multiplier

from fedrec.errors import ConfigError
from fedrec.privacy.config import ACCOUNTANTS as ACCOUNTANTS  # the CLI reads it without Opacus

EPSILON_TOLERANCE = 0.01
"""How far below the target a calibrated epsilon may end (Opacus's default)."""

HistoryEntry = list[float]
"""One Opacus history entry ``[noise_multiplier, sample_rate, steps]`` (JSON-ready)."""


def _check(ok: bool, what: str, where: str, fix: str) -> None:
    if not ok:
        raise ConfigError(what, where=where, fix=fix)


def check_accountant(accountant: str) -> None:
    """Raise :class:`ConfigError` unless ``accountant`` is one of :data:`ACCOUNTANTS`."""
    _check(
        accountant in ACCOUNTANTS,
        f"unknown accountant {accountant!r}",
        "privacy.accountant",
        f"use one of {', '.join(ACCOUNTANTS)}",
    )


def check_delta(delta: float) -> None:
    """Raise :class:`ConfigError` unless ``0 < delta < 1``."""
    _check(0.0 < delta < 1.0, f"delta must be in (0, 1), got {delta}", "privacy.delta", "use 1e-5")


@dataclass(frozen=True)
class Release:
    """One Poisson-subsampled Gaussian mechanism, applied ``steps`` times.

    Attributes
    ----------
    noise_multiplier
        Noise standard deviation divided by the clip norm (sensitivity), ``> 0``.
    sample_rate
        Poisson sampling probability of each privacy unit per step, in ``(0, 1]``.
    steps
        Number of compositions, ``>= 0``.
    """

    noise_multiplier: float
    sample_rate: float
    steps: int

    def __post_init__(self) -> None:
        _check(
            math.isfinite(self.noise_multiplier) and self.noise_multiplier > 0,
            f"noise_multiplier must be finite and > 0, got {self.noise_multiplier}",
            "privacy.noise_multiplier",
            "calibrate it with calibrate_noise or set a positive value",
        )
        _check(
            0.0 < self.sample_rate <= 1.0,
            f"sample_rate must be in (0, 1], got {self.sample_rate}",
            "privacy.sample_rate",
            "use batch size / examples (local) or clients per round / clients (central)",
        )
        _check(
            int(self.steps) == self.steps and self.steps >= 0,
            f"steps must be an integer >= 0, got {self.steps}",
            "privacy.steps",
            "count optimizer steps (local) or rounds (central)",
        )

    def entry(self) -> HistoryEntry:
        """The Opacus history entry ``[noise_multiplier, sample_rate, steps]``."""
        return [float(self.noise_multiplier), float(self.sample_rate), int(self.steps)]


def _as_history(history: Iterable[Sequence[float]]) -> list[HistoryEntry]:
    """Validate and copy a history, merging consecutive equal mechanisms like Opacus."""
    out: list[HistoryEntry] = []
    for raw in history:
        if len(raw) != 3:
            raise ConfigError(
                f"history entry {list(raw)} must be [noise_multiplier, sample_rate, steps]",
                where="privacy history",
                fix="restore the history exactly as it was written",
            )
        release = Release(float(raw[0]), float(raw[1]), int(raw[2]))
        if release.steps == 0:
            continue
        if out and out[-1][0] == release.noise_multiplier and out[-1][1] == release.sample_rate:
            out[-1][2] = int(out[-1][2]) + release.steps
        else:
            out.append(release.entry())
    return out


def epsilon_from_history(
    history: Iterable[Sequence[float]], delta: float, accountant: str = "rdp"
) -> float:
    """Epsilon spent by ``history`` at ``delta``, from a fresh Opacus accountant.

    Parameters
    ----------
    history
        Entries ``[noise_multiplier, sample_rate, steps]`` as recorded in a ledger or
        ``privacy.json``.
    delta
        Target delta in ``(0, 1)``.
    accountant
        ``"rdp"`` or ``"prv"``.

    Returns
    -------
    float
        Epsilon (``0.0`` for an empty history). PRV returns its upper bound. RDP is
        bit-for-bit what a fresh ``opacus.accountants.RDPAccountant`` holding
        ``history`` returns (tested).
    """
    check_accountant(accountant)
    check_delta(delta)
    entries = _as_history(history)
    if not entries:
        return 0.0
    if accountant == "rdp":
        return _rdp_epsilon(tuple((e[0], e[1], int(e[2])) for e in entries), delta)
    acc = create_accountant(mechanism=accountant)
    acc.history = [(e[0], e[1], int(e[2])) for e in entries]
    return float(acc.get_epsilon(delta=delta))


WIDER_ALPHAS: tuple[float, ...] = tuple(
    float(round(64 * 1.25**k)) for k in range(1, 35) if round(64 * 1.25**k) <= 2**14
)
"""RDP orders beyond Opacus's ``DEFAULT_ALPHAS`` (which end at 63), about 25% apart up to
16384. Large noise (small epsilon, e.g. one-shot releases or the first steps of a
calibration) is optimal at orders above 63, where Opacus warns "Optimal order is the
largest alpha" and returns a looser epsilon. They are computed only when needed: for
sampled mechanisms an integer order ``a`` costs ``O(a)``."""

ALPHA_BLOCKS: tuple[tuple[float, ...], ...] = (
    tuple(float(a) for a in RDPAccountant.DEFAULT_ALPHAS),
    *(WIDER_ALPHAS[i : i + 4] for i in range(0, len(WIDER_ALPHAS), 4)),
)
"""The orders in the order they are tried: Opacus's defaults, then :data:`WIDER_ALPHAS`
four at a time."""


@lru_cache(maxsize=65536)
def _rdp_epsilon(entries: tuple[tuple[float, float, int], ...], delta: float) -> float:
    """``RDPAccountant.get_privacy_spent`` over Opacus's orders and, while the best order
    is the last one computed, over more of :data:`WIDER_ALPHAS`.

    Where Opacus's default orders hold the optimum inside their range (every realistic
    multi-step run), the result is bit for bit a fresh ``RDPAccountant``'s; otherwise it
    is smaller (tighter) and still Opacus's RDP (``compute_rdp``, per-step RDP times
    steps) and conversion (``get_privacy_spent``), over more orders. Memoized twice: per
    history (thousands of devices of a local-DP run share a handful of histories) and per
    step (the fractional orders cost ~0.1 s).
    """
    orders: list[float] = []
    rdp = np.zeros(0)
    for block in range(len(ALPHA_BLOCKS)):
        orders += ALPHA_BLOCKS[block]
        more = sum(np.asarray(_rdp_per_step(z, q, block)) * steps for z, q, steps in entries)
        rdp = np.concatenate([rdp, np.asarray(more, dtype=float)])
        if block == len(ALPHA_BLOCKS) - 1:  # out of orders: Opacus warns if still the last
            break
        # One more order whose RDP is +inf (a vacuous bound) closes the list, so Opacus
        # names the best computed order instead of warning that it is the last one.
        eps, best = rdp_analysis.get_privacy_spent(
            orders=[*orders, orders[-1] + 1.0], rdp=[*rdp, np.inf], delta=delta
        )
        if float(best) != orders[-1]:
            return float(eps)
    eps, _ = rdp_analysis.get_privacy_spent(orders=orders, rdp=rdp, delta=delta)
    return float(eps)


@lru_cache(maxsize=4096)
def _rdp_per_step(noise_multiplier: float, sample_rate: float, block: int = 0) -> tuple[float, ...]:
    rdp = rdp_analysis.compute_rdp(
        q=sample_rate,
        noise_multiplier=noise_multiplier,
        steps=1,
        orders=list(ALPHA_BLOCKS[block]),
    )
    return tuple(float(v) for v in rdp)


class PrivacyAccount:
    """A composed record of releases whose epsilon Opacus computes on demand.

    Parameters
    ----------
    accountant
        ``"rdp"`` (default) or ``"prv"``.
    history
        Entries to start from (e.g. restored from a ledger or checkpoint).
    """

    def __init__(self, *, accountant: str = "rdp", history: Iterable[Sequence[float]] = ()) -> None:
        check_accountant(accountant)
        self.accountant = accountant
        self._history = _as_history(history)

    @property
    def history(self) -> list[HistoryEntry]:
        """A copy of Opacus's ``[[noise_multiplier, sample_rate, steps], ...]``."""
        return [list(e) for e in self._history]

    def record(self, noise_multiplier: float, sample_rate: float, steps: int) -> None:
        """Compose one more Poisson-subsampled Gaussian mechanism, ``steps`` times."""
        self.record_release(Release(noise_multiplier, sample_rate, steps))

    def record_release(self, release: Release) -> None:
        """Compose ``release`` into this account."""
        self._history = _as_history([*self._history, release.entry()])

    def after(self, release: Release) -> PrivacyAccount:
        """A new account: this one with ``release`` composed (this one is unchanged)."""
        return PrivacyAccount(accountant=self.accountant, history=[*self._history, release.entry()])

    def epsilon(self, delta: float) -> float:
        """Epsilon spent so far at ``delta`` (recomputed by a fresh Opacus accountant)."""
        return epsilon_from_history(self._history, delta, self.accountant)

    @property
    def steps(self) -> int:
        """Total number of composed mechanism applications."""
        return sum(int(e[2]) for e in self._history)

    def to_json(self) -> dict[str, Any]:
        """``{"accountant": ..., "history": [...]}``; restores exactly via :meth:`from_json`."""
        return {"accountant": self.accountant, "history": self.history}

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> PrivacyAccount:
        """Restore an account written by :meth:`to_json`."""
        return cls.from_history(data["history"], accountant=str(data["accountant"]))

    @classmethod
    def from_history(
        cls, history: Iterable[Sequence[float]], *, accountant: str = "rdp"
    ) -> PrivacyAccount:
        """An account holding exactly ``history``."""
        return cls(accountant=accountant, history=history)

    def __eq__(self, other: object) -> bool:
        if not isinstance(other, PrivacyAccount):
            return NotImplemented
        return self.accountant == other.accountant and self._history == other._history

    def __repr__(self) -> str:
        return f"PrivacyAccount(accountant={self.accountant!r}, history={self._history!r})"


def calibrate_noise(
    *,
    target_epsilon: float,
    delta: float,
    sample_rate: float,
    steps: int,
    accountant: str = "rdp",
) -> float:
    """The smallest noise multiplier (to Opacus's 0.01 tolerance) reaching the target.

    Binary search by :func:`opacus.accountants.utils.get_noise_multiplier` (for RDP the
    same search over the wider orders of :func:`epsilon_from_history`); the result never
    overshoots: ``epsilon_from_history([[z, q, steps]], delta) <= target_epsilon``.

    Raises
    ------
    ConfigError
        On a non-positive epsilon, a delta outside ``(0, 1)``, a sample rate outside
        ``(0, 1]``, ``steps < 1``, an unknown accountant, or a budget needing a noise
        multiplier above 1e6.
    """
    _check(
        math.isfinite(target_epsilon) and target_epsilon > 0,
        f"target epsilon must be finite and > 0, got {target_epsilon}",
        "privacy.epsilon",
        "use e.g. 1, 4 or 8",
    )
    check_delta(delta)
    check_accountant(accountant)
    Release(1.0, sample_rate, steps)  # validates sample_rate and steps
    _check(steps >= 1, f"steps must be >= 1, got {steps}", "privacy.steps", "train at least once")
    try:
        if accountant == "rdp":
            sigma = _rdp_noise_multiplier(target_epsilon, delta, sample_rate, int(steps))
        else:
            sigma = get_noise_multiplier(
                target_epsilon=target_epsilon,
                target_delta=delta,
                sample_rate=sample_rate,
                steps=int(steps),
                accountant=accountant,
            )
    except ValueError as exc:
        raise ConfigError(
            f"cannot reach epsilon={target_epsilon} at delta={delta} with q={sample_rate}, "
            f"{steps} steps ({exc})",
            where="privacy.epsilon",
            fix="raise the epsilon budget, or lower the sample rate or the number of steps",
        ) from exc
    return float(sigma)


def _rdp_noise_multiplier(target: float, delta: float, sample_rate: float, steps: int) -> float:
    """Opacus's ``get_noise_multiplier`` search, step for step (double sigma from 20 until
    epsilon is under the target, then bisect until within 0.01 below it), with each epsilon
    from :func:`epsilon_from_history` (Opacus's RDP over the wider orders) instead of a
    default-orders ``RDPAccountant``: the same z where those orders suffice, a smaller one
    (less noise, the same guarantee) where they did not, and no "largest alpha" warning.
    """

    def epsilon(sigma: float) -> float:
        return epsilon_from_history([[sigma, sample_rate, steps]], delta, "rdp")

    eps_high, sigma_low, sigma_high = math.inf, 0.0, 10.0
    while eps_high > target:
        sigma_high = 2 * sigma_high
        eps_high = epsilon(sigma_high)
        if sigma_high > MAX_SIGMA:
            raise ValueError("The privacy budget is too low.")
    while target - eps_high > EPSILON_TOLERANCE:
        sigma = (sigma_low + sigma_high) / 2
        eps = epsilon(sigma)
        if eps < target:
            sigma_high, eps_high = sigma, eps
        else:
            sigma_low = sigma
    return sigma_high


def default_delta(n_units: int) -> float:
    """The default delta: ``min(1e-5, 1 / (10 * n_units))``.

    A mechanism that publishes one random unit's data in the clear is ``(0, 1/n)``-DP,
    so a meaningful delta must sit well below ``1/n`` for the ``n`` units the guarantee
    is about; we require a factor ten, and never exceed the customary 1e-5. Pass the
    number of users for a central (user-level) run; for a local run the per-device
    dataset is far smaller than the number of users, so the same value is conservative.
    """
    _check(n_units >= 1, f"need at least one unit, got {n_units}", "default_delta", "pass n >= 1")
    return min(1e-5, 1.0 / (10.0 * n_units))
