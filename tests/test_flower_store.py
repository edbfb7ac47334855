"""The simulated devices' durable store and the server checkpoint (pure file logic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients.sim_store import device_path, open_device, read_ledgers, users
from server.checkpoint import (
    Checkpoint,
    append_round,
    load_checkpoint,
    save_checkpoint,
    truncate_rounds,
)


def test_a_simulated_device_is_fed_its_train_items_once(tmp_path: Path) -> None:
    # Prepare
    train_items = np.array([3, 1, 4], dtype=np.int64)
    # Execute
    with open_device(tmp_path, 1234, train_items, seed=0) as device:
        first = [r.item for r in device.interactions()]
    with open_device(tmp_path, 1234, train_items, seed=0) as device:
        again = [r.item for r in device.interactions()]
    # Assert
    assert first == again == [3, 1, 4]
    assert device_path(tmp_path, 1234) == tmp_path / "00001" / "user-1234.sqlite"
    assert users(tmp_path) == [1234]
    assert read_ledgers(tmp_path) == {}  # no private release yet


def test_checkpoint_round_trip_and_log_truncation(tmp_path: Path) -> None:
    # Prepare
    items = [np.arange(6, dtype=np.float32).reshape(3, 2), np.ones(3, dtype=np.float32)]
    opt: dict[str, np.ndarray] = {"m.0": np.zeros((3, 2), dtype=np.float32)}
    for r in (1, 2, 3):
        append_round(tmp_path, {"round": r})
    # Execute
    save_checkpoint(tmp_path, Checkpoint(2, items, opt))
    back = load_checkpoint(tmp_path)
    truncate_rounds(tmp_path, 2)
    # Assert
    assert back is not None and back.round == 2
    np.testing.assert_array_equal(back.item_arrays[0], items[0])
    np.testing.assert_array_equal(back.optimizer_state["m.0"], opt["m.0"])
    assert (tmp_path / "rounds.jsonl").read_text().count("\n") == 2
