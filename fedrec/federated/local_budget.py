"""Refuse, before it starts, a local-DP run in which no client can afford one round.

Under local DP a device checks its budget before every round and refuses a round it
cannot afford (:func:`fedrec.federated.private.private_round`). If even the cheapest
first round of any client costs more than the budget, every client refuses every
round, and the run would end with an untrained model, a refusal per sampled client
and epsilon 0. What a round spends is a function of public quantities only (the
settings and a device's number of privacy units,
:func:`fedrec.federated.private.planned_releases`), so this is known up front, from the
same plan and the same Opacus accountant the devices use.
"""

from __future__ import annotations

import math
from collections.abc import Iterable

from fedrec.errors import ConfigError
from fedrec.federated.private import planned_releases, privacy_units, projected_epsilon
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.config import PrivacyConfig


def cheapest_first_round(
    privacy: PrivacyConfig, model: ModelConfig, train: LocalTrainConfig, n_train: Iterable[int]
) -> tuple[float, int]:
    """The smallest epsilon a client's first round spends, and that client's train size.

    ``privacy`` must be resolved (noise multiplier and delta). Every distinct number of
    privacy units is planned (the cost is not monotone in it: more units mean a lower
    sampling rate but more steps); Opacus's RDP accountant takes about 0.1 ms each.
    """
    z, delta = privacy.noise_multiplier, privacy.delta
    if z is None or delta is None:
        raise ConfigError(
            "the privacy settings are not resolved", where="privacy", fix="resolve them first"
        )
    by_units: dict[int, int] = {}
    for n in sorted({int(n) for n in n_train if n > 0}, reverse=True):
        by_units.setdefault(privacy_units(model, n), n)
    best = (math.inf, 0)
    for n in by_units.values():
        releases = planned_releases(model, train, z, n, first=True)
        epsilon = projected_epsilon(PrivacyAccount(accountant=privacy.accountant), releases, delta)
        best = min(best, (epsilon, n))
    return best


def check_first_round_affordable(
    privacy: PrivacyConfig, model: ModelConfig, train: LocalTrainConfig, n_train: Iterable[int]
) -> None:
    """Raise :class:`ConfigError` when no client of a local-DP run can afford one round.

    ``n_train``: each client's number of train interactions. A run that is not local
    DP, or has no per-client budget, passes.
    """
    if privacy.mode != "local" or privacy.target_epsilon is None:
        return
    epsilon, n = cheapest_first_round(privacy, model, train, n_train)
    if epsilon <= privacy.target_epsilon:
        return
    client = f"a client with {n} train interactions" if n else "no client has train data"
    raise ConfigError(
        f"no client can afford a single round under local DP: the cheapest first round "
        f"({client}) spends epsilon {epsilon:.3g} at delta {privacy.delta:.3g}, above the "
        f"per-client budget {privacy.target_epsilon:g}; every client would refuse every "
        f"round and the model would stay untrained",
        where="--target-epsilon / --noise-multiplier",
        fix="raise --target-epsilon, raise --noise-multiplier (or omit it to calibrate it "
        "to the budget), or train fewer local epochs per round",
    )
