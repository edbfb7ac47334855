"""The run directory of ``fedrec simulate``: layout, ``config.json``, resume checks.

Layout (file names from :mod:`server.checkpoint`, which the server writes through)::

    RUN_DIR/
      config.json       everything needed to reproduce the run (written once, here)
      rounds.jsonl      one line per round: round, metrics|null, participants, failed,
                        failures (user -> reason), budget_exhausted, refused (local DP
                        refusals: user -> status), seconds, epsilon so far (null: no
                        privacy or a local-DP deployment; central: the amplified one;
                        local simulation: {"median", "max"} over the devices' ledgers);
                        central mode writes COUNTS only (participants, failed,
                        budget_exhausted, refused are ints, no failures): the cohort is
                        secret; a central run stopped by its budget ends with a line
                        ``{"round": r, "stopped": why, ...}`` for the round not run
      privacy.json      the privacy statement (fedrec.privacy.report), every round
      privacy.reserved.json  central: the accounting written ahead of each release (0600)
      metrics.json      final metrics (fedrec.metrics.METRIC_KEYS) of the federated model
                        on ALL test users, plus ``reference: {popularity, ease}``
      checkpoint.npz    global item arrays + server optimizer state after the last round
      checkpoint.json   that round and the arrays' shapes
      clients/          one file per simulated device (clients.sim_store)
      report.md         rendered by simulations.report when that module is present

Design rule: a directory is either new (refused unless empty) or resumed (must hold a
``config.json`` written by fedrec); the settings of a resumed run are read back from
``config.json``, never re-typed, so a resumed run is the run that was started.
Every file is written atomically (temporary sibling + ``os.replace``).

Safety rules (issue 15):

- The directory is created only after the data are loaded and the settings validated
  (:func:`open_new_run_dir` takes the loaded split), so a refused run leaves nothing.
- It holds user data: the folder is 0700, every file 0600 (the commands also run with
  umask 077, so Ray workers and SQLite create their files private too).
- One process per run: :func:`lock_run_dir` takes an exclusive, non-blocking
  ``flock`` on ``.fedrec.lock`` for the whole run (released by the kernel when the
  process dies, so a crash never leaves a stale lock).
- ``config.json`` records a fingerprint of the data and of the split
  (:func:`fingerprint`); a resume on other data is refused (:func:`check_fingerprint`),
  since the client stores and the checkpoint were made from the recorded data.
"""

from __future__ import annotations

import contextlib
import dataclasses
import errno
import fcntl
import hashlib
import json
import os
import platform
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, TYPE_CHECKING, Any

import numpy as np

from fedrec.data.atomic import PRIVATE_DIR, check_output_dir
from fedrec.errors import DataError, OutputError
from server.checkpoint import (
    CHECKPOINT_JSON,
    CLIENTS_DIR,
    CONFIG_JSON,
    METRICS_JSON,
    ROUNDS_JSONL,
    atomic_write_json,
)
from server.settings import RunSettings, load_split, read_flat

if TYPE_CHECKING:  # SciPy: a served run reads its settings here (simulations.run_model)
    from fedrec.data.split import Split

LOCK_FILE = ".fedrec.lock"

__all__ = [
    "CHECKPOINT_JSON",
    "CLIENTS_DIR",
    "CONFIG_JSON",
    "LOCK_FILE",
    "METRICS_JSON",
    "ROUNDS_JSONL",
    "RunDirLock",
    "acquire_run_dir",
    "check_fingerprint",
    "config_payload",
    "create_run_dir",
    "fingerprint",
    "finished_round",
    "lock_run_dir",
    "open_new_run_dir",
    "read_metrics",
    "read_rounds",
    "resume_settings",
]


def versions() -> dict[str, str]:
    """Versions of everything that can change a result."""
    import flwr
    import numpy
    import torch

    import fedrec

    return {
        "fedrec": fedrec.__version__,
        "flwr": flwr.__version__,
        "torch": torch.__version__,
        "numpy": numpy.__version__,
        "python": platform.python_version(),
    }


