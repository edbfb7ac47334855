"""``fedrec sweep``: one run per epsilon plus the non-private run, frontier report."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrec.errors import ConfigError
from fedrec.privacy.report import verify_privacy_json
from simulations.cli import main
from simulations.sweep import parse_epsilons

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"


def test_sweep_writes_runs_frontier_and_sweep_json(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "sweep"
    argv = [
        "sweep",
        "--data",
        DATA,
        "--privacy",
        "central",
        "--epsilons",
        "2,16",
        "--out",
        str(out),
        "--rounds",
        "2",
        "--clients-per-round",
        "10",
        "--engine",
        "inprocess",
        "--set",
        "train.epochs=1",
        "--set",
        "train.refit-steps=2",
    ]
    # Execute
    code = main(argv)
    # Assert
    assert code == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert [r["run"] for r in sweep["runs"]] == ["none", "eps-2", "eps-16"]
    for row in sweep["runs"][1:]:
        assert 0 < row["epsilon"] <= row["target_epsilon"]
        assert verify_privacy_json(out / row["run"] / "privacy.json") == []
    assert sweep["runs"][0]["epsilon"] is None and "popularity" in sweep["reference"]
    assert (out / "frontier.png").exists() and "frontier.png" in (out / "report.md").read_text()


def test_sweep_refuses_no_privacy(tmp_path: Path) -> None:
    code = main(["sweep", "--epsilons", "1", "--out", str(tmp_path / "s"), "--engine", "inprocess"])
    assert code == 2


@pytest.mark.parametrize("text", ["", "1,x", "0,1", "2,2"])
def test_bad_epsilon_lists_are_refused(text: str) -> None:
    with pytest.raises(ConfigError):
        parse_epsilons(text)
