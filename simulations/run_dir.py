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
"""

from __future__ import annotations

import dataclasses
import json
import platform
import time
from pathlib import Path
from typing import Any

from fedrec.data.atomic import check_output_dir
from fedrec.errors import DataError, OutputError
from server.checkpoint import (
    CHECKPOINT_JSON,
    CLIENTS_DIR,
    CONFIG_JSON,
    METRICS_JSON,
    ROUNDS_JSONL,
    atomic_write_json,
)
from server.settings import RunSettings, read_flat

__all__ = [
    "CHECKPOINT_JSON",
    "CLIENTS_DIR",
    "CONFIG_JSON",
    "METRICS_JSON",
    "ROUNDS_JSONL",
    "config_payload",
    "create_run_dir",
    "finished_round",
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


def create_run_dir(path: Path, settings: RunSettings) -> None:
    """Create ``path`` (absent or empty) and write its ``config.json``."""
    check_output_dir(path, fix_not_empty="choose a new --out, or continue that run with --resume")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as err:
        raise OutputError(f"cannot create ({err.strerror})", where=str(path)) from err
    atomic_write_json(path / CONFIG_JSON, config_payload(settings))


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
