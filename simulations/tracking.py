"""Optional experiment tracking: ``--track tensorboard`` writes a run's curves for TensorBoard.

Design rule: tracking is a copy of what the run already records, never more. Each
round's line of ``rounds.jsonl`` (the evaluation sample's metrics, epsilon so far, the
number of participating and failed clients) and the final ``metrics.json`` (with the
reference rows) become TensorBoard scalars, written by PyTorch's own
``torch.utils.tensorboard.SummaryWriter`` into ``RUN_DIR/tensorboard`` (under the run's
umask 077: files 0600). No per-user value, no client id and no list reaches it. View
with ``tensorboard --logdir RUN_DIR/tensorboard`` (TensorBoard binds 127.0.0.1 unless
told otherwise). The ``tensorboard`` package is optional: ``pip install 'fedrec[track]'``.
"""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError

TRACKERS = ("tensorboard",)
LOG_DIR = "tensorboard"


def _summary_writer() -> Any:
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError as err:  # torch's module needs the tensorboard package
        raise ConfigError(
            "the tensorboard package is not installed",
            where="--track tensorboard",
            fix="pip install 'fedrec[track]' (or tensorboard), or drop --track",
        ) from err
    return SummaryWriter


def check_tracker(kind: str | None) -> None:
    """Refuse an unknown tracker or a missing package before any run directory exists."""
    if kind is None:
        return
    if kind not in TRACKERS:
        raise ConfigError(
            f"unknown tracker {kind!r}", where="--track", fix=f"use {', '.join(TRACKERS)}"
        )
    _summary_writer()


def _number(value: Any) -> float | None:
    if isinstance(value, bool) or not isinstance(value, int | float):
        return None
    return float(value) if math.isfinite(value) else None


class TensorBoardTracker:
    """Scalars of a run's rounds and final metrics in ``log_dir`` (TensorBoard event files)."""

    def __init__(self, log_dir: Path) -> None:
        self.log_dir = Path(log_dir)
        self._writer = _summary_writer()(log_dir=str(self.log_dir))
        self._last_round = 0

    def log_round(self, record: dict[str, Any]) -> None:
        """One ``rounds.jsonl`` record: its metrics, epsilon and client counts."""
        step = int(record["round"])
        self._last_round = max(self._last_round, step)
        for key, value in (record.get("metrics") or {}).items():
            number = _number(value)
            if number is not None:
                self._writer.add_scalar(f"eval/{key}", number, step)
        epsilon = record.get("epsilon")
        if isinstance(epsilon, dict):  # local DP: the devices' spread
            for key in ("max", "median", "min"):
                number = _number(epsilon.get(key))
                if number is not None:
                    self._writer.add_scalar(f"privacy/epsilon_{key}", number, step)
        elif _number(epsilon) is not None:
            self._writer.add_scalar("privacy/epsilon", float(epsilon), step)
        for key in ("participants", "failed"):
            value = record.get(key)
            count = len(value) if isinstance(value, list | dict) else _number(value)
            if count is not None:
                self._writer.add_scalar(f"clients/{key}", float(count), step)

    def log_final(self, metrics: dict[str, Any]) -> None:
        """The run's final metrics and its reference rows (popularity, EASE)."""
        step = self._last_round
        for key, value in metrics.items():
            number = _number(value)
            if number is not None:
                self._writer.add_scalar(f"final/{key}", number, step)
        for name, values in (metrics.get("reference") or {}).items():
            for key, value in (values or {}).items():
                number = _number(value)
                if number is not None:
                    self._writer.add_scalar(f"reference/{name}/{key}", number, step)

    def close(self) -> None:
        self._writer.flush()
        self._writer.close()


def open_tracker(kind: str | None, run_dir: Path) -> TensorBoardTracker | None:
    """The tracker ``--track`` asks for, writing under ``run_dir``; ``None`` without it."""
    if kind is None:
        return None
    check_tracker(kind)
    return TensorBoardTracker(Path(run_dir) / LOG_DIR)


__all__ = ["LOG_DIR", "TRACKERS", "TensorBoardTracker", "check_tracker", "open_tracker"]
