"""The Python API runs the command line's own code and returns usable objects."""

from __future__ import annotations

from pathlib import Path

import pytest

from fedrec.errors import ConfigError, DataError
from fedrec.modelfile import load_model
from simulations.api import baseline, load_run, simulate

DATA = "synthetic:users=40,items=30,seed=2"


def test_simulate_returns_a_run_with_metrics_references_and_a_model(tmp_path: Path) -> None:
    # Execute
    run = simulate(DATA, out=tmp_path / "r", rounds=2, clients_per_round=10,
                   settings={"model.dim": 8})  # fmt: skip
    # Assert
    metrics = run.metrics
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and "ease" in metrics["reference"]
    recs = run.recommend("3", k=4)
    assert len(recs) == 4 and all("because" in r for r in recs)
    assert len(run.recommend(items=[1, 2, 3], k=4)) == 4
    assert load_model(run.export(tmp_path / "m.fedrec")).n_items == 30
    assert run.report().is_file()


def test_baseline_and_load_run_agree(tmp_path: Path) -> None:
    run = baseline(DATA, model="ease", out=tmp_path / "b")
    again = load_run(tmp_path / "b")
    assert run.metrics == again.metrics and len(again.similar(4, k=3)) == 3


def test_errors_are_raised_not_printed(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match=r"unknown setting model\.nope"):
        simulate(DATA, out=tmp_path / "r", settings={"model.nope": 1})
    with pytest.raises(DataError, match=r"no metrics\.json"):
        load_run(tmp_path)
    with pytest.raises(ConfigError, match="invalid arguments"):
        simulate(DATA, out=tmp_path / "r", no_such_flag=1)
