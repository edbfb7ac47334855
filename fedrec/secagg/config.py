"""Settings of secure aggregation with distributed DP (``secagg.*`` keys of a run)."""

from __future__ import annotations

import math
from dataclasses import dataclass

from fedrec.errors import ConfigError

DEFAULT_NEIGHBOURS = 32
"""Degree ``k`` of the SecAgg+ graph; cohorts of at most ``k + 1`` devices: complete graph."""


@dataclass(frozen=True)
class SecAggConfig:
    """SecAgg+ and distributed-DP settings.

    Attributes
    ----------
    neighbours
        Degree ``k`` of the random Harary graph (Bell et al., CCS 2020).
    threshold
        Shamir threshold ``t`` (shares needed to rebuild a secret); ``0`` means
        ``floor(k' / 2) + 1`` of the actual degree ``k'`` (a majority of the neighbours).
    bits
        Ring ``Z_{2^bits}`` per coordinate (the modulus of the secure sum).
    min_survivors
        Fraction of the devices that must survive the protocol; the noise is calibrated
        for that many, and the server refuses to release with fewer.
    drop_users
        TESTS ONLY: users (comma-separated) that go offline after sharing keys.
    """

    neighbours: int = DEFAULT_NEIGHBOURS
    threshold: int = 0
    bits: int = 20
    min_survivors: float = 0.9
    drop_users: str = ""

    def __post_init__(self) -> None:
        if self.neighbours < 2:
            raise ConfigError(f"must be >= 2, got {self.neighbours}", where="secagg.neighbours")
        if self.threshold and self.threshold < 2:
            raise ConfigError(
                f"must be >= 2 (or 0: automatic), got {self.threshold}", where="secagg.threshold"
            )
        if not 8 <= self.bits <= 62:
            raise ConfigError(f"must lie in [8, 62], got {self.bits}", where="secagg.bits")
        if not 0 < self.min_survivors <= 1:
            raise ConfigError(
                f"must lie in (0, 1], got {self.min_survivors}", where="secagg.min-survivors"
            )

    def degree(self, devices: int) -> int:
        """The graph's degree for ``devices`` nodes (complete graph when small)."""
        k = min(self.neighbours + self.neighbours % 2, devices - 1)
        return max(k, 1)

    def shamir_threshold(self, devices: int) -> int:
        """``t`` for ``devices`` nodes."""
        k = self.degree(devices)
        t = self.threshold or k // 2 + 1
        if not 2 <= t <= k:
            raise ConfigError(
                f"threshold {t} must lie in [2, {k}] (the graph's degree) for {devices} devices",
                where="secagg.threshold",
                fix="lower it or raise secagg.neighbours",
            )
        return t

    def survivors_needed(self, devices: int) -> int:
        """The fewest survivors the noise is calibrated for (at least 2)."""
        return max(2, math.ceil(self.min_survivors * devices - 1e-9))


__all__ = ["DEFAULT_NEIGHBOURS", "SecAggConfig"]
