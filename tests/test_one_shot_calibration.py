"""One-shot releases use the tighter of Opacus's accountants, and record it (issue 14, item 7)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
from scipy.stats import norm

from fedrec.errors import ConfigError
from fedrec.federated import gram
from fedrec.privacy.accounting import calibrate_noise, epsilon_from_history
from fedrec.privacy.calibration import PRV_MAX_EPSILON, calibrate_one_shot, one_shot_epsilon
from fedrec.privacy.popularity import dp_item_counts
from fedrec.privacy.report import central_report, verify_privacy_json, write_privacy_json
from server.gram_app import GramSettings, run_gram_server
from server.settings import load_split
from simulations.inprocess import InProcessGrid


def exact_gaussian_delta(z: float, epsilon: float) -> float:
    """Test oracle: the exact delta of the Gaussian mechanism with sensitivity 1 and std z.

    Balle & Wang, ICML 2018, Theorem 8: ``Phi(1/(2z) - eps z) - e^eps Phi(-1/(2z) - eps z)``.
    """
    return float(
        norm.cdf(0.5 / z - epsilon * z) - math.exp(epsilon) * norm.cdf(-0.5 / z - epsilon * z)
    )


def test_at_epsilon_8_the_one_shot_noise_is_prvs_and_below_rdps() -> None:
    # Prepare
    rdp = calibrate_noise(target_epsilon=8.0, delta=1e-4, sample_rate=1.0, steps=1)
    # Execute
    chosen = calibrate_one_shot(8.0, 1e-4)
    # Assert: 0.582 with RDP, 0.544 with PRV (the exact Gaussian needs 0.543)
    assert rdp == pytest.approx(0.582, abs=1e-3)
    assert chosen.accountant == "prv" and chosen.noise_multiplier <= rdp
    assert chosen.noise_multiplier == pytest.approx(0.544, abs=2e-3)
    recomputed = epsilon_from_history([[chosen.noise_multiplier, 1.0, 1]], 1e-4, "prv")
    assert recomputed == chosen.epsilon <= 8.0
    record = chosen.record()
    assert record["accountant"] == "prv"
    assert record["noise_multiplier_by_accountant"]["rdp"] == rdp
    assert record["epsilon_by_accountant"]["rdp"] > 8.0  # RDP cannot certify the PRV z


@pytest.mark.parametrize(
    ("epsilon", "delta"), [(1.0, 1e-5), (4.0, 1e-4), (8.0, 1e-4), (16.0, 1e-5)]
)
def test_the_chosen_noise_really_meets_the_target(epsilon: float, delta: float) -> None:
    # Execute
    chosen = calibrate_one_shot(epsilon, delta)
    # Assert: an independent check of the accountant's claim, the exact Gaussian curve,
    # and never more noise than RDP's calibration
    assert exact_gaussian_delta(chosen.noise_multiplier, epsilon) <= delta
    rdp = calibrate_noise(target_epsilon=epsilon, delta=delta, sample_rate=1.0, steps=1)
    assert chosen.noise_multiplier <= rdp
    assert (
        epsilon_from_history([[chosen.noise_multiplier, 1.0, 1]], delta, chosen.accountant)
        <= epsilon
    )


def test_a_given_noise_multiplier_is_accounted_by_the_tighter_accountant() -> None:
    # Execute
    tiny, usual = one_shot_epsilon(1e-6, 1e-5), one_shot_epsilon(1.0, 1e-5)
    # Assert
    assert usual.accountant == "prv"
    assert usual.epsilon == min(dict(usual.epsilon_by_accountant).values())
    assert tiny.accountant == "rdp" and tiny.epsilon > PRV_MAX_EPSILON  # PRV not tried there
    assert set(dict(tiny.epsilon_by_accountant)) == {"rdp"}


def test_small_budgets_take_the_tighter_accountant() -> None:
    # Prepare: RDP reaches 0.1 only over orders above Opacus's default 63 (WIDER_ALPHAS);
    # with Opacus's default orders alone it could not, and PRV was the only choice
    rdp_z = calibrate_noise(target_epsilon=0.1, delta=1e-5, sample_rate=1.0, steps=1)
    # Execute
    chosen = calibrate_one_shot(0.1, 1e-5)
    # Assert
    assert chosen.noise_multiplier <= rdp_z
    assert exact_gaussian_delta(chosen.noise_multiplier, 0.1) <= 1e-5


@pytest.mark.parametrize(
    ("call", "match"),
    [
        (lambda: calibrate_one_shot(0.0, 1e-5), "epsilon"),
        (lambda: calibrate_one_shot(8.0, 1.5), "delta"),
        (lambda: one_shot_epsilon(-1.0, 1e-5), "noise_multiplier"),
        (lambda: gram.gram_calibration(1e-5), "exactly one"),
    ],
)
def test_bad_calibration_input_is_a_config_error(call: object, match: str) -> None:
    with pytest.raises(ConfigError, match=match):
        call()  # type: ignore[operator]


def test_dp_popularity_records_and_verifies_its_accountant(tmp_path: Path) -> None:
    # Prepare
    train = sp.csr_matrix((np.random.default_rng(0).random((30, 10)) < 0.3).astype(np.float32))
    # Execute
    release = dp_item_counts(train, epsilon=8.0, delta=1e-4)
    forced = dp_item_counts(train, epsilon=8.0, delta=1e-4, accountant="rdp")
    report = central_report(
        calibrate_one_shot(8.0, 1e-4).account, delta=1e-4, other_releases=[release.report_entry()]
    )
    write_privacy_json(tmp_path / "privacy.json", report)
    # Assert
    entry = report["other_releases"][0]
    assert release.accountant == entry["accountant"] == "prv"
    assert entry["calibration"]["accountant"] == "prv"
    assert release.noise_multiplier < forced.noise_multiplier and forced.accountant == "rdp"
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    entry["accountant"] = "rdp"  # the same epsilon claimed under the looser accountant
    write_privacy_json(tmp_path / "privacy.json", report)
    assert any("item popularity" in p for p in verify_privacy_json(tmp_path / "privacy.json"))


def test_a_gram_run_records_the_accountant_that_calibrated_it(tmp_path: Path) -> None:
    # Prepare
    flat = {"data": "synthetic:users=20,items=15,dim=4,mean=5,seed=1", "run-dir": str(tmp_path),
            "model": "ease", "privacy": "central", "privacy.target-epsilon": 8.0,
            "privacy.delta": 1e-4, "privacy.insecure-noise-seed": 2}  # fmt: skip
    settings = GramSettings.from_flat(flat)
    split = load_split(settings.base)
    # Execute
    run_gram_server(InProcessGrid(split.n_users), settings)
    # Assert
    report = json.loads((tmp_path / "privacy.json").read_text())
    z = report["noise_multiplier"]
    assert report["accountant"] == report["calibration"]["accountant"] == "prv"
    assert report["history"] == [[z, 1.0, 1]] and z == pytest.approx(0.544, abs=2e-3)
    assert epsilon_from_history(report["history"], 1e-4, "prv") == pytest.approx(report["epsilon"])
    assert report["epsilon"] <= 8.0 and verify_privacy_json(tmp_path / "privacy.json") == []
    assert any("item set" in line for line in report["not_protected"])
    report["accountant"] = "rdp"
    write_privacy_json(tmp_path / "privacy.json", report)
    assert verify_privacy_json(tmp_path / "privacy.json") != []
