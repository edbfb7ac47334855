"""The durable local store of one device: a single SQLite file, WAL, one writer.

Design rule: **one file per device, one transaction per logical change, never
overwrite what is not ours.** Every change the device makes (a batch of interactions,
a set of arrays with their description, a deletion) is one SQLite transaction with
``synchronous=FULL`` in WAL mode, so a process killed at any instant leaves the file
as it was before or after that change, never in between (SQLite's atomic commit).
The file carries ``PRAGMA application_id`` = :data:`APPLICATION_ID` and its schema
version in ``PRAGMA user_version``; a file that is not SQLite, is another program's
database, or was written by a newer schema is refused with a
:class:`~fedrec.errors.StoreError` and left untouched. An exclusive ``flock`` on
``<file>.lock`` (held while open) refuses a second open, from this or another process.

Tables (schema :data:`SCHEMA_VERSION`; one migration function per version):

- ``meta(key, value)``: JSON values (user id, seed, creation time).
- ``interactions(seq, item, rating, timestamp)``: the user's own data, insertion order.
  ``item`` keeps its SQLite type, so original ids may be ints or strings.
- ``slots(slot, round, info)`` + ``arrays(slot, idx, name, data)``: named groups of
  numpy arrays (``np.save`` bytes) with a JSON description, e.g. the global item
  parameters with their model config and item-id list, or a user state.
- ``privacy_ledger``: :mod:`fedrec.privacy.ledger`'s table (v2).

``PRAGMA secure_delete`` is on, and a WAL checkpoint follows every deletion, so
forgotten rows do not linger in freed pages or in the WAL.

``durable=False`` (a non-private simulated device only) opens with ``synchronous=OFF``:
no fsync, so a commit survives a crash of the process (the OS holds it) but not of the
machine. Atomicity is unchanged. A private device keeps ``FULL``: its privacy ledger
must be on disk before an update is released.
"""

from __future__ import annotations

import contextlib
import fcntl
import io
import json
import os
import sqlite3
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import StoreError

APPLICATION_ID = 0x46524543  # "FREC"
SCHEMA_VERSION = 2
SQLITE_MAGIC = b"SQLite format 3\x00"
ItemId = int | str
FloatArray = npt.NDArray[np.float32]


@dataclass(frozen=True)
class Interaction:
    """One stored interaction: original item id, optional rating, timestamp (seconds)."""

    seq: int
    item: ItemId
    rating: float | None
    timestamp: float


@dataclass(frozen=True)
class Slot:
    """A named group of arrays as stored: ordered ``names``/``arrays``, ``info``, ``round``."""

    names: list[str]
    arrays: list[FloatArray]
    info: dict[str, Any]
    round: int | None


def _v1(conn: sqlite3.Connection) -> None:
    conn.execute("CREATE TABLE meta (key TEXT PRIMARY KEY, value TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE interactions (seq INTEGER PRIMARY KEY AUTOINCREMENT, "
        "item NOT NULL, rating REAL, timestamp REAL NOT NULL)"
    )
    conn.execute("CREATE TABLE slots (slot TEXT PRIMARY KEY, round INTEGER, info TEXT NOT NULL)")
    conn.execute(
        "CREATE TABLE arrays (slot TEXT NOT NULL, idx INTEGER NOT NULL, name TEXT NOT NULL, "
        "data BLOB NOT NULL, PRIMARY KEY (slot, idx))"
    )


def _v2(conn: sqlite3.Connection) -> None:
    """The shared privacy ledger table, and an index for ``forget(item)``.

    Idempotent: :func:`~fedrec.privacy.ledger.create_ledger_table` commits by itself.
    Imported here: the privacy package pulls in torch, which a plain store open avoids.
    """
    from fedrec.privacy.ledger import create_ledger_table

    conn.execute("CREATE INDEX IF NOT EXISTS interactions_item ON interactions (item)")
    create_ledger_table(conn)


MIGRATIONS: dict[int, Callable[[sqlite3.Connection], None]] = {1: _v1, 2: _v2}
"""``MIGRATIONS[v]`` takes a store from version ``v - 1`` to ``v``.

Each runs inside a transaction that also sets ``user_version``; a migration that must
commit early (a helper that commits) has to be idempotent, so a crash in between is
repaired by running it again.
"""


