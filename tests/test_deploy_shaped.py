"""``fedrec deploy-local`` takes the data-shaped defaults of ``fedrec simulate``.

Both commands run to the point where the round loop starts (the Flower processes of
deploy-local and simulate's in-process loop are replaced by a recorder), so the settings
each would train with are compared without a deployment. The deployed run's metrics
against the in-process run: tests/test_deploy.py (slow).
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import pytest

from fedrec.federated.presets import federated_preset
from fedrec.federated.shape import DataShape, ials_alpha0
from server.settings import RunSettings, load_split

TINY = "synthetic:users=3,items=30,seed=0"
SHAPED = "default from the data's shape: "


def _deploy_settings(
    monkeypatch: pytest.MonkeyPatch, out: Path, *flags: str
) -> tuple[RunSettings, dict[str, Any]]:
    """What ``deploy-local`` hands its deployment, and the ``config.json`` it wrote."""
    from simulations import deploy
    from simulations.cli import main

    seen: list[RunSettings] = []

    def record(settings: RunSettings, n_nodes: int, **_: Any) -> dict[str, Any]:
        seen.append(settings)
        return {}

    monkeypatch.setattr(deploy, "deploy_local", record)
    argv = ["deploy-local", "--data", TINY, "--nodes", "3", *flags, "--out", str(out)]
    assert main(argv) == 0
    assert len(seen) == 1
    return seen[0], json.loads((out / "config.json").read_text())


def _simulate_settings(monkeypatch: pytest.MonkeyPatch, out: Path, *flags: str) -> RunSettings:
    """What ``simulate --engine inprocess`` hands its round loop."""
    from simulations import inprocess
    from simulations.cli import main

    seen: list[RunSettings] = []

    def record(settings: RunSettings, **_: Any) -> dict[str, Any]:
        seen.append(settings)
        return {}

    monkeypatch.setattr(inprocess, "simulate_in_process", record)
    argv = ["simulate", "--engine", "inprocess", "--data", TINY, *flags, "--out", str(out)]
    assert main(argv) == 0
    assert len(seen) == 1
    return seen[0]


def test_deploy_local_trains_ials_with_simulate_s_shaped_alpha0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: 3 users, so the shaped alpha0 (3.0, the range's top) is not the preset's 0.3
    shape = DataShape.of_train(load_split(RunSettings(data=TINY)).train)
    alpha0 = ials_alpha0(shape)
    assert alpha0 == 3.0 != federated_preset("ials")[0].alpha0

    # Execute
    deployed, config = _deploy_settings(monkeypatch, tmp_path / "d", "--model", "ials")
    printed = capsys.readouterr().out
    flags = ("--model", "ials", "--rounds", "3", "--clients-per-round", "3")
    simulated = _simulate_settings(monkeypatch, tmp_path / "s", *flags)

    # Assert: the shaped alpha0, with its reason printed as simulate prints it, in the
    # settings deployed and in config.json (a resumed run keeps it) ...
    assert deployed.model.alpha0 == alpha0
    assert config["settings"]["model.alpha0"] == alpha0
    assert f"{SHAPED}alpha0 {alpha0:g}:" in printed
    # ... deploy-local's own rounds (3) and devices per round (every node) ...
    assert (deployed.rounds, deployed.clients_per_round) == (3, 3)
    # ... and, apart from the run directory, simulate's settings for the same run
    assert dataclasses.replace(deployed, run_dir=simulated.run_dir) == simulated


def test_deploy_local_keeps_a_given_alpha0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    flags = ("--model", "ials", "--set", "model.alpha0=0.5", "--rounds", "2")

    # Execute
    deployed, _ = _deploy_settings(monkeypatch, tmp_path / "d", *flags)

    # Assert: what the user set wins, and no shaped default is reported
    assert (deployed.model.alpha0, deployed.rounds) == (0.5, 2)
    assert SHAPED not in capsys.readouterr().out


def test_deploy_local_defaults_to_simulate_s_model_and_evaluation_schedule(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: no --model, no --eval-every; simulate given deploy-local's own two defaults
    own = ("--rounds", "3", "--clients-per-round", "3")

    # Execute
    deployed, config = _deploy_settings(monkeypatch, tmp_path / "d")
    printed = capsys.readouterr().out
    simulated = _simulate_settings(monkeypatch, tmp_path / "s", "--model", "ials", *own)

    # Assert: simulate's default model (iALS, its reason printed) and evaluation every 5
    # rounds, in the settings deployed and in config.json; otherwise simulate's settings
    assert (deployed.model.kind, deployed.eval_every) == ("ials", 5)
    assert (config["settings"]["model"], config["settings"]["eval-every"]) == ("ials", 5)
    assert "model: ials (" in printed
    assert dataclasses.replace(deployed, run_dir=simulated.run_dir) == simulated


def test_deploy_local_keeps_mf_given_mf_s_round_flags_as_simulate_does(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: --rounds given, as in the commands written when MF was the default
    flags = ("--rounds", "2")

    # Execute
    deployed, _ = _deploy_settings(monkeypatch, tmp_path / "d", *flags)
    printed = capsys.readouterr().out
    simulated = _simulate_settings(monkeypatch, tmp_path / "s", *flags)

    # Assert: both keep MF, and deploy-local says why in simulate's words
    assert deployed.model.kind == simulated.model.kind == "mf"
    assert "model: mf (the default is ials, but --rounds given)" in printed
