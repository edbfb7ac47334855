"""The contract every model kind meets, run for each kind in ``MODEL_KINDS``.

In the manner of implicit's shared recommender test base: one suite, parametrized by the
registry, that nothing here specializes by kind. Every expectation is read from the
model class's facts (``fedrec.models.base``, ``fedrec.models.trainable``), so a new model
joins by its registry line (``fedrec/models/kinds.py``) and must then pass:

- its facts agree with each other and with a built model (names, shapes, the serving
  shortcut ``USER_VECTOR``, the local-DP unit map), and its presets are of its kind;
- planted data learns: federated training (its preset, few rounds) ranks the held-out
  items of a planted block structure far above the untrained model; its twin trains;
- a device (``clients.DeviceClient``) sends only item-side arrays, keeps exactly the
  user-side state, resumes from its store, and explains with the user's own items;
  similar items come from the learned item vectors;
- privacy modes: central DP-FedAvg trains every item array, sends only item-side
  arrays and accounts; local DP trains and accounts in its stated unit, or is refused
  with the model's stated reason, by the server's settings and on the device.
"""

from __future__ import annotations

import dataclasses
import json
import re
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch

from clients import DeviceClient
from clients.device import RoundConfig
from fedrec.data import Interactions, random_split
from fedrec.data.split import Split
from fedrec.errors import ConfigError
from fedrec.federated.loop import FederatedResult, run_federated
from fedrec.federated.presets import federated_preset
from fedrec.federated.private import LocalPrivacy, client_fit_private
from fedrec.models.base import check_facts, item_side, user_side
from fedrec.models.config import ModelConfig
from fedrec.models.registry import (
    MODEL_KINDS,
    build_model,
    init_item_arrays,
    item_array_shapes,
    model_class,
)
from fedrec.models.trainable import TrainableRecommender
from fedrec.privacy.report import LOCAL_UNITS
from fedrec.recommend.similar import item_vectors, similar_items
from fedrec.training.centralized import central_preset, train_centralized
from simulations.inprocess import RecordingGrid

N_USERS, BLOCK, PER_USER = 36, 8, 6
"""Planted data: 3 blocks of 8 items; user ``u`` holds 6 items of block ``u % 3``."""
ROUNDS, COHORT = 10, 18
LEARNS_BY = 0.15
"""NDCG@10 margin over the untrained model (measured on this data at 10 rounds: MF 0.25 ->
0.73, CDAE 0.19 -> 0.47, Mult-VAE 0.28 -> 0.49, iALS 0.37 -> 0.75, NCF 0.26 -> 0.72)."""
ONE_STEP_PER_ROUND = {"sasrec": (20, 1e-2)}
"""Kinds whose private preset is still one server Adam step per round (SASRec: FedSGD at
1e-3): 10 rounds move NDCG@10 by 0.04 on the planted blocks, so the learning test gives
them 20 rounds at the toy's rate (0.33 -> 0.62; 60 rounds: 0.80). Few-rounds variants
with local training did not learn these blocks in 10 rounds (0.33 -> 0.25-0.36: local
Adam at 0.003-0.03 for 1-5 epochs with FedAvg or server Adam 0.03-0.1, 10 local SGD steps
of rate 1 with FedAvg; FedSGD at 0.05-0.1: 0.29-0.31), so SASRec keeps its one-step
preset under privacy."""
TOY = {"dim": 8, "hidden": 16}
FLOWER_DATA = "synthetic:users=30,items=40,dim=4,mean=12,seed=5"


def _toy(cfg: ModelConfig) -> ModelConfig:
    return dataclasses.replace(cfg, **TOY)


def _planted() -> Split:
    rng = np.random.default_rng(0)
    users, items = [], []
    for u in range(N_USERS):
        block = np.arange(BLOCK) + BLOCK * (u % 3)
        users += [u] * PER_USER
        items += list(rng.choice(block, size=PER_USER, replace=False))
    data = Interactions(
        user=np.array(users, np.int64),
        item=np.array(items, np.int64),
        user_ids=np.arange(N_USERS, dtype=np.int64),
        item_ids=np.arange(3 * BLOCK, dtype=np.int64),
    )
    return random_split(data, seed=0)


