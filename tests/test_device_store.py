"""The device store: identity, refusal of foreign/corrupt/newer files, locking, migrations,
and atomicity under SIGKILL (store level, no torch in the child: fast)."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from clients.store import APPLICATION_ID, SCHEMA_VERSION, DeviceStore
from fedrec.errors import StoreError

ROOT = Path(__file__).resolve().parents[1]


def test_new_store_is_tagged_and_versioned(tmp_path: Path) -> None:
    # Prepare / Execute
    with DeviceStore.open(tmp_path / "d.db") as store:
        app = store.conn.execute("PRAGMA application_id").fetchone()[0]
        mode = store.conn.execute("PRAGMA journal_mode").fetchone()[0]
        version = store.version
    # Assert
    assert (app, version, mode) == (APPLICATION_ID, SCHEMA_VERSION, "wal")


def test_rows_and_arrays_round_trip(tmp_path: Path) -> None:
    # Prepare
    q = np.arange(6, dtype=np.float32).reshape(3, 2)
    with DeviceStore.open(tmp_path / "d.db") as store:
        store.add_interactions([(7, None, 1.0), ("x", 4.5, 2.0)])
        store.save_slot("g", [("q", q)], {"ids": [7, "x", 9]}, round=3)
    # Execute
    with DeviceStore.open(tmp_path / "d.db") as store:
        rows = store.interactions()
        slot = store.load_slot("g")
    # Assert: original id types survive, arrays are exact
    assert [(r.item, r.rating, r.timestamp) for r in rows] == [(7, None, 1.0), ("x", 4.5, 2.0)]
    assert slot is not None and slot.round == 3 and slot.info == {"ids": [7, "x", 9]}
    np.testing.assert_array_equal(slot.arrays[0], q)


@pytest.mark.parametrize("kind", ["random", "foreign", "future"])
def test_bad_files_are_refused_and_never_touched(tmp_path: Path, kind: str) -> None:
    # Prepare
    path = tmp_path / "d.db"
    if kind == "random":
        path.write_bytes(np.random.default_rng(0).bytes(8192))
    else:
        conn = sqlite3.connect(path)
        conn.execute("CREATE TABLE other (x)")
        if kind == "future":
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            conn.execute(f"PRAGMA user_version = {SCHEMA_VERSION + 1}")
        conn.commit()
        conn.close()
    before = path.read_bytes()
    # Execute / Assert
    with pytest.raises(StoreError, match=r"d\.db") as info:
        DeviceStore.open(path)
    assert info.value.fix
    assert path.read_bytes() == before
    assert not path.with_name("d.db-wal").exists()


def test_second_open_is_refused_in_process_and_across_processes(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "d.db"
    code = (
        "import sys; from clients.store import DeviceStore\n"
        "try:\n    DeviceStore.open(sys.argv[1])\nexcept Exception as e:\n"
        "    print(type(e).__name__, e); sys.exit(3)\n"
    )
    with DeviceStore.open(path):
        # Execute
        with pytest.raises(StoreError, match="already open"):
            DeviceStore.open(path)
        other = subprocess.run(
            [sys.executable, "-c", code, str(path)], cwd=ROOT, capture_output=True, text=True
        )
    # Assert: refused while open, fine once closed
    assert other.returncode == 3 and "already open" in other.stdout
    DeviceStore.open(path).close()


def test_v1_store_migrates_to_current_keeping_data(tmp_path: Path) -> None:
    # Prepare: a store as version 1 wrote it (no ledger table)
    path = tmp_path / "d.db"
    with DeviceStore.open(path, target_version=1) as old:
        old.add_interactions([(1, None, 1.0)])
        assert old.version == 1
    # Execute
    with DeviceStore.open(path) as store:
        tables = {r[0] for r in store.conn.execute("SELECT name FROM sqlite_master")}
        rows = store.interactions()
        version = store.version
    # Assert
    assert version == SCHEMA_VERSION
    assert "privacy_ledger" in tables and [r.item for r in rows] == [1]


WRITER = """
import sys
from clients.store import DeviceStore
store = DeviceStore.open(sys.argv[1])
n = len(store.interactions()) // 3
while True:
    store.add_interactions([(n * 3 + j, float(j), float(n)) for j in range(3)])
    n += 1
    print(n, flush=True)
"""


def _kill_after(proc: subprocess.Popen[str], acks: int, rng: np.random.Generator) -> int:
    last = 0
    assert proc.stdout is not None
    while last < acks:
        last = int(proc.stdout.readline())
    time.sleep(float(rng.uniform(0, 0.02)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    return last


def test_sigkill_during_writes_leaves_whole_batches(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "d.db"
    DeviceStore.open(path).close()
    rng = np.random.default_rng(0)
    for attempt in range(5):
        proc = subprocess.Popen(
            [sys.executable, "-c", WRITER, str(path)], cwd=ROOT, stdout=subprocess.PIPE, text=True
        )
        # Execute
        acked = _kill_after(proc, int(rng.integers(1, 60)), rng)
        # Assert: intact file, every acknowledged batch present, batches whole and exact
        with DeviceStore.open(path) as store:
            assert store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
            rows = store.interactions()
        assert len(rows) % 3 == 0 and len(rows) // 3 >= acked, attempt
        got = [(r.item, r.rating, r.timestamp) for r in rows]
        assert got == [(i, float(i % 3), float(i // 3)) for i in range(len(rows))]