def _sha256(*arrays: Any) -> str:
    digest = hashlib.sha256()
    for array in arrays:
        if array is None:
            digest.update(b"\x00none")
            continue
        values = np.ascontiguousarray(array)
        if values.dtype == object or values.dtype.kind in "US":
            text = "\x1f".join(str(v) for v in values.tolist())
            digest.update(b"\x01" + text.encode("utf-8"))
        else:
            digest.update(f"\x02{values.dtype.str}{values.shape}".encode())
            digest.update(values.tobytes())
    return digest.hexdigest()


def fingerprint(split: Split, settings: RunSettings) -> dict[str, Any]:
    """What a resume must find again: the data the run trains on and its split.

    ``data``: sha256 over the loaded interactions in canonical form (user and item
    index of every row in file order, the original ids by index, ratings and
    timestamps), after the run's filters; ``split``: how it was made and a sha256 of
    the train/test assignment (both CSR matrices).
    """
    data = split.data
    return {
        "data": {
            "source": str(settings.data),
            "users": int(data.n_users),
            "items": int(data.n_items),
            "interactions": len(data.user),
            "sha256": _sha256(
                data.user, data.item, data.user_ids, data.item_ids, data.rating, data.timestamp
            ),
        },
        "split": {
            "method": settings.split,
            "seed": int(settings.seed),
            "test_fraction": float(settings.test_fraction),
            "min_rating": settings.min_rating,
            "k_core": settings.k_core,
            "train": int(split.train.nnz),
            "test": int(split.test.nnz),
            "sha256": _sha256(
                split.train.indptr, split.train.indices, split.test.indptr, split.test.indices
            ),
        },
    }


def check_fingerprint(path: Path, split: Split, settings: RunSettings) -> None:
    """Refuse to resume the run in ``path`` on data or a split other than its own.

    A run directory written before fingerprints existed is resumed with a warning.
    """
    try:
        recorded = json.loads((path / CONFIG_JSON).read_text(encoding="utf-8")).get("fingerprint")
    except (OSError, ValueError) as err:
        raise DataError(f"unreadable config.json ({err})", where=str(path / CONFIG_JSON)) from err
    if not isinstance(recorded, dict):
        print(
            f"warning: {path / CONFIG_JSON} has no data fingerprint (written by an older "
            "fedrec): the data cannot be checked against the run"
        )
        return
    now = fingerprint(split, settings)
    fix = (
        "resume only on the data the run started from (restore it), or start a new run "
        "with --out: the client stores and the checkpoint were made from the recorded data"
    )
    for part in ("data", "split"):
        old, new = recorded.get(part, {}), now[part]
        if old.get("sha256") == new["sha256"]:
            continue
        changed = [
            f"{key} {old.get(key)!r} -> {new[key]!r}"
            for key in new
            if key not in ("sha256", "source") and old.get(key) != new[key]
        ]
        detail = ", ".join(changed) if changed else "same sizes, different contents"
        what = "the data changed" if part == "data" else "the train/test split changed"
        raise DataError(
            f"cannot resume: {what} since the run started ({detail}; sha256 "
            f"{str(old.get('sha256'))[:12]}... -> {new['sha256'][:12]}...)",
            where=str(settings.data),
            fix=fix,
        )


def config_payload(settings: RunSettings) -> dict[str, Any]:
    """``config.json``: readable sections plus the flat ``settings`` a resume reads back."""
    return {
        "data": settings.data,
        "split": {
            "method": settings.split,
            "test_fraction": settings.test_fraction,
            "seed": settings.seed,
            "min_rating": settings.min_rating,
            "k_core": settings.k_core,
        },
        "model": dataclasses.asdict(settings.model),
        "train": dataclasses.asdict(settings.train),
        "server": dataclasses.asdict(settings.server),
        "strategy": settings.server.strategy,
        "rounds": settings.rounds,
        "clients_per_round": settings.clients_per_round,
        "eval_every": settings.eval_every,
        "eval_clients": settings.eval_clients,
        "seed": settings.seed,
        "privacy": dataclasses.asdict(settings.privacy),
        "settings": settings.to_flat(),
        "versions": versions(),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }


