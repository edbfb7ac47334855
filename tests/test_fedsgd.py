"""FedSGD pieces of the autoencoder presets: a user-side step size, KL annealing by round."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.federated.client import client_fit
from fedrec.models.base import get_user_state
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays

N_ITEMS = 40
ITEMS = np.array([1, 4, 9, 16, 25, 36], dtype=np.int64)
CDAE = ModelConfig(kind="cdae", dim=6, dropout=0.0)
ONE_STEP = LocalTrainConfig(epochs=1, lr=1.0, optimizer="sgd", refit_steps=0)


def _fit(train: LocalTrainConfig) -> tuple[list[np.ndarray], dict[str, np.ndarray]]:
    items = init_item_arrays(CDAE, N_ITEMS, seed=0)
    fit = client_fit(CDAE, train, items, None, ITEMS, seed=3)
    return fit.item_arrays, fit.user_state


def test_user_lr_scales_the_user_side_step_and_nothing_else() -> None:
    # Prepare: the same one-step SGD update with the user side at rate 1 and at 1e-3
    start = get_user_state(build_model(CDAE, N_ITEMS, 1, seed=3))
    # Execute
    items_same, user_same = _fit(ONE_STEP)
    items_small, user_small = _fit(dataclasses.replace(ONE_STEP, user_lr=1e-3))
    # Assert: identical upload; the user vector moved 1000x less, in the same direction
    for a, b in zip(items_same, items_small, strict=True):
        np.testing.assert_array_equal(a, b)
    for name, init in start.items():
        big, small = user_same[name] - init, user_small[name] - init
        assert np.abs(big).max() > 0
        np.testing.assert_allclose(small, 1e-3 * big, rtol=1e-3, atol=1e-9)


def test_kl_weight_rises_linearly_over_the_anneal_rounds() -> None:
    # Prepare
    vae = ModelConfig(kind="multvae", beta=0.8, anneal_rounds=10)
    # Execute
    betas = [vae.at_round(r).beta for r in (1, 6, 11, 500)]
    # Assert: 0 in the first round, beta from round anneal_rounds + 1 on; others untouched
    assert betas == pytest.approx([0.0, 0.4, 0.8, 0.8])
    assert vae.at_round(6).anneal_rounds == 0
    assert ModelConfig(kind="multvae", beta=0.8).at_round(1).beta == 0.8
    cdae = ModelConfig(kind="cdae", anneal_rounds=10)
    assert cdae.at_round(1) is cdae


@pytest.mark.parametrize(
    ("build", "field"),
    [(lambda: LocalTrainConfig(user_lr=0.0), "train.user_lr"),
     (lambda: ModelConfig(kind="multvae", anneal_rounds=-1), "model.anneal_rounds")],
)  # fmt: skip
def test_bad_values_name_the_field(build: object, field: str) -> None:
    with pytest.raises(ConfigError, match=field.replace(".", r"\.")):
        build()  # type: ignore[operator]


@pytest.mark.parametrize("kind", ["cdae", "multvae"])
def test_devices_skip_the_item_init_they_overwrite_without_changing_anything(
    kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the same update with the device model's item side initialized first
    from fedrec.federated import client

    cfg = ModelConfig(kind=kind, dim=4, hidden=8, dropout=0.3)
    items = init_item_arrays(cfg, N_ITEMS, seed=0)
    fast = client_fit(cfg, ONE_STEP, items, None, ITEMS, seed=5)
    built = client.build_model
    monkeypatch.setattr(
        client, "build_model", lambda *a, **kw: built(*a, **{**kw, "item_init": True})
    )
    # Execute
    slow = client_fit(cfg, ONE_STEP, items, None, ITEMS, seed=5)
    # Assert: bit-identical upload and user state
    for a, b in zip(fast.item_arrays, slow.item_arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    assert fast.user_state.keys() == slow.user_state.keys()
    for key, value in fast.user_state.items():
        np.testing.assert_array_equal(value, slow.user_state[key])
