"""One privacy layer: the reply's wire format, the server's local-DP wrapper, the private
round shared by device and loop, and the one calibration of the local noise."""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace

import numpy as np
import pytest
from flwr.app import ArrayRecord, ConfigRecord, RecordDict

from fedrec.data import resolve_data
from fedrec.data.split import random_split
from fedrec.errors import ConfigError, DataError
from fedrec.federated.private import LocalPrivacy, planned_releases, private_round
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.privacy.accounting import Release
from fedrec.privacy.ledger import MemoryLedgerStore, PrivacyLedger
from fedrec.privacy.record import STATUSES, PrivacyRecord
from server.local_dp import read_status
from server.strategies import REFUSED

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"
MODEL = ModelConfig(kind="mf", dim=4)
TRAIN = LocalTrainConfig(epochs=1, refit_steps=1, batch_size=1000, lr=0.1)


@pytest.mark.parametrize("status", STATUSES)
def test_the_record_round_trips_its_status_only(status: str) -> None:
    record = PrivacyRecord(status)
    assert record.to_dict() == {"status": status}
    assert PrivacyRecord.from_dict(record.to_dict()) == record


@pytest.mark.parametrize(
    "wire",
    [
        {"status": "trained", "history": "[[1.0, 0.5, 2]]"},
        {"status": "trained", "epsilon": 1.0},
        {"status": "finished"},
        {},
    ],
)
def test_the_record_refuses_anything_but_a_known_status(wire: dict[str, object]) -> None:
    with pytest.raises(DataError):
        PrivacyRecord.from_dict(wire)


def _reply(record: dict[str, object] | None, *, arrays: bool) -> RecordDict:
    content = RecordDict()
    if arrays:
        content["arrays"] = ArrayRecord([np.zeros(3, np.float32)])
    if record is not None:
        content["privacy"] = ConfigRecord(record)  # type: ignore[arg-type]
    return content


def test_the_server_wrapper_accepts_a_status_and_rejects_a_ledger() -> None:
    # Prepare / Execute
    trained = read_status(_reply({"status": "trained"}, arrays=True))
    exhausted = read_status(_reply({"status": "budget_exhausted"}, arrays=False))
    leaky = read_status(_reply({"status": "trained", "history": "[[1.0, 0.5, 2]]"}, arrays=True))
    missing = read_status(_reply(None, arrays=True))
    no_arrays = read_status(_reply({"status": "trained"}, arrays=False))
    sneaky = read_status(_reply({"status": "refused"}, arrays=True))
    # Assert
    assert trained == "" and exhausted == REFUSED + "budget_exhausted"
    for problem in (leaky, missing, no_arrays, sneaky):
        assert problem and not problem.startswith(REFUSED), problem


def test_the_local_wrapper_refuses_count_weighting() -> None:
    from server.local_dp import LocalDPStrategy

    weighted = SimpleNamespace(plan=SimpleNamespace(weighted=True))
    with pytest.raises(ConfigError, match="number of examples"):
        LocalDPStrategy(weighted)  # type: ignore[arg-type]


def _ledger() -> PrivacyLedger:
    return PrivacyLedger(MemoryLedgerStore(), accountant="rdp", delta=1e-5, unit="u")


def test_would_exceed_composes_a_rounds_releases() -> None:
    ledger = _ledger()
    one = Release(1.0, 1.0, 1)
    alone = ledger.account.after(one).epsilon(1e-5)
    both = ledger.account.after(one).after(one).epsilon(1e-5)
    budget = (alone + both) / 2
    assert not ledger.would_exceed(budget, None, one)
    assert ledger.would_exceed(budget, None, [one, one])


def test_private_round_refuses_before_touching_the_data_and_spends_nothing() -> None:
    # Prepare: a ledger one round short of its budget; train items that must not be read
    split = random_split(resolve_data(DATA), test_fraction=0.2, seed=0)
    items = init_item_arrays(MODEL, split.n_items, seed=0)
    n = len(split.train_items(0))
    privacy = LocalPrivacy(noise_multiplier=1.0, clip_norm=1.0, epsilon_budget=1e9)
    ledger = _ledger()
    for release in planned_releases(MODEL, TRAIN, 1.0, n, first=True):
        ledger.reserve(release, round=1)
    spent = ledger.spent().epsilon
    tight = LocalPrivacy(noise_multiplier=1.0, clip_norm=1.0, epsilon_budget=spent * 1.0001)

    class Untouchable(np.ndarray):  # type: ignore[type-arg]
        def __getitem__(self, key: object) -> object:
            raise AssertionError("the data was read before the budget check")

        def __iter__(self) -> object:
            raise AssertionError("the data was read before the budget check")

    data = split.train_items(0).view(Untouchable)
    # Execute
    outcome = private_round(ledger, MODEL, TRAIN, tight, items, {}, data, round=2, seed=1)
    trained = private_round(
        _ledger(), MODEL, TRAIN, privacy, items, None, split.train_items(0), round=1, seed=1
    )
    # Assert
    assert outcome.status == "budget_exhausted" and outcome.fit is None
    assert ledger.spent().epsilon == spent and ledger.spent().releases == 2
    assert trained.status == "trained" and trained.fit is not None
    assert trained.fit.releases == planned_releases(MODEL, TRAIN, 1.0, n, first=True)


def test_a_client_given_no_noise_multiplier_refuses_instead_of_calibrating() -> None:
    from clients.client_app import _local_privacy

    config = ConfigRecord({"privacy": "local", "privacy.target-epsilon": 4.0})
    config["privacy.delta"] = 1e-5
    with pytest.raises(ConfigError, match="noise multiplier"):
        _local_privacy(config, MODEL)


def test_the_harness_reads_a_ledger_while_its_device_is_open(tmp_path: Path) -> None:
    # Prepare: three devices with releases; device 1 stays open (a straggler)
    from clients.sim_store import ledger_reader, open_device, read_ledgers
    from fedrec.privacy.ledger import SqliteLedgerStore

    for user in range(3):
        device = open_device(tmp_path, user, np.arange(4 + user), seed=0)
        ledger = PrivacyLedger(
            SqliteLedgerStore(device.store.conn, device.client_id),
            accountant="rdp", delta=1e-5, unit="u",
        )  # fmt: skip
        for rnd in range(user + 1):
            ledger.reserve(Release(1.0, 1.0, 1), round=rnd + 1)
        if user != 1:
            device.close()
        else:
            straggler = device
    # Execute
    while_open = ledger_reader(tmp_path)(None)
    straggler.close()
    after = read_ledgers(tmp_path)
    # Assert: the same statements as the exclusive reader, the open device's included
    assert while_open == after and sorted(after) == [0, 1, 2]
    assert [after[u].rounds_participated for u in range(3)] == [1, 2, 3]
