"""The Flower-free federated core: client functions, aggregation, sampler, loop."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.data import Interactions, random_split
from fedrec.federated.aggregation import FedAdam, FedAvg, ServerConfig, sample_clients
from fedrec.federated.client import client_evaluate, client_fit
from fedrec.federated.loop import run_federated
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import MODEL_KINDS, build_model, init_item_arrays, item_array_shapes

N_ITEMS = 40
TRAIN = LocalTrainConfig(epochs=2, refit_steps=3)
ITEMS = np.array([1, 3, 5, 7, 11], dtype=np.int64)


def _cfg(kind: str = "mf") -> ModelConfig:
    return ModelConfig(kind=kind, dim=8, hidden=16)


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_client_fit_uploads_only_item_side_arrays(kind: str) -> None:
    # Prepare
    cfg = _cfg(kind)
    model = build_model(cfg, N_ITEMS, seed=0)
    # Execute
    fit = client_fit(cfg, TRAIN, init_item_arrays(cfg, N_ITEMS, seed=0), None, ITEMS, seed=1)
    # Assert
    assert [a.shape for a in fit.item_arrays] == item_array_shapes(cfg, N_ITEMS)
    assert all(a.dtype == np.float32 for a in fit.item_arrays)
    assert set(fit.user_state) == set(model.USER_SIDE)
    assert fit.num_examples == len(ITEMS) and np.isfinite(fit.train_loss)


def test_client_fit_is_deterministic_given_the_seed() -> None:
    # Prepare
    cfg = _cfg()
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    # Execute
    a, b = (client_fit(cfg, TRAIN, items, None, ITEMS, seed=7) for _ in range(2))
    c = client_fit(cfg, TRAIN, items, None, ITEMS, seed=8)
    # Assert
    assert all(np.array_equal(x, y) for x, y in zip(a.item_arrays, b.item_arrays, strict=True))
    assert np.array_equal(a.user_state["user_emb.weight"], b.user_state["user_emb.weight"])
    assert not np.array_equal(a.item_arrays[0], c.item_arrays[0])


def test_client_fit_changes_the_users_items_and_keeps_the_state() -> None:
    # Prepare
    cfg = _cfg()
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    state = client_fit(cfg, TRAIN, items, None, ITEMS, seed=1).user_state
    # Execute
    fit = client_fit(cfg, TRAIN, items, state, ITEMS, seed=2)
    # Assert
    changed = np.abs(fit.item_arrays[0] - items[0]).sum(axis=1) > 0
    assert changed[ITEMS].all()


def test_default_client_update_leaves_rows_it_never_used_unchanged() -> None:
    # Prepare: default training (SGD + per-example L2); few negatives so some rows stay unused
    cfg = ModelConfig(dim=8, negatives=1)
    train = LocalTrainConfig(epochs=2, refit_steps=3)
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    # Execute
    fit = client_fit(cfg, train, items, None, ITEMS, seed=1)
    # Assert: only positives and sampled negatives moved; every positive moved
    changed = np.abs(fit.item_arrays[0] - items[0]).sum(axis=1) > 0
    assert changed[ITEMS].all() and 0 < changed.sum() < N_ITEMS
    assert len(ITEMS) + 2 * len(ITEMS) * cfg.negatives >= changed.sum()


def test_proximal_term_pulls_towards_the_global_items() -> None:
    # Prepare
    cfg = _cfg()
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    free = LocalTrainConfig(epochs=5, refit_steps=0, optimizer="sgd", lr=1.0)
    prox = LocalTrainConfig(epochs=5, refit_steps=0, optimizer="sgd", lr=1.0, proximal_mu=0.5)
    # Execute
    moved = [
        sum(float(np.abs(a - g).sum()) for a, g in zip(fit.item_arrays, items, strict=True))
        for fit in (client_fit(cfg, t, items, None, ITEMS, seed=1) for t in (free, prox))
    ]
    # Assert
    assert moved[1] < 0.9 * moved[0]


def test_client_evaluate_returns_metrics_and_a_top10_without_train_items() -> None:
    cfg = _cfg()
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    metrics, top = client_evaluate(cfg, TRAIN, items, None, ITEMS, np.array([2, 4]), seed=0)
    assert 0.0 <= metrics["ndcg@10"] <= 1.0
    assert top.shape == (10,) and not np.isin(top, ITEMS).any()


def test_sampler_is_reproducible_with_the_right_rate() -> None:
    # Execute
    a, b = sample_clients(10_000, 1000, 3, seed=0), sample_clients(10_000, 1000, 3, seed=0)
    other = sample_clients(10_000, 1000, 4, seed=0)
    # Assert: Binomial(10000, 0.1) has sd 30
    assert np.array_equal(a, b) and not np.array_equal(a, other)
    assert abs(len(a) - 1000) < 150 and np.all(np.diff(a) > 0)
    assert len(sample_clients(50, 100, 0, seed=0)) == 50


def test_fedavg_on_hand_computed_arrays() -> None:
    # Prepare
    g = [np.array([0.0, 0.0], np.float32)]
    clients = [[np.array([1.0, 2.0], np.float32)], [np.array([3.0, 6.0], np.float32)]]
    # Execute
    uniform = FedAvg().step(g, clients)
    weighted = FedAvg().step(g, clients, weights=[3.0, 1.0])
    half = FedAvg(server_lr=0.5).step(g, clients)
    # Assert
    np.testing.assert_allclose(uniform[0], [2.0, 4.0])
    np.testing.assert_allclose(weighted[0], [1.5, 3.0])
    np.testing.assert_allclose(half[0], [1.0, 2.0])
    np.testing.assert_array_equal(FedAvg().step(g, [])[0], g[0])


def test_fedadam_on_hand_computed_arrays() -> None:
    # Prepare: Delta = [2, -4]; m = 0.1 Delta; v = 0.01 Delta^2; step = eta m/(sqrt v + tau)
    g = [np.array([1.0, 1.0], np.float32)]
    clients = [[np.array([2.0, -1.0], np.float32)], [np.array([4.0, -5.0], np.float32)]]
    opt = FedAdam(0.1, beta1=0.9, beta2=0.99, tau=1e-3)
    # Execute
    out = opt.step(g, clients)
    # Assert
    delta = np.array([2.0, -4.0])
    expected = 1.0 + 0.1 * (0.1 * delta) / (np.sqrt(0.01 * delta**2) + 1e-3)
    np.testing.assert_allclose(out[0], expected, rtol=1e-5)


def test_fedadam_resumes_exactly_from_its_state() -> None:
    # Prepare
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(3, 2)).astype(np.float32)]
    uploads = [[[rng.normal(size=(3, 2)).astype(np.float32)] for _ in range(2)] for _ in range(3)]
    straight, first = FedAdam(0.05), FedAdam(0.05)
    # Execute
    x = g
    for u in uploads:
        x = straight.step(x, u)
    y = first.step(g, uploads[0])
    resumed = FedAdam(0.05)
    resumed.load_state_dict(first.state_dict())
    for u in uploads[1:]:
        y = resumed.step(y, u)
    # Assert
    np.testing.assert_array_equal(x[0], y[0])


def test_server_config_validates() -> None:
    with pytest.raises(ValueError, match="strategy"):
        ServerConfig(strategy="fedsgd")


def _planted_split() -> object:
    # 60 users, 30 items in 3 blocks: a user interacts with most items of its block
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(60):
        block = np.arange(10) + 10 * (u % 3)
        chosen = rng.choice(block, size=8, replace=False)
        users += [u] * 8
        items += list(chosen)
    data = Interactions(
        user=np.array(users, np.int64),
        item=np.array(items, np.int64),
        user_ids=np.arange(60, dtype=np.int64),
        item_ids=np.arange(30, dtype=np.int64),
    )
    return random_split(data, seed=0)


def test_run_federated_learns_a_planted_structure() -> None:
    # Prepare
    split = _planted_split()
    cfg = _cfg()
    train = LocalTrainConfig(epochs=2, refit_steps=5)
    server = ServerConfig(strategy="fedadam", server_lr=0.05)
    # Execute
    untrained = run_federated(split, cfg, train, server, rounds=0, clients_per_round=30, seed=0)
    trained = run_federated(split, cfg, train, server, rounds=15, clients_per_round=30, seed=0)
    # Assert
    assert trained.metrics["ndcg@10"] > untrained.metrics["ndcg@10"] + 0.2  # type: ignore[operator]
    assert len(trained.history) == 15 and set(trained.user_states) <= set(range(60))


def _fedadam_as_written(
    state: dict[str, list[np.ndarray]], g: list[np.ndarray], mean: list[np.ndarray]
) -> list[np.ndarray]:
    """Reddi et al.'s Algorithm 2 step, one expression per line (the oracle)."""
    b1, b2, lr, tau = 0.9, 0.99, 0.05, 1e-3
    out = []
    for j, (x, avg) in enumerate(zip(g, mean, strict=True)):
        delta = avg - x
        state["m"][j] = (b1 * state["m"][j] + (1 - b1) * delta).astype(np.float32)
        state["v"][j] = (b2 * state["v"][j] + (1 - b2) * delta**2).astype(np.float32)
        out.append((x + lr * state["m"][j] / (np.sqrt(state["v"][j]) + tau)).astype(np.float32))
    return out


def test_fedadam_in_place_step_gives_the_same_bits_as_the_formula() -> None:
    # Prepare: float32 item arrays and five rounds of cohort means
    rng = np.random.default_rng(0)
    items = [rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=50).astype(np.float32)]
    means = [[(a + rng.normal(scale=0.1, size=a.shape)).astype(np.float32) for a in items]]
    means += [[(a + rng.normal(scale=0.3, size=a.shape)).astype(np.float32) for a in items]]
    opt = FedAdam(0.05, beta1=0.9, beta2=0.99, tau=1e-3)
    oracle = {"m": [np.zeros_like(a) for a in items], "v": [np.zeros_like(a) for a in items]}
    x, y = items, items

    # Execute
    for r in range(6):
        x = opt.step(x, [means[r % 2]])
        y = _fedadam_as_written(oracle, y, means[r % 2])

    # Assert: bit for bit, state included, and the inputs untouched
    for a, b in zip(x, y, strict=True):
        assert a.dtype == np.float32 and np.array_equal(a, b)
    for j in range(2):
        assert np.array_equal(opt.m[j], oracle["m"][j]) and np.array_equal(opt.v[j], oracle["v"][j])
    assert not np.shares_memory(x[0], items[0])
