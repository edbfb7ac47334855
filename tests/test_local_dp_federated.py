"""Local DP end to end: Flower apps (in-process Grid) over DeviceClient stores, and the ML.

Small synthetic data; every client trains full-batch (``q = 1``), so the calibrated
``z`` makes exactly ``ceil(T q_c)`` rounds fit the budget and the next one refuse.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import ConfigRecord, Message

from clients.client_app import PRIVACY_KEYS
from clients.sim_store import device_path, ledger_reader, read_ledgers
from fedrec.data import resolve_data
from fedrec.data.split import random_split
from fedrec.federated.private import (
    LocalPrivacy,
    client_fit_private,
    local_noise_multiplier,
    planned_releases,
)
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays, item_array_shapes
from fedrec.privacy.accounting import epsilon_from_history
from fedrec.privacy.config import PrivacyConfig
from fedrec.privacy.report import verify_privacy_json
from server.settings import RunSettings, load_split
from simulations.run_dir import create_run_dir, read_metrics, read_rounds
from tests.test_flower_apps import DATA, InProcessGrid

TARGET = 3.0


class InjectingGrid(InProcessGrid):
    """Adds test-only keys to every train config, and keeps what was sent."""

    def __init__(self, n_nodes: int, extra: dict[str, Any]) -> None:
        super().__init__(n_nodes)
        self.extra = extra
        self.pairs: list[tuple[Message, Message]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        for msg in messages:
            config = msg.content["config"]
            assert isinstance(config, ConfigRecord)
            if msg.metadata.message_type == "train":
                config.update(self.extra)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        self.pairs.extend(zip(messages, replies, strict=True))
        return replies


def local_settings(tmp: Path, **overrides: Any) -> RunSettings:
    flat: dict[str, Any] = {
        "data": DATA,
        "num-server-rounds": 4,
        "clients-per-round": 15,
        "run-dir": str(tmp),
        "train.epochs": 1,
        "train.refit-steps": 1,
        "train.batch-size": 1000,  # full batch: q = 1 on every device
        "train.lr": 0.5,
        "privacy": "local",
        "privacy.target-epsilon": TARGET,
        "privacy.delta": 1e-5,
        "privacy.insecure-noise-seed": 7,
        "eval-every": 0,
    }
    flat.update(overrides)
    return RunSettings.from_run_config(flat)


def run_local(
    settings: RunSettings, extra: dict[str, Any] | None = None, *, simulated: bool = True
) -> InjectingGrid:
    """Run in process; ``simulated``: the harness reads the devices' ledgers (else a
    deployment: the ledgers stay on the devices)."""
    create_run_dir(Path(settings.run_dir), settings)
    grid = InjectingGrid(load_split(settings).n_users, extra or {})
    from server.server_app import run_server
    from simulations.evaluation import device_evaluator

    ledgers = ledger_reader(Path(settings.run_dir) / "clients") if simulated else None
    evaluator = device_evaluator(settings) if simulated else None  # the harness measures
    run_server(grid, settings, device_ledgers=ledgers, evaluator=evaluator)
    return grid


@pytest.fixture(scope="module")
def local_run(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, InjectingGrid]:
    run_dir = tmp_path_factory.mktemp("local")
    grid = run_local(local_settings(run_dir), {"fail-after-ledger": "0"})
    return run_dir, grid


def test_ledgers_reproduce_epsilon_and_stay_within_budget(
    local_run: tuple[Path, InjectingGrid],
) -> None:
    # Prepare
    run_dir, _ = local_run
    # Execute
    ledgers = read_ledgers(run_dir / "clients")
    report = json.loads((run_dir / "privacy.json").read_text())
    # Assert
    assert len(ledgers) > 10
    for user, spent in ledgers.items():
        assert spent.epsilon == pytest.approx(epsilon_from_history(spent.history, 1e-5), rel=1e-9)
        assert 0 < spent.epsilon <= TARGET, user
    assert verify_privacy_json(run_dir / "privacy.json") == []
    assert report["mode"] == "local" and report["epsilon"] <= TARGET
    ids = load_split(local_settings(run_dir)).data.user_ids  # privacy.json: original ids
    # the harness read every device's own ledger, user 0's too (its replies never arrived)
    assert set(report["clients"]) == {str(ids[u]) for u in ledgers}
    for user, spent in ledgers.items():
        entry = report["clients"][str(ids[user])]
        assert entry["history"] == spent.history
        assert entry["rounds_participated"] == spent.rounds_participated
    assert report["ledgers"].startswith("simulation")


def test_a_client_at_its_budget_refuses_and_the_run_goes_on(
    local_run: tuple[Path, InjectingGrid],
) -> None:
    # Prepare
    run_dir, grid = local_run
    # Execute
    rounds = read_rounds(run_dir)
    refusals = [
        r
        for r in grid.replies
        if r.has_content() and "privacy" in r.content and "arrays" not in r.content
    ]
    # Assert
    exhausted = {u for r in rounds for u in r["budget_exhausted"]}
    assert exhausted, "with q_c = 0.5 over 4 rounds some client is sampled a third time"
    assert len(rounds) == 4 and all(r["participants"] for r in rounds)
    for r in rounds:
        assert not set(r["budget_exhausted"]) & set(r["participants"])
        assert not set(r["budget_exhausted"]) & set(r["failed"])
    assert refusals and all(
        r.content.config_records["privacy"]["status"] == "budget_exhausted" for r in refusals
    )
    assert read_metrics(run_dir)["users_evaluated"] > 0


def test_a_crash_after_the_ledger_write_keeps_the_spend(
    local_run: tuple[Path, InjectingGrid],
) -> None:
    # Prepare: user 0's ClientApp raised right after fit_round (ledger written), every time
    run_dir, _ = local_run
    # Execute
    rounds = read_rounds(run_dir)
    ledger = read_ledgers(run_dir / "clients")[0]
    # Assert
    crashed = [r["round"] for r in rounds if 1 in r["failed"]]  # index 0 = original id 1
    assert crashed, "user 0 joins a round of this run"
    assert "after the ledger write" in next(r for r in rounds if 1 in r["failed"])["failures"]["1"]
    assert ledger.rounds_participated == len(crashed)
    assert ledger.epsilon > 0  # the server never got these updates; the ledger kept the spend


def test_no_train_reply_carries_anything_derived_from_the_device_size(
    local_run: tuple[Path, InjectingGrid],
) -> None:
    # Prepare: every train reply of the run, as the server received it
    _, grid = local_run
    replies = [r for s, r in grid.pairs if s.metadata.message_type == "train" and r.has_content()]
    # Execute
    records = [r.content.config_records.get("privacy") for r in replies]
    # Assert: the status and the arrays, nothing else (no metrics, no ledger, no count)
    assert len(replies) > 10
    assert {r["status"] for r in records if r is not None} >= {"trained", "budget_exhausted"}
    for reply, record in zip(replies, records, strict=True):
        assert record is not None and dict(record).keys() == {"status"}
        assert set(reply.content.keys()) <= {"arrays", "privacy"}
        assert not reply.content.metric_records


def test_a_deployment_states_the_budget_and_keeps_the_ledgers_on_the_devices(
    tmp_path: Path,
) -> None:
    # Prepare: no harness reads the devices' ledgers
    settings = local_settings(tmp_path, **{"num-server-rounds": 2})
    # Execute
    run_local(settings, simulated=False)
    report = json.loads((tmp_path / "privacy.json").read_text())
    # Assert
    assert report["clients"] == {} and report["ledgers"].startswith("on the devices")
    assert report["epsilon"] == TARGET and verify_privacy_json(tmp_path / "privacy.json") == []
    assert all(r["epsilon"] is None for r in read_rounds(tmp_path))
    assert read_ledgers(tmp_path / "clients"), "the devices did spend, on their own ledgers"


def test_local_replies_hold_only_dense_item_side_arrays_and_a_statement(
    local_run: tuple[Path, InjectingGrid],
) -> None:
    # Prepare
    run_dir, grid = local_run
    settings = local_settings(run_dir)
    split = load_split(settings)
    shapes = item_array_shapes(settings.model, split.n_items)
    model = build_model(settings.model, split.n_items, 1, seed=0)
    user_shapes = {tuple(p.shape) for p in model.parameters()} - set(shapes)
    # Execute
    uploads = [
        (sent, reply)
        for sent, reply in grid.pairs
        if reply.has_content() and "arrays" in reply.content
    ]
    # Assert
    assert uploads
    for sent, reply in uploads:
        assert set(reply.content.keys()) == {"arrays", "privacy"}
        assert set(reply.content.config_records["privacy"]) == set(PRIVACY_KEYS) == {"status"}
        arrays = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert [a.shape for a in arrays] == shapes
        assert not user_shapes & {a.shape for a in arrays}
        before = sent.content.array_records["arrays"].to_numpy_ndarrays()
        for new, old in zip(arrays, before, strict=True):
            assert np.all(np.any(new.reshape(len(new), -1) != old.reshape(len(old), -1), axis=1)), (
                "noise moves every item row"
            )


def test_device_store_is_one_file_per_user(local_run: tuple[Path, InjectingGrid]) -> None:
    run_dir, _ = local_run
    ledgers = read_ledgers(run_dir / "clients")
    assert all(device_path(run_dir / "clients", u).is_file() for u in ledgers)


# ---- the ML under the mechanism (Flower-free) ------------------------------------------
MODEL = ModelConfig(kind="mf", dim=4)


def _fit(train: LocalTrainConfig, mu: float = 0.0, seed: int = 3) -> tuple[list[np.ndarray], Any]:
    split = random_split(resolve_data(DATA), test_fraction=0.2, seed=0)
    items = init_item_arrays(MODEL, split.n_items, seed=0)
    privacy = LocalPrivacy(noise_multiplier=1.0, clip_norm=1.0, insecure_noise_seed=11)
    cfg = LocalTrainConfig(**{**train.__dict__, "proximal_mu": mu})
    fit = client_fit_private(MODEL, cfg, privacy, items, None, split.train_items(0), seed=seed)
    return items, fit


@pytest.mark.parametrize("batch_size", [4, 7, 1000])
def test_releases_are_known_before_training(batch_size: int) -> None:
    train = LocalTrainConfig(epochs=2, refit_steps=3, batch_size=batch_size, lr=0.1)
    _, fit = _fit(train)
    n = len(random_split(resolve_data(DATA), test_fraction=0.2, seed=0).train_items(0))
    assert fit.releases == planned_releases(MODEL, train, 1.0, n, first=True)
    k = math.ceil(n / batch_size)
    assert fit.releases[-1].steps == 2 * k and fit.releases[-1].sample_rate >= 1 / k


def test_fedprox_term_survives_the_mechanism() -> None:
    # Prepare: the same public and secret randomness; only mu differs
    train = LocalTrainConfig(epochs=3, refit_steps=1, batch_size=8, lr=0.5)
    # Execute
    items, plain = _fit(train, mu=0.0)
    _, prox = _fit(train, mu=1.0)

    # Assert: the proximal gradient pulls the item parameters back to the global ones
    def dist(fit: Any) -> float:
        return sum(
            float(np.linalg.norm(a - b)) for a, b in zip(fit.item_arrays, items, strict=True)
        )

    assert dist(prox) < 0.8 * dist(plain)


def test_calibrated_z_fits_the_planned_participation_exactly() -> None:
    train = LocalTrainConfig(epochs=1, refit_steps=1, batch_size=1000, refit_every_round=False)
    privacy = PrivacyConfig(mode="local", target_epsilon=TARGET, delta=1e-5)
    z = local_noise_multiplier(privacy, MODEL, train, rounds=4, client_sample_rate=0.5)
    steps = 2 * 1 + 1  # two planned rounds of one step, one reconstruction
    assert epsilon_from_history([[z, 1.0, steps]], 1e-5) <= TARGET
    assert epsilon_from_history([[z, 1.0, steps + 1]], 1e-5) > TARGET