def to_blob(array: npt.NDArray[Any]) -> bytes:
    """``np.save`` bytes of ``array`` (no pickle)."""
    buf = io.BytesIO()
    np.save(buf, np.ascontiguousarray(array), allow_pickle=False)
    return buf.getvalue()


def from_blob(data: bytes) -> FloatArray:
    """Inverse of :func:`to_blob`."""
    return np.load(io.BytesIO(data), allow_pickle=False)  # type: ignore[no-any-return]


def _error(what: str, path: Path, fix: str) -> StoreError:
    return StoreError(what, where=str(path), fix=fix)


def _check_header(path: Path) -> None:
    """Refuse a non-empty file that does not start with the SQLite magic."""
    if not path.exists() or path.stat().st_size == 0:
        return
    with open(path, "rb") as f:
        head = f.read(len(SQLITE_MAGIC))
    if head != SQLITE_MAGIC:
        raise _error(
            "not a fedrec device store (not an SQLite file; corrupted or foreign)",
            path,
            "restore it from a backup or open a different path; the file was left untouched",
        )


def _identify(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of an existing file; raise if it is not ours or too new."""
    app = int(conn.execute("PRAGMA application_id").fetchone()[0])
    version = int(conn.execute("PRAGMA user_version").fetchone()[0])
    tables = conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]
    if app == 0 and version == 0 and tables == 0:
        return 0  # an empty database (e.g. creation was interrupted): nothing to lose
    if app != APPLICATION_ID:
        raise _error(
            f"not a fedrec device store (application_id {app:#x}, expected {APPLICATION_ID:#x})",
            path,
            "open a different path; the file was left untouched",
        )
    if version > SCHEMA_VERSION:
        raise _error(
            f"store schema version {version} is newer than this fedrec supports ({SCHEMA_VERSION})",
            path,
            "upgrade fedrec; the file was left untouched",
        )
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise _error(f"store is corrupted ({check})", path, "restore it from a backup")
    return version


def _lock(path: Path) -> int:
    """Hold an exclusive ``flock`` on ``<path>.lock``; refuse if someone holds it."""
    lock_path = path.with_name(path.name + ".lock")
    fd = os.open(lock_path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise _error(
            "store is already open (by this or another process)",
            path,
            "close the other DeviceClient first; one device store has one writer",
        ) from None
    return fd


class DeviceStore:
    """An open device store; use :meth:`open`, then :meth:`close` (or ``with``)."""

    def __init__(self, path: Path, conn: sqlite3.Connection, lock_fd: int) -> None:
        self.path = path
        self.conn = conn
        self._lock_fd = lock_fd

    @classmethod
    def open(
        cls, path: str | Path, *, target_version: int = SCHEMA_VERSION, durable: bool = True
    ) -> DeviceStore:
        """Open (or create) the store at ``path``, migrating it to ``target_version``.

        ``durable=False``: no fsync per commit (see the module docstring).

        Raises
        ------
        StoreError
            The file is corrupted or foreign, is newer than this code, is locked by
            another open, or its folder does not exist. The file is never modified then.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise _error("folder does not exist", path.parent, "create it first")
        fd = _lock(path)
        try:
            return cls(path, _connect(path, target_version, durable), fd)
        except BaseException:
            os.close(fd)
            raise

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        if self._lock_fd >= 0:
            self.conn.close()
            os.close(self._lock_fd)
            self._lock_fd = -1

    def __enter__(self) -> DeviceStore:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @contextlib.contextmanager
    def transaction(self) -> Iterator[sqlite3.Connection]:
        """One atomic, durable write transaction (nested use joins the outer one)."""
        if self.conn.in_transaction:
            yield self.conn
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            yield self.conn
        except BaseException:
            if self.conn.in_transaction:
                self.conn.execute("ROLLBACK")
            raise
        self.conn.execute("COMMIT")

    @property
    def version(self) -> int:
        """The schema version of the open file."""
        return int(self.conn.execute("PRAGMA user_version").fetchone()[0])

    def get_meta(self, key: str, default: Any = None) -> Any:
        row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return default if row is None else json.loads(row[0])

    def set_meta(self, key: str, value: Any) -> None:
        with self.transaction() as c:
            c.execute("INSERT OR REPLACE INTO meta VALUES (?, ?)", (key, json.dumps(value)))

    def add_interactions(self, rows: Sequence[tuple[ItemId, float | None, float]]) -> None:
        """Append ``(item, rating, timestamp)`` rows, all or none."""
        with self.transaction() as c:
            c.executemany("INSERT INTO interactions (item, rating, timestamp) VALUES (?,?,?)", rows)

    def interactions(self) -> list[Interaction]:
        """Every stored interaction, oldest first."""
        rows = self.conn.execute(
            "SELECT seq, item, rating, timestamp FROM interactions ORDER BY seq"
        )
        return [Interaction(int(s), i, r, float(t)) for s, i, r, t in rows]

    def delete_interactions(self, item: ItemId | None = None) -> int:
        """Delete the rows of ``item`` (all rows when ``None``); return how many."""
        with self.transaction() as c:
            if item is None:
                cur = c.execute("DELETE FROM interactions")
            else:
                cur = c.execute("DELETE FROM interactions WHERE item = ?", (item,))
        return int(cur.rowcount)

    def save_slot(
        self,
        slot: str,
        named: Sequence[tuple[str, npt.NDArray[Any]]],
        info: dict[str, Any],
        *,
        round: int | None = None,
    ) -> None:
        """Replace ``slot`` by ``named`` arrays (in order) with ``info``, atomically."""
        with self.transaction() as c:
            c.execute("DELETE FROM arrays WHERE slot = ?", (slot,))
            c.executemany(
                "INSERT INTO arrays VALUES (?, ?, ?, ?)",
                [(slot, i, n, to_blob(a)) for i, (n, a) in enumerate(named)],
            )
            c.execute(
                "INSERT OR REPLACE INTO slots VALUES (?, ?, ?)", (slot, round, json.dumps(info))
            )

    def copy_slot(self, source: str, target: str) -> None:
        """Make ``target`` a copy of ``source`` (or delete ``target`` if ``source`` is empty)."""
        with self.transaction() as c:
            self.delete_slots(target)
            c.execute(
                "INSERT INTO arrays SELECT ?, idx, name, data FROM arrays WHERE slot = ?",
                (target, source),
            )
            c.execute(
                "INSERT INTO slots SELECT ?, round, info FROM slots WHERE slot = ?",
                (target, source),
            )

    def slot_round(self, slot: str) -> tuple[bool, int | None]:
        """``(exists, round)`` of ``slot``, without reading its arrays."""
        head = self.conn.execute("SELECT round FROM slots WHERE slot = ?", (slot,)).fetchone()
        return (False, None) if head is None else (True, head[0])

    def load_slot(self, slot: str) -> Slot | None:
        """The arrays and info of ``slot``, or ``None`` if it was never saved."""
        head = self.conn.execute("SELECT round, info FROM slots WHERE slot = ?", (slot,)).fetchone()
        if head is None:
            return None
        rows = self.conn.execute(
            "SELECT name, data FROM arrays WHERE slot = ? ORDER BY idx", (slot,)
        ).fetchall()
        arrays = [from_blob(d) for _, d in rows]
        return Slot([n for n, _ in rows], arrays, json.loads(head[1]), head[0])

    def delete_slots(self, *slots: str) -> None:
        with self.transaction() as c:
            for slot in slots:
                c.execute("DELETE FROM arrays WHERE slot = ?", (slot,))
                c.execute("DELETE FROM slots WHERE slot = ?", (slot,))

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (after deletions)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _connect(path: Path, target_version: int, durable: bool = True) -> sqlite3.Connection:
    _check_header(path)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0.0)
    try:
        version = _identify(conn, path)
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, version, target_version)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _error(f"unreadable store ({exc})", path, "restore it from a backup") from exc
    except BaseException:
        conn.close()
        raise
    return conn


def migrate(conn: sqlite3.Connection, current: int, target: int = SCHEMA_VERSION) -> None:
    """Apply ``MIGRATIONS[current + 1 .. target]``, each in its own transaction."""
    for version in range(current + 1, target + 1):
        conn.execute("BEGIN IMMEDIATE")
        try:
            if version == 1:
                conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
            MIGRATIONS[version](conn)
            if not conn.in_transaction:
                conn.execute("BEGIN IMMEDIATE")
            conn.execute(f"PRAGMA user_version = {version}")
        except BaseException:
            if conn.in_transaction:
                conn.execute("ROLLBACK")
            raise
        conn.execute("COMMIT")
