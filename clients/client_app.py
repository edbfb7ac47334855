"""The Flower ``ClientApp``: a thin wrapper over one :class:`~clients.device.DeviceClient`.

Design rule: this module only wires. Per message it opens the user's device store
(:func:`clients.sim_store.open_device`; the node's ``partition-id`` is the user), builds
a :class:`~clients.device_round.RoundConfig` from the message, calls
:meth:`~clients.device.DeviceClient.fit_round` or
:meth:`~clients.device.DeviceClient.evaluate_round`, closes the store and packs the
reply. Simulation and deployment share this path; only the data differ (a simulated
device is fed its train interactions from the split on first use).

Message contract (``ConfigRecord`` ``"config"``: keys of
:meth:`server.settings.RunSettings.client_config`, plus ``server-round``; in local DP
mode ``privacy.noise-multiplier`` is the run's calibrated ``z``, resolved once by the
server, :func:`fedrec.privacy.central_setup.resolve_privacy`):

- ``train`` -> ``{"arrays": ArrayRecord}``: the item-side arrays after local training,
  all rows, dense, in upload order. ``{"metrics": {"num-examples"}}`` only when the
  server opted in to count weighting (``weighted``; leaks the count).
  Local DP (``privacy`` = ``local``): every reply also holds ``{"privacy": ConfigRecord}``,
  the device's status only (:class:`fedrec.privacy.record.PrivacyRecord`: ``trained``,
  ``budget_exhausted`` or ``refused``); no ledger history, epsilon, rate or step count,
  which all depend on the device's size. A device that refuses replies with that
  record only, no arrays. The exact ledger stays on the device.
- ``evaluate`` (deployments only: ``fedrec simulate`` measures its devices directly,
  :mod:`simulations.evaluation`) -> ``{"metrics": MetricRecord}`` with exactly the
  per-user metric keys (:data:`fedrec.metrics.USER_METRIC_KEYS`), never a top-k list
  (:meth:`~clients.device.DeviceClient.report_evaluation`): the metrics themselves in
  mode ``none``; clamped to ``[0, 1]`` and clipped to L2 norm ``C`` in ``central`` (the
  server adds the noise); clipped plus Gaussian noise spent from the device's ledger in
  ``local``, or ``{"privacy": {"status": "budget_exhausted"}}`` alone when the release
  would exceed the budget (:mod:`fedrec.metrics.private`).
- ``query`` -> ``{"config": {"partition-id"}}``: simulation-only node discovery.

Seeds: a fit in server round ``r`` uses ``derive_seed(seed, user, r - 1)``, an
evaluation ``derive_seed(seed, user, EVAL_ROUND)``, as the Flower-free reference loop
:func:`fedrec.federated.loop.run_federated` does, so both give the same result.
``store-dir`` in the node config (deployment) overrides the one in the message, and
marks the node as a deployed device: it keeps a secret key for MF's keyed negatives
(docs/PRIVACY.md, "The device key"); a simulated node uses the public key.
"""

from __future__ import annotations

import math
import threading
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import Array, ArrayRecord, ConfigRecord, Context, Message, MetricRecord, RecordDict
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
from clients.device_round import BUDGET_EXHAUSTED, OK, FitReply, LocalPrivacy, RoundConfig
from clients.sim_store import open_device
from fedrec.data.sequences import user_train_items
from fedrec.errors import ConfigError
from fedrec.federated.client import derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.federated.npy import NUMPY_STYPE, record_arrays, save_npy
from fedrec.metrics.private import evaluation_mechanism
from fedrec.models.config import ModelConfig
from fedrec.models.registry import model_class
from fedrec.privacy import record as privacy_record
from fedrec.privacy.record import PrivacyRecord
from fedrec.ray_auth import secure_flwr_simulation
from fedrec.training.threads import keep_process_at_one_thread

secure_flwr_simulation()  # `flwr run`: Ray's ports refuse clients without the run's token

PRIVACY_KEY = "privacy"
PRIVACY_KEYS = tuple(sorted(privacy_record.WIRE_KEYS))
"""Keys of the ``privacy`` record of a local-DP train reply (the status only)."""

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
    arrays = _arrays(msg)
    if bool(config.get("noop", False)):
        echo = _upload(arrays, arrays, config, seed=0)
        return Message(RecordDict({"arrays": ArrayRecord(echo)}), reply_to=msg)
    round_config = _round_config(config, user, rnd - 1, rnd)
    with _device(config, context, user) as device:
        reply = device.fit_round(arrays, round_config)
    if reply.ok and user in fail_users(config, "fail-after-ledger"):  # the ledger is durable
        raise InjectedFailure(f"test-only failure after the ledger write for user {user}")
    private = round_config.privacy is not None
    content = _pack_fit(reply, config, private=private, reference=arrays, seed=round_config.seed)
    return Message(content, reply_to=msg)


@app.evaluate()
def evaluate(msg: Message, context: Context) -> Message:
    """Deployment evaluation: the device's metrics, clipped (and noised), never its list."""
    if gram_client.handles(msg):  # --model ease: one-shot federated EASE
        return gram_client.evaluate(msg, context)
    user, config, rnd = _begin(msg, context)
    arrays = _arrays(msg)
    round_config = _round_config(config, user, EVAL_ROUND, rnd)
    privacy = privacy_config(config)
    test_items = load_split(config).test_items(user)
    with _device(config, context, user) as device:
        report = device.report_evaluation(
            arrays,
            round_config,
            [int(i) for i in test_items],
            mode=privacy.mode,
            mechanism=evaluation_mechanism(privacy),
        )
    if report.values is None:  # budget spent: the status only, like a train refusal
        status = PrivacyRecord(privacy_record.BUDGET_EXHAUSTED).to_dict()
        return Message(RecordDict({PRIVACY_KEY: ConfigRecord(dict(status))}), reply_to=msg)
    return Message(RecordDict({"metrics": MetricRecord(dict(report.values))}), reply_to=msg)


def _arrays(msg: Message) -> list[npt.NDArray[Any]]:
    """The message's global arrays: ``to_numpy_ndarrays()``, each ``.npy`` header parsed
    once per process (:mod:`fedrec.federated.npy`; every message of a round carries the
    same arrays)."""
    record = msg.content["arrays"]
    assert isinstance(record, ArrayRecord)
    return record_arrays(record.values())


def _array_record(arrays: list[npt.NDArray[Any]]) -> ArrayRecord:
    """``ArrayRecord(arrays)``, the same record, each ``np.save`` header written once."""
    return ArrayRecord(
        {
            str(i): Array(
                dtype=str(a.dtype), shape=tuple(a.shape), stype=NUMPY_STYPE, data=save_npy(a)
            )
            for i, a in enumerate(arrays)
        }
    )


def _begin(msg: Message, context: Context) -> tuple[int, ConfigRecord, int]:
    global _threads_set
    with _THREADS:
        # many tiny models per process: one thread is fastest (and the same sums each time)
        keep_process_at_one_thread(first=not _threads_set)
        _threads_set = True
    user = int(context.node_config["partition-id"])
    config = msg.content["config"]
    assert isinstance(config, ConfigRecord)
    if user in fail_users(config, "fail-users"):
        raise InjectedFailure(f"test-only fault injection for user {user}")
    return user, config, int(config["server-round"])  # type: ignore[arg-type]


