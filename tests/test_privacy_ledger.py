"""Ledger: write before send, never refund, refuse past the budget, restore exactly."""

from __future__ import annotations

import subprocess
import sys
import textwrap
from collections.abc import Callable
from pathlib import Path

import pytest

from fedrec.errors import BudgetExhaustedError, StoreError
from fedrec.privacy.accounting import Release
from fedrec.privacy.ledger import (
    FileLedgerStore,
    LedgerStore,
    PrivacyLedger,
    SqliteLedgerStore,
    connect_ledger,
)

REPO = Path(__file__).resolve().parents[1]
RELEASE = Release(1.0, 0.2, 10)
StoreFactory = Callable[[Path], LedgerStore]


def _sqlite(path: Path) -> LedgerStore:
    return SqliteLedgerStore(connect_ledger(path / "device.sqlite"), "user-7")


def _file(path: Path) -> LedgerStore:
    return FileLedgerStore(path / "ledger.json")


@pytest.fixture(params=[_sqlite, _file], ids=["sqlite", "file"])
def make_store(request: pytest.FixtureRequest) -> StoreFactory:
    factory: StoreFactory = request.param
    return factory


def _ledger(store: LedgerStore, accountant: str = "rdp") -> PrivacyLedger:
    return PrivacyLedger(store, accountant=accountant, delta=1e-5, unit="one interaction")


def test_restore_is_exact(tmp_path: Path, make_store: StoreFactory) -> None:
    # Prepare
    ledger = _ledger(make_store(tmp_path))
    ledger.reserve(RELEASE, round=1)
    ledger.reserve(Release(0.9, 0.25, 8), round=2)
    # Execute
    restored = _ledger(make_store(tmp_path))
    # Assert
    assert restored.account == ledger.account
    assert restored.spent() == ledger.spent()
    assert restored.spent().rounds_participated == 2


def test_redo_of_a_round_pays_twice(tmp_path: Path, make_store: StoreFactory) -> None:
    ledger = _ledger(make_store(tmp_path))
    once = ledger.reserve(RELEASE, round=3)
    twice = ledger.reserve(RELEASE, round=3)
    assert twice.epsilon > once.epsilon
    assert twice.releases == 2 and twice.rounds_participated == 1


def test_budget_exhaustion_refuses(tmp_path: Path, make_store: StoreFactory) -> None:
    # Prepare
    ledger = _ledger(make_store(tmp_path))
    ledger.reserve(RELEASE, round=1)
    one_round = ledger.spent().epsilon
    two_rounds = ledger.account.after(RELEASE).epsilon(1e-5)
    budget_eps = (one_round + two_rounds) / 2
    # Execute / Assert
    assert ledger.would_exceed(budget_eps, None, RELEASE)
    assert not ledger.would_exceed(two_rounds, None, RELEASE)
    with pytest.raises(BudgetExhaustedError):
        ledger.reserve(RELEASE, round=2, budget_epsilon=budget_eps)
    assert _ledger(make_store(tmp_path)).spent().releases == 1  # nothing written


def test_accountant_mismatch_is_refused(tmp_path: Path, make_store: StoreFactory) -> None:
    _ledger(make_store(tmp_path)).reserve(RELEASE, round=1)
    with pytest.raises(StoreError):
        _ledger(make_store(tmp_path), accountant="prv")


_KILLED_CLIENT = """
import os, sys
from pathlib import Path
from fedrec.privacy.accounting import Release
from fedrec.privacy.ledger import FileLedgerStore, PrivacyLedger, SqliteLedgerStore, connect_ledger
root = Path(sys.argv[1])
store = (SqliteLedgerStore(connect_ledger(root / "device.sqlite"), "user-7")
         if sys.argv[2] == "sqlite" else FileLedgerStore(root / "ledger.json"))
ledger = PrivacyLedger(store, accountant="rdp", delta=1e-5, unit="one interaction")
ledger.reserve(Release(1.0, 0.2, 10), round=1)
os._exit(9)  # killed between the ledger write and the send
(root / "sent").write_text("update")
"""


@pytest.mark.parametrize("kind", ["sqlite", "file"])
def test_spend_survives_a_kill_before_send(tmp_path: Path, kind: str) -> None:
    # Execute
    proc = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(_KILLED_CLIENT), str(tmp_path), kind],
        cwd=REPO,
        env={"PYTHONPATH": str(REPO)},
        capture_output=True,
        text=True,
    )
    # Assert
    assert proc.returncode == 9, proc.stderr
    assert not (tmp_path / "sent").exists()
    store = _sqlite(tmp_path) if kind == "sqlite" else _file(tmp_path)
    spent = _ledger(store).spent()
    assert spent.releases == 1 and spent.history == [[1.0, 0.2, 10]]
    assert spent.epsilon > 0
