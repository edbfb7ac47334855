"""The server's privacy book-keeping for one run: none, local or central.

Design rule: the server resolves the privacy settings once (delta, and in central
mode the calibrated noise multiplier: :func:`fedrec.privacy.central_setup.resolve_privacy`),
wraps the strategy in :class:`server.central_dp.CentralDPStrategy` in central mode,
and after every round reports the epsilon spent so far and rewrites ``privacy.json``
(:mod:`fedrec.privacy.report`) from state that the checkpoint also holds: the
DP-FedAvg accountant history (central) or each client's latest privacy statement
(local: the history of its device ledger, sent with its reply). A resumed run
restores that state exactly; no noise is replayed and nothing is spent twice.
"""

from __future__ import annotations

import dataclasses
import statistics
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.split import Split
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.central_setup import make_dp_fedavg, resolve_privacy, sample_rate
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import (
    UNITS,
    central_report,
    local_report,
    none_report,
    write_privacy_json,
)
from server.central_dp import CentralDPStrategy, FedrecStrategy
from server.settings import RunSettings

PRIVACY_JSON = "privacy.json"


def eligible_users(split: Split) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Users with train items: the only ones ever sampled."""
    return np.flatnonzero(np.diff(split.train.indptr) > 0).astype(np.int64)


def resolve_settings(settings: RunSettings, split: Split) -> RunSettings:
    """``settings`` with delta (and central z) filled in; idempotent."""
    privacy = resolve_privacy(
        settings.privacy,
        n_users=split.n_users,
        n_clients=len(eligible_users(split)),
        clients_per_round=settings.clients_per_round,
        rounds=settings.rounds,
        model=settings.model,
        train=settings.train,
    )
    return dataclasses.replace(settings, privacy=privacy)


class RunPrivacy:
    """Privacy state of a run on the server (``settings`` must be resolved)."""

    def __init__(self, settings: RunSettings, split: Split, strategy: FedrecStrategy) -> None:
        self.settings, self.split, self.inner = settings, split, strategy
        self.mode = settings.privacy.mode
        self.delta = settings.privacy.delta
        self.strategy: FedrecStrategy | CentralDPStrategy = strategy
        self.central: CentralDPStrategy | None = None
        if self.mode == "central":
            n = len(strategy.plan.eligible)
            mechanism = make_dp_fedavg(
                settings.privacy, settings.model, n_clients=n,
                clients_per_round=settings.clients_per_round,
            )  # fmt: skip
            assert self.delta is not None
            self.central = CentralDPStrategy(
                strategy,
                mechanism,
                rng=secure_rng(settings.privacy.insecure_noise_seed),
                target_epsilon=settings.privacy.target_epsilon,
                delta=self.delta,
            )
            self.strategy = self.central

    def client_extras(self) -> dict[str, int | float]:
        """What a local-DP client needs to plan its budget (sent in every config)."""
        n = len(self.inner.plan.eligible)
        q = sample_rate(n, self.settings.clients_per_round) if n else 1.0
        return {"num-server-rounds": self.settings.rounds, "privacy.client-sample-rate": q}

    def restore(self, state: dict[str, Any] | None, start_round: int) -> None:
        """Restore the state of :meth:`state` (from a checkpoint at ``start_round``)."""
        if state is None:
            return
        if self.central is not None:
            self.central.mechanism.load_state_dict(state)
            seed = self.settings.privacy.insecure_noise_seed
            if seed is not None:  # TESTS ONLY: do not replay round 1's noise after a resume
                self.central.rng = secure_rng(seed + 1_000_003 * start_round)
        elif self.mode == "local":
            self.inner.statements = {int(u): s for u, s in state["clients"].items()}

    def state(self) -> dict[str, Any] | None:
        """JSON-ready privacy state for the checkpoint (``None`` without privacy)."""
        if self.central is not None:
            return self.central.mechanism.state_dict()
        if self.mode == "local":
            return {"clients": {str(u): s for u, s in self.inner.statements.items()}}
        return None

    def stop_reason(self, server_round: int) -> str | None:
        """Why round ``server_round`` must not run (central budget), else ``None``."""
        if self.central is None or not self.central.would_exceed():
            return None
        return (
            f"stopped before round {server_round}: one more round would take epsilon from "
            f"{self.central.epsilon():.4f} past the target {self.settings.privacy.target_epsilon} "
            f"(delta={self.delta})"
        )

    def epsilon(self) -> float | dict[str, float] | None:
        """Epsilon so far: the run's (central), median/max over clients (local), or None."""
        if self.central is not None:
            return self.central.epsilon()
        if self.mode == "local":
            values = [float(s["epsilon"]) for s in self.inner.statements.values()]
            if not values:
                return {"median": 0.0, "max": 0.0}
            return {"median": statistics.median(values), "max": max(values)}
        return None

    def report(self) -> dict[str, Any]:
        """The run's ``privacy.json`` (:mod:`fedrec.privacy.report`)."""
        if self.central is not None:
            assert self.delta is not None
            out = central_report(self.central.mechanism.account, delta=self.delta)
            out["noise_multiplier"] = self.central.mechanism.release.noise_multiplier
            out["clip_norm"] = self.central.mechanism.clip_norm
            out["target_epsilon"] = self.settings.privacy.target_epsilon
        elif self.mode == "local":
            assert self.delta is not None
            out = self._local_report()
        else:
            return none_report()
        out["insecure_noise_seed"] = self.settings.privacy.insecure_noise_seed
        return out

    def _local_report(self) -> dict[str, Any]:
        accountant = self.settings.privacy.accountant
        ids = self.split.data.user_ids
        clients = {
            str(ids[u]): (PrivacyAccount.from_history(s["history"], accountant=accountant),
                          int(s["rounds"]))
            for u, s in sorted(self.inner.statements.items())
        }  # fmt: skip
        unit = UNITS["local-mf" if self.settings.model.kind == "mf" else "local-ae"]
        assert self.delta is not None
        out = local_report(clients, delta=self.delta, accountant=accountant, unit=unit)
        out["target_epsilon"] = self.settings.privacy.target_epsilon
        return out

    def write(self, run_dir: Path) -> None:
        """(Re)write ``run_dir/privacy.json``."""
        write_privacy_json(run_dir / PRIVACY_JSON, self.report())
