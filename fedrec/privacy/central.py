"""User-level central DP: the DP-FedAvg mechanism (McMahan et al., ICLR 2018).

Design rule: the server is trusted to run exactly this, and the guarantee holds against
everyone who sees what it releases. Each round, clients are Poisson-sampled with rate
``q`` using *secret* randomness (:func:`fedrec.privacy.noise.poisson_mask` with
:func:`~fedrec.privacy.noise.secure_rng`); each reply's item-side update
``client - global`` is clipped to L2 norm ``S`` over the concatenation of all its
arrays (:func:`clip_update`); the server adds ``N(0, (z S)^2)`` to the *sum* and divides
by the *expected* number of clients ``q N``, not by how many replied
(:func:`noisy_mean`), so that one user's presence changes the sum by at most ``S`` and
nothing else. Accounting: one :class:`Release` ``(z, q, 1)`` per round.

Adaptive clipping (Andrew et al., NeurIPS 2021) is supported: each sampled client also
reports whether its update was unclipped; the noisy count moves ``S`` geometrically
towards a target quantile. Both noisy sums are one Gaussian mechanism on the vector
``(update, bit - 1/2)`` with effective noise multiplier
``(z_update**-2 + (2 sigma_bit)**-2)**-1/2`` (Andrew et al., Sec. 3), which is what the
round records (:func:`adaptive_release`).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError
from fedrec.privacy.accounting import PrivacyAccount, Release
from fedrec.privacy.noise import gaussian, poisson_mask

Arrays = list[npt.NDArray[np.float32]]
_CLIP_SLACK = 1e-5


def update_norm(arrays: Sequence[npt.NDArray[np.floating]]) -> float:
    """L2 norm of the concatenation of ``arrays``."""
    return float(math.sqrt(sum(float(np.sum(np.square(a, dtype=np.float64))) for a in arrays)))


def clip_update(
    delta_arrays: Sequence[npt.NDArray[np.floating]], clip_norm: float
) -> tuple[Arrays, float]:
    """Scale an update so that its joint L2 norm is at most ``clip_norm``.

    Parameters
    ----------
    delta_arrays
        The client's item-side update ``client params - global params``, in upload order.
    clip_norm
        The bound ``S > 0``.

    Returns
    -------
    (clipped, original_norm)
        Float32 arrays scaled by ``min(1, S / norm)``, and the norm before clipping.
    """
    if not clip_norm > 0:
        raise ConfigError(f"clip norm must be > 0, got {clip_norm}", where="privacy.clip_norm")
    norm = update_norm(delta_arrays)
    factor = min(1.0, clip_norm / norm) if norm > 0 else 1.0
    return [
        (np.asarray(a, dtype=np.float64) * factor).astype(np.float32) for a in delta_arrays
    ], norm


def noisy_mean(
    clipped_updates: Sequence[Sequence[npt.NDArray[np.floating]]],
    *,
    noise_multiplier: float,
    clip_norm: float,
    expected_clients: float,
    rng: np.random.Generator,
    shapes: Sequence[tuple[int, ...]] | None = None,
) -> Arrays:
    """DP-FedAvg's aggregate: ``(sum of clipped updates + N(0, (z S)^2 I)) / (q N)``.

    Parameters
    ----------
    clipped_updates
        One list of arrays per client that replied, each already clipped to ``S``.
    noise_multiplier
        ``z``; the noise std on the sum is ``z * clip_norm``.
    clip_norm
        ``S``; an update above it is a bug and raises ``ValueError``.
    expected_clients
        ``q * N``, the expected number of sampled clients (never the number that replied).
    rng
        A secret generator (:func:`fedrec.privacy.noise.secure_rng`).
    shapes
        Array shapes, required when no client replied (the release is then pure noise).
    """
    if not expected_clients > 0:
        raise ConfigError(
            f"expected clients must be > 0, got {expected_clients}",
            where="privacy.expected_clients",
            fix="pass q * N, the sampling rate times the number of clients",
        )
    if shapes is None:
        if not clipped_updates:
            raise ValueError("noisy_mean needs shapes when no client replied")
        shapes = [tuple(a.shape) for a in clipped_updates[0]]
    total = [np.zeros(s, dtype=np.float64) for s in shapes]
    for update in clipped_updates:
        if update_norm(update) > clip_norm * (1 + _CLIP_SLACK):
            raise ValueError(f"an update of norm {update_norm(update)} exceeds clip {clip_norm}")
        for acc, a in zip(total, update, strict=True):
            acc += a
    std = noise_multiplier * clip_norm
    return [
        ((t + gaussian(t.shape, std, rng)) / expected_clients).astype(np.float32) for t in total
    ]


def central_release(noise_multiplier: float, sample_rate: float) -> Release:
    """What one DP-FedAvg round spends: the sampled Gaussian ``(z, q, 1)``."""
    return Release(noise_multiplier, sample_rate, 1)


@dataclass(frozen=True)
class AdaptiveClipping:
    """Adaptive clipping to a quantile (Andrew et al., NeurIPS 2021).

    Attributes
    ----------
    target_quantile
        ``gamma``: the fraction of updates that should end up unclipped (0.5 = median).
    learning_rate
        ``eta_C`` of the geometric update ``S <- S * exp(-eta_C (b - gamma))``.
    bit_noise_std
        ``sigma_b``: std of the Gaussian noise on the count of unclipped updates; must
        exceed ``z / 2`` for the update noise to stay finite.
    """

    target_quantile: float = 0.5
    learning_rate: float = 0.2
    bit_noise_std: float = 10.0

    def __post_init__(self) -> None:
        if not 0.0 < self.target_quantile < 1.0:
            raise ConfigError("target quantile must be in (0, 1)", where="privacy.clip_quantile")
        if not (self.learning_rate > 0 and self.bit_noise_std > 0):
            raise ConfigError("clip learning rate and bit noise must be > 0", where="privacy")

    def update_noise_multiplier(self, z: float) -> float:
        """``z_update`` such that the round's effective multiplier is exactly ``z``."""
        rest = z**-2 - (2 * self.bit_noise_std) ** -2
        if rest <= 0:
            raise ConfigError(
                f"bit noise {self.bit_noise_std} is too small for noise multiplier {z}",
                where="privacy.bit_noise_std",
                fix=f"use a bit noise std above {z / 2}",
            )
        return float(rest**-0.5)

    def next_clip_norm(
        self,
        clip_norm: float,
        unclipped: Sequence[bool],
        *,
        expected_clients: float,
        rng: np.random.Generator,
    ) -> float:
        """Geometric update of ``S`` from the noisy fraction of unclipped updates."""
        # Centred bits (b - 1/2) have sensitivity 1/2, which adaptive_release assumes.
        centred = sum(float(b) - 0.5 for b in unclipped)
        noisy = centred + float(gaussian((), self.bit_noise_std, rng))
        fraction = noisy / expected_clients + 0.5
        return float(clip_norm * math.exp(-self.learning_rate * (fraction - self.target_quantile)))


