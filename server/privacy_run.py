"""The server's privacy book-keeping for one run: none, local or central.

Design rule: the server resolves the privacy settings once (delta and the calibrated
noise multiplier, central or local: :func:`fedrec.privacy.central_setup.resolve_privacy`),
wraps the strategy (:class:`server.central_dp.CentralDPStrategy` in central mode,
:class:`server.local_dp.LocalDPStrategy` in local mode), and after every round reports
the epsilon spent so far and rewrites ``privacy.json`` (:mod:`fedrec.privacy.report`).

- Central: the DP-FedAvg accountant history and, privately, how many rounds each
  user's update joined (for the worst-case per-user epsilon). Both live in the
  checkpoint and, written ahead before any noisy model leaves the server, in the
  reservation (:func:`server.checkpoint.reserve_release`); a resume charges a reserved
  release. Run files get counts only (:meth:`RunPrivacy.participation`): the cohort
  is the secret the amplified epsilon rests on.
- Local: no reply carries a ledger. In simulation the harness that owns the simulated
  devices passes a reader of their ledgers (``device_ledgers``, e.g.
  :func:`clients.sim_store.ledger_reader`), and ``privacy.json`` lists every device's
  ledger; in a deployment (no reader) it states the per-client budget every device
  enforces.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import statistics
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import numpy as np

from fedrec.data.split import Split
from fedrec.errors import StoreError
from fedrec.privacy.accounting import PrivacyAccount, Release
from fedrec.privacy.central_setup import make_dp_fedavg, resolve_privacy
from fedrec.privacy.distributed import refuse_for_model
from fedrec.privacy.ledger import Spent
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import (
    central_report,
    local_budget_report,
    local_report,
    local_unit,
    none_report,
    other_release,
    worst_case_user,
    write_privacy_json,
)
from server.central_dp import CentralDPStrategy, FedrecStrategy
from server.checkpoint import atomic_write_json, load_reservation, reserve_release
from server.local_dp import LocalDPStrategy
from server.settings import RunSettings
from server.strategies import Outcome

PRIVACY_JSON = "privacy.json"
EVAL_RELEASES_JSON = "privacy.evaluations.json"
"""Central deployments: every DP evaluation's release, written before its result."""
log = logging.getLogger("fedrec.server")

DeviceLedgers = Callable[[Iterable[int] | None], Mapping[int, Spent]]
"""Simulation only: the simulated devices' own ledger statements, by user index, for
the given users (``None``: every device); a device it cannot read now is left out."""


def eligible_users(split: Split) -> np.ndarray[Any, np.dtype[np.int64]]:
    """Users with train items: the only ones ever sampled."""
    return np.flatnonzero(np.diff(split.train.indptr) > 0).astype(np.int64)


