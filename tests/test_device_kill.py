"""A device process killed with SIGKILL at a random moment leaves a consistent store.

The child records interactions, or runs private ``fit_round``s, in a loop and prints an
acknowledgement after each call returns; the parent kills it at a random moment and
checks the reopened store: SQLite integrity, whole rows, loadable user state, and a
privacy ledger never lower than anything acknowledged.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path

import numpy as np
import pytest

from clients.device import DeviceClient, RoundConfig
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays

ROOT = Path(__file__).resolve().parents[1]
CONFIG = RoundConfig(model=ModelConfig(dim=4), train=LocalTrainConfig(epochs=1, refit_steps=1))

RECORDER = """
import sys
from clients.device import DeviceClient
dev = DeviceClient.open(sys.argv[1])
n = len(dev.interactions())
while True:
    dev.record(n % 20, rating=float(n), timestamp=float(n))
    n += 1
    print(n, flush=True)
"""

TRAINER = """
import sys
from clients.device import DeviceClient, LocalPrivacy, RoundConfig
from fedrec.models.config import LocalTrainConfig, ModelConfig
priv = LocalPrivacy(noise_multiplier=3.0, clip_norm=1.0, epsilon_budget=1e6)
train = LocalTrainConfig(epochs=1, refit_steps=1)
dev = DeviceClient.open(sys.argv[1])
arrays = [a.copy() for a in dev._global.arrays]
rnd = 100 + int(sys.argv[2]) * 1000
while True:
    rnd += 1
    cfg = RoundConfig(model=ModelConfig(dim=4), train=train, round=rnd, seed=rnd, privacy=priv)
    reply = dev.fit_round(arrays, cfg)
    print(repr(reply.spent.epsilon), flush=True)
"""


def _prepare(path: Path) -> None:
    with DeviceClient.open(path) as dev:
        dev.set_global(init_item_arrays(CONFIG.model, 20, seed=0), CONFIG)
        dev.record_many([0, 1, 2, 3, 4])


def _run_and_kill(script: str, path: Path, attempt: int, rng: np.random.Generator) -> list[str]:
    """Start the child, wait for 1-3 acknowledgements and a random moment, kill -9."""
    proc = subprocess.Popen(
        [sys.executable, "-c", script, str(path), str(attempt)],
        cwd=ROOT,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    acks = [proc.stdout.readline().strip() for _ in range(int(rng.integers(1, 4)))]
    time.sleep(float(rng.uniform(0.0, 0.15)))
    os.kill(proc.pid, signal.SIGKILL)
    proc.wait()
    assert all(acks), "child died before acknowledging"
    return acks


def _check_integrity(dev: DeviceClient) -> None:
    assert dev.store.conn.execute("PRAGMA integrity_check").fetchone()[0] == "ok"
    for slot in ("global", "train", "train.prev", "serve"):
        found = dev.store.load_slot(slot)
        assert found is None or all(a.dtype == np.float32 for a in found.arrays)


def _kill_recorder(tmp_path: Path, attempts: int) -> None:
    path = tmp_path / "device.db"
    _prepare(path)
    rng = np.random.default_rng(1)
    for attempt in range(attempts):
        acks = _run_and_kill(RECORDER, path, attempt, rng)
        with DeviceClient.open(path) as dev:
            _check_integrity(dev)
            rows = dev.interactions()[5:]
            assert len(rows) >= int(acks[-1]) - 5
            expected = [(n % 20, float(n), float(n)) for n in range(5, 5 + len(rows))]
            assert [(r.item, r.rating, r.timestamp) for r in rows] == expected
            assert len(dev.recommend(5, exclude_seen=False)) == 5


def _kill_trainer(tmp_path: Path, attempts: int) -> None:
    path = tmp_path / "device.db"
    _prepare(path)
    rng = np.random.default_rng(2)
    floor = 0.0
    for attempt in range(attempts):
        acks = _run_and_kill(TRAINER, path, attempt, rng)
        with DeviceClient.open(path) as dev:
            _check_integrity(dev)
            spent = dev.privacy_spent().epsilon
            assert spent >= max(float(a) for a in acks) >= floor
            assert [r.item for r in dev.interactions()] == [0, 1, 2, 3, 4]
            assert dev.store.load_slot("train") is not None
            floor = spent


def test_kill_during_record(tmp_path: Path) -> None:
    _kill_recorder(tmp_path, attempts=1)


def test_kill_during_private_fit_round(tmp_path: Path) -> None:
    _kill_trainer(tmp_path, attempts=1)


@pytest.mark.slow
@pytest.mark.parametrize("kill", [_kill_recorder, _kill_trainer])
def test_kill_many_times(tmp_path: Path, kill: Callable[[Path, int], None]) -> None:
    kill(tmp_path, 8)
