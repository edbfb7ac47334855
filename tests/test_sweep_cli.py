"""``fedrec sweep`` for federated EASE, ``--quick``, its progress lines, and
``fedrec report SWEEP_DIR`` (issue 18 item 7)."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from simulations import sweep as sweep_mod
from simulations.cli import main
from simulations.commands.sweep import QUICK, apply_quick

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"


def test_quick_ease_sweep_then_report_renders_the_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    out = tmp_path / "sweep"
    argv = ["sweep", "--data", DATA, "--model", "ease", "--privacy", "central", "--quick",
            "--engine", "inprocess", "--out", str(out)]  # fmt: skip
    # Execute
    code = main(argv)
    err = capsys.readouterr().err
    # Assert: one run per quick epsilon plus the non-private one, each a finished run
    assert code == 0
    sweep = json.loads((out / "sweep.json").read_text())
    targets = [float(e) for e in QUICK["epsilons"].split(",")]
    assert [r["run"] for r in sweep["runs"]] == ["none"] + [f"eps-{e:g}" for e in targets]
    assert sweep["model"] == "ease" and set(sweep["reference"]) == {"popularity", "ease"}
    for row in sweep["runs"][1:]:
        assert 0 < row["epsilon"] <= row["target_epsilon"]
    # progress: one line per point (stdout is not a terminal under pytest)
    assert "sweep 4/4 run=eps-32" in err
    # Execute: re-render from the directory alone
    (out / "report.md").unlink()
    (out / "frontier.png").unlink()
    assert main(["report", str(out)]) == 0
    text = (out / "report.md").read_text()
    # Assert: both the private and the non-private runs, and the references, marked
    assert "| none |" in text and "| eps-8 |" in text and "vs non-private" in text
    assert "ease (centralized, not private)" in text and (out / "frontier.png").exists()
    assert "What epsilon protects: one user" in text


def test_quick_fills_only_what_was_not_given() -> None:
    args = argparse.Namespace(epsilons="2", rounds=None, eval_every=5)
    apply_quick(args)
    assert (args.epsilons, args.rounds, args.eval_every) == ("2", QUICK["rounds"], 0)


def test_sweep_without_epsilons_or_quick_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["sweep", "--privacy", "central", "--out", str(tmp_path / "s")])
    assert code == 2 and "--epsilons" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_frontier_has_plain_ticks_and_an_ease_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    figures: list[Any] = []
    monkeypatch.setattr(sweep_mod.plt, "close", figures.append)
    rows = [
        {"run": "none", "epsilon": None, "metrics": {"ndcg@10": 0.4}},
        {"run": "eps-1", "epsilon": 0.99, "metrics": {"ndcg@10": 0.1}},
        {"run": "eps-8", "epsilon": 7.99, "metrics": {"ndcg@10": 0.3}},
    ]
    refs = {"popularity": {"ndcg@10": 0.2}, "ease": {"ndcg@10": 0.5}}
    # Execute
    sweep_mod.plot_frontier(tmp_path, rows, refs)
    # Assert
    ax = figures[0].axes[0]
    figures[0].canvas.draw()
    assert [t.get_text() for t in ax.get_xticklabels()] == ["0.99", "7.99"]
    labels = [line.get_label() for line in ax.get_lines()]
    assert "EASE (centralized, not private)" in labels and "same settings, no privacy" in labels
    assert ax.get_ylim()[0] == 0
