"""The hand-written MF update (fedrec.training.mf_fast) equals the autograd path."""

from __future__ import annotations

from dataclasses import replace

import numpy as np
import pytest
import torch
from hypothesis import given, settings
from hypothesis import strategies as st

from fedrec.federated.client import client_fit, client_scores
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays
from fedrec.training import mf_fast

N_ITEMS, DIM = 60, 8
ITEMS = np.array([1, 4, 7, 9, 15, 22, 23, 40, 41, 58], dtype=np.int64)
MODEL = ModelConfig(kind="mf", dim=DIM)
TRAIN = LocalTrainConfig()
TOL = 1e-5

CONFIGS = {
    "preset": (MODEL, TRAIN),
    "bpr": (replace(MODEL, loss="bpr"), TRAIN),
    "proximal": (MODEL, replace(TRAIN, proximal_mu=0.5)),
    "bpr-proximal": (replace(MODEL, loss="bpr"), replace(TRAIN, proximal_mu=0.5)),
    "no-refit": (MODEL, replace(TRAIN, refit_steps=0)),
    "refit-once": (MODEL, replace(TRAIN, refit_every_round=False)),
    "minibatches": (replace(MODEL, negatives=2), replace(TRAIN, batch_size=16, epochs=2)),
    "adam-decay": (MODEL, replace(TRAIN, optimizer="adam", lr=0.05, weight_decay=0.01)),
    "sgd-refit": (MODEL, replace(TRAIN, refit_optimizer="sgd", refit_lr=0.5)),
    "no-bias-no-l2": (replace(MODEL, item_bias=False, l2=0.0), TRAIN),
    "warm-refit": (MODEL, replace(TRAIN, warm_refit_steps=3)),
}


def _state(seed: int, dim: int = DIM) -> dict[str, np.ndarray]:
    rng = np.random.default_rng(seed)
    return {"user_emb.weight": (0.1 * rng.standard_normal((1, dim))).astype(np.float32)}


def _assert_same(model: ModelConfig, train: LocalTrainConfig, state: object, **kw: object) -> None:
    n_items = int(kw.pop("n_items", N_ITEMS))  # type: ignore[call-overload]
    items = np.asarray(kw.pop("items", ITEMS))
    global_items = init_item_arrays(model, n_items, seed=3)
    ref = client_fit(model, train, global_items, state, items, seed=11, fast=False)  # type: ignore[arg-type]
    fast = client_fit(model, train, global_items, state, items, seed=11)  # type: ignore[arg-type]
    for a, b in zip(ref.item_arrays, fast.item_arrays, strict=True):
        np.testing.assert_allclose(b, a, atol=TOL, rtol=0)
        assert b.dtype == np.float32 and b.shape == a.shape
    np.testing.assert_allclose(
        fast.user_state["user_emb.weight"], ref.user_state["user_emb.weight"], atol=TOL, rtol=0
    )
    assert fast.train_loss == pytest.approx(ref.train_loss, abs=TOL)
    assert fast.num_examples == ref.num_examples


@pytest.mark.parametrize("stored", [False, True], ids=["fresh", "stored"])
@pytest.mark.parametrize("name", sorted(CONFIGS))
def test_fast_fit_equals_autograd(name: str, stored: bool) -> None:
    # Prepare
    model, train = CONFIGS[name]
    state = _state(5) if stored else None
    # Execute / Assert
    _assert_same(model, train, state)


def test_fast_path_moves_touched_rows_only() -> None:
    # Prepare: plain SGD without FedProx updates only rows an example used
    global_items = init_item_arrays(MODEL, N_ITEMS, seed=3)
    # Execute
    fit = client_fit(MODEL, TRAIN, global_items, None, ITEMS, seed=11)
    # Assert
    moved = np.flatnonzero(np.any(fit.item_arrays[0] != global_items[0], axis=1))
    assert set(ITEMS) <= set(moved.tolist())
    assert len(moved) < N_ITEMS


def test_initial_user_vector_matches_build_model() -> None:
    # Prepare
    model = build_model(MODEL, N_ITEMS, 1, seed=42)
    # Execute
    p = mf_fast.initial_user_vector(MODEL, 42)
    # Assert
    np.testing.assert_array_equal(p, model.user_emb.weight.detach().numpy()[0])  # type: ignore[operator]


@pytest.mark.parametrize("stored", [False, True], ids=["fresh", "stored"])
def test_fast_scores_equal_autograd(stored: bool) -> None:
    # Prepare
    global_items = init_item_arrays(MODEL, N_ITEMS, seed=3)
    state = _state(2) if stored else None
    # Execute
    ref = client_scores(MODEL, TRAIN, global_items, state, ITEMS, seed=9, fast=False)
    fast = client_scores(MODEL, TRAIN, global_items, state, ITEMS, seed=9)
    # Assert
    assert isinstance(fast, torch.Tensor) and fast.shape == (N_ITEMS,)
    torch.testing.assert_close(fast, ref, atol=TOL, rtol=0)


@settings(max_examples=12, deadline=None)
@given(
    n_items=st.integers(2, 40),
    dim=st.integers(1, 6),
    n_pos=st.integers(1, 12),
    negatives=st.integers(1, 3),
    batch_size=st.integers(4, 40),
    loss=st.sampled_from(["bce", "bpr"]),
    mu=st.sampled_from([0.0, 0.3]),
    stored=st.booleans(),
)
def test_fast_fit_equals_autograd_small_shapes(
    n_items: int,
    dim: int,
    n_pos: int,
    negatives: int,
    batch_size: int,
    loss: str,
    mu: float,
    stored: bool,
) -> None:
    # Prepare
    model = ModelConfig(kind="mf", dim=dim, loss=loss, negatives=negatives)
    train = LocalTrainConfig(epochs=2, lr=0.5, batch_size=batch_size, proximal_mu=mu, refit_steps=3)
    items = np.sort(np.random.default_rng(n_pos).choice(n_items, min(n_pos, n_items), False))
    state = _state(1, dim) if stored else None
    # Execute / Assert
    _assert_same(model, train, state, n_items=n_items, items=items)
