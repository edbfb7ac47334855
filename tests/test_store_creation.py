"""A simulated device's store is created without an fsync (clients.store, durable=False)."""

from __future__ import annotations

import sqlite3
from pathlib import Path
from typing import Any

import pytest

import clients.store as store_module
from clients.store import DeviceStore


def _recorded_statements(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    statements: list[str] = []
    connect = sqlite3.connect

    def recording_connect(*args: Any, **kwargs: Any) -> sqlite3.Connection:
        conn = connect(*args, **kwargs)
        conn.set_trace_callback(statements.append)
        return conn

    monkeypatch.setattr(store_module.sqlite3, "connect", recording_connect)
    return statements


@pytest.mark.parametrize(("durable", "mode"), [(False, "OFF"), (True, "FULL")])
def test_the_sync_mode_is_set_before_the_first_write(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, durable: bool, mode: str
) -> None:
    # Prepare
    statements = _recorded_statements(monkeypatch)

    # Execute
    with DeviceStore.open(tmp_path / "user-1.sqlite", durable=durable):
        pass

    # Assert: the application id (the first write of a new file) comes after the mode
    first_write = next(i for i, s in enumerate(statements) if "application_id =" in s)
    sync = statements.index(f"PRAGMA synchronous={mode}")
    assert sync < first_write


def test_a_store_created_without_fsync_reopens_with_its_data(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "user-1.sqlite"
    with DeviceStore.open(path, durable=False) as store, store.transaction():
        store.set_meta("user_id", 1)

    # Execute
    with DeviceStore.open(path, durable=True, user_id=1) as store:
        owner = store.get_meta("user_id")

    # Assert
    assert owner == 1
