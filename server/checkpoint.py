"""The server's durable files: checkpoint, round log and final metrics.

Design rule: everything the server writes is written atomically (a temporary sibling
renamed over the target with ``os.replace``), so a run killed at any instant leaves
either the old or the new file. The checkpoint is written at the end of every round
and is the single point a run resumes from: ``checkpoint.npz`` holds the global
item-side arrays (``item.<j>``, upload order) and the server optimizer's flat state
(``opt.<key>``, :meth:`fedrec.federated.aggregation.ServerOptimizer.state_dict`)
and, for a private run, the server's privacy state as JSON text (``privacy``: the
DP-FedAvg accountant history and clip norm, or the local-DP clients' statements);
``checkpoint.json`` names the round and the arrays' shapes. ``rounds.jsonl`` gets one
line per finished round; on resume, lines past the checkpoint are dropped, so the log
and the checkpoint always agree.

Write ahead for central DP (:func:`reserve_release`): a round's noisy aggregate is a
release the moment it can leave the server, which is before the round's checkpoint.
So right after the aggregate is computed, and before any model derived from it is
sent (evaluation, the next round's train messages), the server's privacy state
*including* that release is written durably to ``privacy.reserved.json`` (fsync of the
file and of the directory). A resume charges it (:func:`load_reservation`): the release
stays spent, and the redo of the round is a new release that pays again. Both files
hold private server state (central: how many rounds each user joined) and are
created 0600.

The file names are the run-directory layout of :mod:`simulations.run_dir`, which
imports them from here (the server must not import ``simulations``).
"""

from __future__ import annotations

import io
import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.data.atomic import atomic_write_bytes
from fedrec.errors import StoreError

if TYPE_CHECKING:  # torch: not needed to read a checkpoint's fields (the CLI imports headcount)
    from fedrec.models.base import Arrays

CHECKPOINT_NPZ = "checkpoint.npz"
CHECKPOINT_JSON = "checkpoint.json"
ROUNDS_JSONL = "rounds.jsonl"
METRICS_JSON = "metrics.json"
CONFIG_JSON = "config.json"
CLIENTS_DIR = "clients"
RESERVED_JSON = "privacy.reserved.json"


def atomic_write_json(path: Path, payload: Any) -> None:
    """Write ``payload`` as indented JSON, atomically."""
    atomic_write_bytes(path, (json.dumps(payload, indent=2) + "\n").encode("utf-8"))


@dataclass(frozen=True)
class Checkpoint:
    """The server state after ``round`` finished rounds (0 = nothing trained yet)."""

    round: int
    item_arrays: Arrays
    optimizer_state: dict[str, npt.NDArray[np.generic]]
    privacy_state: dict[str, Any] | None = None


def save_checkpoint(run_dir: Path, ckpt: Checkpoint) -> None:
    """Write ``checkpoint.npz`` then ``checkpoint.json`` (the latter names the round)."""
    arrays: dict[str, npt.NDArray[np.generic]] = {
        f"item.{j}": a for j, a in enumerate(ckpt.item_arrays)
    }
    arrays.update({f"opt.{k}": v for k, v in ckpt.optimizer_state.items()})
    arrays["round"] = np.array(ckpt.round, dtype=np.int64)
    if ckpt.privacy_state is not None:  # JSON text: floats round-trip exactly
        arrays["privacy"] = np.array(json.dumps(ckpt.privacy_state))
    buf = io.BytesIO()
    np.savez(buf, **arrays)  # type: ignore[arg-type]
    atomic_write_bytes(run_dir / CHECKPOINT_NPZ, buf.getvalue())
    meta = {"round": ckpt.round, "item_shapes": [list(a.shape) for a in ckpt.item_arrays]}
    atomic_write_json(run_dir / CHECKPOINT_JSON, meta)


def load_checkpoint(run_dir: Path) -> Checkpoint | None:
    """The checkpoint in ``run_dir``, or ``None`` when the run never finished a round."""
    path = run_dir / CHECKPOINT_NPZ
    if not path.exists():
        return None
    try:
        with np.load(path, allow_pickle=False) as npz:  # a run dir may come from anyone
            raw = {k: npz[k] for k in npz.files}
    except (OSError, ValueError) as err:
        raise StoreError(
            f"unreadable checkpoint ({err})", where=str(path), fix="start a new run"
        ) from err
    n_items = sum(1 for k in raw if k.startswith("item."))
    return Checkpoint(
        round=int(raw["round"]),
        item_arrays=[raw[f"item.{j}"].astype(np.float32) for j in range(n_items)],
        optimizer_state={k[4:]: v for k, v in raw.items() if k.startswith("opt.")},
        privacy_state=json.loads(str(raw["privacy"])) if "privacy" in raw else None,
    )


def reserve_release(run_dir: Path, round: int, privacy_state: dict[str, Any]) -> None:
    """Durably record the privacy state *after* round ``round``'s release (write ahead).

    Call it once the round's noisy aggregate exists and before anything computed from
    it leaves the server. Returns only when the file and its directory entry are on
    disk (``os.fsync``); the file is 0600.
    """
    payload = {"round": int(round), "privacy": privacy_state}
    atomic_write_bytes(run_dir / RESERVED_JSON, json.dumps(payload).encode("utf-8"))


def load_reservation(run_dir: Path) -> tuple[int, dict[str, Any]] | None:
    """``(round, privacy_state)`` of the last :func:`reserve_release`, or ``None``."""
    path = run_dir / RESERVED_JSON
    if not path.exists():
        return None
    try:
        payload = json.loads(path.read_text(encoding="utf-8"))
        return int(payload["round"]), dict(payload["privacy"])
    except (OSError, ValueError, KeyError, TypeError) as err:
        raise StoreError(
            f"unreadable privacy reservation ({err})",
            where=str(path),
            fix="do not resume this run: a release may be unaccounted; start a new run",
        ) from err


def append_round(run_dir: Path, record: dict[str, Any]) -> None:
    """Append one round's record to ``rounds.jsonl`` (one JSON object per line)."""
    fd = os.open(run_dir / ROUNDS_JSONL, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o600)
    with os.fdopen(fd, "a", encoding="utf-8") as fh:
        fh.write(json.dumps(record) + "\n")
        fh.flush()
        os.fsync(fh.fileno())


def headcount(value: Any) -> int:
    """How many users a ``rounds.jsonl`` field names: a count (central mode, where the
    cohort is secret) or a list / mapping of user ids (the other modes)."""
    if value is None:
        return 0
    if isinstance(value, int):
        return value
    return len(value)


def truncate_rounds(run_dir: Path, last_round: int) -> None:
    """Keep only the ``rounds.jsonl`` lines of rounds ``<= last_round`` (resume)."""
    path = run_dir / ROUNDS_JSONL
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            break  # a line torn by the interruption: everything after it is dropped
        if int(record.get("round", 0)) <= last_round:
            kept.append(line)
    atomic_write_bytes(path, "".join(f"{line}\n" for line in kept).encode("utf-8"))
