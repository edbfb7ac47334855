"""The Flower ``ClientApp``: one simulated device per user, wiring only.

Design rule: this module reads the message's config, loads (once per process) the
data set and split, reads and writes the device's own store
(:class:`clients.sim_store.SimStore`), calls :func:`fedrec.federated.client.client_fit`
or :func:`~fedrec.federated.client.client_evaluate`, and packs the reply. The node's
``partition-id`` is the user index; the user's interactions and user-side state never
leave this process.

Message contract (``ConfigRecord`` ``"config"``; keys of
:meth:`server.settings.RunSettings.client_config`, plus ``server-round``):

- ``train`` -> ``{"arrays": ArrayRecord}``: the item-side arrays after local training,
  all rows, dense, in upload order. Nothing else. ``{"metrics": {"num-examples"}}``
  is added only when the server opted in to count weighting (``weighted``), which
  leaks the count and is off by default (uniform aggregation).
- ``evaluate`` -> ``{"metrics": MetricRecord}``: the user's per-user metrics
  (``ndcg@10``...) and ``top10``, the user's top-10 item list. Both are needed for the
  simulation's coverage/novelty/Gini and would leak in a deployment (the top-10 list
  reveals the user's tastes); a deployment should report noised aggregates instead.
- ``query`` -> ``{"config": {"partition-id"}}``: simulation-only node discovery.

Seeds: a fit in server round ``r`` uses ``derive_seed(seed, user, r - 1)``, an
evaluation ``derive_seed(seed, user, -1)``: the same as the Flower-free reference loop
:func:`fedrec.federated.loop.run_federated`, so both give the same result.
``store-dir`` in the node config (deployment) overrides the one in the message.
"""

from __future__ import annotations

import dataclasses
import threading
from typing import Any

import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
from flwr.clientapp import ClientApp

from clients.sim_store import SimStore
from fedrec.data import resolve_data
from fedrec.data.split import Split, random_split, temporal_split
from fedrec.federated.client import client_evaluate, client_fit, derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.models.config import LocalTrainConfig, ModelConfig

_SPLITS: dict[tuple[Any, ...], Split] = {}
_LOCK = threading.Lock()
_THREADS_SET = False

app = ClientApp()


class InjectedFailure(RuntimeError):
    """TEST-ONLY fault injection: raised for users listed in ``fail-users``."""


@app.query()
def query(msg: Message, context: Context) -> Message:
    """Tell the server which user this node is (simulation-only discovery)."""
    user = int(context.node_config["partition-id"])
    return Message(RecordDict({"config": ConfigRecord({"partition-id": user})}), reply_to=msg)


@app.train()
def train(msg: Message, context: Context) -> Message:
    """One local update; reply with the item-side arrays only."""
    user, config, rnd = _begin(msg, context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
    if bool(config.get("noop", False)):
        return Message(RecordDict({"arrays": ArrayRecord(arrays)}), reply_to=msg)
    split, seed = _split(config), int(config["seed"])  # type: ignore[arg-type]
    store = SimStore(_store_dir(config, context))
    fit = client_fit(
        _model_config(config),
        _train_config(config),
        arrays,
        store.load(user, before_round=rnd),
        split.train_items(user),
        seed=derive_seed(seed, user, rnd - 1),
    )
    store.save(user, rnd, fit.user_state)
    content = RecordDict({"arrays": ArrayRecord(fit.item_arrays)})
    if bool(config.get("weighted", False)):
        content["metrics"] = MetricRecord({"num-examples": fit.num_examples})
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items with the local state and the global items; reply with metrics."""
    user, config, rnd = _begin(msg, context)
    arrays = msg.content["arrays"].to_numpy_ndarrays()  # type: ignore[union-attr]
    split, seed = _split(config), int(config["seed"])  # type: ignore[arg-type]
    store = SimStore(_store_dir(config, context))
    metrics, top = client_evaluate(
        _model_config(config),
        _train_config(config),
        arrays,
        store.load(user, before_round=rnd + 1),
        split.train_items(user),
        split.test_items(user),
        seed=derive_seed(seed, user, EVAL_ROUND),
    )
    record = MetricRecord({**metrics, "top10": [int(i) for i in top]})
    return Message(RecordDict({"metrics": record}), reply_to=msg)


def _begin(msg: Message, context: Context) -> tuple[int, ConfigRecord, int]:
    global _THREADS_SET
    if not _THREADS_SET:  # many tiny models per process: one thread is fastest
        torch.set_num_threads(1)
        _THREADS_SET = True
    user = int(context.node_config["partition-id"])
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    if user in _fail_users(config):
        raise InjectedFailure(f"test-only fault injection for user {user}")
    return user, config, int(config["server-round"])  # type: ignore[arg-type]


def _fail_users(config: ConfigRecord) -> set[int]:
    text = str(config.get("fail-users", "")).strip()
    return {int(u) for u in text.split(",")} if text else set()


def _store_dir(config: ConfigRecord, context: Context) -> str:
    return str(context.node_config.get("store-dir", config["store-dir"]))


def _split(config: ConfigRecord) -> Split:
    """The split named by ``config``, loaded once per process and cached."""
    key = tuple(
        config.get(k) for k in ("data", "min-rating", "k-core", "split", "test-fraction", "seed")
    )
    with _LOCK:
        if key not in _SPLITS:
            data, min_rating, k_core, method, fraction, seed = key
            log = resolve_data(
                str(data),
                min_rating=None if min_rating is None else float(min_rating),  # type: ignore[arg-type]
                k_core=None if k_core is None else int(k_core),  # type: ignore[arg-type]
            )
            if method == "temporal":
                _SPLITS[key] = temporal_split(log, test_fraction=float(fraction))  # type: ignore[arg-type]
            else:
                _SPLITS[key] = random_split(log, test_fraction=float(fraction), seed=int(seed))  # type: ignore[arg-type]
        return _SPLITS[key]


def _fields(config: ConfigRecord, prefix: str) -> dict[str, Any]:
    return {
        k[len(prefix) :].replace("-", "_"): v for k, v in config.items() if k.startswith(prefix)
    }


def _model_config(config: ConfigRecord) -> ModelConfig:
    return ModelConfig(kind=str(config["model"]), **_fields(config, "model."))


def _train_config(config: ConfigRecord) -> LocalTrainConfig:
    fields = _fields(config, "train.")
    known = {f.name for f in dataclasses.fields(LocalTrainConfig)}
    return LocalTrainConfig(**{k: v for k, v in fields.items() if k in known})


__all__ = ["InjectedFailure", "app", "evaluate", "query", "train"]
