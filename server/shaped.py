"""The data-shaped defaults (:mod:`fedrec.federated.shape`) applied to a run's settings.

One rule for every way a run starts: ``fedrec simulate`` (what its command line set,
:mod:`simulations.shaped`) and the ``ServerApp`` under ``flwr run`` (the keys of its run
config, :func:`server.server_app.main`). Only what was not given changes:

- neither ``num-server-rounds`` nor ``clients-per-round`` given: both shaped;
- ``clients-per-round`` given alone: the rounds for the same passes over the users at
  that cohort size (pyproject's ``[tool.flwr.app.config]`` sets it to 100);
- ``num-server-rounds`` given: the rounds stay as given, and the cohort size as given,
  or the model's own (SASRec's 33, ``ShapedDefaults.own_cohort``), or the preset;
- a shaped model or server field (iALS's ``model.alpha0``, its ``server.server-lr`` on
  dense data) given: it stays (a shaped server rate also needs the preset's strategy).

Private runs keep their own rounds (each round spends budget and the noise is
calibrated to the round count); under ``--privacy central`` a model whose preset asks
for it (iALS) puts every user in every round unless ``clients-per-round`` is given
(:func:`fedrec.federated.presets.central_clients_per_round`).
"""

from __future__ import annotations

import dataclasses
from collections.abc import Collection
from typing import Any

import numpy as np

from fedrec.data.split import Split
from fedrec.federated.presets import central_clients_per_round, federated_preset
from fedrec.federated.shape import DataShape, rounds_at, rounds_reason, shaped_defaults
from server.settings import RunSettings

ROUNDS_KEY = "num-server-rounds"
CLIENTS_KEY = "clients-per-round"


def apply_shaped_defaults(
    settings: RunSettings, split: Split, given: Collection[str]
) -> tuple[RunSettings, list[str]]:
    """``settings`` with the shaped defaults of what ``given`` (flat run-config keys such
    as ``num-server-rounds`` or ``model.alpha0``) leaves unset, and the reasons used."""
    if settings.privacy.enabled:
        return _central_cohort(settings, split, given)
    shape = DataShape.of_train(split.train)
    shaped = shaped_defaults(settings.model.kind, shape)
    if shaped is None:
        return settings, []
    reasons: list[str] = []
    changes: dict[str, Any] = {}
    if ROUNDS_KEY not in given and CLIENTS_KEY not in given:
        changes.update(rounds=shaped.rounds, clients_per_round=shaped.clients_per_round)
        reasons.append(shaped.reasons[0])
    elif ROUNDS_KEY not in given:
        k = settings.clients_per_round
        changes["rounds"] = rounds_at(shape, k, shaped.passes)
        reasons.append(rounds_reason(shape, changes["rounds"], k, given=True, passes=shaped.passes))
    elif CLIENTS_KEY not in given and shaped.own_cohort is not None:
        changes["clients_per_round"] = shaped.own_cohort
        reasons.append(
            f"{shaped.own_cohort} devices per round, the model's own (the rounds were given)"
        )
    model: dict[str, Any] = {
        name: value
        for name, value in shaped.model.items()
        if f"model.{name.replace('_', '-')}" not in given
    }
    if model:
        changes["model"] = dataclasses.replace(settings.model, **model)
        reasons += [shaped.reason("model", name) for name in model]
    # the shaped rate is an Adam rate: only under the preset's strategy (FedAdam)
    server: dict[str, Any] = {
        name: value
        for name, value in shaped.server.items()
        if f"server.{name.replace('_', '-')}" not in given
    }
    if server and settings.server.strategy == federated_preset(settings.model.kind)[2].strategy:
        changes["server"] = dataclasses.replace(settings.server, **server)
        reasons += [shaped.reason("server", name) for name in server]
    return dataclasses.replace(settings, **changes), reasons


def _central_cohort(
    settings: RunSettings, split: Split, given: Collection[str]
) -> tuple[RunSettings, list[str]]:
    """A central-DP run's cohort size from its model's preset when none was given."""
    if settings.privacy.mode != "central" or CLIENTS_KEY in given:
        return settings, []
    n_clients = int(np.count_nonzero(np.diff(split.train.indptr) > 0))
    k = central_clients_per_round(settings.model.kind, n_clients)
    if k is None:
        return settings, []
    reason = (
        f"clients per round {k}: every user in every round under central DP-FedAvg for "
        f"{settings.model.kind} (q = 1, the noise on the mean is z S / {k})"
    )
    return dataclasses.replace(settings, clients_per_round=k), [reason]
