"""Central DP (DP-FedAvg): the mechanism's maths, the Flower wrapper, privacy.json, resume."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.privacy.central import DPFedAvg
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import verify_privacy_json
from server.checkpoint import load_checkpoint
from server.privacy_run import resolve_settings
from server.server_app import run_server
from server.settings import RunSettings, load_split
from simulations.cli import main
from simulations.evaluation import device_evaluator
from simulations.inprocess import InProcessGrid
from simulations.run_dir import create_run_dir, read_rounds

DATA = "synthetic:users=30,items=40,dim=4,mean=12,seed=5"
TINY_Z = 1e-9


def _mechanism(**kw: Any) -> DPFedAvg:
    args: dict[str, Any] = dict(
        noise_multiplier=TINY_Z, clip_norm=1.0, sample_rate=0.5, n_clients=8
    )
    args.update(kw)
    return DPFedAvg(**args)


def test_aggregate_clips_each_update_and_divides_by_expected_clients() -> None:
    # Prepare: global 0; one update of norm 5 (clipped to 1), one of norm 0.5; q N = 4
    g = [np.zeros(2, np.float32), np.zeros((2, 1), np.float32)]
    big = [np.array([3.0, 0.0], np.float32), np.array([[4.0], [0.0]], np.float32)]
    small = [np.array([0.0, 0.5], np.float32), np.zeros((2, 1), np.float32)]
    mech = _mechanism()
    # Execute
    out = mech.aggregate(g, [big, small], secure_rng(0))
    # Assert: (0.6, 0.5) / 4 and (0.8, 0) / 4
    np.testing.assert_allclose(out[0], [0.15, 0.125], atol=1e-6)
    np.testing.assert_allclose(out[1][:, 0], [0.2, 0.0], atol=1e-6)
    assert mech.account.history == [[TINY_Z, 0.5, 1]]


def test_empty_cohort_releases_noise_and_costs_a_step() -> None:
    mech = _mechanism(noise_multiplier=1.0)
    out = mech.aggregate([np.zeros(1000, np.float32)], [], secure_rng(1))
    assert np.std(out[0]) == pytest.approx(1.0 / 4, rel=0.1)  # z S / (q N)
    assert mech.account.steps == 1


def test_bias_scale_shrinks_the_bias_inside_the_clip_and_is_undone() -> None:
    # Prepare: bias update 5 would be clipped at S=1, but weighs 0.1 inside the clip
    g = [np.zeros(2, np.float32), np.zeros((2, 1), np.float32)]
    update = [np.zeros(2, np.float32), np.array([[5.0], [0.0]], np.float32)]
    mech = _mechanism(sample_rate=1.0, n_clients=1, array_scales=[1.0, 0.1])
    # Execute
    out = mech.aggregate(g, [update], secure_rng(0))
    # Assert: 0.5 <= S, so the bias passes unclipped
    np.testing.assert_allclose(out[1][:, 0], [5.0, 0.0], atol=1e-5)


def test_secret_sampling_is_poisson_with_rate_q() -> None:
    mech = _mechanism(sample_rate=0.25, n_clients=4000)
    assert len(mech.sample(secure_rng())) == pytest.approx(1000, abs=120)


def test_state_round_trips_exactly() -> None:
    mech = _mechanism(noise_multiplier=1.3)
    for _ in range(3):
        mech.aggregate([np.zeros(3, np.float32)], [], secure_rng())
    twin = _mechanism(noise_multiplier=1.3)
    twin.load_state_dict(json.loads(json.dumps(mech.state_dict())))
    assert twin.account == mech.account and twin.clip_norm == mech.clip_norm


def _settings(tmp: Path, **over: Any) -> RunSettings:
    flat: dict[str, Any] = {"data": DATA, "num-server-rounds": 3, "clients-per-round": 15,
                            "run-dir": str(tmp), "train.epochs": 2, "train.refit-steps": 3,
                            "privacy": "central", "privacy.target-epsilon": 8.0,
                            "privacy.insecure-noise-seed": 7}  # fmt: skip
    flat.update(over)
    settings = RunSettings.from_run_config(flat)
    return resolve_settings(settings, load_split(settings))


def _run(settings: RunSettings) -> None:
    run_dir = Path(settings.run_dir)
    if not (run_dir / "config.json").exists():
        create_run_dir(run_dir, settings)
    grid = InProcessGrid(load_split(settings).n_users)
    run_server(grid, settings, evaluator=device_evaluator(settings))  # simulate's harness


@pytest.mark.parametrize(
    "strategy", ["fedadam", pytest.param("fedprox", marks=pytest.mark.slow)]
)  # fedprox: FedAvg server
def test_central_run_writes_a_verifiable_privacy_json(tmp_path: Path, strategy: str) -> None:
    # Prepare
    lr = {} if strategy == "fedadam" else {"server.server-lr": 1.0}
    settings = _settings(tmp_path, strategy=strategy, **lr)
    # Execute
    _run(settings)
    # Assert
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    assert report["mode"] == "central" and 0 < report["epsilon"] <= 8.0
    q = 15 / len(load_split(settings).test_users())
    assert report["history"] == [[settings.privacy.noise_multiplier, pytest.approx(q), 3]]
    eps = [r["epsilon"] for r in read_rounds(tmp_path)]
    assert len(eps) == 3 and eps == sorted(eps) and eps[-1] == pytest.approx(report["epsilon"])


def test_resume_restores_accounting_exactly(tmp_path: Path) -> None:
    # Prepare: 2 rounds of a run planned for 3 (same z), then resume
    over = {"privacy.noise-multiplier": 1.5}
    _run(_settings(tmp_path, **{"num-server-rounds": 2}, **over))
    after_two = load_checkpoint(tmp_path)
    # Execute
    _run(_settings(tmp_path, **over))
    # Assert
    assert after_two is not None and after_two.privacy_state is not None
    assert after_two.privacy_state["account"]["history"][0][2] == 2
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["history"][0][2] == 3 and verify_privacy_json(tmp_path / "privacy.json") == []


def test_server_stops_before_exceeding_the_target(tmp_path: Path) -> None:
    # Prepare: a given z far too small for the budget
    settings = _settings(
        tmp_path, **{"privacy.noise-multiplier": 0.6, "privacy.target-epsilon": 2.0}
    )
    # Execute
    _run(settings)
    # Assert
    rounds = read_rounds(tmp_path)
    assert "stopped" in rounds[-1] and "past the target" in rounds[-1]["stopped"]
    assert json.loads((tmp_path / "privacy.json").read_text())["epsilon"] <= 2.0
    assert (tmp_path / "metrics.json").exists()


@pytest.mark.slow
def test_adaptive_clipping_records_the_target_multiplier(tmp_path: Path) -> None:
    settings = _settings(tmp_path, **{"privacy.adaptive-clipping": True, "num-server-rounds": 2})
    _run(settings)
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["history"][0][0] == pytest.approx(settings.privacy.noise_multiplier)
    assert report["clip_norm"] != settings.privacy.clip_norm
    assert verify_privacy_json(tmp_path / "privacy.json") == []


@pytest.mark.slow
def test_none_mode_writes_privacy_json_without_epsilon(tmp_path: Path) -> None:
    _run(
        _settings(
            tmp_path,
            privacy="none",
            **{"privacy.target-epsilon": None, "privacy.insecure-noise-seed": None},
        )
    )
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mode"] == "none" and report["epsilon"] is None
    assert all(r["epsilon"] is None for r in read_rounds(tmp_path))


@pytest.mark.parametrize(
    "flags",
    [
        ["--privacy", "central"],
        ["--privacy", "central", "--target-epsilon", "-1"],
        ["--privacy", "central", "--target-epsilon", "4", "--delta", "2"],
        ["--privacy", "central", "--noise-multiplier", "1", "--clip-norm", "0"],
        ["--privacy", "local", "--noise-multiplier", "1", "--adaptive-clipping"],
    ],
)
def test_bad_privacy_flags_exit_2(tmp_path: Path, flags: list[str]) -> None:
    assert main(["simulate", "--data", DATA, "--out", str(tmp_path / "r"), *flags]) == 2


def test_simulate_records_delta_and_calibrated_z(tmp_path: Path) -> None:
    from simulations.cli import build_parser
    from simulations.commands.simulate import prepare_settings, settings_from_args

    args = build_parser().parse_args(
        [
            "simulate",
            "--data",
            DATA,
            "--out",
            str(tmp_path),
            "--privacy",
            "central",
            "--target-epsilon",
            "4",
        ]
    )
    settings = prepare_settings(settings_from_args(args))
    assert settings.privacy.delta == pytest.approx(1e-5)  # default_delta(30 users)
    assert settings.privacy.noise_multiplier is not None and settings.privacy.noise_multiplier > 0
