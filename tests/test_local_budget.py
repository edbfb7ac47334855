"""A local-DP run no client can afford is refused up front (issue 15, item 8)."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.federated.local_budget import cheapest_first_round, check_first_round_affordable
from fedrec.federated.private import LocalPrivacy, planned_releases
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.config import PrivacyConfig
from fedrec.privacy.ledger import PrivacyLedger
from simulations.cli import main

SIZES = np.array([3, 8, 20, 57, 130, 400])


class _Records:
    """An in-memory ledger store (a fresh device)."""

    def __init__(self) -> None:
        self.rows: list[dict[str, Any]] = []

    def records(self) -> list[dict[str, Any]]:
        return list(self.rows)

    def append(self, record: dict[str, Any]) -> None:
        self.rows.append(record)


def _devices_refusing(privacy: PrivacyConfig, model: ModelConfig, train: LocalTrainConfig) -> int:
    """How many fresh devices of SIZES refuse their first round (the devices' own check)."""
    assert privacy.noise_multiplier is not None and privacy.target_epsilon is not None
    local = LocalPrivacy.from_config(privacy, model, noise_multiplier=privacy.noise_multiplier)
    refused = 0
    for n in SIZES:
        ledger = PrivacyLedger(
            _Records(), accountant=local.accountant, delta=local.delta, unit=local.unit
        )
        planned = planned_releases(model, train, local.noise_multiplier, int(n), first=True)
        refused += ledger.would_exceed(privacy.target_epsilon, local.delta, planned)
    return refused


CASES = [  # (model, batch size, z, budget): all refuse, none refuses, only the largest affords
    ("mf", 64, 0.5, 1.0),
    ("mf", 64, 3.0, 8.0),
    ("mf", 8, 2.0, 1.0),
    ("mf", 8, 2.0, 0.7),
    ("cdae", 64, 0.8, 8.0),
    ("cdae", 64, 1.2, 50.0),
]


@pytest.mark.parametrize(("kind", "batch", "z", "budget"), CASES)
def test_the_check_agrees_with_every_device(kind: str, batch: int, z: float, budget: float) -> None:
    # Prepare
    privacy = PrivacyConfig(mode="local", target_epsilon=budget, noise_multiplier=z, delta=1e-5)
    model = ModelConfig(kind=kind)
    train = LocalTrainConfig(epochs=2, refit_steps=3, batch_size=batch)
    # Execute
    refused = _devices_refusing(privacy, model, train)
    try:
        check_first_round_affordable(privacy, model, train, SIZES)
        refused_up_front = False
    except ConfigError:
        refused_up_front = True
    # Assert: refused up front exactly when every device would refuse its first round
    assert refused_up_front == (refused == len(SIZES)), (refused, refused_up_front)


def test_cheapest_round_is_the_minimum_over_sizes() -> None:
    # Prepare
    privacy = PrivacyConfig(mode="local", target_epsilon=1.0, noise_multiplier=0.7, delta=1e-5)
    model, train = ModelConfig(kind="mf"), LocalTrainConfig(epochs=1, refit_steps=2, batch_size=16)
    # Execute
    epsilon, n = cheapest_first_round(privacy, model, train, SIZES)
    each = {int(m): cheapest_first_round(privacy, model, train, [m])[0] for m in SIZES}
    # Assert
    assert epsilon == min(each.values()) and each[n] == epsilon


def test_other_modes_and_no_budget_pass() -> None:
    model, train = ModelConfig(), LocalTrainConfig()
    central = PrivacyConfig(mode="central", target_epsilon=0.01, noise_multiplier=0.3, delta=1e-5)
    unbounded = PrivacyConfig(mode="local", noise_multiplier=0.3, delta=1e-5)
    check_first_round_affordable(central, model, train, SIZES)
    check_first_round_affordable(unbounded, model, train, SIZES)


def test_simulate_refuses_before_creating_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: z far too small for the per-client budget
    out = tmp_path / "run"
    argv = ["simulate", "--data", "synthetic:users=30,items=20", "--out", str(out)]
    argv += ["--rounds", "3", "--privacy", "local", "--target-epsilon", "1"]
    argv += ["--noise-multiplier", "0.5"]
    # Execute
    code = main(argv)
    # Assert: exit 2, one line saying why, nothing written
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "Traceback" not in err
    assert "no client can afford a single round" in err and "--target-epsilon" in err
    assert not out.exists()
