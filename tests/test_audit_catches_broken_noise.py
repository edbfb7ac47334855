"""The audit is an instrument: it catches a mechanism whose noise is too small (issue 14, audit b).

A central DP-FedAvg run accounted at epsilon <= 1 is audited by ``fedrec audit`` (the
command line, the run directory, the run's own mechanism) twice: as written, and with
the mechanism's Gaussian noise divided by 10, a planted bug of the kind an audit exists
to find. The hook is the noise primitive the mechanism calls
(``fedrec.privacy.central.gaussian``), so the release still goes through
``DPFedAvg.aggregate`` and ``noisy_mean``: clipping, sum, division by ``q N``. The
accounting is untouched, so ``privacy.json`` keeps claiming epsilon <= 1. The audit
must report a lower bound above that claim for the broken mechanism, and none above it
for the sound one. The noise is secret, so the bound is random: 400 simulated audits
with Gaussian scores of the same separation (300 + 300 trials, ``d' = 1 / 0.406``) gave
bounds from 1.47 to 3.04 for the broken mechanism, and at most 0.18 for the sound one.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

import fedrec.privacy.central as central
from fedrec.models.registry import init_item_arrays
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.central_setup import make_dp_fedavg
from fedrec.privacy.report import central_report, write_privacy_json
from server.checkpoint import Checkpoint, save_checkpoint
from server.privacy_run import eligible_users, resolve_settings
from server.settings import RunSettings, load_split
from simulations.cli import main
from simulations.run_dir import create_run_dir

DATA = "synthetic:users=40,items=30,dim=4,mean=8,seed=5"
MEMBERSHIP = "user_membership_release"


def central_run_dir(path: Path) -> float:
    """A finished one-round central run (epsilon <= 1); returns its accounted epsilon.

    Local steps large enough that every update reaches the clip norm (measured: norms
    1.5-2.2 before clipping), so each audited user is a worst-case canary.
    """
    flat: dict[str, Any] = {
        "data": DATA, "run-dir": str(path), "num-server-rounds": 1, "clients-per-round": 40,
        "privacy": "central", "privacy.target-epsilon": 1.0, "privacy.delta": 1e-5,
        "train.epochs": 2, "train.lr": 10.0, "train.refit-steps": 2, "model.dim": 4,
    }  # fmt: skip
    settings = RunSettings.from_run_config(flat)
    create_run_dir(path, settings)
    split = load_split(settings)
    settings = resolve_settings(settings, split)
    n_clients = len(eligible_users(split))
    mechanism = make_dp_fedavg(
        settings.privacy, settings.model, n_clients=n_clients, clients_per_round=40
    )
    account = PrivacyAccount(accountant=settings.privacy.accountant)
    account.record_release(mechanism.release)
    assert settings.privacy.delta is not None
    write_privacy_json(path / "privacy.json", central_report(account, delta=1e-5))
    items = init_item_arrays(settings.model, split.n_items, seed=0)
    save_checkpoint(path, Checkpoint(1, items, {}))
    return account.epsilon(1e-5)


@pytest.mark.parametrize("noise_divisor", [1.0, 10.0])
def test_fedrec_audit_bounds_epsilon_above_the_claim_only_when_the_noise_is_cut(
    noise_divisor: float, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a central run accounted at epsilon <= 1, and the planted bug
    accounted = central_run_dir(tmp_path / "run")
    real_gaussian = central.gaussian
    stds: list[float] = []

    def cut_noise(
        shape: tuple[int, ...], std: float, rng: np.random.Generator
    ) -> np.ndarray[tuple[int, ...], np.dtype[np.float64]]:
        stds.append(std)
        return real_gaussian(shape, std / noise_divisor, rng)

    monkeypatch.setattr(central, "gaussian", cut_noise)
    out = tmp_path / "audit.json"
    argv = ["audit", str(tmp_path / "run"), "--out", str(out), "--clients", "20",
            "--shadow-clients", "1", "--release-trials", "15"]  # fmt: skip
    # Execute
    code = main(argv)
    # Assert
    assert code == 0 and accounted <= 1.0
    assert stds and all(s == pytest.approx(stds[0]) for s in stds)  # the mechanism's z S
    entries = {a["attack"]: a for a in json.loads(out.read_text())["attacks"]}
    membership = entries[MEMBERSHIP]
    assert membership["epsilon_accounted"] == pytest.approx(accounted)
    assert membership["test"]["members"] == membership["test"]["nonmembers"] == 150
    one_run = entries["one_run/canary_membership_release"]  # reported beside
    assert one_run["epsilon_accounted"] == pytest.approx(accounted)
    if noise_divisor == 1.0:
        assert membership["epsilon_lower_bound"] <= accounted
        assert one_run["epsilon_lower_bound"] <= accounted
    else:
        assert membership["epsilon_lower_bound"] > accounted
