"""The Flower ``ClientApp``: a thin wrapper over one :class:`~clients.device.DeviceClient`.

Design rule: this module only wires. Per message it opens the user's device store
(:func:`clients.sim_store.open_device`; the node's ``partition-id`` is the user), builds
a :class:`~clients.device_round.RoundConfig` from the message, calls
:meth:`~clients.device.DeviceClient.fit_round` or
:meth:`~clients.device.DeviceClient.evaluate_round`, closes the store and packs the
reply. Simulation and deployment share this path; only the data differ (a simulated
device is fed its train interactions from the split on first use).

Message contract (``ConfigRecord`` ``"config"``: keys of
:meth:`server.settings.RunSettings.client_config`, plus ``server-round``, and in local
DP mode ``num-server-rounds`` and ``privacy.client-sample-rate``):

- ``train`` -> ``{"arrays": ArrayRecord}``: the item-side arrays after local training,
  all rows, dense, in upload order. ``{"metrics": {"num-examples"}}`` only when the
  server opted in to count weighting (``weighted``; leaks the count).
  Local DP (``privacy`` = ``local``): every reply also holds ``{"privacy": ConfigRecord}``,
  the device's ledger statement (:data:`PRIVACY_KEYS`); a device that refuses (budget
  exhausted, no data) replies with that record only, no arrays.
- ``evaluate`` -> ``{"metrics": MetricRecord}``: per-user metrics and ``top10`` (needed
  for the simulation's coverage/novelty/Gini; not DP, a deployment should not send them).
- ``query`` -> ``{"config": {"partition-id"}}``: simulation-only node discovery.

Seeds: a fit in server round ``r`` uses ``derive_seed(seed, user, r - 1)``, an
evaluation ``derive_seed(seed, user, EVAL_ROUND)``, as the Flower-free reference loop
:func:`fedrec.federated.loop.run_federated` does, so both give the same result.
``store-dir`` in the node config (deployment) overrides the one in the message.
"""

from __future__ import annotations

import json
import math
import threading
from functools import lru_cache
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients import gram_client
from clients.client_config import (
    fail_users,
    load_split,
    model_config,
    privacy_config,
    train_config,
)
from clients.device import DeviceClient
from clients.device_round import FitReply, LocalPrivacy, RoundConfig
from clients.sim_store import open_device
from fedrec.federated.client import derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.federated.private import local_noise_multiplier
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.config import PrivacyConfig

PRIVACY_KEY = "privacy"
PRIVACY_KEYS = ("status", "history", "rounds", "epsilon", "delta", "accountant", "unit", "message")
"""Keys of the ``privacy`` record of a local-DP train reply."""

_THREADS = threading.Lock()
_threads_set = False

app = ClientApp()