@pytest.fixture(scope="module", params=MODEL_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


@pytest.fixture(scope="module")
def planted() -> Split:
    return _planted()


@pytest.fixture(scope="module")
def trained(kind: str, planted: Split) -> tuple[FederatedResult, FederatedResult]:
    """The untrained and the trained federated run of ``kind`` on the planted data, with
    its few-rounds preset (the one FedAvg and private runs use), without noise."""
    model, train, server = federated_preset(kind, privacy="central")
    toy = _toy(model)
    rounds = ROUNDS
    if kind in ONE_STEP_PER_ROUND:  # no few-rounds preset: more rounds at a toy's rate
        rounds, server_lr = ONE_STEP_PER_ROUND[kind]
        server = dataclasses.replace(server, server_lr=server_lr)
    untrained = run_federated(
        planted, toy, train, server, rounds=0, clients_per_round=COHORT, seed=0
    )
    result = run_federated(
        planted, toy, train, server, rounds=rounds, clients_per_round=COHORT, seed=0
    )
    return untrained, result


# ---- facts ---------------------------------------------------------------------------


def test_facts_agree_with_each_other_and_with_a_built_model(kind: str) -> None:
    # Prepare
    cls = model_class(kind)
    n_items = 30
    # Execute
    model = build_model(ModelConfig(kind=kind, **TOY), n_items, 1, seed=0)
    # Assert: the class is the registry's, its names are the module's, in upload order
    check_facts(cls)
    assert type(model) is cls and cls.kind == kind
    shapes = {name: tuple(p.shape) for name, p in item_side(model).items()}
    assert list(shapes) == list(cls.ITEM_SIDE) and list(user_side(model)) == list(cls.USER_SIDE)
    assert list(shapes.values()) == item_array_shapes(ModelConfig(kind=kind, **TOY), n_items)
    assert next(iter(shapes.values()))[0] == n_items
    assert len(shapes[cls.ITEM_VECTORS]) == 2 and shapes[cls.ITEM_VECTORS][0] == n_items
    if cls.ITEM_BIAS is not None:
        assert int(np.prod(shapes[cls.ITEM_BIAS])) == n_items


@pytest.mark.parametrize(
    "vector_kind", [k for k in MODEL_KINDS if model_class(k).USER_VECTOR is not None]
)
def test_user_vector_fact_is_how_the_model_scores(vector_kind: str) -> None:
    """``USER_VECTOR`` lets a device serve ``ITEM_VECTORS @ p_u + ITEM_BIAS`` without
    the model: with random parameters that must equal ``score`` (the other kinds are
    served through ``score``)."""
    kind = vector_kind
    cls = model_class(kind)
    # Prepare: random values everywhere, so a missing or extra term shows
    model = build_model(ModelConfig(kind=kind, **TOY), 20, 1, seed=0)
    gen = torch.Generator().manual_seed(1)
    with torch.no_grad():
        for p in model.parameters():
            p.copy_(torch.randn(p.shape, generator=gen))
    params = dict(model.named_parameters())
    # Execute
    scores = model.score(torch.zeros(1, dtype=torch.int64), torch.zeros(1, 20))[0]
    # Assert
    shortcut = params[cls.ITEM_VECTORS] @ params[cls.USER_VECTOR][0]
    if cls.ITEM_BIAS is not None:
        shortcut = shortcut + params[cls.ITEM_BIAS].reshape(-1)
    torch.testing.assert_close(scores, shortcut)


def test_local_dp_unit_map_covers_every_example_row(kind: str) -> None:
    # Prepare
    cls = model_class(kind)
    model = build_model(ModelConfig(kind=kind, **TOY), 30, 1, seed=0)
    items = np.array([1, 4, 9, 16, 25], dtype=np.int64)
    ex = model.make_examples(
        np.zeros(5, np.int64), items, generator=torch.Generator().manual_seed(0)
    )
    # Execute
    units = model.example_units(len(items))
    # Assert: "interaction" groups every row under one of the 5 interactions, each used
    if cls.LOCAL_DP_UNIT == "interaction":
        assert units is not None and len(units) == len(ex)
        assert sorted(set(units.tolist())) == list(range(len(items)))
    elif cls.LOCAL_DP_UNIT == "user":
        assert units is None and len(ex) == 1  # one example: the user's row
    else:
        assert cls.LOCAL_DP_REFUSAL


def test_presets_and_twin_are_of_the_kind(kind: str, planted: Split) -> None:
    # Execute
    presets = [federated_preset(kind, privacy=p)[0] for p in ("none", "central", "local")]
    twin_model, twin_train = central_preset(kind)
    scorer = train_centralized(_toy(twin_model), twin_train, planted, seed=0, epochs=1)
    scores = scorer(np.arange(3, dtype=np.int64))
    # Assert
    assert {m.kind for m in presets} == {kind} and twin_model.kind == kind
    assert tuple(scores.shape) == (3, planted.n_items) and torch.isfinite(scores).all()


# ---- learning ------------------------------------------------------------------------


def test_federated_training_learns_planted_blocks(
    trained: tuple[FederatedResult, FederatedResult],
) -> None:
    untrained, result = trained
    before, after = untrained.metrics["ndcg@10"], result.metrics["ndcg@10"]
    assert after is not None and before is not None
    assert after > before + LEARNS_BY, f"NDCG@10 {before:.3f} -> {after:.3f}"


def test_similar_items_come_from_the_learned_item_vectors(
    kind: str, trained: tuple[FederatedResult, FederatedResult]
) -> None:
    # Prepare
    arrays = trained[1].item_arrays
    cls = model_class(kind)
    # Execute
    vectors = item_vectors(kind, arrays)
    neighbours = similar_items(vectors, 0, k=5)
    # Assert: the named array, 5 other items, best first
    np.testing.assert_array_equal(vectors, arrays[cls.ITEM_SIDE.index(cls.ITEM_VECTORS)])
    cosines = [c for _, c in neighbours]
    assert len(neighbours) == 5 and 0 not in {i for i, _ in neighbours}
    assert cosines == sorted(cosines, reverse=True) and all(-1 <= c <= 1 + 1e-9 for c in cosines)


# ---- the device ----------------------------------------------------------------------


def _round(kind: str, n: int, **kw: Any) -> RoundConfig:
    model, train, _ = federated_preset(kind, privacy="central")
    return RoundConfig(model=_toy(model), train=train, round=n, seed=n, **kw)


def test_device_sends_item_arrays_keeps_user_state_and_resumes(
    kind: str, tmp_path: Path, trained: tuple[FederatedResult, FederatedResult], planted: Split
) -> None:
    # Prepare: one user's train items, the trained global arrays
    cls, arrays = model_class(kind), trained[1].item_arrays
    history = planted.train_items(0).tolist()
    shapes = [a.shape for a in arrays]
    opened: dict[str, Any] = {"user_id": 0, "secret_negatives": False, "durable": False}
    with DeviceClient.open(tmp_path / "straight.db", **opened) as straight:
        straight.record_many(history)
        straight.fit_round(arrays, _round(kind, 1))
        want = straight.fit_round(arrays, _round(kind, 2))
    # Execute: the same rounds with the device closed and reopened between them
    with DeviceClient.open(tmp_path / "d.db", **opened) as dev:
        dev.record_many(history)
        first = dev.fit_round(arrays, _round(kind, 1))
        before = dev.recommend(5)
        stored = dev.store.load_slot("train")
    with DeviceClient.open(tmp_path / "d.db", **opened) as dev:
        after = dev.recommend(5)
        second = dev.fit_round(arrays, _round(kind, 2))
    # Assert: uploads are the item side only; the store holds the user side only
    assert first.ok and first.item_arrays is not None
    assert [a.shape for a in first.item_arrays] == shapes
    assert stored is not None and list(stored.names) == list(cls.USER_SIDE)
    assert after == before and not any(r.fallback for r in after)
    assert second.ok and second.item_arrays is not None and want.item_arrays is not None
    for got, ref in zip(second.item_arrays, want.item_arrays, strict=True):
        np.testing.assert_array_equal(got, ref)


def test_device_explains_with_the_users_own_items(
    kind: str, tmp_path: Path, trained: tuple[FederatedResult, FederatedResult], planted: Split
) -> None:
    # Prepare
    history = set(planted.train_items(0).tolist())
    with DeviceClient.open(tmp_path / "d.db", user_id=0, durable=False) as dev:
        dev.record_many(sorted(history))
        dev.set_global(trained[1].item_arrays, _round(kind, 1))
        # Execute
        recs = dev.recommend(5, explain=True)
    # Assert: unseen items, each cited item one of the user's, with a positive weight
    assert len(recs) == 5 and not {r.item for r in recs} & history
    assert any(r.because for r in recs)
    assert all(item in history and w > 0 for r in recs for item, w in r.because)


# ---- privacy modes -------------------------------------------------------------------


def _flat(tmp: Path, kind: str, privacy: str) -> dict[str, Any]:
    return {
        "data": FLOWER_DATA,
        "model": kind,
        "num-server-rounds": 2,
        "clients-per-round": 15,
        "run-dir": str(tmp),
        "privacy": privacy,
        "privacy.target-epsilon": 8.0,
        "privacy.insecure-noise-seed": 7,
    }


def _private_run(tmp: Path, kind: str, privacy: str) -> tuple[list[Any], RecordingGrid]:
    """A 2-round run through the Flower apps; the start arrays and the grid."""
    from server.privacy_run import resolve_settings
    from server.server_app import run_server
    from server.settings import RunSettings, load_split
    from simulations.evaluation import device_evaluator
    from simulations.run_dir import create_run_dir

    settings = RunSettings.from_run_config(_flat(tmp, kind, privacy))
    split = load_split(settings)
    settings = resolve_settings(settings, split)
    create_run_dir(tmp, settings)
    start = init_item_arrays(settings.model, split.n_items, seed=settings.seed)
    grid = RecordingGrid(split.n_users)
    run_server(grid, settings, evaluator=device_evaluator(settings))
    return start, grid


def _assert_item_side_replies(grid: RecordingGrid, start: list[Any]) -> None:
    train = [r.content for r in grid.replies if r.metadata.message_type == "train"]
    # a private device out of budget replies with its status only
    uploads = [c.array_records["arrays"] for c in train if "arrays" in c.array_records]
    assert uploads and all(set(c.array_records) <= {"arrays"} for c in train)
    for record in uploads:
        assert [a.shape for a in record.to_numpy_ndarrays()] == [a.shape for a in start]


def test_central_dp_trains_every_item_array_sends_item_side_only_and_accounts(
    kind: str, tmp_path: Path
) -> None:
    from fedrec.privacy.report import verify_privacy_json
    from server.checkpoint import load_checkpoint

    # Execute
    start, grid = _private_run(tmp_path, kind, "central")
    # Assert
    _assert_item_side_replies(grid, start)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None
    for before, after in zip(start, ckpt.item_arrays, strict=True):
        assert np.isfinite(after).all() and not np.array_equal(before, after)
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mode"] == "central" and 0 < report["epsilon"] <= 8.0


def test_local_dp_trains_in_its_unit_or_is_refused_with_its_reason(
    kind: str, tmp_path: Path
) -> None:
    from fedrec.privacy.report import verify_privacy_json
    from server.settings import RunSettings

    cls = model_class(kind)
    if cls.LOCAL_DP_REFUSAL is not None:
        # Assert: refused by the server's settings and by the device, with the reason
        reason = re.escape(cls.LOCAL_DP_REFUSAL)
        with pytest.raises(ConfigError, match=reason) as info:
            RunSettings.from_run_config(_flat(tmp_path, kind, "local"))
        assert "--privacy central" in str(info.value)
        model, train, _ = federated_preset(kind, privacy="local")
        privacy = LocalPrivacy(noise_multiplier=1.0, clip_norm=1.0)
        items = init_item_arrays(_toy(model), 20, seed=0)
        with pytest.raises(ConfigError, match=reason):
            client_fit_private(_toy(model), train, privacy, items, None, np.arange(4), seed=0)
        return
    # Execute
    start, grid = _private_run(tmp_path, kind, "local")
    # Assert: item-side uploads; the guarantee is stated in the model's unit and verifies
    _assert_item_side_replies(grid, start)
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mode"] == "local" and report["unit"] == LOCAL_UNITS[str(cls.LOCAL_DP_UNIT)]


def test_every_kind_is_tested_here() -> None:
    """The suite covers the registry: a kind that cannot be imported is an error."""
    from fedrec.models.config import MODEL_KIND_NAMES

    assert set(MODEL_KINDS) == set(MODEL_KIND_NAMES)
    assert all(isinstance(model_class(k), type) for k in MODEL_KINDS)
    assert issubclass(model_class(MODEL_KINDS[0]), TrainableRecommender)
