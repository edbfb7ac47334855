"""Durable per-user state for simulated devices: one small ``.npz`` file per user.

Design rule: a simulated device keeps its user-side state on "its own disk", i.e. one
file per user under ``<run dir>/clients/``, never in the server's memory and never in
a reply. ``Context.state`` is not enough because it dies with the process, and a
stopped run must resume with the same user states.

Each file holds two versions of the state, each tagged with the round that wrote it:
the newest (``cur``) and the one before (``prev``). A round that was interrupted after
some clients wrote their new state, but before the server checkpointed, is re-run on
resume; :meth:`SimStore.load` with ``before_round`` then skips the half-round's
version and returns exactly the state the uninterrupted run used. One user is served
by one message at a time, so writes never race; each write is a temporary file
renamed over the old one (``os.replace``), so a crash leaves the old file or the new
one, never a torn one. Files are sharded by ``user // 1000`` so folders stay small
for hundreds of thousands of users.
"""

from __future__ import annotations

import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np
import numpy.typing as npt

from fedrec.errors import StoreError

UserState = dict[str, npt.NDArray[np.float32]]
FORMAT_VERSION = 1
_SHARD = 1000


class SimStore:
    """The user-side states of every simulated device of one run.

    Parameters
    ----------
    root
        Folder of the store, e.g. ``<run dir>/clients``; created on first write.
    """

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)

    def path(self, user: int) -> Path:
        """The file that holds ``user``'s state."""
        return self.root / f"{user // _SHARD:05d}" / f"user-{user}.npz"

    def load(self, user: int, *, before_round: int) -> UserState | None:
        """The newest state of ``user`` written in a round ``< before_round``.

        Returns ``None`` when the user has no such state (first participation).
        """
        versions = self._read(user)
        for tag in ("cur", "prev"):
            entry = versions.get(tag)
            if entry is not None and entry[0] < before_round:
                return entry[1]
        return None

    def save(self, user: int, round: int, state: UserState) -> None:
        """Store ``state`` as written in ``round``, keeping the newest older version."""
        versions = self._read(user)
        cur = versions.get("cur")
        prev = versions.get("prev")
        if cur is not None and cur[0] < round:
            prev = cur  # a re-run of the same round replaces its own version only
        arrays: dict[str, npt.NDArray[np.generic]] = {
            "version": np.array(FORMAT_VERSION),
            "cur.round": np.array(round, dtype=np.int64),
        }
        arrays.update({f"cur.state.{k}": v for k, v in state.items()})
        if prev is not None:
            arrays["prev.round"] = np.array(prev[0], dtype=np.int64)
            arrays.update({f"prev.state.{k}": v for k, v in prev[1].items()})
        self._write(self.path(user), arrays)

    def users(self) -> list[int]:
        """Every user with a stored state, ascending."""
        if not self.root.is_dir():
            return []
        return sorted(int(p.stem.split("-", 1)[1]) for p in self.root.glob("*/user-*.npz"))

    def _read(self, user: int) -> dict[str, tuple[int, UserState]]:
        path = self.path(user)
        if not path.exists():
            return {}
        try:
            with np.load(path) as npz:
                raw = {k: npz[k] for k in npz.files}
        except (OSError, ValueError, zipfile.BadZipFile) as err:
            raise StoreError(
                f"unreadable device state ({err})",
                where=str(path),
                fix="delete this file to let the user re-initialize, or restart the run",
            ) from err
        if int(raw.get("version", -1)) != FORMAT_VERSION:
            raise StoreError(
                f"unknown store format {raw.get('version')}",
                where=str(path),
                fix=f"this fedrec reads format {FORMAT_VERSION}; use a new run directory",
            )
        out: dict[str, tuple[int, UserState]] = {}
        for tag in ("cur", "prev"):
            if f"{tag}.round" in raw:
                prefix = f"{tag}.state."
                state = {
                    k[len(prefix) :]: v.astype(np.float32)
                    for k, v in raw.items()
                    if k.startswith(prefix)
                }
                out[tag] = (int(raw[f"{tag}.round"]), state)
        return out

    @staticmethod
    def _write(path: Path, arrays: dict[str, npt.NDArray[np.generic]]) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        try:
            with os.fdopen(fd, "wb") as fh:
                np.savez(fh, **arrays)  # type: ignore[arg-type]
            os.replace(tmp, path)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise
