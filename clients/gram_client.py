"""The device side of one-shot federated EASE (:mod:`fedrec.federated.gram`).

Design rule: this module only wires. ``clients.client_app`` hands a message to it when
the message's ``model`` is ``"ease"`` (:func:`handles`). There is no user-side state,
so no device store is opened; the user's train items come from the simulation's split.

Message contract (``ConfigRecord`` ``"config"``: the keys of the run's client config,
``model = "ease"``, ``privacy``, ``server-round``):

- ``train`` -> ``{"arrays": ArrayRecord([packed])}``: the dense packed upper triangle
  of ``x x^T`` (float32, ``I (I + 1) / 2`` values), normalized to norm 1 in central
  mode. Nothing else is sent (no loss), but the upload itself names the user's items:
  its diagonal is ``x``, or ``x / |x|^2`` in central mode, which also gives their number.
  The server sees it in the clear (central mode trusts the server; docs/PRIVACY.md).
- ``evaluate``: refused. Federated EASE exists only in simulation and is measured by
  the harness (:func:`simulations.evaluation.gram_evaluator`), outside the messages.
"""

from __future__ import annotations

from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_config import fail_users, load_split
from fedrec.errors import ConfigError
from fedrec.federated.gram import check_privacy_mode, client_contribution

MODEL_KIND = "ease"


def handles(msg: Message) -> bool:
    """Whether ``msg`` is a federated-EASE message."""
    config = msg.content.get("config")  # not .config_records: a new dict per call
    return isinstance(config, ConfigRecord) and config.get("model") == MODEL_KIND


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
    if mode == "distributed":  # masked SecAgg+ uploads only, never the plain one
        from clients import gram_secagg

        return gram_secagg.train(msg, context)
    check_privacy_mode(mode)
    split = load_split(config)
    upload = client_contribution(
        split.train_items(user), split.n_items, normalize=mode == "central"
    )
    return Message(RecordDict({"arrays": ArrayRecord([upload])}), reply_to=msg)


def evaluate(msg: Message, context: Context) -> Message:
    """Refuse: federated EASE is measured by the simulation's harness, never by messages.

    (:func:`simulations.evaluation.gram_evaluator`; no metric or list leaves a device.)
    """
    del msg, context
    raise ConfigError(
        "federated EASE answers no evaluate message",
        where="evaluate",
        fix="measure it with the simulation harness (fedrec simulate --model ease)",
    )


__all__ = ["MODEL_KIND", "evaluate", "handles", "train"]
