"""SecAgg+ on Flower's Message API: the server side of :mod:`fedrec.secagg.protocol`.

Design rule: this module only wires. :func:`secure_sum` runs the four stages of
Bell et al. (CCS 2020) over a ``Grid`` as ``train`` messages whose ``config`` record
carries ``secagg.stage`` (``advertise``, ``share``, ``masked``, ``unmask``) and whose
``secagg`` record carries the stage's payload; the device side is
:mod:`clients.secagg_client`. It can carry any vector sum: the caller says what the
devices encode (the ``config`` it passes, e.g. a distributed-DP plan) and gets back
the sum in ``Z_{2^bits}``. Shamir secret sharing is pycryptodome's
(:mod:`fedrec.secagg.shamir`; the primitive Flower's own wrapper uses).

Nodes are numbered ``1..n`` for the protocol (Flower node ids may not fit a signed
64-bit record value). Masked inputs are added into one running sum as they arrive
and dropped; the server never holds an unmasked individual vector.
"""

from __future__ import annotations

import dataclasses
import secrets
import time
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.secagg import shamir
from fedrec.secagg.config import SecAggConfig
from fedrec.secagg.graph import harary_graph
from fedrec.secagg.protocol import Aggregator, SecAggAbort, SecAggParams

U64 = npt.NDArray[np.unsignedinteger[Any]]
STAGE_KEY = "secagg.stage"
RECORD = "secagg"
CONFIG_KEY = "config"
ARRAYS_KEY = "arrays"
STAGES = ("advertise", "share", "masked", "unmask")
Stream = Callable[..., None]


@dataclasses.dataclass
class SecureSum:
    """Outcome of one secure sum."""

    total: U64
    params: SecAggParams
    degree: int
    survivors: list[int]
    """Users whose input is in the sum (``U3``)."""
    failed: dict[int, str]
    """User -> stage and reason, for everyone asked whose input is not in the sum."""
    upload_bytes: dict[str, float]
    """Mean payload bytes one device uploaded, per stage."""
    seconds: dict[str, float]


def _reason(reply: Message) -> str:
    text = (reply.error.reason or "error") if reply.has_error() else ""
    return text.rsplit("Message: ", 1)[-1].strip().splitlines()[0][:200] if text else ""


def _list(rec: ConfigRecord, key: str, kind: type) -> list[Any]:
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise ValueError(f"{key} must be a list of {kind.__name__}")
    return list(value)


def _record(reply: Message) -> ConfigRecord:
    rec = reply.content.config_records.get(RECORD)
    if rec is None:
        raise ValueError("reply has no 'secagg' record")
    return rec


