"""The device store: identity, refusal of foreign/corrupt/newer files, locking, migrations,
and atomicity under SIGKILL (store level, no torch in the child: fast)."""

from __future__ import annotations

import io
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


LOCK_PROBE = (
    "import sys; from clients.store import DeviceStore\n"
    "try:\n    DeviceStore.open(sys.argv[1])\nexcept Exception as e:\n"
    "    print(type(e).__name__, e); sys.exit(3)\n"
)


@pytest.mark.parametrize("link", ["symlink", "hardlink"])
def test_second_open_through_another_name_is_refused(tmp_path: Path, link: str) -> None:
    # Prepare: a store, and a second name for the same file in another folder
    path = tmp_path / "d.db"
    DeviceStore.open(path).close()
    (tmp_path / "other").mkdir()
    alias = tmp_path / "other" / "alias.db"
    if link == "symlink":
        alias.symlink_to(path)
    else:
        os.link(path, alias)
    with DeviceStore.open(path) as store:
        # Execute: the alias, in this process and in another one
        with pytest.raises(StoreError, match="already open") as info:
            DeviceStore.open(alias)
        other = subprocess.run(
            [sys.executable, "-c", LOCK_PROBE, str(alias)], cwd=ROOT, capture_output=True, text=True
        )
        # Assert: refused with the store's error; the open store still writes
        store.add_interactions([(1, None, 1.0)])
    assert str(alias) in str(info.value) and info.value.fix
    assert other.returncode == 3 and "StoreError" in other.stdout and "already open" in other.stdout
    with DeviceStore.open(alias) as again:  # fine once closed, and the same data
        assert [r.item for r in again.interactions()] == [1]


def test_open_through_alias_refuses_the_original_name(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "d.db"
    DeviceStore.open(path).close()
    alias = tmp_path / "alias.db"
    alias.symlink_to(path)
    # Execute / Assert: the lock follows the file, whichever name opened it first
    with DeviceStore.open(alias), pytest.raises(StoreError, match="already open"):
        DeviceStore.open(path)


def test_store_file_is_private_and_has_no_sidecar_lock(tmp_path: Path) -> None:
    # Prepare: a lock file an older version left beside the store
    path = tmp_path / "d.db"
    legacy = tmp_path / "d.db.lock"
    legacy.write_bytes(b"")
    # Execute
    with DeviceStore.open(path) as store:
        store.add_interactions([(1, None, 1.0)])
        modes = {p.name: p.stat().st_mode & 0o777 for p in tmp_path.iterdir()}
    # Assert: 0600 store and WAL, the stale lock file removed, none created
    assert modes == {"d.db": 0o600, "d.db-wal": 0o600, "d.db-shm": 0o600}
    assert not legacy.exists()


def test_schema_table_matches_the_migrations(tmp_path: Path) -> None:
    # Prepare / Execute: the columns every migration actually creates
    from clients.store import TABLES

    for version in range(1, SCHEMA_VERSION + 1):
        with DeviceStore.open(tmp_path / f"v{version}.db", target_version=version) as store:
            names = [r[0] for r in store.conn.execute("SELECT name FROM sqlite_master")]
            have = {
                t: tuple(c[1] for c in store.conn.execute(f"PRAGMA table_info({t})"))
                for t in names
                if not t.startswith("sqlite_") and t != "interactions_item"
            }
        # Assert
        assert have == TABLES[version], version


def _good_store(path: Path) -> None:
    with DeviceStore.open(path) as store:
        store.set_meta("user_id", 1)
        store.set_meta("created", 0.0)
        store.add_interactions([(1, None, 1.0), (2, 4.0, 2.0)])
        store.save_slot("serve", [("user_emb.weight", np.ones((1, 4), np.float32))], {})


def _sql(path: Path, *statements: str) -> None:
    _good_store(path)
    with DeviceStore.open(path) as store:
        for statement in statements:
            store.conn.execute(statement)


def _truncated(path: Path, keep: int | None) -> None:
    _good_store(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2 if keep is None else keep])


