"""The simulated devices' durable store and the server checkpoint (pure file logic)."""

from __future__ import annotations

from pathlib import Path

import numpy as np

from clients.sim_store import SimStore
from server.checkpoint import (
    Checkpoint,
    append_round,
    load_checkpoint,
    save_checkpoint,
    truncate_rounds,
)


def _state(value: float) -> dict[str, np.ndarray]:
    return {"user_emb.weight": np.full((1, 4), value, dtype=np.float32)}


def test_store_returns_the_state_before_a_half_finished_round(tmp_path: Path) -> None:
    # Prepare: rounds 1 and 3 written; round 3 was cut before the server checkpointed
    store = SimStore(tmp_path)
    store.save(7, 1, _state(1.0))
    store.save(7, 3, _state(3.0))
    # Execute
    redo = store.load(7, before_round=3)
    after = store.load(7, before_round=4)
    # Assert
    assert redo is not None and after is not None
    assert redo["user_emb.weight"][0, 0] == 1.0
    assert after["user_emb.weight"][0, 0] == 3.0
    assert store.load(7, before_round=1) is None
    assert store.load(8, before_round=9) is None


def test_rewriting_the_same_round_keeps_the_older_version(tmp_path: Path) -> None:
    store = SimStore(tmp_path)
    store.save(2, 1, _state(1.0))
    store.save(2, 2, _state(2.0))
    store.save(2, 2, _state(2.5))  # the re-run of round 2 after a resume
    again = store.load(2, before_round=2)
    assert again is not None and again["user_emb.weight"][0, 0] == 1.0
    assert store.users() == [2]
    assert not list(tmp_path.rglob("*.tmp"))


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
