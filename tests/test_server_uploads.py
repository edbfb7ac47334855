"""The server's reading of train replies, and the FedAdam step it takes on them.

Each upload is deserialized once (the check and the aggregation share the arrays),
every refusal keeps its message, the order replies arrive in changes nothing, and the
server's Adam is Reddi et al.'s Algorithm 2 (no bias correction), not Flower's.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import pytest
from flwr.app import Array, ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.supercore.task_identity import TaskIdentity

from fedrec.federated import npy
from fedrec.federated.aggregation import ServerConfig, build_server_optimizer
from fedrec.federated.compression import UploadCodec
from server.strategies import RoundPlan, build_strategy

SHAPES = [(4, 2), (4,)]
USERS = 3


def _strategy(
    strategy: str = "fedavg", *, weighted: bool = False, upload: UploadCodec | None = None
) -> Any:
    cfg = ServerConfig(strategy=strategy, server_lr=1.0 if strategy == "fedavg" else 0.1)
    plan = RoundPlan(
        eligible=np.arange(USERS, dtype=np.int64),
        test_users=np.arange(USERS, dtype=np.int64),
        user_nodes={u: 10 + u for u in range(USERS)},
        clients_per_round=USERS,  # q = 1: every user every round
        eval_clients=0,
        seed=0,
        item_shapes=SHAPES,
        catalog=None,  # type: ignore[arg-type]  # not read by the train hooks
        weighted=weighted,
        upload=upload or UploadCodec(),
    )
    return build_strategy(cfg, plan, build_server_optimizer(cfg, rounds=10), proximal_mu=0.0)


def _send(strategy: Any, global_arrays: list[np.ndarray], rnd: int = 1) -> list[Message]:
    for name in ("task_id", "run_id", "node_id"):  # as the in-process grid sets them
        setattr(TaskIdentity, name, 1)
    sent = strategy.configure_train(rnd, ArrayRecord(global_arrays), ConfigRecord({}), None)
    return sorted(sent, key=lambda m: m.metadata.dst_node_id)


def _upload(value: float) -> list[np.ndarray]:
    return [np.full(s, value, np.float32) for s in SHAPES]


def _reply(msg: Message, arrays: list[np.ndarray], **extra: Any) -> Message:
    content = RecordDict({"arrays": ArrayRecord(arrays), **extra})
    return Message(content, reply_to=msg)


def _count_reads(monkeypatch: pytest.MonkeyPatch) -> dict[int, int]:
    """How often each upload's bytes (by the id of its first array's data) are turned into
    numpy arrays, by the server's parser (``fedrec.federated.npy``) or Flower's own."""
    reads: dict[int, int] = {}
    real_load: Callable[[bytes], np.ndarray] = npy.load_npy
    real_numpy: Callable[[Array], np.ndarray] = Array.numpy

    def counted_load(data: bytes) -> np.ndarray:
        reads[id(data)] = reads.get(id(data), 0) + 1
        return real_load(data)

    def counted_numpy(self: Array) -> np.ndarray:
        reads[id(self.data)] = reads.get(id(self.data), 0) + 1
        return real_numpy(self)

    monkeypatch.setattr(npy, "load_npy", counted_load)
    monkeypatch.setattr(Array, "numpy", counted_numpy)
    return reads


def _upload_key(reply: Message) -> int:
    """The key :func:`_count_reads` counts ``reply``'s upload under."""
    return id(next(iter(reply.content.array_records["arrays"].values())).data)


@pytest.mark.parametrize("path", ["aggregate", "collect"])
def test_each_upload_is_deserialized_once(monkeypatch: pytest.MonkeyPatch, path: str) -> None:
    # Prepare: three valid float32 uploads
    strategy = _strategy()
    sent = _send(strategy, _upload(0.0))
    replies = [_reply(m, _upload(float(u + 1))) for u, m in enumerate(sent)]
    records = [_upload_key(r) for r in replies]
    reads = _count_reads(monkeypatch)
    # Execute: the streaming mean (plain, local DP) or the central-DP collection
    if path == "aggregate":
        new, _ = strategy.aggregate_train(1, replies)
        result = new.to_numpy_ndarrays()[0]
    else:
        good, _ = strategy.collect_train(replies)
        result = np.mean([arrays[0] for _, arrays in good], axis=0)
    # Assert: one read per upload, and the mean of uploads 1, 2, 3 is 2
    assert [reads.get(r, 0) for r in records] == [1, 1, 1]
    np.testing.assert_array_equal(result, np.full(SHAPES[0], 2.0, np.float32))


