"""LightGCN on the device's star (``--model lightgcn``): the propagation maths, the
training score that leaves the scored item out, learning on planted data (federated,
the twin and the full-graph reference), item-only uploads, a device that resumes, the
refusal of local DP, and the command line."""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from fedrec.data import random_split, synthetic
from fedrec.errors import ConfigError
from fedrec.federated.aggregation import sample_clients
from fedrec.federated.client import client_fit, client_scores
from fedrec.federated.loop import run_federated
from fedrec.federated.presets import LIGHTGCN_LOCAL, default_rounds, federated_preset
from fedrec.federated.shape import PASSES, DataShape, shaped_defaults
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.models.base import check_facts, check_split, item_side, user_side
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.lightgcn import LOCAL_DP_REFUSAL, LightGCN
from fedrec.models.registry import (
    build_model,
    init_item_arrays,
    item_array_shapes,
    model_class,
    refuse_local_dp,
)
from fedrec.training.centralized import central_preset, train_centralized
from fedrec.training.lightgcn import normalized_adjacency, train_full_lightgcn, user_batches

CFG = ModelConfig(kind="lightgcn", dim=8)


@pytest.fixture(autouse=True)
def _one_thread() -> Iterator[None]:
    """Tiny models: one torch thread, as on a device."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _planted_split() -> Any:
    data = synthetic(n_users=120, n_items=60, dim=4, mean_interactions=15, seed=0)
    return random_split(data, seed=0)


def _popularity_ndcg(split: Any) -> float:
    from fedrec.baselines import make_baseline

    pop = evaluate_scores(make_baseline("popularity").fit(split.train).score, split)
    return float(pop["ndcg@10"] or 0)


def test_facts_and_split() -> None:
    # Prepare
    model = build_model(CFG, 30, 5, seed=0)
    # Execute
    items, users = item_side(model), user_side(model)
    # Assert
    check_facts(LightGCN)
    check_split(model)
    assert model_class("lightgcn") is LightGCN
    assert list(items) == ["item_emb.weight", "item_bias.weight"]
    assert list(users) == ["user_emb.weight"] and users["user_emb.weight"].shape == (5, 8)
    assert not any(name.startswith("graph") for name, _ in model.named_parameters())


def test_user_vector_is_lightgcn_propagation_on_the_users_star() -> None:
    # Prepare: the star u <-> N(u) as a graph of 1 + n_items nodes, He et al.'s
    # D^{-1/2} A D^{-1/2} and one layer, layer mean (K = 1)
    n_items, own = 12, [1, 4, 5, 9]
    model = build_model(CFG, n_items, 1, seed=3)
    adjacency = torch.zeros(1 + n_items, 1 + n_items)
    for i in own:
        adjacency[0, 1 + i] = adjacency[1 + i, 0] = 1.0
    degree = adjacency.sum(1).clamp(min=1.0)
    a_hat = adjacency / torch.sqrt(degree[:, None] * degree[None, :])
    e0 = torch.cat([model.user_emb.weight, model.item_emb.weight]).detach()
    expected = ((e0 + a_hat @ e0) / 2)[0]
    history = torch.zeros(1, n_items)
    history[0, own] = 1.0
    # Execute
    with torch.no_grad():
        got = model.user_vectors(torch.zeros(1, dtype=torch.int64), history)[0]
    # Assert
    torch.testing.assert_close(got, expected)


def test_training_score_leaves_the_scored_item_out_of_the_message() -> None:
    # Prepare: a user with items {2, 3, 7}; examples also hit a positive as a "negative"
    n_items = 10
    model = build_model(CFG, n_items, 1, seed=1)
    with torch.no_grad():
        model.item_bias.weight.normal_()
    own = np.array([2, 3, 7])
    model.make_examples(np.zeros(3, dtype=np.int64), own, generator=torch.Generator())
    items = torch.tensor([2, 3, 7, 0, 5, 3])
    # Execute
    with torch.no_grad():
        logits = model(torch.zeros(len(items), dtype=torch.int64), items)[:, 0]
    # Assert: an own item is scored from the user's other items; others from all of them
    for j, logit in zip(items.tolist(), logits, strict=True):
        history = torch.zeros(1, n_items)
        history[0, [i for i in own if i != j]] = 1.0
        with torch.no_grad():
            expected = model.score(torch.zeros(1, dtype=torch.int64), history)[0, j]
        torch.testing.assert_close(logit, expected)


def test_twin_batches_hold_whole_users() -> None:
    # Prepare
    users = torch.tensor([0, 0, 1, 2, 2, 2, 0, 1, 3])
    # Execute
    batches = user_batches(users, 5, 3, torch.Generator().manual_seed(0))
    # Assert: every example once, and each user's examples in one batch
    flat = torch.cat(batches)
    assert sorted(flat.tolist()) == list(range(len(users)))
    owner = {int(u): k for k, b in enumerate(batches) for u in users[b]}
    assert all(set(users[b].tolist()) == {u for u, k in owner.items() if k == i}
               for i, b in enumerate(batches))  # fmt: skip


def test_federated_lightgcn_beats_popularity_on_planted_data() -> None:
    # Prepare
    split = _planted_split()
    model, local, server = federated_preset("lightgcn")
    model = ModelConfig(kind="lightgcn", dim=8, l2=model.l2)
    # Execute
    result = run_federated(split, model, local, server, rounds=6, clients_per_round=25, seed=0)
    # Assert
    assert float(result.metrics["ndcg@10"] or 0) > _popularity_ndcg(split) + 0.1


def test_twin_and_full_graph_reference_beat_popularity_on_planted_data() -> None:
    # Prepare
    split = _planted_split()
    model, train = central_preset("lightgcn")
    model = ModelConfig(kind="lightgcn", dim=8, l2=model.l2)
    # Execute
    twin = train_centralized(model, train, split, seed=0, epochs=20)
    full = train_full_lightgcn(model, train, split, seed=0, epochs=20, layers=2)
    # Assert
    pop = _popularity_ndcg(split)
    assert float(evaluate_scores(twin, split)["ndcg@10"] or 0) > pop + 0.1
    assert float(evaluate_scores(full, split)["ndcg@10"] or 0) > pop + 0.1


def test_full_graph_adjacency_is_symmetric_normalized() -> None:
    # Prepare
    split = _planted_split()
    # Execute
    a = normalized_adjacency(split).to_dense()
    # Assert: symmetric, entry (u, i) = 1 / sqrt(d_u d_i) on the train edges only
    torch.testing.assert_close(a, a.T)
    d = (a > 0).sum(1).double()
    u, i = 3, int(split.train[3].indices[0])
    assert a[u, split.n_users + i] == pytest.approx(1 / np.sqrt(d[u] * d[split.n_users + i]))
    assert int((a > 0).sum()) == 2 * split.train.nnz


def test_upload_is_the_item_side_and_moves_only_own_and_negative_rows() -> None:
    # Prepare
    n_items = 200
    start = init_item_arrays(CFG, n_items, seed=0)
    own = np.array([2, 5, 11, 40], dtype=np.int64)
    # Execute
    fit = client_fit(CFG, LIGHTGCN_LOCAL, start, None, own, seed=1)
    # Assert: item-side arrays only, in upload order; the user vector stays on the device
    assert [a.shape for a in fit.item_arrays] == item_array_shapes(CFG, n_items)
    assert set(fit.user_state) == set(LightGCN.USER_SIDE)
    p = fit.user_state["user_emb.weight"].ravel()
    assert not any(np.isin(p, a).any() for a in fit.item_arrays)
    touched = np.flatnonzero((start[0] != fit.item_arrays[0]).any(axis=1))
    assert set(own) <= set(touched)  # every own row moves (the message's gradient)
    assert len(touched) <= len(own) * (1 + CFG.negatives * LIGHTGCN_LOCAL.epochs)


@pytest.mark.parametrize(
    ("loss", "train"),
    [
        ("bce", LIGHTGCN_LOCAL),
        ("bpr", LIGHTGCN_LOCAL),
        (
            "bce",
            LocalTrainConfig(
                optimizer="adam",
                lr=0.01,
                epochs=2,
                refit_steps=3,
                weight_decay=0.01,
                proximal_mu=0.1,
                batch_size=8,
            ),
        ),
    ],
)
def test_fast_path_equals_the_autograd_path(loss: str, train: LocalTrainConfig) -> None:
    # Prepare: a first and a returning participation, a duplicate item, non-zero biases
    model = ModelConfig(kind="lightgcn", dim=8, loss=loss)
    arrays = init_item_arrays(model, 50, seed=0)
    arrays[1][:] = np.random.default_rng(0).normal(size=arrays[1].shape)
    own = np.array([1, 4, 4, 9, 17, 30, 31], dtype=np.int64)
    stored = client_fit(model, train, arrays, None, own, seed=5, fast=False).user_state
    for state in (None, stored):
        # Execute
        slow = client_fit(model, train, arrays, state, own, seed=3, fast=False)
        fast = client_fit(model, train, arrays, state, own, seed=3, fast=True)
        slow_scores = client_scores(model, train, arrays, state, own, seed=2, fast=False)
        fast_scores = client_scores(model, train, arrays, state, own, seed=2, fast=True)
        # Assert
        for a, b in zip(slow.item_arrays, fast.item_arrays, strict=True):
            np.testing.assert_allclose(a, b, atol=1e-6)
        key = "user_emb.weight"
        np.testing.assert_allclose(slow.user_state[key], fast.user_state[key], atol=1e-6)
        assert slow.train_loss == pytest.approx(fast.train_loss, abs=1e-6)
        torch.testing.assert_close(slow_scores, fast_scores, atol=1e-6, rtol=0)


def test_local_dp_is_refused_with_the_reason_and_central_is_not() -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match="one-interaction unit") as err:
        refuse_local_dp("lightgcn", "local")
    assert LOCAL_DP_REFUSAL in str(err.value) and "--privacy central" in str(err.value)
    refuse_local_dp("lightgcn", "central")  # no error
    assert LightGCN.LOCAL_DP_UNIT is None


def test_device_trains_serves_and_resumes(tmp_path: Path) -> None:
    # Prepare: a device with LightGCN global arrays and four interactions
    from clients import DeviceClient
    from clients.device import RoundConfig

    arrays = init_item_arrays(CFG, 10, seed=0)
    cfg = RoundConfig(model=CFG, train=LIGHTGCN_LOCAL, round=2, seed=1)
    with DeviceClient.open(tmp_path / "d.db", user_id="u1", min_interactions=3) as dev:
        dev.set_global(arrays, RoundConfig(model=CFG, train=LIGHTGCN_LOCAL, round=1, seed=1))
        dev.record_many([0, 1, 2, 3])
        dev.fit_round(arrays, RoundConfig(model=CFG, train=LIGHTGCN_LOCAL, round=1, seed=1))
        first = dev.fit_round(arrays, cfg)
        before = dev.recommend(3, explain=True)
    # Execute: reopen the store (a restarted app) and re-run round 2
    with DeviceClient.open(tmp_path / "d.db", user_id="u1", min_interactions=3) as dev:
        after = dev.recommend(3, explain=True)
        again = dev.fit_round(arrays, cfg)
    # Assert: same recommendations, same upload; the model's, not the fallback
    assert after == before and len(after) == 3 and not any(r.fallback for r in after)
    assert {r.item for r in after}.isdisjoint({0, 1, 2, 3})
    assert any(r.because for r in after)
    assert first.item_arrays is not None and again.item_arrays is not None
    for a, b in zip(first.item_arrays, again.item_arrays, strict=True):
        np.testing.assert_array_equal(a, b)


def test_cli_simulate_recommend_similar_and_baseline(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from simulations.cli import main

    data = "synthetic:users=30,items=40,dim=4,mean=12,seed=3"
    run = tmp_path / "run"
    # Execute
    argv = ["simulate", "--data", data, "--model", "lightgcn", "--rounds", "2"]
    code = main([*argv, "--clients-per-round", "10", "--engine", "inprocess", "--out", str(run)])
    capsys.readouterr()
    rec = main(["recommend", str(run), "--user", "1", "--k", "3", "--explain", "--json"])
    recs = json.loads(capsys.readouterr().out)
    sim = main(["similar", str(run), "--item", "2", "--k", "3", "--json"])
    similar = json.loads(capsys.readouterr().out)
    base = main(["baseline", "--data", data, "--model", "lightgcn", "--epochs", "2",
                 "--out", str(tmp_path / "base")])  # fmt: skip
    local = main(["simulate", "--data", data, "--model", "lightgcn", "--privacy", "local",
                  "--noise-multiplier", "1", "--out", str(tmp_path / "local")])  # fmt: skip
    # Assert
    assert (code, rec, sim, base) == (0, 0, 0, 0)
    assert json.loads((run / "config.json").read_text())["model"]["kind"] == "lightgcn"
    assert len(recs) == 3 and len(similar) == 3
    assert local == 2 and "one-interaction unit" in capsys.readouterr().err


def _participations(users: int, rounds: int, per_round: int) -> np.ndarray:
    counts = np.zeros(users, dtype=np.int64)
    for rnd in range(rounds):
        counts[sample_clients(users, per_round, rnd, 0)] += 1
    return counts


def test_shaped_rounds_let_every_user_take_part_about_passes_times() -> None:
    # Prepare: ml-1m's train shape (6,040 users)
    shape = DataShape(users=6040, items=3706, interactions=6040 * 132)

    # Execute
    shaped = shaped_defaults("lightgcn", shape)
    assert shaped is not None
    shaped_counts = _participations(shape.users, shaped.rounds, shaped.clients_per_round)
    preset_counts = _participations(shape.users, default_rounds("lightgcn"), 100)

    # Assert: about PASSES participations each and nobody left out, where the preset's
    # 150 rounds of 100 give 2.5 and leave about 8% of the users out; only the rounds
    # and devices per round are shaped
    assert (shaped.rounds, shaped.clients_per_round) == (604, 100)
    assert abs(shaped_counts.mean() - PASSES) < 0.2
    assert (shaped_counts == 0).mean() < 0.001
    assert (preset_counts == 0).mean() > 0.05
    assert shaped.model == {} and "takes part about" in shaped.reasons[0]


def test_shaped_rounds_never_cut_the_presets_rounds() -> None:
    # Prepare: ml-100k's shape, where 10 passes would be 95 rounds
    shape = DataShape(users=943, items=1682, interactions=943 * 84)

    # Execute / Assert: fewer rounds than the preset's are not applied (validation: 95
    # rounds were below 150 on ml-100k)
    assert shaped_defaults("lightgcn", shape) is None
    assert default_rounds("lightgcn") == 150