def adaptive_release(z_update: float, bit_noise_std: float, sample_rate: float) -> Release:
    """The round's release when both the update and the unclipped count are noised.

    Effective noise multiplier ``(z_update**-2 + (2 bit_noise_std)**-2)**-1/2``: the
    update has sensitivity ``S`` under noise ``z_update S``, the centred bit ``1/2``
    under noise ``bit_noise_std`` (Andrew et al. 2021, Sec. 3).
    """
    z = (z_update**-2 + (2 * bit_noise_std) ** -2) ** -0.5
    return Release(float(z), sample_rate, 1)


class DPFedAvg:
    """The server's DP-FedAvg mechanism with its state (McMahan et al., ICLR 2018).

    One object per run, called once per round by both the Flower wrapper
    (:mod:`server.central_dp`) and the Flower-free loop (:mod:`fedrec.federated.loop`):
    :meth:`sample` draws the secret Poisson cohort, :meth:`aggregate` clips each
    update, noises the sum, divides by ``q N``, records the round's release and (with
    adaptive clipping, Andrew et al. 2021) moves the clip norm. Its whole state (the
    accountant history and the clip norm) is :meth:`state_dict`, JSON-ready, so a
    resumed run continues the accounting exactly, without replaying any noise.

    Parameters
    ----------
    noise_multiplier
        The round's effective ``z`` (what is recorded). With adaptive clipping the
        update's own multiplier is derived so that update + count compose to ``z``.
    clip_norm
        Initial ``S``.
    sample_rate
        ``q = K / N``.
    n_clients
        ``N``, the clients that can be sampled.
    array_scales
        One factor per item-side array (upload order), applied inside the clipped
        vector and undone after the noise: a factor below 1 gives that array (e.g. the
        item biases, which dominate a client's update norm) less of the clip budget
        and proportionally more noise. Post-processing: the release is unchanged.
    adaptive
        Adaptive clipping to a quantile, or ``None`` for a fixed ``S``.
    """

    def __init__(
        self,
        *,
        noise_multiplier: float,
        clip_norm: float,
        sample_rate: float,
        n_clients: int,
        accountant: str = "rdp",
        array_scales: Sequence[float] | None = None,
        adaptive: AdaptiveClipping | None = None,
    ) -> None:
        self.release = Release(noise_multiplier, sample_rate, 1)  # validates z and q
        if not clip_norm > 0 or n_clients < 1:
            raise ConfigError(
                f"need clip norm > 0 and clients >= 1, got {clip_norm}, {n_clients}",
                where="privacy.clip_norm",
            )
        self.clip_norm, self.n_clients = float(clip_norm), int(n_clients)
        self.array_scales = None if array_scales is None else [float(s) for s in array_scales]
        self.adaptive = adaptive
        self.z_update = noise_multiplier
        if adaptive is not None:
            self.z_update = adaptive.update_noise_multiplier(noise_multiplier)
        self.account = PrivacyAccount(accountant=accountant)

    @property
    def expected_clients(self) -> float:
        """``q N``: what the noisy sum is divided by."""
        return self.release.sample_rate * self.n_clients

    def sample(self, rng: np.random.Generator) -> npt.NDArray[np.int64]:
        """Indices (into the ``N`` clients) of a Poisson cohort drawn with secret ``rng``."""
        mask = poisson_mask(self.n_clients, self.release.sample_rate, rng)
        return np.flatnonzero(mask).astype(np.int64)

    def would_exceed(self, target_epsilon: float | None, delta: float) -> bool:
        """Whether one more round would take the run's epsilon above ``target_epsilon``."""
        if target_epsilon is None:
            return False
        return self.account.after(self.release).epsilon(delta) > target_epsilon

    def aggregate(
        self,
        global_items: Sequence[npt.NDArray[np.floating]],
        client_items: Sequence[Sequence[npt.NDArray[np.floating]]],
        rng: np.random.Generator,
    ) -> Arrays:
        """The noisy mean update of one round; records the round's release.

        An empty cohort still releases pure noise and still costs one step.
        Returns the arrays ``mean_delta`` to hand to the server optimizer as the
        pseudo-gradient (e.g. ``optimizer.step(global, [global + mean_delta])``).
        """
        scales = self.array_scales or [1.0] * len(global_items)
        clipped, unclipped = [], []
        for client in client_items:
            delta = [(c - g) * s for c, g, s in zip(client, global_items, scales, strict=True)]
            update, norm = clip_update(delta, self.clip_norm)
            clipped.append(update)
            unclipped.append(norm <= self.clip_norm)
        noisy = noisy_mean(
            clipped,
            noise_multiplier=self.z_update,
            clip_norm=self.clip_norm,
            expected_clients=self.expected_clients,
            rng=rng,
            shapes=[tuple(g.shape) for g in global_items],
        )
        if self.adaptive is not None:
            self.clip_norm = self.adaptive.next_clip_norm(
                self.clip_norm, unclipped, expected_clients=self.expected_clients, rng=rng
            )
        self.account.record_release(self.release)
        return [(n / s).astype(np.float32) for n, s in zip(noisy, scales, strict=True)]

    def state_dict(self) -> dict[str, Any]:
        """``{"account": ..., "clip_norm": ...}``: JSON-ready, restores exactly."""
        return {"account": self.account.to_json(), "clip_norm": self.clip_norm}

    def load_state_dict(self, state: Mapping[str, Any]) -> None:
        """Restore the accounting and the clip norm written by :meth:`state_dict`."""
        self.account = PrivacyAccount.from_json(dict(state["account"]))
        self.clip_norm = float(state["clip_norm"])