class InjectedFailure(RuntimeError):
    """TEST-ONLY fault injection (``fail-users``; ``fail-after-ledger``)."""


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which user this node is (simulation-only discovery)."""
    user = int(context.node_config["partition-id"])
    return Message(RecordDict({"config": ConfigRecord({"partition-id": user})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local update on the user's device; reply with the item-side arrays only."""
    if gram_client.handles(msg):  # --model ease: one-shot federated EASE
        return gram_client.train(msg, context)
    user, config, rnd = _begin(msg, context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
    if bool(config.get("noop", False)):
        return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)
    round_config = _round_config(config, user, rnd - 1, rnd)
    with _device(config, context, user) as device:
        reply = device.fit_round(arrays, round_config)
    if reply.ok and user in fail_users(config, "fail-after-ledger"):  # the ledger is durable
        raise InjectedFailure(f"test-only failure after the ledger write for user {user}")
    return Message(_pack_fit(reply, config, private=round_config.privacy is not None), reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items with the device's state and the global items; reply with metrics."""
    if gram_client.handles(msg):  # --model ease: one-shot federated EASE
        return gram_client.evaluate(msg, context)
    user, config, rnd = _begin(msg, context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
    round_config = _round_config(config, user, EVAL_ROUND, rnd)
    test_items = load_split(config).test_items(user)
    with _device(config, context, user) as device:
        result = device.evaluate_round(arrays, round_config, [int(i) for i in test_items])
    record = MetricRecord({**result.metrics, "top10": [int(i) for i in result.top10]})
    return Message(RecordDict({"metrics": record}), reply_to=msg)


def _begin(msg: Message, context: Context) -> tuple[int, ConfigRecord, int]:
    global _threads_set
    with _THREADS:
        if not _threads_set:  # many tiny models per process: one thread is fastest
            torch.set_num_threads(1)
            _threads_set = True
    user = int(context.node_config["partition-id"])
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    if user in fail_users(config, "fail-users"):
        raise InjectedFailure(f"test-only fault injection for user {user}")
    return user, config, int(config["server-round"])  # type: ignore[arg-type]


def _device(config: ConfigRecord, context: Context, user: int) -> DeviceClient:
    store_dir = str(context.node_config.get("store-dir", config["store-dir"]))
    seed = int(config["seed"])  # type: ignore[arg-type]
    # without local DP no ledger is written, so the store need not fsync each round
    durable = privacy_config(config).mode == "local"
    items = load_split(config).train_items(user)
    return open_device(store_dir, user, items, seed=seed, durable=durable)


def _round_config(config: ConfigRecord, user: int, seed_round: int, rnd: int) -> RoundConfig:
    model, train = model_config(config), train_config(config)
    return RoundConfig(
        model=model,
        train=train,
        round=rnd,
        seed=derive_seed(int(config["seed"]), user, seed_round),  # type: ignore[arg-type]
        privacy=_local_privacy(config, model, train),
    )


def _local_privacy(
    config: ConfigRecord, model: ModelConfig, train: LocalTrainConfig
) -> LocalPrivacy | None:
    privacy = privacy_config(config)
    if privacy.mode != "local":
        return None
    z = privacy.noise_multiplier
    if z is None:  # the same calibration the server would do: every client gets the same z
        rounds = int(config["num-server-rounds"])  # type: ignore[arg-type]
        rate = float(config["privacy.client-sample-rate"])  # type: ignore[arg-type]
        z = _calibrated(privacy, model, train, rounds, rate)
    return LocalPrivacy.from_config(privacy, model, noise_multiplier=z)


@lru_cache(maxsize=8)
def _calibrated(
    privacy: PrivacyConfig, model: ModelConfig, train: LocalTrainConfig, rounds: int, rate: float
) -> float:
    return local_noise_multiplier(privacy, model, train, rounds=rounds, client_sample_rate=rate)


def _pack_fit(reply: FitReply, config: ConfigRecord, *, private: bool) -> RecordDict:
    if not private and not reply.ok:
        raise RuntimeError(f"device did not train: {reply.status} ({reply.message})")
    content = RecordDict()
    if reply.ok:
        assert reply.item_arrays is not None
        content["arrays"] = ArrayRecord(reply.item_arrays)
        metrics: dict[str, int | float | list[int] | list[float]] = {}
        if bool(config.get("weighted", False)):
            metrics["num-examples"] = reply.num_examples
        if not private and math.isfinite(reply.train_loss):
            # Non-private runs only: a loss describes the user's data.
            metrics["train-loss"] = float(reply.train_loss)
        if metrics:
            content["metrics"] = MetricRecord(metrics)
    if private:
        content[PRIVACY_KEY] = ConfigRecord(_statement(reply))
    return content


def _statement(reply: FitReply) -> dict[str, Any]:
    """The ledger statement a private reply carries (cumulative history included)."""
    spent = reply.spent
    if spent is None:  # a refusal before any release ("no_data")
        empty: dict[str, Any] = {"history": "[]", "rounds": 0, "epsilon": 0.0}
        return {"status": reply.status, "message": reply.message, **empty}
    return {
        "status": reply.status,
        "history": json.dumps(spent.history),
        "rounds": spent.rounds_participated,
        "epsilon": float(spent.epsilon),
        "delta": float(spent.delta),
        "accountant": spent.accountant,
        "unit": spent.unit,
        "message": reply.message,
    }


__all__ = ["PRIVACY_KEY", "PRIVACY_KEYS", "InjectedFailure", "app", "evaluate", "query", "train"]
