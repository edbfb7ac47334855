"""The device side of one-shot federated EASE (:mod:`fedrec.federated.gram`).

Design rule: this module only wires. ``clients.client_app`` hands a message to it when
the message's ``model`` is ``"ease"`` (:func:`handles`). There is no user-side state,
so no device store is opened; the user's train items come from the simulation's split.

Message contract (``ConfigRecord`` ``"config"``: the keys of the run's client config,
``model = "ease"``, ``privacy``, ``server-round``):

- ``train`` -> ``{"arrays": ArrayRecord([packed])}``: the dense packed upper triangle
  of ``x x^T`` (float32, ``I (I + 1) / 2`` values), normalized to norm 1 in central
  mode. Nothing else: no count, no loss.
- ``evaluate`` (``{"arrays": ArrayRecord([B])}``, ``B`` float32 ``I x I``) ->
  ``{"metrics": MetricRecord}``: per-user metrics and ``top10`` of the ranking
  ``x_u B`` over all items but the train items (simulation only; not DP).
"""

from __future__ import annotations

import numpy as np
import torch
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict

from clients.client_config import fail_users, load_split
from fedrec.federated.gram import check_privacy_mode, client_contribution, score_user
from fedrec.metrics.evaluate import evaluate_user

MODEL_KIND = "ease"


def handles(msg: Message) -> bool:
    """Whether ``msg`` is a federated-EASE message."""
    config = msg.content.config_records.get("config")
    return config is not None and config.get("model") == MODEL_KIND


def _begin(msg: Message, context: Context) -> tuple[int, ConfigRecord]:
    user = int(context.node_config["partition-id"])
    config = msg.content.config_records["config"]
    if user in fail_users(config, "fail-users"):
        raise RuntimeError(f"test-only fault injection for user {user}")
    return user, config


def train(msg: Message, context: Context) -> Message:
    """Upload this user's packed Gram contribution (dense)."""
    user, config = _begin(msg, context)
    mode = str(config.get("privacy", "none"))
    check_privacy_mode(mode)
    split = load_split(config)
    upload = client_contribution(
        split.train_items(user), split.n_items, normalize=mode == "central"
    )
    return Message(RecordDict({"arrays": ArrayRecord([upload])}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Rank all items by ``x_u B`` on the device; reply with per-user metrics."""
    user, config = _begin(msg, context)
    (weights,) = msg.content.array_records["arrays"].to_numpy_ndarrays()
    split = load_split(config)
    train_items = split.train_items(user)
    scores = torch.from_numpy(score_user(np.asarray(weights, dtype=np.float32), train_items))
    metrics, top = evaluate_user(scores, train_items, split.test_items(user))
    record = MetricRecord({**metrics, "top10": [int(i) for i in top]})
    return Message(RecordDict({"metrics": record}), reply_to=msg)


__all__ = ["MODEL_KIND", "evaluate", "handles", "train"]
