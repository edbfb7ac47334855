"""``fedrec sweep --model ease --privacy distributed``: its frontier, with the unit protected
in every legend entry, next to another sweep's (``--compare``)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from fedrec.privacy.distributed import epsilon_from_record
from simulations import sweep as sweep_mod
from simulations.cli import main
from simulations.sweep import frontier_label

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"


def _central_sweep(path: Path) -> Path:
    """A finished central sweep's directory (its sweep.json is all --compare reads)."""
    path.mkdir()
    rows = [{"run": "none", "target_epsilon": None, "epsilon": None, "metrics": {"ndcg@10": 0.5}},
            {"run": "eps-8", "target_epsilon": 8.0, "epsilon": 7.9, "delta": 1e-4,
             "metrics": {"ndcg@10": 0.41}}]  # fmt: skip
    sweep = {"mode": "central", "model": "ease", "runs": rows, "reference": {}}
    (path / "sweep.json").write_text(json.dumps(sweep))
    return path


def test_quick_distributed_sweep_draws_each_unit_in_the_legend(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    figures: list[Any] = []
    monkeypatch.setattr(sweep_mod.plt, "close", figures.append)
    central = _central_sweep(tmp_path / "central")
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", DATA, "--model", "ease", "--privacy", "distributed", "--quick",
            "--set", "secagg.neighbours=4", "--engine", "inprocess", "--out", str(out),
            "--compare", str(central)]  # fmt: skip
    # Execute
    code = main(argv)
    # Assert: one SecAgg+ release per quick epsilon, each within its target, recomputable
    assert code == 0
    sweep = json.loads((out / "sweep.json").read_text())
    assert sweep["mode"] == "distributed" and sweep["model"] == "ease"
    for row in sweep["runs"][1:]:
        report = json.loads((out / row["run"] / "privacy.json").read_text())
        assert report["mode"] == "distributed" and 0 < row["epsilon"] <= row["target_epsilon"]
        assert epsilon_from_record(report["distributed"]) == pytest.approx(row["epsilon"])
    # Assert: the frontier names the mode and the unit of every private curve
    (frontier,) = [f for f in figures if f.axes[0].get_title() == "Privacy-utility frontier"]
    labels = [line.get_label() for line in frontier.axes[0].get_lines()]
    assert "distributed DP (SecAgg+), ease: protects one user" in labels
    assert "central DP (trusted server), ease: protects one user" in labels
    assert "same settings, no privacy" in labels
    text = (out / "report.md").read_text()
    assert "Also on the frontier: central DP" in text and "What epsilon protects" in text
    # Execute / Assert: `fedrec report DIR` re-renders it with the compared sweep
    (out / "report.md").unlink()
    assert main(["report", str(out)]) == 0
    assert "Also on the frontier: central DP" in (out / "report.md").read_text()


def test_every_mode_has_its_own_unit_in_the_legend() -> None:
    assert frontier_label("local", "mf").endswith("protects one interaction")
    assert frontier_label("local", "cdae").endswith("protects one user's vector")
    assert frontier_label("central", "mf").endswith("protects one user")
    assert frontier_label("distributed", "ease").startswith("distributed DP (SecAgg+)")


def test_compare_refuses_a_directory_that_is_not_a_sweep(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["sweep", "--data", DATA, "--model", "ease", "--privacy", "distributed",
                 "--quick", "--out", str(tmp_path / "s"), "--compare", str(tmp_path)])  # fmt: skip
    # Assert: refused before any run
    assert code == 2 and "no sweep.json" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()
