"""Matrix factorization: examples, losses, scores and config validation."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.errors import ConfigError
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.mf import MatrixFactorization
from fedrec.models.registry import build_model


def _mf(**kw: object) -> MatrixFactorization:
    model = build_model(ModelConfig(dim=4, **kw), 10, 3, seed=0)  # type: ignore[arg-type]
    assert isinstance(model, MatrixFactorization)
    return model


def _gen() -> torch.Generator:
    return torch.Generator().manual_seed(0)


def test_bce_examples_are_positives_then_k_uniform_negatives() -> None:
    # Prepare
    model = _mf(negatives=3)
    users, items = np.array([0, 1]), np.array([4, 7])
    # Execute
    ex = model.make_examples(users, items, generator=_gen())
    # Assert
    u, i = ex.inputs
    assert len(ex) == 2 * (1 + 3)
    assert ex.target.tolist() == [1, 1] + [0] * 6
    assert u.tolist() == [0, 1, 0, 0, 0, 1, 1, 1]
    assert i[:2].tolist() == [4, 7] and bool(((i >= 0) & (i < 10)).all())


def _negatives(model: MatrixFactorization, items: list[int], key: bytes | None = None) -> dict:
    """Each interaction's negatives, by item, of one device user (slot 0)."""
    users = np.zeros(len(items), dtype=np.int64)
    ex = model.make_examples(users, np.array(items), generator=_gen(), key=key)
    k = model.cfg.negatives
    neg = ex.inputs[1][len(items) :].reshape(len(items), k)
    return {item: neg[j].tolist() for j, item in enumerate(items)}


def test_each_interactions_negatives_depend_on_its_own_item_only() -> None:
    # Prepare: a user's interactions, then the same minus the first, reordered, extended
    model = _mf(negatives=5)
    items = [0, 1, 2, 3, 6]
    # Execute
    full = _negatives(model, items)
    neighbours = [
        _negatives(model, items[1:]),
        _negatives(model, items[:2] + items[3:]),
        _negatives(model, items[::-1]),
        _negatives(model, [*items, 9]),
    ]
    # Assert: every remaining interaction keeps exactly its negatives (no position, no
    # dependence on the other items, no rejection of the user's positives)
    for other in neighbours:
        for item, negs in other.items():
            if item in full:
                assert negs == full[item]
    drawn = [n for negs in full.values() for n in negs]
    assert set(drawn) & set(items), "a negative equal to a positive must be kept"


def test_the_device_key_changes_the_negatives() -> None:
    # Prepare
    model = _mf(negatives=5)
    items = list(range(10))
    # Execute
    public, a, b = (_negatives(model, items, key) for key in (None, b"a" * 32, b"b" * 32))
    # Assert
    assert public != a != b and a == _negatives(model, items, b"a" * 32)


def test_bpr_examples_are_pairs_and_loss_is_mean() -> None:
    # Prepare
    model = _mf(loss="bpr", negatives=2, l2=0.0)
    ex = model.make_examples(np.array([0, 2]), np.array([1, 5]), generator=_gen())
    # Execute
    out = model(*ex.inputs)[..., 0]
    loss = model.loss(model(*ex.inputs), ex.target)
    # Assert
    assert ex.inputs[1].shape == (4, 2) and ex.inputs[1][:, 0].tolist() == [1, 1, 5, 5]
    expected = -torch.nn.functional.logsigmoid(out[:, 0] - out[:, 1]).mean()
    assert torch.allclose(loss, expected)


def test_forward_and_score_are_dot_products_plus_bias() -> None:
    # Prepare
    model = _mf()
    with torch.no_grad():
        model.item_bias.weight.normal_()
    p, q, b = model.user_emb.weight, model.item_emb.weight, model.item_bias.weight[:, 0]
    # Execute
    logits = model(torch.tensor([2]), torch.tensor([7]))[..., 0]
    scores = model.score(torch.tensor([0, 2]), torch.zeros(2, 10))
    # Assert
    assert torch.allclose(logits, p[2] @ q[7] + b[7])
    assert torch.allclose(scores, p[[0, 2]] @ q.T + b)


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_l2_penalty_is_per_example_squared_norms_of_the_rows_used(loss: str) -> None:
    # Prepare
    model, plain = _mf(loss=loss, l2=0.1), _mf(loss=loss, l2=0.0)
    ex = model.make_examples(np.array([0, 2]), np.array([1, 5]), generator=_gen())
    u, i = ex.inputs
    p, q = model.user_emb.weight, model.item_emb.weight
    per_ex = (p[u] ** 2).sum(-1) + (q[i] ** 2).sum(-1).reshape(len(ex), -1).sum(-1)
    # Execute
    penalized = model.loss(model(*ex.inputs), ex.target)
    unpenalized = plain.loss(plain(*ex.inputs), ex.target)
    # Assert
    assert torch.allclose(penalized - unpenalized, 0.1 * per_ex.mean())


def test_l2_penalty_leaves_untouched_rows_without_gradient() -> None:
    # Prepare
    model = _mf(l2=0.5)
    ex = model.make_examples(np.array([0]), np.array([3]), generator=_gen())
    # Execute
    model.loss(model(*ex.inputs), ex.target).backward()
    # Assert
    grad = model.item_emb.weight.grad
    assert grad is not None
    touched = torch.zeros(10, dtype=torch.bool)
    touched[ex.inputs[1]] = True
    assert float(grad[~touched].abs().sum()) == 0.0 and float(grad[touched].abs().sum()) > 0


def test_item_bias_off_stays_frozen_at_zero() -> None:
    model = _mf(item_bias=False)
    assert not model.item_bias.weight.requires_grad
    assert float(model.item_bias.weight.abs().sum()) == 0.0


@pytest.mark.parametrize(
    ("make", "field"),
    [
        (lambda: ModelConfig(kind="svd"), "model.kind"),
        (lambda: ModelConfig(dim=0), "model.dim"),
        (lambda: ModelConfig(loss="mse"), "model.loss"),
        (lambda: ModelConfig(negatives=0), "model.negatives"),
        (lambda: ModelConfig(l2=-1.0), "model.l2"),
        (lambda: LocalTrainConfig(lr=0.0), "train.lr"),
        (lambda: LocalTrainConfig(optimizer="rmsprop"), "train.optimizer"),
        (lambda: LocalTrainConfig(proximal_mu=-1.0), "train.proximal_mu"),
    ],
)
def test_bad_config_values_raise_config_error(make: object, field: str) -> None:
    with pytest.raises(ConfigError) as info:
        make()  # type: ignore[operator]
    assert info.value.where == field
