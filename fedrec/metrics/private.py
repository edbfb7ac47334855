"""Differentially private evaluation: a Gaussian mechanism on clipped per-user metrics.

Design rule: in a deployment no per-user metric and no top-k list may reach the server
in the clear (docs/PRIVACY.md, "Evaluation"). Each evaluated user's metric vector
``m`` (the :data:`~fedrec.metrics.ranking.USER_METRIC_KEYS`, each in ``[0, 1]``) is
clamped to ``[0, 1]`` and clipped to L2 norm ``C``; the release is the Gaussian
mechanism (Dwork & Roth 2014, Thm. A.1; accounted with Opacus as one release
``(z, 1, 1)``) with one of two sensitivities:

- **local** (noise added on the device): any two clipped vectors lie in the
  non-negative orthant inside the ball of radius ``C``, so they differ by at most
  ``D = sqrt(2) C`` in L2 norm whatever the device's data. The device adds
  ``N(0, (z D)^2)`` to every coordinate, which protects *all* of its data (so also one
  interaction, the local MF unit) at the accounted epsilon;
- **central** (noise added by the trusted server to the sum): adding or removing one
  user moves the sum of clipped vectors by at most ``C``, so the server adds
  ``N(0, (z C)^2)`` once to the sum (user level, ``q = 1`` over the users asked).

``z`` is Opacus's calibration (:func:`fedrec.privacy.accounting.calibrate_noise`) of
one release to the evaluation's epsilon. The default ``C = sqrt(k)`` for ``k`` metrics
never binds (each metric is at most 1), so clipping adds no bias.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from functools import lru_cache

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError
from fedrec.metrics.ranking import USER_METRIC_KEYS
from fedrec.privacy.accounting import Release, calibrate_noise
from fedrec.privacy.config import PrivacyConfig

Vector = npt.NDArray[np.float64]
Summary = dict[str, float | int]


@dataclass(frozen=True)
class PrivateEvaluation:
    """The Gaussian mechanism of one DP evaluation (see the module docstring).

    Attributes
    ----------
    noise_multiplier
        ``z``: noise std over the sensitivity (``D`` local, ``C`` central).
    clip_norm
        ``C``: L2 bound of a user's metric vector.
    keys
        The released metrics, in order.
    """

    noise_multiplier: float
    clip_norm: float
    keys: tuple[str, ...] = USER_METRIC_KEYS

    def __post_init__(self) -> None:
        for name in ("noise_multiplier", "clip_norm"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(
                    f"must be finite and > 0, got {value}",
                    where=f"evaluation {name}",
                    fix="give a positive privacy.eval-epsilon and privacy.eval-clip-norm",
                )

    @classmethod
    def calibrate(
        cls,
        epsilon: float,
        delta: float,
        *,
        clip_norm: float | None = None,
        accountant: str = "rdp",
        keys: Sequence[str] = USER_METRIC_KEYS,
    ) -> PrivateEvaluation:
        """The mechanism whose one release costs ``epsilon`` at ``delta`` (Opacus)."""
        z = calibrate_noise(
            target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1, accountant=accountant
        )
        clip = math.sqrt(len(keys)) if clip_norm is None else float(clip_norm)
        return cls(noise_multiplier=z, clip_norm=clip, keys=tuple(keys))

    @property
    def release(self) -> Release:
        """The accountant's record of one evaluation: ``(z, q = 1, 1 step)``."""
        return Release(self.noise_multiplier, 1.0, 1)

    @property
    def local_std(self) -> float:
        """Noise std per coordinate added by a device: ``z sqrt(2) C``."""
        return self.noise_multiplier * math.sqrt(2.0) * self.clip_norm

    @property
    def central_std(self) -> float:
        """Noise std per coordinate added once to the sum by the server: ``z C``."""
        return self.noise_multiplier * self.clip_norm

    def clip(self, metrics: Mapping[str, float]) -> Vector:
        """``metrics`` as a vector of :attr:`keys`, clamped to ``[0, 1]``, L2 norm <= C.

        A missing key or a non-finite value is an error (it would escape the bound).
        """
        missing = [k for k in self.keys if k not in metrics]
        if missing:
            raise ConfigError(
                f"metrics lack {missing}", where="private evaluation", fix="pass every key"
            )
        vector = np.array([float(metrics[k]) for k in self.keys], dtype=np.float64)
        if not np.all(np.isfinite(vector)):
            raise ValueError(f"non-finite metric in {dict(zip(self.keys, vector, strict=True))}")
        vector = np.clip(vector, 0.0, 1.0)
        norm = float(np.linalg.norm(vector))
        if norm > self.clip_norm:
            vector *= self.clip_norm / norm
        return vector

    def privatize(self, metrics: Mapping[str, float], rng: np.random.Generator) -> dict[str, float]:
        """Local mode, on the device: ``clip(metrics) + N(0, (z sqrt(2) C)^2)`` per key.

        ``rng`` must be secret (:func:`fedrec.privacy.noise.secure_rng`).
        """
        noisy = self.clip(metrics) + rng.normal(0.0, self.local_std, size=len(self.keys))
        return {k: float(v) for k, v in zip(self.keys, noisy, strict=True)}

    def vector(self, values: Mapping[str, float]) -> Vector:
        """A reply's values as a vector of :attr:`keys` (no clipping; for noisy replies)."""
        return np.array([float(values[k]) for k in self.keys], dtype=np.float64)

    def noisy_sum(self, clipped: Sequence[Vector], rng: np.random.Generator) -> Vector:
        """Central mode, on the server: the sum of re-clipped vectors plus ``N(0, (z C)^2)``."""
        total = np.zeros(len(self.keys), dtype=np.float64)
        for vector in clipped:
            total += self.clip(dict(zip(self.keys, vector, strict=True)))
        return total + rng.normal(0.0, self.central_std, size=len(self.keys))

    def as_metrics(self, vector: Vector) -> dict[str, float]:
        """``vector`` as ``{key: value}``."""
        return {k: float(v) for k, v in zip(self.keys, vector, strict=True)}