class RunDirLock:
    """An exclusive ``flock`` on ``RUN_DIR/.fedrec.lock``, held until :meth:`release`."""

    def __init__(self, path: Path, handle: IO[str]) -> None:
        self.path = path
        self._handle: IO[str] | None = handle

    def release(self) -> None:
        if self._handle is not None:
            self._handle.close()  # closing the file releases the lock
            self._handle = None

    def __enter__(self) -> RunDirLock:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


def acquire_run_dir(path: Path) -> RunDirLock:
    """Lock the run directory ``path`` for this process, or refuse at once."""
    file = path / LOCK_FILE
    try:
        fd = os.open(file, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    except OSError as err:
        raise OutputError(f"cannot open its lock file ({err.strerror})", where=str(path)) from err
    handle = os.fdopen(fd, "r+", encoding="utf-8")
    try:
        fcntl.flock(handle.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
    except OSError as err:
        owner = handle.read().strip() or "unknown"
        handle.close()
        if err.errno not in (errno.EWOULDBLOCK, errno.EAGAIN, errno.EACCES):
            raise OutputError(f"cannot lock ({err.strerror})", where=str(path)) from err
        raise OutputError(
            f"run directory {path} is in use by another fedrec process (pid {owner})",
            where=str(path),
            fix="wait for it or use another --out",
        ) from None
    handle.seek(0)
    handle.truncate()
    handle.write(f"{os.getpid()}\n")
    handle.flush()
    return RunDirLock(path, handle)


@contextlib.contextmanager
def lock_run_dir(path: Path) -> Iterator[RunDirLock]:
    """Hold the run directory's exclusive lock for the block (see :func:`acquire_run_dir`)."""
    lock = acquire_run_dir(path)
    try:
        yield lock
    finally:
        lock.release()


def open_new_run_dir(path: Path, settings: RunSettings, split: Split) -> RunDirLock:
    """Create ``path`` (absent or empty; 0700), lock it, write ``config.json``.

    Call it after everything that can refuse the run (data loaded into ``split``,
    settings validated): a refused run leaves no directory. Returns the held lock.
    """
    fix = "choose a new --out, or continue that run with --resume"
    check_output_dir(path, fix_not_empty=fix)
    payload = config_payload(settings)
    payload["fingerprint"] = fingerprint(split, settings)
    try:
        path.mkdir(mode=PRIVATE_DIR, parents=True, exist_ok=True)
        os.chmod(path, PRIVATE_DIR)  # an existing empty folder, or a permissive umask
    except OSError as err:
        raise OutputError(f"cannot create ({err.strerror})", where=str(path)) from err
    lock = acquire_run_dir(path)
    try:
        if any(p.name != LOCK_FILE for p in path.iterdir()):  # another process was first
            raise OutputError("output directory is not empty", where=str(path), fix=fix)
        atomic_write_json(path / CONFIG_JSON, payload)
    except BaseException:
        lock.release()
        raise
    return lock


def create_run_dir(path: Path, settings: RunSettings, split: Split | None = None) -> None:
    """Create ``path`` (absent or empty) and write its ``config.json`` (lock released).

    ``split`` is the run's loaded split (loaded here when not given).
    """
    if split is None:
        split = load_split(settings)
    open_new_run_dir(path, settings, split).release()


def resume_settings(path: Path) -> RunSettings:
    """The settings of the run in ``path`` (its ``run-dir`` set to ``path``)."""
    return RunSettings.from_run_config(read_flat(path))


def finished_round(path: Path) -> int:
    """The last round whose checkpoint was written (0 when none)."""
    meta = path / CHECKPOINT_JSON
    if not meta.is_file():
        return 0
    return int(json.loads(meta.read_text(encoding="utf-8"))["round"])


def read_rounds(path: Path) -> list[dict[str, Any]]:
    """The records of ``rounds.jsonl`` (empty when absent)."""
    file = path / ROUNDS_JSONL
    if not file.is_file():
        return []
    lines = file.read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines if line.strip()]


def read_metrics(path: Path) -> dict[str, Any]:
    """``metrics.json`` of a finished run."""
    file = path / METRICS_JSON
    if not file.is_file():
        raise DataError("run has no metrics.json (not finished)", where=str(path))
    return dict(json.loads(file.read_text(encoding="utf-8")))
