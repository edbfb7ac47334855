"""The fedrec ServerApp/ClientApp logic, driven in process by a synchronous Grid.

:class:`InProcessGrid` delivers each message straight to the ``ClientApp`` (no Ray),
with random node ids and one ``partition-id`` per user as Flower's simulation engine
does, so every model x strategy runs through the very code of the Flower apps in a
few seconds. The real engine is exercised in ``test_flower_simulation.py``.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.federated.aggregation import STRATEGIES
from fedrec.federated.loop import evaluate_federated, run_federated
from fedrec.models.registry import MODEL_KINDS, build_model, init_item_arrays, item_array_shapes
from server.checkpoint import load_checkpoint
from server.server_app import run_server
from server.settings import RunSettings, load_split
from simulations.evaluation import device_evaluator
from simulations.inprocess import RecordingGrid as InProcessGrid  # keeps every reply
from simulations.run_dir import create_run_dir, read_metrics, read_rounds

DATA = "synthetic:users=30,items=50,dim=4,mean=15,seed=3"


def make_settings(tmp: Path, **overrides: Any) -> RunSettings:
    flat: dict[str, Any] = {
        "data": DATA,
        "num-server-rounds": 3,
        "clients-per-round": 15,
        "run-dir": str(tmp),
        "train.epochs": 3,
        "train.refit-steps": 5,
    }
    flat.update(overrides)
    if flat.get("strategy", "fedadam") != "fedadam":
        flat.setdefault("server.server-lr", 1.0)
    elif flat.get("model") in ("cdae", "multvae", "ncf"):
        # the autoencoders' and NCF's FedSGD presets (one local SGD step of rate 1) step
        # at Adam rates (1e-3, 3e-3) tuned for hundreds of rounds; a few rounds on toy
        # data need a larger server step
        flat.setdefault("server.server-lr", 0.05)
        if "train.epochs" not in overrides:
            del flat["train.epochs"]
    return RunSettings.from_run_config(flat)


def run_in_process(settings: RunSettings, seed: int = 0, **kw: Any) -> InProcessGrid:
    run_dir = Path(settings.run_dir)
    if not (run_dir / "config.json").exists():
        create_run_dir(run_dir, settings)
    grid = InProcessGrid(load_split(settings).n_users, seed=seed)
    kw.setdefault("evaluator", device_evaluator(settings))  # `fedrec simulate`'s harness
    run_server(grid, settings, **kw)
    return grid


@pytest.mark.parametrize("strategy", STRATEGIES)
@pytest.mark.parametrize("kind", MODEL_KINDS)
def test_flower_apps_learn_and_match_reference_loop(
    tmp_path: Path, kind: str, strategy: str
) -> None:
    # Prepare
    settings = make_settings(tmp_path, model=kind, strategy=strategy, **{"num-server-rounds": 2})
    split = load_split(settings)
    untrained = evaluate_federated(
        split,
        settings.model,
        settings.train,
        init_item_arrays(settings.model, split.n_items, seed=settings.seed),
        {},
        seed=settings.seed,
    )
    # Execute
    run_in_process(settings)
    reference = run_federated(
        split,
        settings.model,
        settings.train,
        settings.server,
        rounds=settings.rounds,
        clients_per_round=settings.clients_per_round,
        seed=settings.seed,
    )
    # Assert
    metrics = read_metrics(tmp_path)
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.round == settings.rounds
    for ours, ref in zip(ckpt.item_arrays, reference.item_arrays, strict=True):
        np.testing.assert_array_equal(ours, ref)
    assert metrics["ndcg@10"] == pytest.approx(reference.metrics["ndcg@10"], abs=1e-12)
    assert metrics["ndcg@10"] > float(untrained["ndcg@10"] or 0.0) + 0.05
    assert set(metrics["reference"]) == {"popularity", "ease"}


def test_replies_hold_only_declared_item_side_arrays(tmp_path: Path) -> None:
    # Prepare
    settings = make_settings(tmp_path, model="mf", **{"num-server-rounds": 2, "eval-every": 1})
    split = load_split(settings)
    shapes = item_array_shapes(settings.model, split.n_items)
    user_shapes = {
        tuple(p.shape) for p in build_model(settings.model, split.n_items, 1, seed=0).parameters()
    }
    user_shapes -= set(shapes)
    # Execute
    grid = run_in_process(settings)
    # Assert
    train = [r for r in grid.replies if r.metadata.message_type == "train"]
    evals = [r for r in grid.replies if r.metadata.message_type == "evaluate"]
    assert train and not evals, "simulate measures its devices directly: no evaluate message"
    assert read_metrics(Path(settings.run_dir))["coverage@10"] > 0  # the harness's lists
    for reply in train:
        # A non-private reply may add its mean training loss: one scalar, nothing else.
        assert list(reply.content.keys()) == ["arrays", "metrics"]
        assert set(reply.content.metric_records["metrics"]) == {"train-loss"}
        assert isinstance(reply.content.metric_records["metrics"]["train-loss"], float)
        arrays = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert [a.shape for a in arrays] == shapes
        assert not user_shapes & {a.shape for a in arrays}


def test_client_failure_is_tolerated_and_logged(tmp_path: Path) -> None:
    # Prepare: user 0 joins round 1 of this data set; its client raises
    settings = make_settings(tmp_path, **{"num-server-rounds": 2, "fail-users": "0,5"})
    # Execute
    run_in_process(settings)
    # Assert
    rounds = read_rounds(tmp_path)
    assert len(rounds) == 2
    failed = {u for r in rounds for u in r["failed"]}
    assert failed and failed <= {1, 6}  # original ids of indices 0 and 5 (synthetic: index + 1)
    for r in rounds:
        assert not set(r["failed"]) & set(r["participants"])
        assert all("fault injection" in why for why in r["failures"].values())
        assert len(r["participants"]) > 0
    assert read_metrics(tmp_path)["users_evaluated"] == 28  # the two dead devices


def test_resume_equals_uninterrupted(tmp_path: Path) -> None:
    # Prepare
    full = make_settings(tmp_path / "full", **{"num-server-rounds": 4, "eval-every": 2})
    cut = dataclasses.replace(full, run_dir=str(tmp_path / "cut"))

    def stop_after_two(record: dict[str, Any]) -> None:
        if record["round"] == 2:
            raise KeyboardInterrupt

    # Execute
    run_in_process(full)
    with pytest.raises(KeyboardInterrupt):
        run_in_process(cut, on_round=stop_after_two)
    assert load_checkpoint(tmp_path / "cut").round == 2  # type: ignore[union-attr]
    run_in_process(cut, seed=1)  # a restart: new node ids, same stores and checkpoint
    # Assert
    a, b = load_checkpoint(tmp_path / "full"), load_checkpoint(tmp_path / "cut")
    assert a is not None and b is not None
    for x, y in zip(a.item_arrays, b.item_arrays, strict=True):
        np.testing.assert_array_equal(x, y)
    for key in a.optimizer_state:
        np.testing.assert_array_equal(a.optimizer_state[key], b.optimizer_state[key])
    strip = [
        {k: v for k, v in r.items() if "seconds" not in k} for r in read_rounds(tmp_path / "full")
    ]
    assert strip == [
        {k: v for k, v in r.items() if "seconds" not in k} for r in read_rounds(tmp_path / "cut")
    ]
    assert json.loads((tmp_path / "full" / "metrics.json").read_text()) == json.loads(
        (tmp_path / "cut" / "metrics.json").read_text()
    )
