"""Central DP with iALS (the private MF preset): every user every round, the clip bounds
one user's effect on the release, and the schedule stays within the target epsilon."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest

from fedrec.federated.client import client_fit
from fedrec.federated.presets import (
    IALS_CENTRAL_SERVER,
    IALS_LOCAL,
    central_clients_per_round,
    federated_preset,
)
from fedrec.models.config import ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.privacy.accounting import epsilon_from_history
from fedrec.privacy.central import DPFedAvg, update_norm
from fedrec.privacy.central_setup import make_dp_fedavg
from fedrec.privacy.noise import secure_rng
from server.privacy_run import eligible_users, resolve_settings
from server.settings import RunSettings, load_split
from server.shaped import apply_shaped_defaults

DATA = "synthetic:users=30,items=40,dim=4,mean=12,seed=5"
CFG = ModelConfig(kind="ials", dim=8, alpha0=0.3, l2=0.01)


def _settings(**over: Any) -> RunSettings:
    flat: dict[str, Any] = {"data": DATA, "model": "ials", "run-dir": "/nonexistent",
                            "privacy": "central", "privacy.target-epsilon": 8.0,
                            "privacy.delta": 1e-4}  # fmt: skip
    flat.update(over)
    return RunSettings.from_run_config(flat)


def test_central_ials_preset_is_every_user_every_round_within_epsilon() -> None:
    # Prepare
    settings = _settings()
    split = load_split(settings)
    n = len(eligible_users(split))
    # Execute
    shaped, reasons = apply_shaped_defaults(settings, split, given=set())
    resolved = resolve_settings(shaped, split)
    mechanism = make_dp_fedavg(
        resolved.privacy, resolved.model, n_clients=n, clients_per_round=shaped.clients_per_round
    )
    # Assert: q = 1 and the server step of the central preset
    assert shaped.clients_per_round == n and "every user" in reasons[0]
    assert mechanism.release.sample_rate == 1.0
    assert resolved.server == IALS_CENTRAL_SERVER
    # Attack the claim: the accountant's epsilon of the whole schedule, recomputed
    z = resolved.privacy.noise_multiplier
    assert z is not None
    history = [[z, 1.0, resolved.rounds]]
    epsilon = epsilon_from_history(history, 1e-4, resolved.privacy.accountant)
    assert 7.5 < epsilon <= 8.0
    # one round more than planned would exceed the target: z is not over-provisioned
    over = epsilon_from_history([[z, 1.0, resolved.rounds + 3]], 1e-4, resolved.privacy.accountant)
    assert over > 8.0


def test_central_cohort_keeps_a_given_size_and_other_models_and_modes() -> None:
    settings = _settings(**{"clients-per-round": 7})
    split = load_split(settings)
    # a given cohort stays
    kept, reasons = apply_shaped_defaults(settings, split, given={"clients-per-round"})
    assert kept.clients_per_round == 7 and reasons == []
    # MF and local mode keep the run's default
    assert central_clients_per_round("mf", 30) is None
    local = _settings(**{"privacy": "local", "model": "mf"})
    assert apply_shaped_defaults(local, split, given=set())[0] == local
    # non-central iALS keeps its non-private server step
    assert federated_preset("ials", None, "none")[2] != IALS_CENTRAL_SERVER


def test_an_ials_user_beyond_the_clip_moves_the_release_by_at_most_s_over_n() -> None:
    # Prepare: real iALS uploads; one user with a huge item set (an outlier gradient)
    items = init_item_arrays(CFG, 40, seed=0)
    rng = np.random.default_rng(0)
    users = [rng.choice(40, size=6, replace=False) for _ in range(5)]
    outlier = np.arange(40, dtype=np.int64)
    uploads = [client_fit(CFG, IALS_LOCAL, items, None, u, seed=0).item_arrays for u in users]
    big = client_fit(CFG, IALS_LOCAL, items, None, outlier, seed=0).item_arrays
    clip = 0.05
    assert update_norm([big[0] - items[0]]) > 10 * clip  # the attack needs an unclipped excess

    def release(cohort: list[list[np.ndarray]]) -> np.ndarray:
        mech = DPFedAvg(noise_multiplier=1.0, clip_norm=clip, sample_rate=1.0, n_clients=6)
        return mech.aggregate(items, cohort, secure_rng(99))[0]  # same noise draw

    # Execute
    with_outlier, without = release([*uploads, big]), release(uploads)
    # Assert: the neighbouring releases differ by the outlier's clipped update / (q N)
    moved = float(np.linalg.norm(with_outlier.astype(np.float64) - without))
    assert moved <= clip / 6 * (1 + 1e-4)
    assert moved == pytest.approx(clip / 6, rel=1e-3)  # clipped to S, not dropped
