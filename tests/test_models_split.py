"""One contract for every registered model: the item-side / user-side split."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.models.base import (
    get_item_arrays,
    get_user_state,
    item_side,
    set_item_arrays,
    set_user_state,
    user_side,
)
from fedrec.models.config import ModelConfig
from fedrec.models.registry import MODEL_KINDS, build_model, init_item_arrays, item_array_shapes
from fedrec.models.trainable import TrainableRecommender

N_ITEMS, N_USERS = 30, 4


@pytest.fixture(params=MODEL_KINDS)
def model(request: pytest.FixtureRequest) -> TrainableRecommender:
    cfg = ModelConfig(kind=request.param, dim=8, hidden=16)
    return build_model(cfg, N_ITEMS, N_USERS, seed=0)


def test_split_covers_every_parameter_exactly_once(model: TrainableRecommender) -> None:
    # Execute
    shared, local = set(item_side(model)), set(user_side(model))
    # Assert
    assert shared.isdisjoint(local)
    assert shared | local == {name for name, _ in model.named_parameters()}
    assert len(model.ITEM_SIDE) == len(shared) and len(model.USER_SIDE) == len(local)


def test_item_arrays_round_trip(model: TrainableRecommender) -> None:
    # Prepare
    rng = np.random.default_rng(0)
    arrays = [rng.normal(size=a.shape).astype(np.float32) for a in get_item_arrays(model)]
    # Execute
    set_item_arrays(model, arrays)
    # Assert
    for got, want in zip(get_item_arrays(model), arrays, strict=True):
        np.testing.assert_array_equal(got, want)


def test_user_state_round_trip(model: TrainableRecommender) -> None:
    # Prepare
    state = {k: np.full_like(v, 0.5) for k, v in get_user_state(model).items()}
    # Execute
    set_user_state(model, state)
    # Assert
    for k, v in get_user_state(model).items():
        np.testing.assert_array_equal(v, state[k])


def test_set_item_arrays_rejects_wrong_shape(model: TrainableRecommender) -> None:
    arrays = get_item_arrays(model)
    with pytest.raises(ValueError, match="shape"):
        set_item_arrays(model, [np.zeros((1, 1), np.float32), *arrays[1:]])


@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_init_is_a_function_of_the_seed(kind: str) -> None:
    cfg = ModelConfig(kind=kind, dim=8, hidden=16)
    a, b = init_item_arrays(cfg, N_ITEMS, seed=3), init_item_arrays(cfg, N_ITEMS, seed=3)
    c = init_item_arrays(cfg, N_ITEMS, seed=4)
    assert all(np.array_equal(x, y) for x, y in zip(a, b, strict=True))
    assert not all(np.array_equal(x, y) for x, y in zip(a, c, strict=True))
    assert [x.shape for x in a] == item_array_shapes(cfg, N_ITEMS)


def test_model_trains_one_step(model: TrainableRecommender) -> None:
    # Prepare
    users = np.array([0, 0, 1, 2, 3], dtype=np.int64)
    items = np.array([1, 2, 3, 4, 5], dtype=np.int64)
    ex = model.make_examples(users, items, generator=torch.Generator().manual_seed(0))
    # Execute
    loss = model.loss(model(*ex.inputs), ex.target)
    loss.backward()
    # Assert: a finite scalar loss with a gradient on some item-side parameter
    assert loss.dim() == 0 and torch.isfinite(loss)
    assert any(p.grad is not None and p.grad.abs().sum() > 0 for p in item_side(model).values())
    assert model.score(torch.arange(2), torch.zeros(2, N_ITEMS)).shape == (2, N_ITEMS)
