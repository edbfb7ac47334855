"""The privacy audit: bound maths, attack metrics, and bounds never above the accounting."""

from __future__ import annotations

import dataclasses
import json
import math
from pathlib import Path

import numpy as np
import pytest

from fedrec.audit.attacks import (
    alignment_scores,
    bias_change_scores,
    precision_at_k,
    roc_auc,
    row_norm_scores,
)
from fedrec.audit.lower_bound import (
    _bounds,
    clopper_pearson,
    epsilon_from_counts,
    epsilon_lower_bound,
)
from fedrec.audit.regenerate import AuditTarget, client_update
from fedrec.audit.results import AuditOptions
from fedrec.audit.runner import audit_run
from fedrec.data import resolve_data
from fedrec.data.split import random_split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.privacy.central_setup import resolve_privacy
from fedrec.privacy.config import PrivacyConfig

DATA = "synthetic:users=40,items=60,dim=4,mean=15,seed=3"
MODEL = ModelConfig(dim=4)
TRAIN = LocalTrainConfig(epochs=2, refit_steps=2, batch_size=64)


def _target(
    privacy: PrivacyConfig,
) -> tuple[AuditTarget, dict[int, np.ndarray], dict[int, np.ndarray]]:
    split = random_split(resolve_data(DATA), test_fraction=0.2, seed=0)
    n = int(np.sum(np.diff(split.train.indptr) > 0))
    privacy = resolve_privacy(
        privacy, n_users=split.n_users, n_clients=n, clients_per_round=10, rounds=4,
        model=MODEL, train=TRAIN,
    )  # fmt: skip
    items = init_item_arrays(MODEL, split.n_items, seed=0)
    target = AuditTarget(MODEL, TRAIN, privacy, items, n, 10)
    users = [u for u in range(split.n_users) if len(split.train_items(u)) >= 2][:12]
    return (
        target,
        {u: split.train_items(u) for u in users},
        {u: split.test_items(u) for u in users},
    )


def test_clopper_pearson_brackets_the_proportion() -> None:
    # Prepare / Execute
    lo, hi = clopper_pearson(5, 10, 0.05)
    zero_lo, zero_hi = clopper_pearson(0, 10, 0.05)
    # Assert: textbook values (0.187, 0.813) and the one-sided edge (0.025)^(1/10)
    assert lo == pytest.approx(0.1871, abs=1e-3) and hi == pytest.approx(0.8129, abs=1e-3)
    assert zero_lo == 0.0 and zero_hi == pytest.approx(1 - 0.025 ** (1 / 10), rel=1e-6)


def test_lower_bound_is_zero_for_identical_distributions() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    same = rng.normal(size=2000), rng.normal(size=2000)
    # Execute
    bound = epsilon_lower_bound(*same, delta=1e-5, rng=np.random.default_rng(1))
    # Assert
    assert bound.epsilon < 0.15


def test_lower_bound_is_large_for_separated_distributions() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    members, nonmembers = rng.normal(8, 1, size=2000), rng.normal(0, 1, size=2000)
    # Execute
    bound = epsilon_lower_bound(members, nonmembers, delta=1e-5, rng=np.random.default_rng(1))
    # Assert: perfect separation of 1000 + 1000 held-out trials gives log(lo/hi) ~ 5.9
    assert bound.epsilon > 5.0
    assert bound.tpr > 0.99 and bound.fpr < 0.01


def test_gaussian_mechanism_bound_stays_below_its_epsilon() -> None:
    # Prepare: N(1, s^2) vs N(0, s^2) is the Gaussian mechanism with sensitivity 1
    rng = np.random.default_rng(0)
    sigma = 1.0
    members, nonmembers = rng.normal(1, sigma, 4000), rng.normal(0, sigma, 4000)
    # Execute
    bound = epsilon_lower_bound(members, nonmembers, delta=1e-5, rng=np.random.default_rng(2))
    # Assert: z = 1 gives epsilon ~ 4.8 at delta 1e-5 (analytic Gaussian, Balle & Wang 2018)
    assert 0.3 < bound.epsilon < 4.8


def test_vectorized_bounds_match_the_scalar_bound() -> None:
    # Prepare
    tp, fp = np.array([0.0, 37.0, 100.0]), np.array([0.0, 12.0, 100.0])
    # Execute
    vec = _bounds(tp, 100, fp, 100, 1e-5, 0.05)
    # Assert
    for t, f, v in zip(tp, fp, vec, strict=True):
        assert v == pytest.approx(epsilon_from_counts(int(t), 100, int(f), 100, delta=1e-5))