def _pickled_npy() -> str:
    buf = io.BytesIO()
    np.save(buf, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    return buf.getvalue().hex()


def _raw_sqlite(path: Path, *statements: str) -> None:
    conn = sqlite3.connect(path)
    for statement in statements:
        conn.execute(statement)
    conn.commit()
    conn.close()


CORRUPTIONS = {
    "truncated in half": lambda p: _truncated(p, None),
    "truncated header": lambda p: _truncated(p, 60),
    "random bytes": lambda p: p.write_bytes(np.random.default_rng(0).bytes(8192)),
    "a folder at the path": lambda p: p.mkdir(),
    "a dangling symlink": lambda p: p.symlink_to(p.parent / "gone" / "x.db"),
    "a fifo": lambda p: os.mkfifo(p),
    "foreign sqlite": lambda p: _raw_sqlite(p, "CREATE TABLE other (x)"),
    "wrong columns": lambda p: _raw_sqlite(
        p,
        f"PRAGMA application_id = {APPLICATION_ID}",
        f"PRAGMA user_version = {SCHEMA_VERSION}",
        "CREATE TABLE meta (a)",
    ),
    "tables missing": lambda p: _raw_sqlite(
        p, f"PRAGMA application_id = {APPLICATION_ID}", f"PRAGMA user_version = {SCHEMA_VERSION}"
    ),
    "a table dropped": lambda p: _sql(p, "DROP TABLE interactions"),
    "corrupted array blob": lambda p: _sql(p, "UPDATE arrays SET data = x'934e554d'"),
    "pickled array blob": lambda p: _sql(p, f"UPDATE arrays SET data = x'{_pickled_npy()}'"),
    "corrupted meta json": lambda p: _sql(p, "UPDATE meta SET value = '{x' WHERE key = 'user_id'"),
    "corrupted slot description": lambda p: _sql(p, "UPDATE slots SET info = '[1'"),
    "text timestamp": lambda p: _sql(p, "UPDATE interactions SET timestamp = 'soon'"),
    "blob item id": lambda p: _sql(p, "UPDATE interactions SET item = x'00'"),
    "text round": lambda p: _sql(p, "UPDATE slots SET round = 'two'"),
}


@pytest.mark.parametrize("kind", sorted(CORRUPTIONS))
def test_corrupted_store_raises_store_error_when_opened_and_read(tmp_path: Path, kind: str) -> None:
    # Prepare
    from clients.device import DeviceClient

    path = tmp_path / "s.sqlite"
    CORRUPTIONS[kind](path)
    # Execute / Assert: the store's own error (what, where, what to do), never numpy's or sqlite's
    with pytest.raises(StoreError) as info, DeviceClient.open(path) as device:
        device.interactions()
        device.recommend(2)
    message = str(info.value)
    assert str(path) in message and info.value.fix and "\n" not in message
    assert "allow_pickle" not in message  # never an invitation to unpickle


def _snapshot_while_open(source: Path, target: Path, *statements: str) -> None:
    """Copy ``source`` and its pending WAL as a crash would leave them (connection open)."""
    conn = sqlite3.connect(source, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    for statement in statements:
        conn.execute(statement)
    target.write_bytes(source.read_bytes())
    Path(f"{target}-wal").write_bytes(Path(f"{source}-wal").read_bytes())
    conn.close()


def test_foreign_database_with_pending_wal_is_left_untouched(tmp_path: Path) -> None:
    # Prepare: another program's WAL database whose last writes are still in its WAL
    (tmp_path / "app").mkdir()
    path = tmp_path / "d.db"
    _snapshot_while_open(
        tmp_path / "app" / "live.db",
        path,
        "CREATE TABLE notes (x)",
        "INSERT INTO notes VALUES ('keep me')",
    )
    wal = tmp_path / "d.db-wal"
    before = (path.read_bytes(), wal.read_bytes())
    assert before[1], "the snapshot must have a pending WAL"
    # Execute
    with pytest.raises(StoreError, match="not a fedrec device store") as info:
        DeviceStore.open(path)
    # Assert: the database and its WAL are byte-identical, no shared-memory file created
    assert "left untouched" in str(info.value)
    assert (path.read_bytes(), wal.read_bytes()) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["app", "d.db", "d.db-wal"]
    conn = sqlite3.connect(path)
    assert conn.execute("SELECT x FROM notes").fetchall() == [("keep me",)]
    conn.close()


def test_store_whose_creation_stopped_before_a_checkpoint_still_opens(tmp_path: Path) -> None:
    # Prepare: an older fedrec wrote the id and schema into the WAL only, then was killed
    from clients.store import migrate

    (tmp_path / "live").mkdir()
    live = tmp_path / "live" / "d.db"
    conn = sqlite3.connect(live, isolation_level=None)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA wal_autocheckpoint=0")
    migrate(conn, 0, 1)
    conn.execute("INSERT INTO interactions (item, rating, timestamp) VALUES (5, NULL, 1.0)")
    path = tmp_path / "d.db"
    path.write_bytes(live.read_bytes())
    Path(f"{path}-wal").write_bytes(Path(f"{live}-wal").read_bytes())
    conn.close()
    assert path.read_bytes()[68:72] == bytes(4)  # the main file does not carry our id yet
    # Execute
    with DeviceStore.open(path) as store:
        rows = store.interactions()
        version = store.version
    # Assert: recognised as ours, migrated, the row kept
    assert version == SCHEMA_VERSION and [r.item for r in rows] == [5]
