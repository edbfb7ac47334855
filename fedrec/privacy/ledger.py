"""A durable per-client privacy ledger: write what you are about to spend, then release.

Design rule: **write before send, never refund**. Before a client releases an update it
appends the accountant history *after* that release to durable storage (an SQLite
commit with ``synchronous=FULL``, or an fsync'd atomic file replace) and only then
sends. A crash or a failed send after the write keeps the spend: the update may have
left the device. A redo of the same round is a new release with fresh noise and is
charged again. A client whose next release would exceed its budget does not train
(:meth:`PrivacyLedger.would_exceed`).

Storage is pluggable (:class:`LedgerStore`) so that the simulation's per-client stores
and the on-device SQLite store (one file per device) share this logic: the SQLite
functions (:func:`create_ledger_table`, :func:`ledger_append`, :func:`ledger_records`)
work on any ``sqlite3.Connection`` in their own ``privacy_ledger`` table.
"""

from __future__ import annotations

import json
import sqlite3
import time
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any, Protocol

from fedrec.data.atomic import atomic_write_bytes
from fedrec.errors import BudgetExhaustedError, StoreError

if TYPE_CHECKING:  # Opacus (and torch): imported by the accounting, not by a store's creation
    from fedrec.privacy.accounting import PrivacyAccount, Release

Record = dict[str, Any]
FILE_FORMAT = "fedrec-privacy-ledger"
FILE_VERSION = 1

_SCHEMA = """
CREATE TABLE IF NOT EXISTS privacy_ledger (
    seq INTEGER PRIMARY KEY AUTOINCREMENT,
    client_id TEXT NOT NULL,
    body TEXT NOT NULL
)
"""


class LedgerStore(Protocol):
    """Where ledger records live; :meth:`append` returns only once the record is durable."""

    def records(self) -> list[Record]: ...

    def append(self, record: Record) -> None: ...


def connect_ledger(path: str | Path) -> sqlite3.Connection:
    """Open (create) an SQLite ledger database with ``synchronous=FULL`` and WAL."""
    conn = sqlite3.connect(str(path), timeout=60.0)
    conn.execute("PRAGMA journal_mode=WAL")
    conn.execute("PRAGMA synchronous=FULL")
    create_ledger_table(conn)
    return conn


def create_ledger_table(conn: sqlite3.Connection) -> None:
    """Create the ``privacy_ledger`` table in ``conn`` if it is missing."""
    conn.execute(_SCHEMA)
    conn.commit()


def ledger_append(conn: sqlite3.Connection, client_id: str, record: Record) -> None:
    """Append ``record`` for ``client_id`` and commit with ``synchronous=FULL``.

    Commits any transaction the caller had open on ``conn``.
    """
    if int(conn.execute("PRAGMA synchronous").fetchone()[0]) < 2:
        if conn.in_transaction:
            raise StoreError(
                "ledger connection is not synchronous=FULL",
                where="privacy_ledger",
                fix="open it with connect_ledger or run PRAGMA synchronous=FULL first",
            )
        conn.execute("PRAGMA synchronous=FULL")
    conn.execute(
        "INSERT INTO privacy_ledger (client_id, body) VALUES (?, ?)",
        (client_id, json.dumps(record, sort_keys=True)),
    )
    conn.commit()


def ledger_records(conn: sqlite3.Connection, client_id: str) -> list[Record]:
    """All records of ``client_id``, oldest first."""
    rows = conn.execute(
        "SELECT body FROM privacy_ledger WHERE client_id = ? ORDER BY seq", (client_id,)
    ).fetchall()
    return [json.loads(body) for (body,) in rows]


class SqliteLedgerStore:
    """The ledger of ``client_id`` in the ``privacy_ledger`` table of ``conn``."""

    def __init__(self, conn: sqlite3.Connection, client_id: str) -> None:
        create_ledger_table(conn)
        self.conn = conn
        self.client_id = client_id

    def records(self) -> list[Record]:
        return ledger_records(self.conn, self.client_id)

    def append(self, record: Record) -> None:
        ledger_append(self.conn, self.client_id, record)


class MemoryLedgerStore:
    """Records in a list: the Flower-free reference loop's stand-in for a device's store.

    Not durable; for in-process simulations (:mod:`fedrec.federated.loop`) only.
    """

    def __init__(self) -> None:
        self._records: list[Record] = []

    def records(self) -> list[Record]:
        return list(self._records)

    def append(self, record: Record) -> None:
        self._records.append(record)