def _device(config: ConfigRecord, context: Context, user: int) -> DeviceClient:
    # A SuperNode of a deployment names its own store folder in its node config: it is
    # a real device and keeps a secret negative-sampling key. A simulated node (the
    # in-process engine, `flwr run` on the local simulation) has none in its node config
    # and uses the public key, so its run equals the Flower-free reference loop.
    deployed = "store-dir" in context.node_config
    store_dir = str(context.node_config.get("store-dir", config["store-dir"]))
    seed = int(config["seed"])  # type: ignore[arg-type]
    # without local DP no ledger is written, so the store need not fsync each round
    durable = privacy_config(config).mode == "local"
    ordered = model_class(model_config(config).kind).ORDERED  # a sequential model: time order
    items = user_train_items(load_split(config), user, ordered=ordered)
    return open_device(
        store_dir, user, items, seed=seed, durable=durable, secret_negatives=deployed
    )


def _round_config(config: ConfigRecord, user: int, seed_round: int, rnd: int) -> RoundConfig:
    model, train = model_config(config), train_config(config)
    return RoundConfig(
        model=model,
        train=train,
        round=rnd,
        seed=derive_seed(int(config["seed"]), user, seed_round),  # type: ignore[arg-type]
        privacy=_local_privacy(config, model),
    )


def _local_privacy(config: ConfigRecord, model: ModelConfig) -> LocalPrivacy | None:
    privacy = privacy_config(config)
    if privacy.mode != "local":
        return None
    if privacy.noise_multiplier is None:  # calibrated once, by the server, for every client
        raise ConfigError(
            "local DP message without the run's noise multiplier",
            where="config privacy.noise-multiplier",
            fix="send the settings resolved by fedrec.privacy.central_setup.resolve_privacy",
        )
    return LocalPrivacy.from_config(privacy, model, noise_multiplier=privacy.noise_multiplier)


def _upload(
    new: list[npt.NDArray[np.float32]],
    reference: list[npt.NDArray[np.float32]],
    config: ConfigRecord,
    *,
    seed: int,
) -> list[npt.NDArray[Any]]:
    """The wire arrays of an upload: the float32 arrays, or (``train.upload-bits``) the
    update from the round's global arrays, quantized with unbiased stochastic rounding
    (:mod:`fedrec.federated.compression`; post-processing of what the device releases)."""
    codec = train_config(config).upload_codec()
    if not codec.enabled:
        return list(new)
    return codec.encode(new, reference, np.random.default_rng([seed, _UPLOAD_STREAM]))


_UPLOAD_STREAM = 0x5155414E
"""Seed part of the stochastic rounding's stream (apart from the training's)."""


def _pack_fit(
    reply: FitReply,
    config: ConfigRecord,
    *,
    private: bool,
    reference: list[npt.NDArray[np.float32]],
    seed: int,
) -> RecordDict:
    if not private and not reply.ok:
        raise RuntimeError(f"device did not train: {reply.status} ({reply.message})")
    content = RecordDict()
    if reply.ok:
        assert reply.item_arrays is not None
        content["arrays"] = _array_record(_upload(reply.item_arrays, reference, config, seed=seed))
        metrics: dict[str, int | float | list[int] | list[float]] = {}
        if bool(config.get("weighted", False)):
            metrics["num-examples"] = reply.num_examples
        if not private and math.isfinite(reply.train_loss):
            # Non-private runs only: a loss describes the user's data.
            metrics["train-loss"] = float(reply.train_loss)
        if metrics:
            content["metrics"] = MetricRecord(metrics)
    if private:  # the status only: the ledger (history, epsilon, q, steps) stays here
        content[PRIVACY_KEY] = ConfigRecord(dict(_status(reply).to_dict()))
    return content


def _status(reply: FitReply) -> PrivacyRecord:
    """The wire status of a device's round (``no_data`` and the like: ``refused``)."""
    if reply.status == OK:
        return PrivacyRecord(privacy_record.TRAINED)
    if reply.status == BUDGET_EXHAUSTED:
        return PrivacyRecord(privacy_record.BUDGET_EXHAUSTED)
    return PrivacyRecord(privacy_record.REFUSED)


__all__ = ["PRIVACY_KEY", "PRIVACY_KEYS", "InjectedFailure", "app", "evaluate", "query", "train"]
