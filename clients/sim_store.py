"""Where simulated devices live: one :class:`~clients.device.DeviceClient` store per user.

Design rule: a simulated device is a real device. Each user gets its own SQLite store
(:mod:`clients.store`: interactions, training and serving states, privacy ledger) under
``<run dir>/clients/``, opened for one message and closed again, so a run scales to
thousands of users (no open files between messages, folders sharded by
``user // 1000``) and a stopped run resumes from the very files a deployment would
keep. Only the data differ: a real device records its user's interactions itself,
while a simulated one is fed its user's *train* interactions from the split on first
use (:func:`open_device`). The global item parameters arrive with every message and
are not persisted (``keep_global=False``).
"""

from __future__ import annotations

import contextlib
import os
import sqlite3
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from clients.device import DeviceClient
from clients.store import DeviceStore
from fedrec.errors import StoreError
from fedrec.privacy.ledger import (
    PrivacyLedger,
    Spent,
    SqliteLedgerStore,
    ledger_records,
    spent_from_records,
)

_SHARD = 1000
SUFFIX = ".sqlite"


def device_path(root: str | Path, user: int) -> Path:
    """The store file of ``user``'s simulated device under ``root``."""
    return Path(root) / f"{user // _SHARD:05d}" / f"user-{user}{SUFFIX}"


def _private_store(path: Path) -> None:
    """Folders 0700 and the store file 0600 before SQLite opens it (its -wal and -shm
    files take the store's mode), whatever the process's umask: a store is user data."""
    if path.exists():
        return
    for folder in (path.parent.parent, path.parent):
        folder.mkdir(mode=0o700, parents=True, exist_ok=True)
    with contextlib.suppress(FileExistsError):  # an empty file is an empty SQLite database
        os.close(os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600))


def open_device(
    root: str | Path,
    user: int,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    durable: bool = True,
    secret_negatives: bool = False,
) -> DeviceClient:
    """Open ``user``'s device, feeding it ``train_items`` if it holds no data yet.

    The feed is one transaction (all rows or none), so a crash during it is simply
    repeated at the next open. Item ids are the split's item indices. ``durable=False``
    (a run without local DP) skips fsync: a resume after a crash of the simulation
    process stays exact, a power loss may lose the last rounds' user states.

    ``secret_negatives=False`` (a simulated device, the default): the device holds no
    secret negative-sampling key and uses the public key, as the reference loop does,
    so the runs are equal and reproducible from the run seed. ``True`` (a deployed
    SuperNode, :mod:`clients.client_app`): the device draws its own secret key on first
    open and keeps it (:meth:`DeviceClient.open`).
    """
    path = device_path(root, user)
    _private_store(path)
    device = DeviceClient.open(
        path,
        user_id=user,
        seed=seed,
        keep_global=False,
        durable=durable,
        secret_negatives=secret_negatives,
    )
    try:
        if len(train_items) and not device.n_interactions:
            device.record_many((int(i), None, float(t)) for t, i in enumerate(train_items))
    except BaseException:
        device.close()
        raise
    return device


def users(root: str | Path) -> list[int]:
    """Every user with a device store under ``root``, ascending."""
    base = Path(root)
    if not base.is_dir():
        return []
    return sorted(int(p.stem.split("-", 1)[1]) for p in base.glob(f"*/user-*{SUFFIX}"))


def read_ledgers(
    root: str | Path, only: Iterable[int] | None = None, *, skip_busy: bool = False
) -> dict[int, Spent]:
    """Each device's privacy statement from its own ledger (devices with no release left out).

    The ledgers include spends that never reached the server (a crash after the
    ledger write), so they are the ground truth of a simulation's ``privacy.json``.
    ``only``: these users (default: every device under ``root``). Each store is opened
    exclusively: with ``skip_busy`` a store that is open elsewhere (a straggling
    client) is left out, else that raises :class:`~fedrec.errors.StoreError`.
    """
    out: dict[int, Spent] = {}
    chosen = users(root) if only is None else sorted(set(only))
    for user in chosen:
        path = device_path(root, user)
        if only is not None and not path.exists():
            continue
        try:
            store = DeviceStore.open(path)
        except StoreError:
            if skip_busy:
                continue
            raise
        try:
            client_id = str(store.get_meta("user_id"))
            records = ledger_records(store.conn, client_id)
            if records:
                last = records[-1]
                ledger = PrivacyLedger(
                    SqliteLedgerStore(store.conn, client_id),
                    accountant=str(last["accountant"]),
                    delta=float(last["delta"]),
                    unit=str(last["unit"]),
                )
                out[user] = ledger.spent()
        finally:
            store.close()
    return out


def ledger_reader(root: str | Path) -> Callable[[Iterable[int] | None], dict[int, Spent]]:
    """The simulation harness's reader of its devices' ledgers (``privacy.json``).

    Passed to :func:`server.server_app.run_server` as ``device_ledgers`` by the harness,
    which owns the simulated devices; no train reply carries a ledger. It reads each
    ledger through a read-only SQLite connection (WAL: a device writing at the same
    time is not disturbed, and only committed records are seen), without the store's
    exclusive open; an unreadable store is left out until the next read. Measured:
    about 0.5 ms per device (300 devices, 2 shared cores).
    """

    def read(only: Iterable[int] | None) -> dict[int, Spent]:
        out: dict[int, Spent] = {}
        for user in users(root) if only is None else sorted(set(only)):
            records = _ledger_records_read_only(device_path(root, user), str(user))
            if records:
                out[user] = spent_from_records(records)
        return out

    return read


def _ledger_records_read_only(path: Path, client_id: str) -> list[dict[str, Any]]:
    """The ledger records of ``client_id`` in the store at ``path`` ([] if none or unreadable)."""
    if not path.exists():
        return []
    try:
        conn = sqlite3.connect(f"file:{path}?mode=ro", uri=True, timeout=5.0)
        try:
            return ledger_records(conn, client_id)
        finally:
            conn.close()
    except sqlite3.Error:  # not yet a database, or no ledger table yet
        return []