class FileLedgerStore:
    """A JSON ledger file, rewritten atomically (temp file, fsync, rename, fsync dir)."""

    def __init__(self, path: str | Path) -> None:
        self.path = Path(path)

    def records(self) -> list[Record]:
        if not self.path.exists():
            return []
        try:
            data = json.loads(self.path.read_text())
            ok = data.get("format") == FILE_FORMAT and data.get("version") == FILE_VERSION
        except (json.JSONDecodeError, AttributeError) as exc:
            raise StoreError(f"unreadable ledger ({exc})", where=str(self.path)) from exc
        if not ok:
            raise StoreError(
                "not a fedrec privacy ledger of a known version",
                where=str(self.path),
                fix="point to the ledger file this client wrote",
            )
        return list(data["entries"])

    def append(self, record: Record) -> None:
        """Rewrite the file with ``record`` added: 0600 under any umask (a ledger is user
        data), through a temporary sibling, fsync, rename and an fsync of the folder."""
        data = {"format": FILE_FORMAT, "version": FILE_VERSION}
        data["entries"] = [*self.records(), record]
        atomic_write_bytes(self.path, json.dumps(data, sort_keys=True).encode("utf-8"))


@dataclass(frozen=True)
class Spent:
    """What a client has spent: ``(epsilon, delta)``-DP for ``unit`` under ``accountant``."""

    epsilon: float
    delta: float
    unit: str
    accountant: str
    releases: int
    rounds_participated: int
    history: list[list[float]]


def spent_from_records(records: Sequence[Record]) -> Spent:
    """The statement a ledger holding ``records`` makes (:meth:`PrivacyLedger.spent`).

    Read from the records alone: the last one holds the cumulative history and the
    epsilon a fresh Opacus accountant gave it at the ledger's delta when it was written.
    """
    if not records:
        raise StoreError("empty ledger", where="privacy ledger", fix="read a ledger with releases")
    from fedrec.privacy.accounting import PrivacyAccount

    last = records[-1]
    return Spent(
        epsilon=float(last["epsilon"]),
        delta=float(last["delta"]),
        unit=str(last["unit"]),
        accountant=str(last["accountant"]),
        releases=len(records),
        rounds_participated=len({int(r["round"]) for r in records}),
        history=PrivacyAccount.from_history(last["history"], accountant=last["accountant"]).history,
    )


class PrivacyLedger:
    """One client's privacy ledger over a :class:`LedgerStore`.

    Parameters
    ----------
    store
        Where records are kept durably.
    accountant
        ``"rdp"`` or ``"prv"``; must match what the store already holds.
    delta
        The delta every statement of this ledger is made at.
    unit
        The protected unit, e.g. ``"one interaction"`` (kept in every record).
    """

    def __init__(self, store: LedgerStore, *, accountant: str, delta: float, unit: str) -> None:
        from fedrec.privacy.accounting import check_accountant, check_delta

        check_accountant(accountant)
        check_delta(delta)
        self.store = store
        self.accountant = accountant
        self.delta = delta
        self.unit = unit
        self._records = store.records()
        for rec in self._records:
            if rec["accountant"] != accountant:
                raise StoreError(
                    f"ledger was kept with accountant {rec['accountant']!r}, not {accountant!r}",
                    where="privacy ledger",
                    fix=f"resume with accountant {rec['accountant']!r}",
                )

    @property
    def account(self) -> PrivacyAccount:
        """The composed account of every recorded release (exactly as recorded)."""
        from fedrec.privacy.accounting import PrivacyAccount

        history = self._records[-1]["history"] if self._records else []
        return PrivacyAccount.from_history(history, accountant=self.accountant)

    def would_exceed(
        self,
        budget_epsilon: float,
        delta: float | None,
        next_release: Release | Sequence[Release],
    ) -> bool:
        """Whether recording ``next_release`` (one release or a round's list) would take
        epsilon at ``delta`` (``None``: the ledger's) above ``budget_epsilon``."""
        from fedrec.privacy.accounting import Release

        releases = [next_release] if isinstance(next_release, Release) else list(next_release)
        after = self.account
        for release in releases:
            after = after.after(release)
        return after.epsilon(self.delta if delta is None else delta) > budget_epsilon

    def reserve(
        self, release: Release, *, round: int, budget_epsilon: float | None = None
    ) -> Spent:
        """Durably record ``release`` for ``round``; call *before* sending the update.

        Raises
        ------
        BudgetExhaustedError
            When ``budget_epsilon`` is given and the release would exceed it (nothing
            is written then).
        """
        after = self.account.after(release)
        epsilon = after.epsilon(self.delta)
        if budget_epsilon is not None and epsilon > budget_epsilon:
            raise BudgetExhaustedError(
                f"round {round} would spend epsilon {epsilon:.3f} > budget {budget_epsilon}",
                where="privacy ledger",
                fix="skip this round; the client has no budget left",
            )
        record: Record = {
            "round": int(round),
            "release": release.entry(),
            "history": after.history,
            "accountant": self.accountant,
            "delta": self.delta,
            "epsilon": epsilon,
            "unit": self.unit,
            "time": time.time(),
        }
        self.store.append(record)
        self._records.append(record)
        return self.spent()

    def spent(self, delta: float | None = None) -> Spent:
        """The client's privacy statement so far."""
        d = self.delta if delta is None else delta
        account = self.account
        return Spent(
            epsilon=account.epsilon(d),
            delta=d,
            unit=self.unit,
            accountant=self.accountant,
            releases=len(self._records),
            rounds_participated=len({int(r["round"]) for r in self._records}),
            history=account.history,
        )
