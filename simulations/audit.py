"""Audit a run directory: regenerate what its adversary sees, attack it, write audit.json.

Design rule: the audit reads the run's own files (``config.json`` for the settings,
``checkpoint.npz`` for the final global item arrays, ``privacy.json`` for the
accounted epsilon) and re-runs, for a seeded sample of users, one round of the run's
own client code (:mod:`fedrec.audit.regenerate`). Uploads are *regenerated*, with
fresh secret noise, never replayed from logs: the run directory does not store them.
``audit.json`` holds one entry per attack; ``audit_roc.png`` sits beside it, and
``fedrec report`` shows both when ``audit.json`` is in the run directory.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt
import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import roc_curve
from fedrec.audit.regenerate import AuditTarget
from fedrec.audit.results import AttackResult, AuditOptions
from fedrec.audit.runner import audit_run, unit_sensitivity
from fedrec.data.split import Split
from fedrec.errors import ConfigError, DataError
from fedrec.privacy.central_setup import resolve_privacy
from server.checkpoint import atomic_write_json, load_checkpoint
from server.gram_settings import is_gram_run
from server.settings import RunSettings, load_split
from simulations.run_dir import resume_settings

AUDIT_JSON = "audit.json"
ROC_PNG = "audit_roc.png"
REGENERATED = (
    "Uploads and releases are REGENERATED, not replayed: for each audited user the audit "
    "re-runs one round of the run's own client code (client_fit, or client_fit_private in "
    "local mode) with the recorded settings, from the run's final global item arrays, as at "
    "the user's first participation, with fresh secret DP noise (never the run's noise); "
    "central releases go through the run's own DP-FedAvg mechanism."
)


def load_target(run_dir: Path) -> tuple[RunSettings, Split, AuditTarget]:
    """The run's settings, split and :class:`AuditTarget` (final global items)."""
    refuse_gram_run(run_dir)
    settings = resume_settings(run_dir)
    split = load_split(settings)
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise DataError(
            "run has no checkpoint (no finished round)", where=str(run_dir), fix="run it first"
        )
    n_clients = int(np.sum(np.diff(split.train.indptr) > 0))
    privacy = resolve_privacy(
        settings.privacy,
        n_users=split.n_users,
        n_clients=n_clients,
        clients_per_round=settings.clients_per_round,
        rounds=settings.rounds,
        model=settings.model,
        train=settings.train,
    )
    target = AuditTarget(
        settings.model, settings.train, privacy, ckpt.item_arrays, n_clients,
        settings.clients_per_round,
    )  # fmt: skip
    return settings, split, target


def refuse_gram_run(run_dir: Path) -> None:
    """Raise :class:`ConfigError` for a one-shot federated-EASE run: it has no training
    round to regenerate (:func:`run_audit` audits it with :mod:`simulations.audit_gram`)."""
    if is_gram_run(run_dir):
        raise ConfigError(
            "a one-shot federated-EASE (Gram) run has no DP-SGD / DP-FedAvg round to regenerate",
            where=f"{run_dir / 'config.json'}: model = ease",
            fix="audit it with run_audit (fedrec audit), which attacks its Gram uploads",
        )


def accounted_epsilon(run_dir: Path) -> float | None:
    """``privacy.json``'s epsilon (``None`` without DP or without the file)."""
    path = run_dir / "privacy.json"
    if not path.is_file():
        return None
    value = json.loads(path.read_text(encoding="utf-8")).get("epsilon")
    return None if value is None else float(value)


def audited_users(split: Split, n: int, seed: int) -> npt.NDArray[np.int64]:
    """A seeded sample of ``n`` users with at least 2 train items (a canary needs one left)."""
    sizes = np.diff(split.train.indptr)
    pool = np.flatnonzero(sizes >= 2)
    n = min(n, len(pool))
    rng = np.random.default_rng([seed, 0xA0D1])
    return np.sort(rng.choice(pool, size=n, replace=False)).astype(np.int64)


def run_audit(run_dir: Path, out: Path, *, clients: int, opts: AuditOptions) -> dict[str, Any]:
    """Audit ``run_dir``; write ``out`` (audit.json) and its ROC plot; return the payload.

    A federated-EASE run (any mode) is audited by :mod:`simulations.audit_gram`: item
    inference on what its server receives (masked SecAgg+ uploads under distributed DP).
    """
    if is_gram_run(run_dir):
        from simulations.audit_gram import audit_gram_run

        payload, results = audit_gram_run(
            run_dir, clients=clients, opts=opts, eps_accounted=accounted_epsilon(run_dir)
        )
        out.parent.mkdir(parents=True, exist_ok=True)
        atomic_write_json(out, payload)
        plot_rocs(results, out.parent / ROC_PNG)
        return payload
    settings, split, target = load_target(run_dir)
    users = audited_users(split, clients, opts.seed)
    train = {int(u): split.train_items(int(u)) for u in users}
    test = {int(u): split.test_items(int(u)) for u in users}
    results = audit_run(target, train, test, eps_accounted=accounted_epsilon(run_dir), opts=opts)
    sensitivity = unit_sensitivity(target, train, opts)
    payload = {
        "format": "fedrec-audit",
        "version": 1,
        "run_dir": str(run_dir),
        "mode": target.mode,
        "model": settings.model.kind,
        "delta": target.privacy.delta,
        "rounds_run": load_checkpoint(run_dir).round,  # type: ignore[union-attr]
        "clients_audited": len(users),
        "options": dataclasses.asdict(opts),
        "regenerated": REGENERATED,
        "attacks": [r.to_json() for r in results],
        # local-DP MF: one interaction's largest change of the clipped sum / clip norm
        "unit_sensitivity": None if sensitivity is None else sensitivity.to_json(),
    }
    out.parent.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out, payload)
    plot_rocs(results, out.parent / ROC_PNG)
    return payload


def plot_rocs(results: list[AttackResult], path: Path) -> None:
    """One ROC curve per attack, with the diagonal."""
    fig, ax = plt.subplots(figsize=(5.5, 5))
    for r in results:
        if len(r.scores) == 0:
            continue
        fpr, tpr = roc_curve(r.scores, r.labels)
        keep = np.unique(np.linspace(0, len(fpr) - 1, min(len(fpr), 800)).astype(int))
        ax.plot(fpr[keep], tpr[keep], label=f"{r.attack} (AUC {r.auc:.3f})")
    ax.plot([0, 1], [0, 1], linestyle=":", color="gray")
    ax.set_xlabel("false positive rate")
    ax.set_ylabel("true positive rate")
    ax.set_title(
        "Privacy audit: ROC (pooled over clients; legend: mean per-client AUC)", fontsize=9
    )
    ax.legend(fontsize=7, loc="lower right")
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
