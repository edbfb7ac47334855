"""The outcome of an attack, and the options of an audit.

Design rule: an attack's ``audit.json`` entry always has the same keys (``attack``,
``auc``, ``precision_at_k``, ``epsilon_lower_bound``, ``epsilon_accounted``,
``clients_audited``); a bound is ``null`` when the attack does not target the run's
privacy unit, and ``epsilon_accounted`` is ``null`` for mode ``none``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import FloatArray, precision_at_k, roc_auc
from fedrec.audit.lower_bound import LowerBound

AUDIT_ROUND = 1_000_003
"""The ``round`` part of a regenerated upload's public seed."""
Items = Mapping[int, npt.NDArray[np.int64]]


@dataclass
class AttackResult:
    """One attack's outcome; :meth:`to_json` is its ``audit.json`` entry."""

    attack: str
    sees: str
    auc: float
    precision_at_k: float | None
    clients_audited: int
    epsilon_accounted: float | None
    epsilon_lower_bound: float | None = None
    epsilon_release: float | None = None
    bound: LowerBound | None = None
    note: str = ""
    scores: FloatArray = field(default_factory=lambda: np.zeros(0))
    labels: npt.NDArray[np.bool_] = field(default_factory=lambda: np.zeros(0, dtype=bool))

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {
            "attack": self.attack,
            "sees": self.sees,
            "auc": _num(self.auc),
            "precision_at_k": _num(self.precision_at_k),
            "epsilon_lower_bound": _num(self.epsilon_lower_bound),
            "epsilon_accounted": _num(self.epsilon_accounted),
            "epsilon_release": _num(self.epsilon_release),
            "clients_audited": self.clients_audited,
        }
        if self.bound is not None:
            b = self.bound
            out["test"] = {"threshold": b.threshold, "tpr": b.tpr, "fpr": b.fpr,
                           "members": b.members, "nonmembers": b.nonmembers,
                           "alpha": b.alpha, "delta": b.delta}  # fmt: skip
        if self.note:
            out["note"] = self.note
        return out


def _num(x: float | None) -> float | None:
    return None if x is None or not math.isfinite(x) else float(x)


@dataclass(frozen=True)
class AuditOptions:
    """Sizes and seeds of an audit (all public)."""

    shadow_clients: int = 30
    release_trials: int = 10
    alpha: float = 0.05
    seed: int = 0


def item_inference(
    per_user: list[tuple[FloatArray, npt.NDArray[np.int64]]],
) -> tuple[float, float, FloatArray, npt.NDArray[np.bool_]]:
    """Mean AUC and precision@|items| over users, and the pooled scores and labels."""
    aucs, precs, all_s, all_y = [], [], [], []
    for scores, items in per_user:
        y = np.zeros(len(scores), dtype=bool)
        y[items] = True
        aucs.append(roc_auc(scores, y))
        precs.append(precision_at_k(scores, y, len(items)))
        all_s.append(scores)
        all_y.append(y)
    return (
        float(np.nanmean(aucs)),
        float(np.mean(precs)),
        np.concatenate(all_s),
        np.concatenate(all_y),
    )