def _bad_replies(sent: list[Message]) -> dict[int, Message]:
    """One refused reply per check of an upload (user -> reply)."""
    extra = ArrayRecord([np.zeros(1, np.float32)])
    return {
        0: _reply(sent[0], _upload(1.0), more=extra),
        1: _reply(sent[1], _upload(1.0), metrics=MetricRecord({"num-examples": 5})),
        2: _reply(sent[2], [np.zeros((5, 2), np.float32), np.zeros(4, np.float32)]),
    }


def test_every_refusal_keeps_its_message() -> None:
    # Prepare / Execute: a reply with a second record, one with a count nobody asked for,
    # one of the wrong shape; then, with count weighting on, a reply without its count
    strategy = _strategy()
    strategy.aggregate_train(1, list(_bad_replies(_send(strategy, _upload(0.0))).values()))
    failed = strategy.last_train.failed
    weighted = _strategy(weighted=True)
    sent = _send(weighted, _upload(0.0))
    weighted.aggregate_train(1, [_reply(m, _upload(1.0)) for m in sent])
    # Assert
    assert failed == {
        0: "reply must hold exactly one ArrayRecord 'arrays'",
        1: "reply carries metrics that are not allowed",
        2: "upload shapes [(5, 2), (4,)] != declared [(4, 2), (4,)]",
    }
    assert strategy.last_train.participants == []
    assert set(weighted.last_train.failed.values()) == {
        "count weighting is on but the reply has no num-examples"
    }


def test_a_quantized_upload_with_bad_scales_is_refused() -> None:
    # Prepare: 8-bit uploads; user 1's step is negative
    codec = UploadCodec(bits=8)
    strategy = _strategy(upload=codec)
    g = _upload(0.0)
    sent = _send(strategy, g)
    rng = np.random.default_rng(0)
    wires = [codec.encode(_upload(float(u)), g, rng) for u in range(USERS)]
    wires[1][2] = -np.abs(wires[1][2]) - 1.0
    # Execute
    strategy.aggregate_train(1, [_reply(m, w) for m, w in zip(sent, wires, strict=True)])
    # Assert
    assert strategy.last_train.failed == {
        1: "a quantized upload's lo/step must be finite (step >= 0)"
    }
    assert strategy.last_train.participants == [0, 2]


def test_the_arrival_order_changes_nothing(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: the same replies in user order and reversed (early ones wait, serialized)
    results = []
    for order in (slice(None), slice(None, None, -1)):
        strategy = _strategy()
        sent = _send(strategy, _upload(0.0))
        replies = [_reply(m, _upload(float(u) ** 2 + 0.1)) for u, m in enumerate(sent)]
        reads = _count_reads(monkeypatch)
        # Execute
        new, _ = strategy.aggregate_train(1, replies[order])
        results.append(new.to_numpy_ndarrays())
        # Assert: still one read per upload
        counts = [reads.get(_upload_key(r), 0) for r in replies]
        assert counts == [1, 1, 1]
    for a, b in zip(*results, strict=True):
        np.testing.assert_array_equal(a, b)


def test_server_adam_is_reddi_algorithm_2_without_bias_correction() -> None:
    # Prepare: a steady pseudo-gradient Delta = 1 for three rounds (eta 0.1, b1 0.9,
    # b2 0.99, tau 1e-3, the defaults); every user uploads global + 1
    strategy = _strategy("fedadam")
    eta, b1, b2, tau = 0.1, 0.9, 0.99, 1e-3
    x = 0.0
    steps = []
    # Execute
    for rnd in (1, 2, 3):
        sent = _send(strategy, _upload(x), rnd)
        new, _ = strategy.aggregate_train(rnd, [_reply(m, _upload(x + 1.0)) for m in sent])
        got = float(new.to_numpy_ndarrays()[0][0, 0])
        steps.append(got - x)
        x = got
    # Assert: Algorithm 2's step eta m_t / (sqrt(v_t) + tau) with m, v from 0, not
    # Flower 1.42's step, whose eta is scaled by sqrt(1 - b2^(t+1)) / (1 - b1^(t+1))
    t = np.arange(1, 4)
    m, v = 1 - b1**t, 1 - b2**t
    paper = eta * m / (np.sqrt(v) + tau)
    flower = eta * np.sqrt(1 - b2 ** (t + 1)) / (1 - b1 ** (t + 1)) * m / (np.sqrt(v) + tau)
    np.testing.assert_allclose(steps, paper, rtol=1e-5)
    assert not np.allclose(steps, flower, rtol=1e-2)
