"""privacy.json and rounds.jsonl of real (in-process) runs: local mode, report rendering."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.privacy.report import verify_privacy_json
from server.settings import load_split
from simulations.cli import main
from simulations.run_dir import read_rounds, resume_settings

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"


def test_local_run_reports_every_client_by_original_id(tmp_path: Path) -> None:
    # Prepare
    run = tmp_path / "run"
    argv = [
        "simulate",
        "--data",
        DATA,
        "--privacy",
        "local",
        "--target-epsilon",
        "4",
        "--out",
        str(run),
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
    report = json.loads((run / "privacy.json").read_text())
    assert verify_privacy_json(run / "privacy.json") == []
    assert report["mode"] == "local" and 0 < report["epsilon"] <= 4.0
    user_ids = {str(u) for u in load_split(resume_settings(run)).data.user_ids}
    assert report["clients"] and set(report["clients"]) <= user_ids
    last = read_rounds(run)[-1]
    assert set(last["epsilon"]) == {"median", "max"} and last["epsilon"]["max"] <= 4.0
    assert "budget_exhausted" in last
    text = (run / "report.md").read_text()
    assert "Per-client epsilon" in text and (run / "client_epsilon.png").exists()
