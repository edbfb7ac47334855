"""NeuMF (``--model ncf``): the item-side / user-side split, what an upload carries,
the preset's FedSGD device update, MF's keyed negatives, learning on planted data
(federated and the twin), the privacy modes it takes (central) or refuses (local)."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.data import random_split
from fedrec.data.interactions import Interactions
from fedrec.federated.client import client_fit, load_device_model
from fedrec.federated.loop import run_federated
from fedrec.federated.presets import (
    NCF_LOCAL,
    NCF_LOCAL_FEW,
    NCF_MODEL,
    NCF_SERVER,
    NCF_SERVER_FEW,
    federated_preset,
)
from fedrec.federated.shape import DataShape
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.models.base import check_split, item_side, user_side
from fedrec.models.config import ModelConfig
from fedrec.models.ncf import NeuMF, tower_widths
from fedrec.models.registry import build_model, init_item_arrays, item_array_shapes
from fedrec.recommend import item_vectors
from fedrec.training.centralized import central_preset, train_centralized
from fedrec.training.local import refit_user, user_examples

CFG = ModelConfig(kind="ncf", dim=8)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one torch thread, as on a device (thread start-up dominates)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _planted() -> Interactions:
    from fedrec.data import synthetic

    return synthetic(n_users=120, n_items=60, dim=4, mean_interactions=15, seed=0)


def _popularity_ndcg(split: Any) -> float:
    from fedrec.baselines import make_baseline

    pop = evaluate_scores(make_baseline("popularity").fit(split.train).score, split)
    return float(pop["ndcg@10"] or 0)


def test_split_is_declared_complete_and_user_embeddings_are_the_user_side() -> None:
    # Prepare
    model = build_model(CFG, 30, 5, seed=0)
    names = [n for n, _ in model.named_parameters()]
    # Execute
    items, users = item_side(model), user_side(model)
    # Assert: every parameter on exactly one side; the user side is the two user tables
    check_split(model)
    assert sorted([*items, *users]) == sorted(names) and not set(items) & set(users)
    assert set(users) == {"user_gmf.weight", "user_mlp.weight"}
    assert all(p.shape[0] == 5 for p in users.values())  # one row per user slot
    assert list(items)[:2] == ["item_gmf.weight", "item_mlp.weight"]
    assert all(items[n].shape[0] == 30 for n in ("item_gmf.weight", "item_mlp.weight"))
    assert set(NeuMF.TOWER_PARAMETERS) == set(items) - {"item_gmf.weight", "item_mlp.weight"}
    assert tower_widths(32) == (64, 32, 16)


def test_upload_carries_only_item_side_arrays_and_the_tower_dense() -> None:
    # Prepare
    n_items = 200
    start = init_item_arrays(CFG, n_items, seed=0)
    own = np.array([2, 5, 11], dtype=np.int64)
    # Execute
    fit = client_fit(CFG, NCF_LOCAL, start, None, own, seed=1)
    # Assert: the item-side arrays in upload order, nothing else; the user state stays
    assert [a.shape for a in fit.item_arrays] == item_array_shapes(CFG, n_items)
    assert set(fit.user_state) == set(NeuMF.USER_SIDE)
    user_values = [v.ravel() for v in fit.user_state.values()]
    for arr in fit.item_arrays:
        for v in user_values:
            assert not np.isin(v, arr).any(), "a user-side value is in an upload"
    for before, after in zip(start[2:], fit.item_arrays[2:], strict=True):
        assert not np.array_equal(before, after)  # the shared tower is uploaded whole
    for table in (0, 1):  # item tables: the user's rows and its negatives' rows moved
        touched = np.flatnonzero((start[table] != fit.item_arrays[table]).any(axis=1))
        assert set(own) <= set(touched)
        assert len(touched) <= len(own) * (1 + CFG.negatives * NCF_LOCAL.epochs)


def test_negatives_are_mfs_keyed_negatives() -> None:
    # Prepare
    mf = build_model(ModelConfig(kind="mf", dim=8), 50, 1, seed=0)
    ncf = build_model(CFG, 50, 1, seed=0)
    users, items = np.zeros(6, dtype=np.int64), np.array([1, 3, 5, 7, 9, 11], dtype=np.int64)
    key = bytes(range(32))
    # Execute
    a = mf.make_examples(users, items, generator=torch.Generator().manual_seed(4), key=key)
    b = ncf.make_examples(users, items, generator=torch.Generator().manual_seed(4), key=key)
    # Assert
    for x, y in zip(a.inputs, b.inputs, strict=True):
        assert torch.equal(x, y)
    assert torch.equal(a.target, b.target)


def test_score_is_the_forward_logit_of_every_item() -> None:
    # Prepare
    model = build_model(CFG, 25, 3, seed=2)
    users = torch.tensor([0, 2])
    # Execute
    scores = model.score(users, torch.zeros(2, 25))
    # Assert
    for row, u in enumerate(users):
        logits = model(u.repeat(25), torch.arange(25))[:, 0]
        torch.testing.assert_close(scores[row], logits)


def test_preset_device_upload_is_the_global_side_minus_its_mean_loss_gradient() -> None:
    """The fix of ml-1m's collapse (docs/RESULTS.md, NCF): a device's upload is one SGD
    step of rate 1 on the gradient of its own mean loss at the global item side (after
    refitting its user vectors), not a model moved by local Adam epochs."""
    # Prepare: a returning device (stored user state) with the preset
    n_items, seed = 40, 4
    start = init_item_arrays(CFG, n_items, seed=0)
    own = np.array([1, 4, 9, 16, 25], dtype=np.int64)
    state = client_fit(CFG, NCF_LOCAL, start, None, own, seed=3).user_state
    # Execute
    fit = client_fit(CFG, NCF_LOCAL, start, state, own, seed=seed)
    # Assert: rebuild the device's loss at the global items: its warm refit, then the
    # epoch's examples (the same generator draws), and take its gradient by autograd
    model = load_device_model(CFG, start, state, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    examples = user_examples(model, own)
    refit_user(model, NCF_LOCAL.for_refit(first=False), examples, generator=gen)
    batch = examples(gen)
    loss = model.loss(model(*batch.inputs), batch.target)
    params = list(item_side(model).values())
    grads = torch.autograd.grad(loss, params)
    assert len(fit.item_arrays) == len(params)
    for name, up, p, g in zip(NeuMF.ITEM_SIDE, fit.item_arrays, params, grads, strict=True):
        expected = (p - g).detach().numpy()
        np.testing.assert_allclose(up, expected, rtol=1e-5, atol=1e-6, err_msg=name)
        assert np.abs(g.numpy()).max() > 0, name  # every array moves (tower included)


def test_preset_is_fedsgd_with_server_adam_and_few_rounds_variants_train_locally() -> None:
    # Execute
    plain = federated_preset("ncf")
    private = federated_preset("ncf", privacy="central")
    averaged = federated_preset("ncf", strategy="fedavg")
    # Assert: one full-batch SGD step of rate 1 per device, Adam's constants on the server
    assert plain == (NCF_MODEL, NCF_LOCAL, NCF_SERVER)
    assert (NCF_LOCAL.epochs, NCF_LOCAL.lr, NCF_LOCAL.optimizer) == (1, 1.0, "sgd")
    assert NCF_LOCAL.batch_size >= 1 << 20  # a device's whole data in one batch
    assert NCF_SERVER.strategy == "fedadam" and NCF_SERVER.beta2 == 0.999
    assert private == averaged == (NCF_MODEL, NCF_LOCAL_FEW, NCF_SERVER_FEW)
    # the non-private step weights devices by count (the twin's loss over rows); a private
    # one stays uniform (DP-FedAvg's sensitivity; the central strategy refuses weights)
    assert NCF_SERVER.weighted and not NCF_SERVER_FEW.weighted


def test_shaped_rounds_give_every_user_five_passes() -> None:
    # Execute
    ml1m = NeuMF.shaped_defaults(DataShape(users=6040, items=3706, interactions=797_758))
    ml100k = NeuMF.shaped_defaults(DataShape(users=943, items=1682, interactions=79_619))
    # Assert: 5 x 6040 / 100 rounds on ml-1m; ml-100k keeps the 50-round floor
    assert (ml1m.rounds, ml1m.clients_per_round, ml1m.passes) == (302, 100, 5)
    assert (ml100k.rounds, ml100k.clients_per_round) == (50, 100)
    assert "302" in ml1m.reasons[0]


def test_devices_skip_the_item_init_without_changing_the_update(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: the same first update with the device model's item side initialized
    from fedrec.federated import client

    items = init_item_arrays(CFG, 30, seed=0)
    own = np.array([0, 3, 7], dtype=np.int64)
    fast = client_fit(CFG, NCF_LOCAL, items, None, own, seed=5)
    built = client.build_model
    monkeypatch.setattr(
        client, "build_model", lambda *a, **kw: built(*a, **{**kw, "item_init": True})
    )
    # Execute
    slow = client_fit(CFG, NCF_LOCAL, items, None, own, seed=5)
    # Assert: bit-identical upload and user state (the fresh user vectors come from the
    # seed alone)
    for a, b in zip(fast.item_arrays, slow.item_arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    for key, value in fast.user_state.items():
        np.testing.assert_array_equal(value, slow.user_state[key])


def test_federated_ncf_beats_popularity_on_planted_data() -> None:
    # Prepare: the preset at a toy's server rate (one Adam step per round: 8 rounds at
    # the preset's 0.003 barely move a fresh model)
    split = random_split(_planted(), seed=0)
    model, local, server = federated_preset("ncf")
    model = ModelConfig(kind="ncf", dim=8, l2=model.l2)
    server = dataclasses.replace(server, server_lr=0.03)
    # Execute
    result = run_federated(split, model, local, server, rounds=8, clients_per_round=30, seed=0)
    # Assert
    assert float(result.metrics["ndcg@10"] or 0) > _popularity_ndcg(split) + 0.1


def test_centralized_twin_beats_popularity_on_planted_data() -> None:
    # Prepare
    split = random_split(_planted(), seed=0)
    model, train = central_preset("ncf")
    model = ModelConfig(kind="ncf", dim=8, l2=model.l2)
    train = dataclasses.replace(train, batch_size=256)  # more steps on 1,440 positives
    # Execute
    scorer = train_centralized(model, train, split, seed=0, epochs=20)
    # Assert
    assert float(evaluate_scores(scorer, split)["ndcg@10"] or 0) > _popularity_ndcg(split) + 0.1


def test_preset_and_item_vectors() -> None:
    assert federated_preset("ncf") == (NCF_MODEL, NCF_LOCAL, NCF_SERVER)
    assert central_preset("ncf")[0] == NCF_MODEL
    arrays = init_item_arrays(NCF_MODEL, 20, seed=0)
    np.testing.assert_array_equal(item_vectors("ncf", arrays), arrays[0].astype(np.float64))


def test_device_trains_and_serves_ncf(tmp_path: Path) -> None:
    # Prepare: a device holding NCF global arrays and four interactions
    from clients import DeviceClient
    from clients.device import RoundConfig

    cfg = RoundConfig(model=CFG, train=NCF_LOCAL, round=1, seed=1)
    arrays = init_item_arrays(CFG, 10, seed=0)
    device = DeviceClient.open(tmp_path / "device.db", user_id="u1", min_interactions=3)
    try:
        device.set_global(arrays, cfg)
        device.record_many([0, 1, 2, 3])
        # Execute
        fit = device.fit_round(arrays, cfg)
        recs = device.recommend(3, explain=True)
    finally:
        device.close()
    # Assert: the upload is the item side only; recommendations are the model's, unseen
    assert fit.ok and fit.item_arrays is not None
    assert [a.shape for a in fit.item_arrays] == item_array_shapes(CFG, 10)
    assert len(recs) == 3 and not any(r.fallback for r in recs)
    assert {r.item for r in recs}.isdisjoint({0, 1, 2, 3})


@pytest.mark.parametrize("kind", ["mf", "cdae", "multvae", "ials", "ncf"])
def test_model_file_holds_every_kind_and_checks_the_item_rows(tmp_path: Path, kind: str) -> None:
    # Prepare: an autoencoder's encoder is [hidden, n_items]; NCF's tower is not item-indexed
    from fedrec.errors import DataError
    from fedrec.modelfile import ExportedModel, load_model, save_model

    arrays = init_item_arrays(ModelConfig(kind=kind, dim=8, hidden=16), 20, seed=0)
    # Execute
    save_model(tmp_path / "m.safetensors", ExportedModel(kind, list(range(20)), arrays))
    loaded = load_model(tmp_path / "m.safetensors")
    # Assert: the arrays come back; ids that do not match the item rows are refused
    for a, b in zip(arrays, loaded.arrays, strict=True):
        np.testing.assert_array_equal(a, b)
    with pytest.raises(DataError, match="one row per item"):
        ExportedModel(kind, list(range(19)), arrays)
