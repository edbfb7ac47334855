"""``fedrec simulate`` argument handling and run-directory rules (no simulation run)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import build_parser, main
from simulations.commands.simulate import settings_from_args
from simulations.run_dir import create_run_dir, resume_settings


def test_defaults_give_a_complete_run_config(tmp_path: Path) -> None:
    # Prepare
    args = build_parser().parse_args(["simulate", "--out", str(tmp_path / "run")])
    # Execute
    settings = settings_from_args(args)
    # Assert
    assert settings.model.kind == "mf" and settings.server.strategy == "fedadam"
    assert settings.rounds >= 1 and settings.clients_per_round >= 1
    assert Path(settings.run_dir).is_absolute()


def test_fedavg_defaults_to_plain_averaging_and_fedprox_gets_a_mu(tmp_path: Path) -> None:
    parser = build_parser()
    fedavg = settings_from_args(
        parser.parse_args(["simulate", "--out", "x", "--strategy", "fedavg"])
    )
    fedprox = settings_from_args(
        parser.parse_args(["simulate", "--out", "x", "--strategy", "fedprox"])
    )
    assert fedavg.server.server_lr == 1.0 and fedavg.train.proximal_mu == 0.0
    assert fedprox.train.proximal_mu > 0.0


def test_non_empty_out_dir_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Prepare
    (tmp_path / "old.txt").write_text("x")
    # Execute
    code = main(["simulate", "--out", str(tmp_path)])
    # Assert
    assert code == 2
    assert "not empty" in capsys.readouterr().err


def test_resume_of_a_foreign_dir_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--resume", str(tmp_path)])
    assert code == 2
    assert "config.json" in capsys.readouterr().err


def test_config_json_round_trips_to_the_same_settings(tmp_path: Path) -> None:
    # Prepare
    args = build_parser().parse_args(
        [
            "simulate",
            "--out",
            str(tmp_path / "run"),
            "--model",
            "cdae",
            "--rounds",
            "7",
            "--seed",
            "3",
        ]
    )
    settings = settings_from_args(args)
    # Execute
    create_run_dir(tmp_path / "run", settings)
    back = resume_settings(tmp_path / "run")
    # Assert
    assert back == settings
    config = json.loads((tmp_path / "run" / "config.json").read_text())
    assert config["model"]["kind"] == "cdae" and config["strategy"] == "fedadam"
    assert {"flwr", "torch", "fedrec"} <= set(config["versions"])
