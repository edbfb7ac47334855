"""Assemble and verify ``privacy.json``, a run's privacy statement.

Design rule: every epsilon in ``privacy.json`` sits next to the history it was computed
from, so :func:`verify_privacy_json` can recompute each one with a fresh Opacus
accountant from the file alone (the acceptance check: within 1%).

Layout::

    {"format": "fedrec-privacy", "version": 1,
     "mode": "none" | "local" | "central", "delta": float | null,
     "accountant": "rdp" | "prv" | null, "unit": str | null,
     "epsilon": float | null,   # central: the run; local: the largest per client
     "history": [[z, q, steps], ...],                                    # central
     "clients": {user_id: {"epsilon", "rounds_participated", "history"}},  # local
     "other_releases": [{"name", "history", "epsilon", "note"}, ...],
     "not_protected": [str, ...]}
"""

from __future__ import annotations

import json
import math
import os
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedrec.errors import DataError
from fedrec.privacy.accounting import PrivacyAccount, epsilon_from_history

FORMAT = "fedrec-privacy"
VERSION = 1
TOLERANCE = 0.01
"""Relative tolerance of :func:`verify_privacy_json`."""

NOT_PROTECTED = (
    "participation: whether and when a client took part in a round",
    "evaluation metrics computed on clients and reported in simulation",
    "the privacy cost of hyperparameter tuning across runs",
)
UNITS = {
    "central": "one user (all of their interactions)",
    "local-mf": "one interaction (a positive with its sampled negatives)",
    "local-ae": "one user's whole interaction vector, per device",
}


def _base(
    mode: str, delta: float | None, accountant: str | None, unit: str | None
) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "mode": mode,
        "delta": delta,
        "accountant": accountant,
        "unit": unit,
    }


def none_report() -> dict[str, Any]:
    """``privacy.json`` for a run without DP: no guarantee (``epsilon`` is null)."""
    out = _base("none", None, None, None)
    out.update(epsilon=None, history=[], clients={}, other_releases=[])
    out["not_protected"] = ["everything: updates are released without noise"]
    return out


def other_release(name: str, account: PrivacyAccount, delta: float, note: str) -> dict[str, Any]:
    """An extra DP release (e.g. a noisy count) with its own history and epsilon."""
    return {
        "name": name,
        "accountant": account.accountant,
        "history": account.history,
        "epsilon": account.epsilon(delta),
        "note": note,
    }


def central_report(
    account: PrivacyAccount,
    *,
    delta: float,
    other_releases: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """``privacy.json`` for a central (DP-FedAvg) run from the server's account."""
    out = _base("central", delta, account.accountant, UNITS["central"])
    out.update(epsilon=account.epsilon(delta), history=account.history, clients={})
    out["other_releases"] = [dict(r) for r in other_releases]
    out["not_protected"] = list(NOT_PROTECTED)
    return out


def local_report(
    clients: Mapping[str, tuple[PrivacyAccount, int]],
    *,
    delta: float,
    accountant: str,
    unit: str,
    other_releases: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """``privacy.json`` for a local-DP run from each client's ``(account, rounds)``."""
    out = _base("local", delta, accountant, unit)
    per_client: dict[str, dict[str, Any]] = {
        str(user): {
            "epsilon": acc.epsilon(delta),
            "rounds_participated": int(rounds),
            "history": acc.history,
        }
        for user, (acc, rounds) in clients.items()
    }
    out["epsilon"] = max((float(c["epsilon"]) for c in per_client.values()), default=0.0)
    out.update(history=[], clients=per_client, other_releases=[dict(r) for r in other_releases])
    out["not_protected"] = [*NOT_PROTECTED, "each client's number of examples (sets q, steps)"]
    return out


def write_privacy_json(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` atomically (temp file, fsync, rename)."""
    target = Path(path)
    tmp = target.with_name(target.name + ".tmp")
    with open(tmp, "w") as f:
        json.dump(report, f, indent=2, sort_keys=True)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, target)


def _mismatch(where: str, stated: Any, history: Any, delta: float, accountant: str) -> list[str]:
    if stated is None:
        return [f"{where}: epsilon missing"]
    recomputed = epsilon_from_history(history, delta, accountant)
    if not math.isclose(float(stated), recomputed, rel_tol=TOLERANCE, abs_tol=1e-9):
        return [f"{where}: stated epsilon {stated} != recomputed {recomputed:.6g}"]
    return []


def verify_privacy_json(path: str | Path) -> list[str]:
    """Recompute every epsilon in ``privacy.json`` from its history; list mismatches.

    Returns an empty list when every stated epsilon matches a fresh Opacus
    accountant's within :data:`TOLERANCE` (relative).
    """
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, json.JSONDecodeError) as exc:
        raise DataError(f"cannot read privacy report ({exc})", where=str(path)) from exc
    if data.get("format") != FORMAT or data.get("mode") not in ("none", "local", "central"):
        return [f"{path}: not a fedrec privacy report"]
    if data["mode"] == "none":
        return [] if data.get("epsilon") is None else ["mode none must state no epsilon"]
    delta, accountant = float(data["delta"]), str(data["accountant"])
    problems: list[str] = []
    if data["mode"] == "central":
        problems += _mismatch("run", data.get("epsilon"), data["history"], delta, accountant)
    else:
        worst = 0.0
        for user, c in data["clients"].items():
            problems += _mismatch(
                f"client {user}", c.get("epsilon"), c["history"], delta, accountant
            )
            worst = max(worst, epsilon_from_history(c["history"], delta, accountant))
        if not math.isclose(float(data["epsilon"]), worst, rel_tol=TOLERANCE, abs_tol=1e-9):
            problems.append(f"run: stated epsilon {data['epsilon']} != largest client {worst:.6g}")
    for r in data.get("other_releases", []):
        if "history" in r:
            acc = str(r.get("accountant", accountant))
            problems += _mismatch(
                f"release {r.get('name')}", r.get("epsilon"), r["history"], delta, acc
            )
    return problems
