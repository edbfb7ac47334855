"""Build a run's DP-FedAvg mechanism from its settings (shared by server and loop).

Design rule: the Flower wrapper (:mod:`server.central_dp`) and the Flower-free loop
(:mod:`fedrec.federated.loop`) build the mechanism with the same function, so both
calibrate the same noise multiplier, sample at the same rate and clip the same vector.
The sample rate is ``q = min(1, K / N)`` over the ``N`` users that can be sampled
(those with train items); the noise multiplier is either given or calibrated with an
Opacus accountant so that ``rounds`` releases ``(z, q, 1)`` stay within the target
epsilon (:func:`fedrec.privacy.accounting.calibrate_noise`).
"""

from __future__ import annotations

import dataclasses

from fedrec.errors import ConfigError
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import model_class
from fedrec.privacy.accounting import calibrate_noise, default_delta
from fedrec.privacy.central import AdaptiveClipping, DPFedAvg
from fedrec.privacy.config import PrivacyConfig

BIT_NOISE_PER_CLIENT = 1 / 20
"""Adaptive clipping's count noise ``sigma_b = q N / 20`` (Andrew et al. 2021, Sec. 4)."""


def resolve_privacy(
    privacy: PrivacyConfig,
    *,
    n_users: int,
    n_clients: int,
    clients_per_round: int,
    rounds: int,
    model: ModelConfig,
    train: LocalTrainConfig,
) -> PrivacyConfig:
    """``privacy`` with ``delta`` and the noise multiplier filled in.

    ``delta`` defaults to :func:`default_delta` of the number of users. A missing
    noise multiplier is calibrated to ``target_epsilon``: in central mode for
    ``rounds`` releases at ``q = min(1, clients_per_round / n_clients)``; in local mode
    by :func:`fedrec.federated.private.local_noise_multiplier` for a client's planned
    participation. Idempotent.
    """
    if not privacy.enabled:
        return privacy
    delta = privacy.delta if privacy.delta is not None else default_delta(n_users)
    privacy = dataclasses.replace(privacy, delta=delta)
    if privacy.mode == "distributed":  # planned per run (fedrec.privacy.distributed)
        return privacy
    if privacy.noise_multiplier is not None:
        return privacy
    assert privacy.target_epsilon is not None  # PrivacyConfig guarantees a budget or a z
    q_clients = sample_rate(n_clients, clients_per_round)
    if privacy.mode == "local":
        from fedrec.federated.private import local_noise_multiplier  # lazy: import cycle

        z_local = local_noise_multiplier(
            privacy, model, train, rounds=rounds, client_sample_rate=q_clients
        )
        return dataclasses.replace(privacy, noise_multiplier=z_local)
    z = calibrate_noise(
        target_epsilon=privacy.target_epsilon,
        delta=delta,
        sample_rate=q_clients,
        steps=rounds,
        accountant=privacy.accountant,
    )
    return dataclasses.replace(privacy, noise_multiplier=z)


def sample_rate(n_clients: int, clients_per_round: int) -> float:
    """``q = min(1, K / N)``."""
    if n_clients < 1:
        raise ConfigError("no user has train items", where="data", fix="check the data set")
    return min(1.0, clients_per_round / n_clients)


def make_dp_fedavg(
    privacy: PrivacyConfig, model: ModelConfig, *, n_clients: int, clients_per_round: int
) -> DPFedAvg:
    """The DP-FedAvg mechanism of a resolved central ``privacy`` (see :func:`resolve_privacy`)."""
    if privacy.mode != "central" or privacy.noise_multiplier is None:
        raise ConfigError(
            "DP-FedAvg needs central mode with a noise multiplier",
            where="privacy",
            fix="resolve the privacy settings first (resolve_privacy)",
        )
    q = sample_rate(n_clients, clients_per_round)
    adaptive = None
    if privacy.adaptive_clipping:
        # sigma_b must exceed z / 2 (AdaptiveClipping.update_noise_multiplier)
        sigma_b = max(q * n_clients * BIT_NOISE_PER_CLIENT, privacy.noise_multiplier)
        adaptive = AdaptiveClipping(bit_noise_std=sigma_b)
    facts = model_class(model.kind)
    return DPFedAvg(
        noise_multiplier=privacy.noise_multiplier,
        clip_norm=privacy.clip_norm,
        sample_rate=q,
        n_clients=n_clients,
        accountant=privacy.accountant,
        array_scales=[
            privacy.bias_scale if name in facts.BIAS_PARAMETERS else 1.0 for name in facts.ITEM_SIDE
        ],
        adaptive=adaptive,
    )
