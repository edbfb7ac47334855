"""The durable local store of one device: a single SQLite file, WAL, one writer.

Design rule: **one file per device, one transaction per logical change, never
overwrite what is not ours.** Every change the device makes (a batch of interactions,
a set of arrays with their description, a deletion) is one SQLite transaction with
``synchronous=FULL`` in WAL mode, so a process killed at any instant leaves the file
as it was before or after that change, never in between (SQLite's atomic commit).
The file carries ``PRAGMA application_id`` = :data:`APPLICATION_ID` and its schema
version in ``PRAGMA user_version``; a file that is not SQLite, is another program's
database, was written by a newer schema, lacks a table or column of its schema, or holds
unreadable rows is refused with a :class:`~fedrec.errors.StoreError`. A file that is not
ours is identified from its header and, where needed, a read-only ``immutable`` view,
before any connection that could write (SQLite would fold another program's pending WAL
into its database on close), so it is left untouched, WAL included.

An exclusive ``flock`` on the database file itself (held while open) refuses a second
open, from this or another process, by whatever name: a symlink or a hard link to an open
store is refused too. Within one process a registry keyed by ``(st_dev, st_ino)``
answers first, so a refused open never opens and closes a descriptor of a file that
SQLite holds POSIX locks on (closing any descriptor drops them). Local file systems
only, as for SQLite's WAL mode itself.

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
machine. Atomicity is unchanged. It also opens in SQLite's exclusive locking mode, so WAL
needs no shared-memory ``-shm`` file (created, mapped and removed at every open, about a
third of an open's cost); no other connection reads such a store while it is open (the
``flock`` refuses a second open, and only a local-DP store's ledger is read beside its
owner). A private device keeps ``FULL`` and the normal locking mode: its privacy ledger
must be on disk before an update is released, and may be read while the device is open.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import stat
import threading
import urllib.parse
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import StoreError
from fedrec.federated.npy import load_npy, save_npy

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
    return save_npy(np.ascontiguousarray(array))


def from_blob(data: bytes) -> FloatArray:
    """Inverse of :func:`to_blob`; :class:`ValueError` on bytes that are not a numeric array."""
    try:
        array = load_npy(data)
    except (ValueError, OSError, EOFError) as exc:
        raise ValueError(
            f"a stored array is not a numeric .npy blob ({type(exc).__name__})"
        ) from exc
    if not isinstance(array, np.ndarray) or array.dtype.kind not in "biuf":
        raise ValueError("a stored array is not a numeric .npy blob")
    return array


def _error(what: str, path: Path, fix: str) -> StoreError:
    return StoreError(what, where=str(path), fix=fix)


_RESTORE = "restore it from a backup"
_UNTOUCHED = "open a different path; the file was left untouched"

TABLES: dict[int, dict[str, tuple[str, ...]]] = {
    1: {
        "meta": ("key", "value"),
        "interactions": ("seq", "item", "rating", "timestamp"),
        "slots": ("slot", "round", "info"),
        "arrays": ("slot", "idx", "name", "data"),
    },
}
TABLES[2] = {**TABLES[1], "privacy_ledger": ("seq", "client_id", "body")}
"""The tables and columns each schema version must have (checked at every open)."""


@contextlib.contextmanager
def _reading(path: Path) -> Iterator[None]:
    """Turn a failure to decode stored content into a :class:`StoreError`."""
    try:
        yield
    except (ValueError, TypeError, sqlite3.DatabaseError) as exc:
        if isinstance(exc, StoreError):
            raise
        raise _error(f"store content is corrupted ({_one_line(exc)})", path, _RESTORE) from exc


def _one_line(exc: BaseException) -> str:
    return " ".join(str(exc).split()) or type(exc).__name__


_OPEN: dict[tuple[int, int], list[int]] = {}
"""``(st_dev, st_ino)`` of every store open in this process -> descriptors to close with it."""
_OPEN_GUARD = threading.Lock()


def _already_open(path: Path) -> StoreError:
    return _error(
        "store is already open (by this or another process, under this name or another: "
        "a symlink or hard link)",
        path,
        "close the other DeviceClient first; one device store has one writer",
    )


def _not_a_file(path: Path, mode: int) -> StoreError:
    kind = "a folder" if stat.S_ISDIR(mode) else "not a regular file"
    return _error(
        f"the store path is {kind}", path, "choose a file path for the store; nothing was changed"
    )


def _lock(path: Path) -> tuple[int, tuple[int, int]]:
    """Hold an exclusive ``flock`` on the store file; refuse if anyone holds it.

    Returns the descriptor and the file's ``(st_dev, st_ino)``. Creates the file
    (0600) when it does not exist.
    """
    with _OPEN_GUARD:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            pass
        except OSError as exc:
            raise _error(f"cannot open ({exc.strerror})", path, "check the path") from exc
        else:
            if not stat.S_ISREG(st.st_mode):
                raise _not_a_file(path, st.st_mode)
            if (st.st_dev, st.st_ino) in _OPEN:
                raise _already_open(path)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT | os.O_NONBLOCK, 0o600)
        except OSError as exc:
            raise _error(
                f"cannot open the store file ({exc.strerror})",
                path,
                "check that the path is a writable file (a dangling symlink is not)",
            ) from exc
        st = os.fstat(fd)
        key = (st.st_dev, st.st_ino)
        if key in _OPEN:  # it appeared under this name since the check: close with the owner
            _OPEN[key].append(fd)
            raise _already_open(path)
        if not stat.S_ISREG(st.st_mode):
            os.close(fd)
            raise _not_a_file(path, st.st_mode)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)  # no store of this process has the file open (registry)
            raise _already_open(path) from None
        _OPEN[key] = []
        return fd, key


def _unlock(fd: int, key: tuple[int, int]) -> None:
    """Release the lock of :func:`_lock` (after the SQLite connection is closed)."""
    with _OPEN_GUARD:
        for extra in _OPEN.pop(key, []):
            os.close(extra)
        os.close(fd)


def _inspect(path: Path, fd: int) -> None:
    """Refuse a file that is not ours, reading it without any connection that could write.

    Our own files carry :data:`APPLICATION_ID` in the header of the main file (set
    before the switch to WAL). A file without it is either empty (creation was
    interrupted: nothing to lose) or foreign; an ``immutable`` read-only view tells
    which. A pending WAL beside such a file is another program's, unless its newest
    frame of page 1 carries our id (a store created by an older fedrec, interrupted
    before its first checkpoint).
    """
    head = os.pread(fd, 100, 0)
    if not head:
        return
    if not head.startswith(SQLITE_MAGIC):
        raise _error(
            "not a fedrec device store (not an SQLite file; corrupted or foreign)",
            path,
            "restore it from a backup or open a different path; the file was left untouched",
        )
    if len(head) < 100:
        raise _error("store is truncated (incomplete SQLite header)", path, _RESTORE)
    if int.from_bytes(head[68:72], "big") == APPLICATION_ID:
        return
    wal = Path(os.path.realpath(path) + "-wal")
    if wal.is_file() and wal.stat().st_size > 0:
        if _wal_application_id(wal) == APPLICATION_ID:
            return
        raise _error(
            f"not a fedrec device store (another program's SQLite database, with pending "
            f"writes in {wal.name})",
            path,
            _UNTOUCHED,
        )
    uri = "file:" + urllib.parse.quote(os.path.realpath(path)) + "?mode=ro&immutable=1"
    try:
        view = sqlite3.connect(uri, uri=True)
        try:
            _check_identity(view, path)
        finally:
            view.close()
    except sqlite3.DatabaseError as exc:
        raise _error(f"unreadable store ({_one_line(exc)})", path, _RESTORE) from exc


def _wal_application_id(wal: Path) -> int | None:
    """The application id in the newest page-1 frame of ``wal`` (salts checked), if any."""
    with open(wal, "rb") as f:
        header = f.read(32)
        if len(header) < 32 or header[:4] not in (b"\x37\x7f\x06\x82", b"\x37\x7f\x06\x83"):
            return None
        page_size = int.from_bytes(header[8:12], "big")
        salts = header[16:24]
        found = None
        while True:
            frame = f.read(24)
            page = f.read(page_size)
            if len(frame) < 24 or len(page) < page_size or frame[8:16] != salts:
                return found
            if int.from_bytes(frame[:4], "big") == 1:
                found = int.from_bytes(page[68:72], "big")


def _check_identity(conn: sqlite3.Connection, path: Path) -> int:
    """The schema version of a file, 0 if empty; raise if it is not ours or too new."""
    app, version, tables = (
        int(v)
        for v in conn.execute(
            "SELECT (SELECT application_id FROM pragma_application_id), "
            "(SELECT user_version FROM pragma_user_version), "
            "(SELECT count(*) FROM sqlite_master)"
        ).fetchone()
    )
    if app in (0, APPLICATION_ID) and version == 0 and tables == 0:
        return 0  # an empty database (e.g. creation was interrupted): nothing to lose
    if app != APPLICATION_ID:
        raise _error(
            f"not a fedrec device store (application_id {app:#x}, expected {APPLICATION_ID:#x})",
            path,
            _UNTOUCHED,
        )
    if version > SCHEMA_VERSION:
        raise _error(
            f"store schema version {version} is newer than this fedrec supports ({SCHEMA_VERSION})",
            path,
            "upgrade fedrec; the file was left untouched",
        )
    return version


def _identify(conn: sqlite3.Connection, path: Path) -> int:
    """:func:`_check_identity`, then integrity and the tables of that schema version."""
    version = _check_identity(conn, path)
    check = conn.execute("PRAGMA quick_check").fetchone()[0]
    if check != "ok":
        raise _error(f"store is corrupted ({check})", path, _RESTORE)
    for table, columns in TABLES.get(version, {}).items():
        have = tuple(r[1] for r in conn.execute(f"PRAGMA table_info({table})"))
        if have != columns:
            found = f"columns {', '.join(have)}" if have else "missing"
            raise _error(
                f"store schema {version} is damaged (table {table}: {found}; "
                f"expected {', '.join(columns)})",
                path,
                _RESTORE,
            )
    return version


class DeviceStore:
    """An open device store; use :meth:`open`, then :meth:`close` (or ``with``)."""

    def __init__(
        self, path: Path, conn: sqlite3.Connection, lock_fd: int, lock_key: tuple[int, int]
    ) -> None:
        self.path = path
        self.conn = conn
        self._lock_fd = lock_fd
        self._lock_key = lock_key

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        target_version: int = SCHEMA_VERSION,
        durable: bool = True,
        user_id: str | int | None = None,
    ) -> DeviceStore:
        """Open (or create) the store at ``path``, migrating it to ``target_version``.

        ``durable=False``: no fsync per commit (see the module docstring). ``user_id``:
        refuse a store created for another user (its ``meta`` ``user_id``), read before
        anything is written, the migration of an older schema included. (If its owner
        stopped without closing it, SQLite folds the owner's committed WAL into the file
        when the refused open closes: the bytes change, the content does not.)

        Raises
        ------
        StoreError
            The file is corrupted or foreign, is newer than this code, belongs to
            another user than ``user_id``, is locked by another open (under any name),
            is not a regular file, or its folder does not exist. A foreign, newer or
            other user's file is never modified then.
        """
        path = Path(path)
        if not path.parent.is_dir():
            raise _error("folder does not exist", path.parent, "create it first")
        fd, key = _lock(path)
        try:
            _remove_legacy_lock(path)
            return cls(path, _connect(path, fd, target_version, durable, user_id), fd, key)
        except BaseException:
            _unlock(fd, key)
            raise

    def close(self) -> None:
        """Close the connection and release the lock (idempotent)."""
        if self._lock_fd >= 0:
            self.conn.close()
            _unlock(self._lock_fd, self._lock_key)
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
        with _reading(self.path):
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
        with _reading(self.path):
            rows = self.conn.execute(
                "SELECT seq, item, rating, timestamp FROM interactions ORDER BY seq"
            )
            return [_interaction(*row) for row in rows]

    def history(self) -> tuple[list[ItemId], list[float]]:
        """The items and timestamps of :meth:`interactions`, oldest first, checked alike
        (the first unreadable row is refused), without a record per row: a device reads
        them at every open."""
        with _reading(self.path):
            bad = self.conn.execute(
                "SELECT seq, item, rating, timestamp FROM interactions WHERE "
                "typeof(item) NOT IN ('integer', 'text') "
                "OR typeof(timestamp) NOT IN ('integer', 'real') "
                "OR typeof(rating) NOT IN ('null', 'integer', 'real') ORDER BY seq LIMIT 1"
            ).fetchone()
            if bad is not None:
                _interaction(*bad)  # raises, as interactions() does on that row
            rows = self.conn.execute(
                "SELECT item, timestamp FROM interactions ORDER BY seq"
            ).fetchall()
            return [r[0] for r in rows], [float(r[1]) for r in rows]

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
        with _reading(self.path):
            head = self.conn.execute("SELECT round FROM slots WHERE slot = ?", (slot,)).fetchone()
            return (False, None) if head is None else (True, _round(head[0]))

    def load_slot(self, slot: str) -> Slot | None:
        """The arrays and info of ``slot``, or ``None`` if it was never saved."""
        with _reading(self.path):
            head = self.conn.execute(
                "SELECT round, info FROM slots WHERE slot = ?", (slot,)
            ).fetchone()
            if head is None:
                return None
            rows = self.conn.execute(
                "SELECT name, data FROM arrays WHERE slot = ? ORDER BY idx", (slot,)
            ).fetchall()
            arrays = [from_blob(d) for _, d in rows]
            info = json.loads(head[1])
            if not isinstance(info, dict) or not all(isinstance(n, str) for n, _ in rows):
                raise ValueError(f"slot {slot!r} has a malformed description")
            return Slot([n for n, _ in rows], arrays, info, _round(head[0]))

    def delete_slots(self, *slots: str) -> None:
        with self.transaction() as c:
            for slot in slots:
                c.execute("DELETE FROM arrays WHERE slot = ?", (slot,))
                c.execute("DELETE FROM slots WHERE slot = ?", (slot,))

    def checkpoint(self) -> None:
        """Fold the WAL into the main file and truncate it (after deletions)."""
        self.conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


def _interaction(seq: int, item: object, rating: object, stamp: object) -> Interaction:
    if not isinstance(item, int | str) or not isinstance(stamp, int | float):
        raise ValueError(f"interaction {seq}: item {item!r}, timestamp {stamp!r}")
    if rating is not None and not isinstance(rating, int | float):
        raise ValueError(f"interaction {seq}: rating {rating!r}")
    return Interaction(int(seq), item, rating, float(stamp))


def _round(value: object) -> int | None:
    if value is not None and not isinstance(value, int):
        raise ValueError(f"round {value!r} is not an integer")
    return value


def _remove_legacy_lock(path: Path) -> None:
    """Delete the empty ``<file>.lock`` sidecar older versions left beside each store."""
    legacy = path.with_name(path.name + ".lock")
    with contextlib.suppress(OSError):
        if legacy.is_file() and not legacy.is_symlink() and legacy.stat().st_size == 0:
            legacy.unlink()


def _connect(
    path: Path, fd: int, target_version: int, durable: bool, user_id: str | int | None
) -> sqlite3.Connection:
    _inspect(path, fd)
    conn = sqlite3.connect(str(path), isolation_level=None, timeout=0.0)
    try:
        if not durable:  # before the first read: no shared-memory (-shm) index at all
            conn.execute("PRAGMA locking_mode=EXCLUSIVE")
        version = _identify(conn, path)
        if user_id is not None and version > 0:  # reads only: before any write
            _check_owner(conn, path, user_id)
        # before the first write: a simulated device's store (durable=False) is created
        # without an fsync (setting the id under the default FULL cost 19 ms per store)
        conn.execute(f"PRAGMA synchronous={'FULL' if durable else 'OFF'}")
        if version == 0:  # our id in the main file before any WAL frame (see _inspect)
            conn.execute(f"PRAGMA application_id = {APPLICATION_ID}")
        conn.execute("PRAGMA journal_mode=WAL")
        conn.execute("PRAGMA secure_delete=ON")
        conn.execute("PRAGMA foreign_keys=ON")
        migrate(conn, version, target_version)
    except sqlite3.DatabaseError as exc:
        conn.close()
        raise _error(f"unreadable store ({_one_line(exc)})", path, _RESTORE) from exc
    except BaseException:
        conn.close()
        raise
    return conn


def _check_owner(conn: sqlite3.Connection, path: Path, user_id: str | int) -> None:
    """Refuse a store created (``meta`` ``created`` set) for another user than ``user_id``."""
    with _reading(path):
        rows = conn.execute("SELECT key, value FROM meta WHERE key IN ('user_id', 'created')")
        meta = {key: json.loads(value) for key, value in rows}
    if meta.get("created") is not None and meta.get("user_id") != user_id:
        raise _error(
            f"store belongs to user {meta.get('user_id')!r}, not {user_id!r}",
            path,
            "open this user's own store file; nothing was written into this one",
        )


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