def test_epsilon_from_counts_uses_the_pessimistic_ends() -> None:
    # Prepare / Execute
    eps = epsilon_from_counts(90, 100, 10, 100, delta=0.0, alpha=0.05)
    # Assert: below the point estimate log(0.9 / 0.1)
    assert 0 < eps < math.log(9)


def test_auc_and_precision_on_hand_made_scores() -> None:
    # Prepare
    labels = np.array([True, False, True, False])
    # Execute / Assert
    assert roc_auc([4, 3, 2, 1], labels) == pytest.approx(0.75)
    assert roc_auc([1, 1, 1, 1], labels) == pytest.approx(0.5)
    assert precision_at_k([4, 3, 2, 1], labels, 2) == pytest.approx(0.5)


def test_row_attacks_find_the_rows_that_changed() -> None:
    # Prepare: a rank-one update touching items 1 and 3 only
    q = np.zeros((5, 3), np.float32)
    q[[1, 3]] = np.array([1.0, 2.0, 0.5], np.float32) * np.array([[1.0], [0.5]], np.float32)
    b = np.zeros((5, 1), np.float32)
    labels = np.isin(np.arange(5), [1, 3])
    # Execute / Assert
    assert roc_auc(row_norm_scores([q, b], 5), labels) == 1.0
    assert roc_auc(alignment_scores([q, b], 5), labels) == 1.0


def test_non_private_upload_reveals_the_items() -> None:
    # Prepare: 12 users (since negatives may be positives, one user's AUC varies: 0.74-1.0)
    target, train, _ = _target(PrivacyConfig())
    aucs = []
    # Execute
    for items in train.values():
        labels = np.isin(np.arange(target.n_items), items)
        update = client_update(target, items, seed=0)
        aucs.append(roc_auc(bias_change_scores(update, target.n_items), labels))
    # Assert
    assert np.mean(aucs) > 0.8 and min(aucs) > 0.6


@pytest.mark.parametrize("mode", ["local", "central"])
def test_lower_bounds_never_exceed_the_accounted_epsilon(mode: str) -> None:
    # Prepare: a small private "run" audited at its final (here: initial) global items
    target, train, test = _target(PrivacyConfig(mode=mode, target_epsilon=2.0, delta=1e-4))
    accounted = 2.0
    opts = AuditOptions(shadow_clients=4, release_trials=2, seed=0)
    # Execute
    results = audit_run(target, train, test, eps_accounted=accounted, opts=opts)
    # Assert
    bounded = [r for r in results if r.epsilon_lower_bound is not None]
    assert bounded
    for r in bounded:
        assert r.epsilon_lower_bound is not None
        assert r.epsilon_lower_bound <= accounted, r.attack
        if r.epsilon_release is not None:
            assert r.epsilon_lower_bound <= r.epsilon_release, r.attack
    entry = results[0].to_json()
    assert set(entry) >= {"attack", "auc", "precision_at_k", "epsilon_lower_bound",
                          "epsilon_accounted", "clients_audited"}  # fmt: skip


def test_regenerated_local_uploads_use_fresh_noise() -> None:
    # Prepare: even a run recorded with a test noise seed is audited with secret noise
    privacy = PrivacyConfig(mode="local", noise_multiplier=1.0, delta=1e-4, insecure_noise_seed=7)
    target, train, _ = _target(privacy)
    items = next(iter(train.values()))
    # Execute
    a = client_update(target, items, seed=0)
    b = client_update(dataclasses.replace(target), items, seed=0)
    # Assert
    assert not np.allclose(a[0], b[0])


def test_fedrec_audit_writes_audit_json_and_the_report_section(tmp_path: Path) -> None:
    # Prepare: a finished non-private run directory
    from simulations.cli import main
    from tests.test_recommend_cli import make_run_dir

    run_dir = make_run_dir(tmp_path / "run")
    # Execute
    code = main(["audit", str(run_dir), "--clients", "8", "--shadow-clients", "2"])
    # Assert
    audit = json.loads((run_dir / "audit.json").read_text())
    assert code == 0 and audit["mode"] == "none" and "REGENERATED" in audit["regenerated"]
    entries = {a["attack"]: a for a in audit["attacks"]}
    assert {"item_inference/row_norm", "membership/global_model"} <= set(entries)
    assert all(a["epsilon_accounted"] is None for a in entries.values())
    assert (run_dir / "audit_roc.png").exists()
    assert "## Privacy audit" in (run_dir / "report.md").read_text()
