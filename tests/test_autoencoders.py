"""CDAE and Mult-VAE: parameter split, shapes, learning, determinism, local training, loss."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import torch

from fedrec.data import Interactions, random_split
from fedrec.data.split import Split
from fedrec.federated.client import client_fit
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.models.base import check_split, item_side, user_side
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays
from fedrec.training.autoencoder import train_autoencoder_centralized

N_USERS, N_ITEMS, BLOCK = 60, 30, 10
SMALL = {
    "cdae": ModelConfig(kind="cdae", dim=16, dropout=0.3),
    "multvae": ModelConfig(kind="multvae", dim=8, hidden=24, dropout=0.3, beta=0.1),
}
TRAIN = LocalTrainConfig(epochs=2, lr=0.01, batch_size=16, optimizer="adam", refit_steps=2)


@pytest.fixture(params=["cdae", "multvae"])
def cfg(request: pytest.FixtureRequest) -> ModelConfig:
    return SMALL[request.param]


@pytest.fixture(scope="module")
def blocks() -> Split:
    """Three user clusters; each user likes 7 random items of their cluster's block of 10."""
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(N_USERS):
        block = (u % 3) * BLOCK
        liked = block + rng.choice(BLOCK, size=7, replace=False)
        users += [u] * 7
        items += list(liked)
    data = Interactions(
        user=np.asarray(users, dtype=np.int64),
        item=np.asarray(items, dtype=np.int64),
        user_ids=np.arange(1, N_USERS + 1),
        item_ids=np.arange(1, N_ITEMS + 1),
        source="synthetic(blocks)",
    )
    return random_split(data, seed=0)


def _rows(model: torch.nn.Module, n: int, seed: int = 0) -> tuple[np.ndarray, np.ndarray]:
    rng = np.random.default_rng(seed)
    users = np.repeat(np.arange(n, dtype=np.int64), 5)
    items = rng.integers(0, N_ITEMS, len(users)).astype(np.int64)
    return users, items


def test_split_covers_every_parameter_once(cfg: ModelConfig) -> None:
    model = build_model(cfg, N_ITEMS, 4, seed=0)

    check_split(model)

    declared = set(model.ITEM_SIDE) | set(model.USER_SIDE)
    assert declared == {n for n, _ in model.named_parameters()}
    assert not set(model.ITEM_SIDE) & set(model.USER_SIDE)


def test_item_side_shapes() -> None:
    cdae = init_item_arrays(SMALL["cdae"], N_ITEMS, seed=0)
    vae = init_item_arrays(SMALL["multvae"], N_ITEMS, seed=0)

    assert [a.shape for a in cdae] == [(N_ITEMS, 16), (N_ITEMS,), (16, N_ITEMS), (16,)]
    assert vae[0].shape == (N_ITEMS, 24) and vae[1].shape == (N_ITEMS,)
    assert vae[-2].shape == (24, N_ITEMS)
    assert user_side(build_model(SMALL["multvae"], N_ITEMS, 1, seed=0)) == {}


def test_centralized_beats_popularity(cfg: ModelConfig, blocks: Split) -> None:
    popularity = torch.as_tensor(np.asarray(blocks.train.sum(axis=0)).ravel())
    pop = evaluate_scores(lambda u: popularity.repeat(len(u), 1), blocks)["ndcg@10"]

    score = train_autoencoder_centralized(cfg, TRAIN, blocks, 0, 60)
    ndcg = evaluate_scores(score, blocks)["ndcg@10"]

    assert ndcg is not None and pop is not None
    assert ndcg > pop + 0.15


def test_deterministic_given_seed(cfg: ModelConfig, blocks: Split) -> None:
    users = np.arange(N_USERS, dtype=np.int64)

    first = train_autoencoder_centralized(cfg, TRAIN, blocks, 3, 3)(users)
    second = train_autoencoder_centralized(cfg, TRAIN, blocks, 3, 3)(users)

    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_local_training_changes_declared_sides(cfg: ModelConfig) -> None:
    start = init_item_arrays(cfg, N_ITEMS, seed=0)
    row = np.array([1, 4, 7, 9], dtype=np.int64)

    fit = client_fit(cfg, TRAIN, start, None, row, seed=1)

    assert all(a.shape == b.shape for a, b in zip(fit.item_arrays, start, strict=True))
    assert all(not np.array_equal(a, b) for a, b in zip(fit.item_arrays, start, strict=True))
    assert set(fit.user_state) == set(build_model(cfg, N_ITEMS, 1, seed=0).USER_SIDE)
    for state in fit.user_state.values():
        assert state.shape[0] == 1 and np.abs(state).sum() > 0


def test_cdae_step_on_one_row_touches_only_that_user_vector() -> None:
    model = build_model(dataclasses.replace(SMALL["cdae"], dropout=0.0), N_ITEMS, 3, seed=0)
    ex = model.make_examples(
        np.array([1, 1], dtype=np.int64),
        np.array([2, 5], dtype=np.int64),
        generator=torch.Generator(),
    )
    before = model.user_input.weight.detach().clone()

    model.loss(model(*ex.inputs), ex.target).backward()
    torch.optim.SGD(model.parameters(), lr=0.5).step()

    changed = (model.user_input.weight.detach() != before).any(dim=1)
    assert changed.tolist() == [False, True, False]
    assert all(p.grad is not None for p in item_side(model).values())


def test_loss_is_mean_of_per_row_losses(cfg: ModelConfig) -> None:
    model = build_model(cfg, N_ITEMS, 4, seed=0)
    users, items = _rows(model, 4)
    ex = model.make_examples(users, items, generator=torch.Generator().manual_seed(0))

    batch = model.loss(model(*ex.inputs), ex.target)
    rows = [
        model.loss(model(*ex.take(torch.tensor([i])).inputs), ex.target[i : i + 1])
        for i in range(4)
    ]

    assert len(ex) == 4
    torch.testing.assert_close(batch, torch.stack(rows).mean())


def test_score_is_deterministic_and_ranks_all_items(cfg: ModelConfig) -> None:
    model = build_model(cfg, N_ITEMS, 2, seed=0)
    history = torch.zeros(2, N_ITEMS)
    history[0, :3] = 1.0

    first = model.score(torch.tensor([0, 1]), history)
    second = model.score(torch.tensor([0, 1]), history)

    assert first.shape == (2, N_ITEMS)
    torch.testing.assert_close(first, second, rtol=0, atol=0)


def test_opacus_computes_per_user_gradients(cfg: ModelConfig) -> None:
    from opacus import GradSampleModule

    model = build_model(cfg, N_ITEMS, 4, seed=0)
    users, items = _rows(model, 4)
    ex = model.make_examples(users, items, generator=torch.Generator().manual_seed(0))
    wrapped = GradSampleModule(model)

    model.loss(wrapped(*ex.inputs), ex.target).backward()

    for name, p in model.named_parameters():
        assert p.grad_sample is not None, name
        assert p.grad_sample.shape == (4, *p.shape), name