@lru_cache(maxsize=16)
def evaluation_mechanism(privacy: PrivacyConfig) -> PrivateEvaluation | None:
    """The run's DP evaluation (server and device compute the same), or ``None``.

    ``None`` in mode ``none`` (no noise), in any mode other than ``local`` and
    ``central`` (none is defined), and when no ``eval_epsilon`` is set (a private
    deployment then requests no evaluation). ``privacy.delta`` must be resolved.
    """
    if privacy.mode not in ("local", "central") or privacy.eval_epsilon is None:
        return None
    if privacy.delta is None:
        raise ConfigError(
            "DP evaluation needs the run's delta",
            where="privacy.delta",
            fix="resolve the settings first (server.privacy_run.resolve_settings)",
        )
    return PrivateEvaluation.calibrate(
        privacy.eval_epsilon,
        privacy.delta,
        clip_norm=privacy.eval_clip_norm,
        accountant=privacy.accountant,
    )


def aggregate_replies(
    mode: str,
    replies: Sequence[Mapping[str, float]],
    *,
    mechanism: PrivateEvaluation | None,
    asked: int,
    rng: np.random.Generator | None = None,
) -> tuple[Summary | None, Release | None]:
    """The server's average of deployed evaluation replies, and its release (central).

    - ``none``: the uniform mean of the per-user metrics over the replies;
    - ``local``: the mean of the devices' noisy vectors over the replies. Each reply is
      already private; their number is who answered, which the server sees anyway
      (participation is not protected), so it is the divisor;
    - ``central``: ``(sum of re-clipped vectors + N(0, (z C)^2)) / asked``, with
      ``asked`` the number of users the server asked (chosen from public registration
      data, not from who replied), so the divisor is public and spends nothing. A
      user who failed counts as a zero vector. Returns the release to account.

    ``users_evaluated`` is the number of replies; ``eval_noise_std`` the std of the
    noise in each reported mean (local, central).
    """
    if mode not in ("none", "local", "central"):
        raise ConfigError(f"unknown privacy mode {mode!r}", where="evaluation")
    if mode != "none" and mechanism is None:
        raise ConfigError(
            f"a {mode} evaluation needs its mechanism",
            where="privacy.eval-epsilon",
            fix="set privacy.eval-epsilon",
        )
    keys = USER_METRIC_KEYS if mechanism is None else mechanism.keys
    n = len(replies)
    if mode == "central":
        assert mechanism is not None and rng is not None, "central evaluation needs a secret rng"
        if asked < 1:
            return None, None
        vectors = [np.array([float(r[k]) for k in keys]) for r in replies]
        mean = mechanism.noisy_sum(vectors, rng) / asked
        out: Summary = {k: float(v) for k, v in zip(keys, mean, strict=True)}
        out.update(users_evaluated=n, users_asked=int(asked))
        out["eval_noise_std"] = mechanism.central_std / asked
        return out, mechanism.release
    if n == 0:
        return None, None
    mean = np.mean(np.array([[float(r[k]) for k in keys] for r in replies]), axis=0)
    out = {k: float(v) for k, v in zip(keys, mean, strict=True)}
    out["users_evaluated"] = n
    if mode == "local":
        assert mechanism is not None
        out["eval_noise_std"] = mechanism.local_std / math.sqrt(n)
    return out, None


__all__ = ["PrivateEvaluation", "aggregate_replies", "evaluation_mechanism"]
