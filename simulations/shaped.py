"""Apply the data-shaped defaults (:mod:`fedrec.federated.shape`) to a run's settings.

Only what the user left unset changes: ``--rounds``, ``--clients-per-round`` and the
``--set model.*`` fields the rules cover. Private runs keep their own round count (each
round spends budget, and the noise is calibrated to it).
"""

from __future__ import annotations

import argparse
import dataclasses
from typing import Any

from fedrec.data.split import Split
from fedrec.federated.shape import DataShape, shaped_defaults
from server.settings import RunSettings


def apply_shape_defaults(
    settings: RunSettings, split: Split, args: argparse.Namespace
) -> tuple[RunSettings, list[str]]:
    """``settings`` with the shaped defaults filled in, and the reasons for each one used."""
    if settings.privacy.enabled:
        return settings, []
    shaped = shaped_defaults(settings.model.kind, DataShape.of_train(split.train))
    if shaped is None:
        return settings, []
    given_sets = {item.partition("=")[0].strip() for item in getattr(args, "set", None) or []}
    reasons = []
    changes: dict[str, object] = {}
    if getattr(args, "rounds", None) is None and getattr(args, "clients_per_round", None) is None:
        changes.update(rounds=shaped.rounds, clients_per_round=shaped.clients_per_round)
        reasons.append(shaped.reasons[0])
    model: dict[str, Any] = {
        k: v for k, v in shaped.model.items() if f"model.{k}" not in given_sets
    }
    if model:
        changes["model"] = dataclasses.replace(settings.model, **model)
        reasons += list(shaped.reasons[1:])
    return dataclasses.replace(settings, **changes), reasons  # type: ignore[arg-type]
