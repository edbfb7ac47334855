"""The harness scores LightGCN in batches of users with its devices' metrics.

:func:`simulations.evaluation.device_evaluator` ranks LightGCN ``BATCH_USERS`` users at
a time (each user's ``e_u`` from :func:`fedrec.training.lightgcn_fast.user_vector`, one
``E Q^T + b`` per batch). Its metrics must be those of scoring one device at a time
(the path every other model takes), for stored (trained) and fresh users, whatever the
batch size; the batched product only sums in another order than a device's mat-vec.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients.sim_store import device_path
from fedrec.federated.client import client_scores, derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.training import lightgcn_fast
from server.checkpoint import load_checkpoint
from server.settings import RunSettings, load_split
from simulations import evaluation
from simulations.evaluation import batched_kind, device_evaluator
from tests.test_flower_apps import make_settings, run_in_process

DATA = "synthetic:users=45,items=60,dim=4,mean=15,seed=5"


@pytest.fixture(scope="module")
def trained(tmp_path_factory: pytest.TempPathFactory) -> tuple[RunSettings, list[np.ndarray]]:
    """Two rounds of 6 devices out of 45: some test users have a store, most do not."""
    settings = make_settings(
        tmp_path_factory.mktemp("lightgcn"),
        model="lightgcn",
        data=DATA,
        **{"num-server-rounds": 2, "clients-per-round": 6},
    )
    run_in_process(settings)
    checkpoint = load_checkpoint(Path(settings.run_dir))
    assert checkpoint is not None
    return settings, list(checkpoint.item_arrays)


def test_batched_scores_are_the_device_scores(
    trained: tuple[RunSettings, list[np.ndarray]],
) -> None:
    # Prepare: every test user's device scores (the fast path a device ranks with)
    settings, items = trained
    split = load_split(settings)
    floats = [np.ascontiguousarray(a, dtype=np.float32) for a in items]
    users = np.sort(split.test_users())
    scorer = evaluation._lightgcn_scorer(settings, split, floats, {})
    device = np.stack(
        [
            client_scores(
                settings.model,
                settings.train,
                floats,
                None,
                np.unique(split.train_items(int(u))),
                seed=derive_seed(settings.seed, int(u), EVAL_ROUND),
            ).numpy()
            for u in users
        ]
    )
    # Execute
    batched = np.concatenate([scorer(users[s : s + 8]).numpy() for s in range(0, len(users), 8)])
    # Assert: the same scores up to the summation order of the product
    assert batched.shape == (len(users), split.n_items)
    np.testing.assert_allclose(batched, device, rtol=0, atol=1e-6)
    assert not np.allclose(batched[0], batched[1])  # users' vectors differ


def test_user_vector_is_what_the_device_scores_with(
    trained: tuple[RunSettings, list[np.ndarray]],
) -> None:
    # Prepare
    settings, items = trained
    split = load_split(settings)
    user = int(split.test_users()[3])
    args = (settings.model, settings.train, items, None, np.unique(split.train_items(user)))
    # Execute
    e = lightgcn_fast.user_vector(*args, seed=11)
    scores = lightgcn_fast.scores(*args, seed=11).numpy()
    # Assert: Q e + b, seeded (another seed refits from another initial p_u)
    q, b = (np.asarray(a, dtype=np.float32) for a in items)
    np.testing.assert_array_equal(scores, q @ e + b.reshape(-1))
    np.testing.assert_array_equal(e, lightgcn_fast.user_vector(*args, seed=11))
    assert not np.array_equal(e, lightgcn_fast.user_vector(*args, seed=12))


@pytest.mark.parametrize("batch_users", [1, 4, 7, 1000])  # 4 and 7 leave a partial batch
def test_batched_metrics_equal_one_device_at_a_time(
    trained: tuple[RunSettings, list[np.ndarray]],
    batch_users: int,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the per-device evaluation (batched_kind off: each device's evaluate_round,
    # or client_evaluate for a user without a store)
    settings, items = trained
    split = load_split(settings)
    store_dir = str(settings.client_config()["store-dir"])
    stored = [u for u in split.test_users() if device_path(store_dir, int(u)).exists()]
    assert batched_kind(settings)
    with monkeypatch.context() as patch:
        patch.setattr(evaluation, "batched_kind", lambda _: False)
        one_at_a_time = device_evaluator(settings)(items, settings.rounds, True)
    monkeypatch.setattr(evaluation, "BATCH_USERS", batch_users)
    # Execute
    batched = device_evaluator(settings)(items, settings.rounds, True)
    # Assert: every test user, stored and fresh, with the per-device metrics
    assert 0 < len(stored) < len(split.test_users())
    assert one_at_a_time is not None and batched is not None
    assert batched["users_evaluated"] == one_at_a_time["users_evaluated"]
    assert batched["users_evaluated"] == len(split.test_users())
    assert batched.keys() == one_at_a_time.keys()
    for key, value in one_at_a_time.items():
        assert batched[key] == pytest.approx(value, rel=0, abs=1e-6), key
