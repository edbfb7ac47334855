"""Assemble and verify ``privacy.json``, a run's privacy statement.

Design rule: every epsilon in ``privacy.json`` sits next to the history it was computed
from, so :func:`verify_privacy_json` can recompute each one with a fresh Opacus
accountant from the file alone (the acceptance check: within 1%).

Layout::

    {"format": "fedrec-privacy", "version": 1,
     "mode": "none" | "local" | "central", "delta": float | null,
     "accountant": "rdp" | "prv" | null, "unit": str | null,
     "epsilon": float | null,   # central: the amplified one; local: the largest client
     "history": [[z, q, steps], ...],                                    # central
     "epsilon_valid_only_if": str,                                       # central
     "worst_case_user": {"epsilon", "history": [[z, 1.0, rounds]],       # central
                         "rounds_joined", "note"},
     "clients": {user_id: {"epsilon", "rounds_participated", "history"}},  # local, simulation
     "ledgers": "simulation: ..." | "on the devices: ...",               # local
     "other_releases": [{"name", "history", "epsilon", "note"}, ...],
     "not_protected": [str, ...]}

Central mode states two numbers. ``epsilon`` is amplified by the secret Poisson
sampling of the cohorts and holds only while nobody but the trusted server learns who
was sampled. ``worst_case_user`` is what a user spent when the cohorts are known: the
same Gaussian mechanism without amplification (``q = 1``) over the rounds that user's
update joined, for the user who joined most. In local mode a simulation lists every
device's ledger (read from the devices by the harness); a deployment states the
per-client budget each device enforces, because the exact ledgers stay on the devices.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from fedrec.data.atomic import atomic_write_bytes
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
LOCAL_UNITS = {"interaction": UNITS["local-mf"], "user": UNITS["local-ae"]}
"""A model class's ``LOCAL_DP_UNIT`` -> the unit in words (``privacy.json``)."""


def local_unit(kind: str) -> str:
    """What ``--privacy local`` protects for model ``kind``, in words."""
    from fedrec.models.registry import model_class

    unit = model_class(kind).LOCAL_DP_UNIT
    if unit is None:
        raise ValueError(f"model {kind!r} has no local-DP unit (local DP is refused for it)")
    return LOCAL_UNITS[unit]


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


SECRET_COHORTS = "the cohorts stay secret from everyone but the trusted server"
"""The condition of central mode's amplified epsilon."""


def worst_case_user(
    noise_multiplier: float, rounds_joined: int, *, delta: float, accountant: str
) -> dict[str, Any]:
    """Central mode's per-user epsilon without amplification by sampling.

    The history is ``[[z, 1.0, rounds_joined]]``: the Gaussian mechanism at ``q = 1``
    over the rounds the user's update joined (docs/PRIVACY.md, central assumption 1).
    """
    account = PrivacyAccount(accountant=accountant)
    if rounds_joined > 0:
        account.record(noise_multiplier, 1.0, int(rounds_joined))
    return {
        "epsilon": account.epsilon(delta),
        "history": account.history,
        "rounds_joined": int(rounds_joined),
        "note": (
            "the largest epsilon of any user if the cohorts were known: q = 1 over the "
            "rounds that user's update joined (the most any user joined)"
        ),
    }


def central_report(
    account: PrivacyAccount,
    *,
    delta: float,
    worst_case: Mapping[str, Any] | None = None,
    other_releases: Sequence[Mapping[str, Any]] = (),
) -> dict[str, Any]:
    """``privacy.json`` for a central run from the server's account.

    ``worst_case`` (:func:`worst_case_user`) is added for a mechanism with secret
    sampling (DP-FedAvg); a release over every user (``q = 1``) needs none.
    """
    out = _base("central", delta, account.accountant, UNITS["central"])
    out.update(epsilon=account.epsilon(delta), history=account.history, clients={})
    if worst_case is not None:
        out["epsilon_valid_only_if"] = SECRET_COHORTS
        out["worst_case_user"] = dict(worst_case)
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
    out["ledgers"] = LEDGERS_SIMULATED
    out["not_protected"] = [*NOT_PROTECTED, LOCAL_TIMING]
    return out


LEDGERS_SIMULATED = (
    "simulation: each device's own ledger, read from its store by the harness that owns "
    "the simulated devices (no reply carries it)"
)
LEDGERS_ON_DEVICES = (
    "on the devices: each device enforces the per-client budget with its own ledger; the "
    "exact ledgers never leave the devices"
)
LOCAL_TIMING = (
    "the round at which a device stops for a spent budget (with mini-batches it depends "
    "on the device's number of examples)"
)


def local_budget_report(
    *, target_epsilon: float | None, delta: float, accountant: str, unit: str
) -> dict[str, Any]:
    """``privacy.json`` of a deployed local-DP run: the budget each device enforces.

    ``epsilon`` is the per-client target (``None``: no budget was set); no per-client
    history is listed because the ledgers stay on the devices.
    """
    out = _base("local", delta, accountant, unit)
    out.update(epsilon=target_epsilon, history=[], clients={}, other_releases=[])
    out["epsilon_is"] = "the per-client budget every device enforces (an upper bound)"
    out["ledgers"] = LEDGERS_ON_DEVICES
    out["not_protected"] = [*NOT_PROTECTED, LOCAL_TIMING]
    return out


def write_privacy_json(path: str | Path, report: Mapping[str, Any]) -> None:
    """Write ``report`` atomically (temp file, fsync, rename), 0600 under any umask: its
    per-client statements describe the users (the ServerApp of ``flwr run`` and library
    callers run without ``fedrec simulate``'s umask)."""
    text = json.dumps(report, indent=2, sort_keys=True)
    atomic_write_bytes(Path(path), text.encode("utf-8"))


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
    modes = ("none", "local", "central", "distributed")
    if data.get("format") != FORMAT or data.get("mode") not in modes:
        return [f"{path}: not a fedrec privacy report"]
    if data["mode"] == "none":
        return [] if data.get("epsilon") is None else ["mode none must state no epsilon"]
    if data["mode"] == "distributed":  # Skellam RDP from the recorded plan and survivors
        from fedrec.privacy.distributed import epsilon_from_record

        again = epsilon_from_record(data["distributed"])
        if math.isclose(float(data["epsilon"]), again, rel_tol=TOLERANCE, abs_tol=1e-9):
            return []
        return [f"run: stated epsilon {data['epsilon']} != recomputed {again:.6g}"]
    delta, accountant = float(data["delta"]), str(data["accountant"])
    problems: list[str] = []
    if data["mode"] == "central":
        problems += _mismatch("run", data.get("epsilon"), data["history"], delta, accountant)
        worst = data.get("worst_case_user")
        if worst is not None:
            problems += _mismatch(
                "worst-case user", worst.get("epsilon"), worst["history"], delta, accountant
            )
            entries = worst["history"]
            if any(float(e[1]) != 1.0 for e in entries) or sum(int(e[2]) for e in entries) != int(
                worst["rounds_joined"]
            ):
                problems.append("worst-case user: history is not q = 1 over the rounds joined")
    elif data.get("ledgers") == LEDGERS_ON_DEVICES:
        if data["clients"]:
            problems.append("a deployment's privacy.json lists no per-client ledger")
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