def secure_sum(
    grid: Grid,
    users: Mapping[int, int],
    config: Mapping[str, Any],
    secagg: SecAggConfig,
    *,
    length: int,
    stream: Stream,
    timeout: float,
    check_survivors: Callable[[int], None] | None = None,
) -> SecureSum:
    """Run SecAgg+ with the nodes ``users`` (node id -> user); return the masked sum.

    ``config`` goes to every device in every stage (the device's encoder reads it;
    ``secagg.min-survivors-count`` in it makes devices refuse to unmask with fewer
    survivors). ``check_survivors(n3)`` runs before any unmasking and may raise.
    Raises :class:`SecAggAbort` (nothing released) if too few devices survive.
    """
    nodes = sorted(users, key=lambda node: users[node])
    n = len(nodes)
    if n < 3:
        raise SecAggAbort(f"{n} devices: secure aggregation needs at least 3", where="secagg")
    index = {node: i + 1 for i, node in enumerate(nodes)}
    node_of = {i: node for node, i in index.items()}
    degree = secagg.degree(n)
    params = SecAggParams(
        bits=secagg.bits,
        length=length,
        threshold=secagg.shamir_threshold(n),
        round_id=secrets.token_hex(16),
    )
    graph = harary_graph(sorted(node_of), degree, np.random.default_rng(secrets.randbits(128)))
    agg = Aggregator(params, graph)
    failed: dict[int, str] = {}
    sizes = {stage: 0 for stage in STAGES}
    seconds: dict[str, float] = {}

    def message(i: int, stage: str, payload: dict[str, Any]) -> Message:
        cfg = ConfigRecord({**config, STAGE_KEY: stage})
        rec = ConfigRecord({"id": i, **payload})
        return Message(RecordDict({CONFIG_KEY: cfg, RECORD: rec}), node_of[i], MessageType.TRAIN)

    def run_stage(
        stage: str,
        ids: list[int],
        payload: Callable[[int], dict[str, Any]],
        accept: Callable[[int, Message], int],
    ) -> set[int]:
        t0 = time.perf_counter()
        done: set[int] = set()
        by_node = {node_of[i]: i for i in ids}

        def on_reply(node: int, reply: Message) -> None:
            i = by_node.get(node)
            if i is None:
                return
            problem = _reason(reply)
            if not problem:
                try:
                    sizes[stage] += accept(i, reply)
                    done.add(i)
                    return
                except (ValueError, KeyError, TypeError) as exc:
                    problem = f"bad reply: {exc}"[:200]
            failed.setdefault(users[node], f"{stage}: {problem}")

        stream(grid, (message(i, stage, payload(i)) for i in ids), on_reply, timeout=timeout)
        for i in ids:
            if i not in done:
                failed.setdefault(users[node_of[i]], f"{stage}: no reply")
        seconds[stage] = round(time.perf_counter() - t0, 3)
        return done

    # 1. advertise keys
    def accept_keys(i: int, reply: Message) -> int:
        rec = _record(reply)
        enc, mask = bytes(rec["enc-pk"]), bytes(rec["mask-pk"])  # type: ignore[arg-type]
        agg.add_keys(i, enc, mask)
        return len(enc) + len(mask)

    params_json = params.to_json()
    u1 = run_stage(
        "advertise",
        sorted(node_of),
        lambda i: {f"params.{k}": v for k, v in params_json.items()},
        accept_keys,
    )

    # 2. share keys
    def share_payload(i: int) -> dict[str, Any]:
        keys = agg.neighbour_keys(i)
        ids = sorted(keys)
        return {
            "ids": ids,
            "enc-pks": [keys[v][0] for v in ids],
            "mask-pks": [keys[v][1] for v in ids],
        }

    def accept_shares(i: int, reply: Message) -> int:
        rec = _record(reply)
        ids = _list(rec, "ids", int)
        cts = _list(rec, "ciphertexts", bytes)
        agg.add_ciphertexts(i, dict(zip(ids, cts, strict=True)))
        return sum(len(c) for c in cts) + 8 * len(ids)

    u2 = run_stage("share", sorted(u1), share_payload, accept_shares)

    # 3. masked input
    def masked_payload(i: int) -> dict[str, Any]:
        inbox = agg.inbox(i)
        ids = sorted(inbox)
        return {"ids": ids, "ciphertexts": [inbox[v] for v in ids]}

    def accept_masked(i: int, reply: Message) -> int:
        if set(reply.content.array_records) != {ARRAYS_KEY} or reply.content.metric_records:
            raise ValueError("masked reply must hold exactly one ArrayRecord 'arrays'")
        (masked,) = reply.content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
        if masked.dtype not in (np.uint32, np.uint64):
            raise ValueError(f"masked input must be unsigned integers, got {masked.dtype}")
        agg.add_masked(i, masked)
        return int(masked.nbytes)

    u3 = run_stage("masked", sorted(u2), masked_payload, accept_masked)
    survivors = agg.survivors()  # raises below the threshold: nothing released
    if check_survivors is not None:  # e.g. too little noise: refuse before unmasking
        check_survivors(len(survivors))

    # 4. unmasking
    def accept_unmask(i: int, reply: Message) -> int:
        rec = _record(reply)
        ids = _list(rec, "ids", int)
        kinds = _list(rec, "kinds", str)
        shares = _list(rec, "shares", bytes)
        agg.add_shares(i, {v: (k, s) for v, k, s in zip(ids, kinds, shares, strict=True)})
        return sum(len(s) for s in shares) + 8 * len(ids)

    run_stage("unmask", survivors, lambda i: {"survivors": survivors}, accept_unmask)
    t0 = time.perf_counter()
    total = agg.unmasked_sum(shamir.combine)
    seconds["unmask-server"] = round(time.perf_counter() - t0, 3)
    for i in u3:
        failed.pop(users[node_of[i]], None)  # a survivor that missed unmasking still counts
    upload = {s: sizes[s] / max(len(u), 1) for s, u in zip(STAGES, (u1, u2, u3, u3), strict=True)}
    return SecureSum(
        total=total,
        params=params,
        degree=degree,
        survivors=sorted(users[node_of[i]] for i in u3),
        failed=dict(sorted(failed.items())),
        upload_bytes=upload,
        seconds=seconds,
    )


__all__ = ["RECORD", "STAGES", "STAGE_KEY", "SecureSum", "secure_sum"]