def resolve_settings(settings: RunSettings, split: Split) -> RunSettings:
    """``settings`` with delta (and the central or local z) filled in; idempotent."""
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
    """Privacy state of a run on the server (``settings`` must be resolved).

    ``device_ledgers`` is for simulations only (see the module docstring).
    """

    def __init__(
        self,
        settings: RunSettings,
        split: Split,
        strategy: FedrecStrategy,
        *,
        device_ledgers: DeviceLedgers | None = None,
    ) -> None:
        self.settings, self.split, self.inner = settings, split, strategy
        self.mode = settings.privacy.mode
        if self.mode == "distributed":  # the Gram server (server.gram_app) handles it
            refuse_for_model(settings.model.kind)
        self.delta = settings.privacy.delta
        self.strategy: FedrecStrategy | CentralDPStrategy | LocalDPStrategy = strategy
        self.central: CentralDPStrategy | None = None
        self.device_ledgers = device_ledgers
        self.spent: dict[int, Spent] = {}  # local, simulation: each device's ledger
        self.joins: dict[int, int] = {}  # central, private: rounds each user's update joined
        # central deployment: DP evaluations' releases (append-only, never refunded)
        self.evaluations = PrivacyAccount(accountant=settings.privacy.accountant)
        self._eval_rounds: list[int] = []
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
        elif self.mode == "local":
            self.strategy = LocalDPStrategy(strategy)

    def record_evaluation(self, run_dir: Path, server_round: int, release: Release) -> None:
        """Account a central DP evaluation's release, durably, before its result is written.

        Evaluation releases go to their own append-only file (:data:`EVAL_RELEASES_JSON`,
        fsync'd, 0600), not to the checkpoint: a release that happened is never refunded,
        whatever round a resume restarts from. ``privacy.json`` lists them under
        ``other_releases`` (:meth:`report`).
        """
        self.evaluations.record_release(release)
        payload = {"rounds": [*self._eval_rounds, int(server_round)],
                   "history": self.evaluations.history}  # fmt: skip
        atomic_write_json(run_dir / EVAL_RELEASES_JSON, payload)
        self._eval_rounds.append(int(server_round))
        self.write(run_dir)

    def _load_evaluations(self, run_dir: Path) -> None:
        path = run_dir / EVAL_RELEASES_JSON
        if not path.exists():
            return
        try:
            payload = json.loads(path.read_text(encoding="utf-8"))
            account = PrivacyAccount.from_history(
                payload["history"], accountant=self.settings.privacy.accountant
            )
            rounds = [int(r) for r in payload["rounds"]]
        except (OSError, ValueError, KeyError, TypeError) as err:
            raise StoreError(
                f"unreadable evaluation releases ({err})",
                where=str(path),
                fix="do not resume this run: a release may be unaccounted; start a new run",
            ) from err
        self.evaluations, self._eval_rounds = account, rounds

    def _evaluation_entry(self) -> list[dict[str, Any]]:
        """``other_releases`` of central DP evaluations (empty when none ran)."""
        if not self.evaluations.history or self.central is None:
            return []
        assert self.delta is not None
        note = ("DP evaluations: clipped per-user metrics summed, Gaussian noise added by "
                "the server once per evaluation (user level, q = 1 over the users asked); "
                "compose with the training releases (epsilon_with_training)")  # fmt: skip
        entry = other_release("evaluation", self.evaluations, self.delta, note)
        both = PrivacyAccount.from_history(
            [*self.central.mechanism.account.history, *self.evaluations.history],
            accountant=self.evaluations.accountant,
        )
        entry["rounds"] = list(self._eval_rounds)
        entry["epsilon_with_training"] = both.epsilon(self.delta)
        return [entry]

    def restore(self, state: dict[str, Any] | None, start_round: int, run_dir: Path) -> None:
        """Restore the checkpoint's state at ``start_round``; charge a reserved release.

        A central reservation past the checkpoint is a release that may have left the
        server before a crash: its accounting (and its joins) replaces the checkpoint's,
        and the round is redone with fresh noise, which pays again.
        """
        self._load_evaluations(run_dir)
        if self.central is not None:
            if state is not None:
                self.central.mechanism.load_state_dict(state)
                self.joins = {int(u): int(n) for u, n in state.get("joins", {}).items()}
            reserved = load_reservation(run_dir)
            charged = reserved is not None and reserved[0] > start_round
            if reserved is not None and charged:
                rnd, held = reserved
                self.central.mechanism.account = PrivacyAccount.from_json(held["account"])
                self.joins = {int(u): int(n) for u, n in held.get("joins", {}).items()}
                log.warning(
                    "charged the release of round %d, reserved before the run stopped; "
                    "redoing the round is a new release and pays again", rnd
                )  # fmt: skip
            seed = self.settings.privacy.insecure_noise_seed
            if seed is not None and (state is not None or charged):  # TESTS ONLY: never
                # replay earlier noise (a charged round is redone with other noise)
                self.central.rng = secure_rng(seed + 1_000_003 * start_round + int(charged))
        elif self.mode == "local" and self.device_ledgers is not None:
            self.spent = dict(self.device_ledgers(None))

    def state(self) -> dict[str, Any] | None:
        """JSON-ready privacy state for the checkpoint (``None`` but in central mode)."""
        if self.central is None:
            return None
        joins = {str(u): n for u, n in sorted(self.joins.items())}
        return {**self.central.mechanism.state_dict(), "joins": joins}

    def after_train(self, run_dir: Path, server_round: int, outcome: Outcome) -> None:
        """Right after a round's aggregate, before anything leaves the server.

        Central: count the joins and write the release ahead
        (:func:`server.checkpoint.reserve_release`). Local, in simulation: read the
        ledgers of the round's cohort from the devices.
        """
        if self.central is not None:
            for user in outcome.participants:
                self.joins[user] = self.joins.get(user, 0) + 1
            self.reserve(run_dir, server_round)
        elif self.mode == "local" and self.device_ledgers is not None:
            cohort = {*outcome.participants, *outcome.failed, *outcome.refused}
            self.spent.update(self.device_ledgers(sorted(cohort)))

    def reserve(self, run_dir: Path, server_round: int) -> None:
        """Central: durably write the accounting as it is now (every release recorded so
        far in round ``server_round`` included) before a noisy output leaves the server.
        Call it again after any further release of the round (e.g. a DP evaluation)."""
        state = self.state()
        if state is not None:
            reserve_release(run_dir, server_round, state)

    def finish(self) -> None:
        """End of the run: in a local simulation, read every device's ledger once more."""
        if self.mode == "local" and self.device_ledgers is not None:
            self.spent.update(self.device_ledgers(None))

    def participation(self, outcome: Outcome) -> dict[str, Any]:
        """The round's participation for ``rounds.jsonl``.

        Central: counts only (``participants``, ``failed``, ``budget_exhausted``,
        ``refused``), never a user id: the cohort is secret. Otherwise the user ids.
        """
        if self.central is not None:
            return {
                "participants": len(outcome.participants),
                "failed": len(outcome.failed),
                "budget_exhausted": len(outcome.exhausted),
                "refused": len(outcome.refused),
            }
        ids = self.split.data.user_ids.tolist()  # one id space in every run file: original

        def original(users: Any) -> list[Any]:
            return [ids[int(u)] for u in users]

        return {
            "participants": original(outcome.participants),
            "failed": original(sorted(outcome.failed)),
            "failures": {str(ids[int(u)]): why for u, why in outcome.failed.items()},
            "budget_exhausted": original(outcome.exhausted),
            "refused": {str(ids[int(u)]): why for u, why in outcome.refused.items()},
        }

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
        """Epsilon so far: the run's amplified one (central), median/max over the devices'
        ledgers (local simulation), else None."""
        if self.central is not None:
            return self.central.epsilon()
        if self.mode == "local" and self.device_ledgers is not None:
            values = [s.epsilon for s in self.spent.values()]
            if not values:
                return {"median": 0.0, "max": 0.0}
            return {"median": statistics.median(values), "max": max(values)}
        return None

    def report(self) -> dict[str, Any]:
        """The run's ``privacy.json`` (:mod:`fedrec.privacy.report`)."""
        privacy = self.settings.privacy
        if self.central is not None:
            assert self.delta is not None
            mechanism = self.central.mechanism
            worst = worst_case_user(
                mechanism.release.noise_multiplier,
                max(self.joins.values(), default=0),
                delta=self.delta,
                accountant=privacy.accountant,
            )
            out = central_report(mechanism.account, delta=self.delta, worst_case=worst)
            out["noise_multiplier"] = mechanism.release.noise_multiplier
            out["clip_norm"] = mechanism.clip_norm
            out["target_epsilon"] = privacy.target_epsilon
            out["other_releases"] = [*out.get("other_releases", []), *self._evaluation_entry()]
        elif self.mode == "local":
            assert self.delta is not None
            unit = local_unit(self.settings.model.kind)
            if self.device_ledgers is None:
                out = local_budget_report(
                    target_epsilon=privacy.target_epsilon, delta=self.delta,
                    accountant=privacy.accountant, unit=unit,
                )  # fmt: skip
            else:
                out = self._local_report(unit)
            out["noise_multiplier"] = privacy.noise_multiplier
        else:
            return none_report()
        out["insecure_noise_seed"] = privacy.insecure_noise_seed
        return out

    def _local_report(self, unit: str) -> dict[str, Any]:
        accountant = self.settings.privacy.accountant
        ids = self.split.data.user_ids
        clients = {
            str(ids[u]): (PrivacyAccount.from_history(s.history, accountant=s.accountant),
                          s.rounds_participated)
            for u, s in sorted(self.spent.items())
        }  # fmt: skip
        assert self.delta is not None
        out = local_report(clients, delta=self.delta, accountant=accountant, unit=unit)
        out["target_epsilon"] = self.settings.privacy.target_epsilon
        return out

    def write(self, run_dir: Path) -> None:
        """(Re)write ``run_dir/privacy.json``."""
        write_privacy_json(run_dir / PRIVACY_JSON, self.report())
