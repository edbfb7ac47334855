"""iALS (``--model ials``): the closed forms against brute force and autograd, the dense
upload, learning on planted data, the ALS twin, the privacy modes it takes or refuses."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.data import random_split
from fedrec.data.interactions import Interactions
from fedrec.federated.client import client_fit, client_scores
from fedrec.federated.loop import run_federated
from fedrec.federated.presets import IALS_LOCAL, IALS_MODEL, IALS_SERVER, federated_preset
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.models.base import item_side
from fedrec.models.config import ModelConfig
from fedrec.models.registry import build_model, init_item_arrays
from fedrec.recommend import item_vectors
from fedrec.training import ials
from fedrec.training.centralized import central_preset, train_centralized

CFG = ModelConfig(kind="ials", dim=4, alpha0=0.5, l2=0.05, init_std=1.0)
ITEMS = np.array([1, 4, 7, 8], dtype=np.int64)
N_ITEMS = 12


def _items(seed: int = 0, n: int = N_ITEMS, d: int = 4) -> np.ndarray:
    return np.random.default_rng(seed).normal(0.0, 0.5, (n, d))


def _torch_loss(p: torch.Tensor, q: torch.Tensor, items: np.ndarray) -> torch.Tensor:
    """``f_u`` written independently of fedrec.training.ials."""
    a0, lam = CFG.alpha0, CFG.l2
    n, idx = q.shape[0], torch.as_tensor(items)
    pred = q @ p
    reg_u = lam * (len(items) + a0 * n) * (p * p).sum()
    reg_q = lam * ((q[idx] ** 2).sum() + a0 * (q * q).sum())
    return ((pred[idx] - 1) ** 2).sum() + a0 * (pred**2).sum() + reg_u + reg_q


def test_closed_form_user_solve_is_the_minimiser() -> None:
    # Prepare
    q = _items()
    # Execute
    p = ials.solve_user(q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    q_t = torch.from_numpy(q)
    p_t = torch.zeros(4, dtype=torch.float64, requires_grad=True)
    opt = torch.optim.LBFGS([p_t], max_iter=200, tolerance_grad=1e-12, tolerance_change=1e-14)

    def closure() -> torch.Tensor:
        opt.zero_grad()
        loss = _torch_loss(p_t, q_t, ITEMS)
        loss.backward()
        return loss

    opt.step(closure)
    # Assert: the same point, the same loss, and no direction lowers it
    np.testing.assert_allclose(p, p_t.detach().numpy(), atol=1e-8)
    ours = ials.user_loss(p, q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    assert ours == pytest.approx(float(_torch_loss(torch.from_numpy(p), q_t, ITEMS)), rel=1e-12)
    for step in np.eye(4) * 1e-3:
        assert ials.user_loss(p + step, q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2) > ours
    np.testing.assert_allclose(
        ials.user_gradient(p, q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2), 0.0, atol=1e-10
    )


def test_item_gradient_equals_autograd_of_the_same_loss() -> None:
    # Prepare
    q = _items(1)
    p = ials.solve_user(q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    q_t = torch.from_numpy(q).requires_grad_(True)
    # Execute
    _torch_loss(torch.from_numpy(p), q_t, ITEMS).backward()
    ours = ials.item_gradient(p, q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    # Assert
    assert q_t.grad is not None
    np.testing.assert_allclose(ours, q_t.grad.numpy(), rtol=1e-10, atol=1e-12)


def test_model_loss_is_the_same_loss_and_solve_users_sets_the_closed_form() -> None:
    # Prepare: the autograd model (the reference path) holding the same items
    model = build_model(CFG, N_ITEMS, 1, seed=0)
    q = _items(2)
    with torch.no_grad():
        model.item_emb.weight.copy_(torch.from_numpy(q))
    ex = model.make_examples(np.zeros(len(ITEMS), np.int64), ITEMS, generator=torch.Generator())
    # Execute
    solved_loss = model.solve_users(ex)
    loss = model.loss(model(*ex.inputs), ex.target)
    loss.backward()
    # Assert
    p = ials.solve_user(q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    np.testing.assert_allclose(model.user_emb.weight.detach().numpy()[0], p, rtol=1e-5)
    assert float(loss.detach()) == pytest.approx(solved_loss, rel=1e-5)
    grad = item_side(model)["item_emb.weight"].grad
    assert grad is not None
    expected = ials.item_gradient(p, q, ITEMS, alpha0=CFG.alpha0, lam=CFG.l2)
    np.testing.assert_allclose(grad.numpy(), expected, rtol=1e-4, atol=1e-5)


def test_upload_is_dense_and_minus_the_gradient() -> None:
    # Prepare
    cfg = ModelConfig(kind="ials", dim=8, alpha0=1.0, l2=0.01)
    items = init_item_arrays(cfg, 50, seed=0)
    train = np.array([3, 9, 20], dtype=np.int64)
    # Execute
    fit = client_fit(cfg, IALS_LOCAL, items, None, train, seed=0)
    # Assert: every row moved; the upload is Q - grad at the solved p
    changed = np.abs(fit.item_arrays[0] - items[0]).sum(axis=1) > 0
    assert changed.all()
    q = items[0].astype(np.float64)
    p = ials.solve_user(q, train, alpha0=1.0, lam=0.01)
    grad = ials.item_gradient(p, q, train, alpha0=1.0, lam=0.01)
    np.testing.assert_allclose(fit.item_arrays[0], q - grad, rtol=1e-5, atol=1e-7)
    np.testing.assert_allclose(fit.user_state["user_emb.weight"][0], p, rtol=1e-5)


@pytest.mark.parametrize("epochs", [1, 3])
def test_fast_path_equals_the_autograd_reference_path(epochs: int) -> None:
    # Prepare: FedProx and weight decay too, which the fast path applies by hand
    cfg = ModelConfig(kind="ials", dim=6, alpha0=0.3, l2=0.02)
    train = IALS_LOCAL.__class__(
        **{**IALS_LOCAL.__dict__, "epochs": epochs, "lr": 0.05, "proximal_mu": 0.1,
           "weight_decay": 0.01, "user_lr": 0.02}
    )  # fmt: skip
    items = init_item_arrays(cfg, 30, seed=1)
    train_items = np.array([0, 5, 6, 17], dtype=np.int64)
    # Execute
    fast = client_fit(cfg, train, items, None, train_items, seed=3)
    slow = client_fit(cfg, train, items, None, train_items, seed=3, fast=False)
    scores = [
        client_scores(cfg, train, items, None, train_items, seed=3, fast=f) for f in (True, False)
    ]
    # Assert
    np.testing.assert_allclose(fast.item_arrays[0], slow.item_arrays[0], atol=1e-6)
    np.testing.assert_allclose(
        fast.user_state["user_emb.weight"], slow.user_state["user_emb.weight"], atol=1e-6
    )
    assert fast.train_loss == pytest.approx(slow.train_loss, rel=1e-5)
    np.testing.assert_allclose(scores[0].numpy(), scores[1].numpy(), atol=1e-6)


def test_solve_rows_matches_solve_user_for_every_row() -> None:
    # Prepare
    x = sp.random(9, N_ITEMS, density=0.3, random_state=2, format="csr")
    q = _items(3)
    # Execute
    batched = ials.solve_rows(q, x, alpha0=CFG.alpha0, lam=CFG.l2)
    # Assert
    for u in range(9):
        one = ials.solve_user(q, x[u].indices.astype(np.int64), alpha0=CFG.alpha0, lam=CFG.l2)
        np.testing.assert_allclose(batched[u], one, atol=1e-12)


def _planted() -> Interactions:
    from fedrec.data import synthetic

    return synthetic(n_users=120, n_items=60, dim=4, mean_interactions=15, seed=0)


def test_federated_ials_beats_popularity_on_planted_data() -> None:
    # Prepare
    split = random_split(_planted(), seed=0)
    model, local, server = federated_preset("ials")
    model = ModelConfig(kind="ials", dim=8, alpha0=model.alpha0, l2=model.l2)
    server = server.__class__(**{**server.__dict__, "server_lr": 0.05})
    from fedrec.baselines import make_baseline

    pop = evaluate_scores(make_baseline("popularity").fit(split.train).score, split)
    # Execute
    result = run_federated(split, model, local, server, rounds=40, clients_per_round=40, seed=0)
    # Assert
    assert float(result.metrics["ndcg@10"] or 0) > float(pop["ndcg@10"] or 0) + 0.1


def test_centralized_twin_solves_als_and_beats_popularity() -> None:
    # Prepare
    split = random_split(_planted(), seed=0)
    model, train = central_preset("ials")
    model = ModelConfig(kind="ials", dim=8, alpha0=model.alpha0, l2=model.l2)
    from fedrec.baselines import make_baseline

    pop = evaluate_scores(make_baseline("popularity").fit(split.train).score, split)
    q0 = init_item_arrays(model, split.n_items, seed=0)[0]
    # Execute
    scorer = train_centralized(model, train, split, seed=0, epochs=5)
    p, q = ials.train_als(model, split.train, iterations=5, q0=q0)
    # Assert: the twin's scores are P Q^T of the alternating solves; each solve is exact
    users = np.arange(4, dtype=np.int64)
    np.testing.assert_allclose(scorer(users).numpy(), (p[:4] @ q.T), rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        p[0], ials.solve_user(q, split.train[0].indices.astype(np.int64),
                              alpha0=model.alpha0, lam=model.l2), atol=1e-10,
    )  # fmt: skip
    ndcg = float(evaluate_scores(scorer, split)["ndcg@10"] or 0)
    assert ndcg > float(pop["ndcg@10"] or 0) + 0.1


def test_preset_and_item_vectors() -> None:
    assert federated_preset("ials") == (IALS_MODEL, IALS_LOCAL, IALS_SERVER)
    arrays = init_item_arrays(IALS_MODEL, 20, seed=0)
    np.testing.assert_array_equal(item_vectors("ials", arrays), arrays[0].astype(np.float64))


def test_device_serves_the_closed_form_user_vector(tmp_path: Path) -> None:
    # Prepare: a device holding iALS global items and four interactions
    from clients import DeviceClient
    from clients.device import RoundConfig

    cfg = ModelConfig(kind="ials", dim=4, alpha0=0.5, l2=0.05)
    items = init_item_arrays(cfg, 15, seed=0)
    seen = [0, 2, 5, 9]
    with DeviceClient.open(tmp_path / "d.db", user_id="u", min_interactions=3) as device:
        device.set_global(items, RoundConfig(model=cfg, train=IALS_LOCAL, round=1, seed=1))
        device.record_many(seen)
        # Execute
        recs = device.recommend(15)
    # Assert: the ranking is Q p with p the exact solve, seen items excluded
    p = ials.solve_user(items[0], np.array(seen, dtype=np.int64), alpha0=0.5, lam=0.05)
    scores = items[0].astype(np.float64) @ p
    expected = [i for i in np.argsort(-scores, kind="stable") if i not in seen]
    assert [r.item for r in recs] == expected and not any(r.fallback for r in recs)
    np.testing.assert_allclose([r.score for r in recs], scores[expected], rtol=1e-4, atol=1e-6)
