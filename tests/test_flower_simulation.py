"""The same apps in Flower's real simulation engine (Ray): identical to the in-process run."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import numpy as np
import pytest

from server.checkpoint import load_checkpoint
from simulations.run_dir import create_run_dir, read_metrics, read_rounds
from simulations.simulation import simulate
from tests.test_flower_apps import make_settings, run_in_process


@pytest.mark.flower
def test_simulation_engine_matches_in_process_run_with_a_failing_client(tmp_path: Path) -> None:
    # Prepare: user 0 joins round 1 of this data set and its client raises
    settings = make_settings(
        tmp_path / "ray", **{"num-server-rounds": 2, "fail-users": "0", "eval-every": 1}
    )
    twin = dataclasses.replace(settings, run_dir=str(tmp_path / "twin"))
    create_run_dir(tmp_path / "ray", settings)
    # Execute
    seen: list[int] = []
    metrics = simulate(settings, on_round=lambda r: seen.append(r["round"]))
    run_in_process(twin)
    # Assert
    assert seen == [1, 2]
    rounds = read_rounds(tmp_path / "ray")
    assert any(1 in r["failed"] for r in rounds)  # index 0 = original id 1
    assert all(r["participants"] for r in rounds)
    a, b = load_checkpoint(tmp_path / "ray"), load_checkpoint(tmp_path / "twin")
    assert a is not None and b is not None
    for x, y in zip(a.item_arrays, b.item_arrays, strict=True):
        np.testing.assert_array_equal(x, y)
    assert metrics["ndcg@10"] == read_metrics(tmp_path / "twin")["ndcg@10"]
    assert (tmp_path / "ray" / "clients").is_dir()
