"""SecAgg+ on the device: the client side of :mod:`server.secagg` (Bell et al., CCS 2020).

Design rule: this module only wires :class:`fedrec.secagg.protocol.Participant` to
Flower messages. A message is a SecAgg message when its ``config`` record carries
``secagg.stage`` (:func:`handles`). The participant's secrets (two X25519 private keys,
the self-mask seed, the received ciphertexts) stay in the node's ``Context.state``
between stages and are deleted after unmasking; they are never uploaded. Shamir
shares are made with pycryptodome's ``Shamir`` (:func:`fedrec.secagg.shamir.split`).

What a device uploads, per stage: two public keys; one AES-GCM ciphertext per
neighbour; its input masked in ``Z_{2^bits}`` (``uint32`` for ``bits <= 32``); shares
of its neighbours' secrets. Never its input in the clear.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, RecordDict

from clients.client_config import fail_users
from fedrec.secagg import shamir
from fedrec.secagg.protocol import Participant, SecAggAbort, SecAggParams

U64 = npt.NDArray[np.uint64]
STAGE_KEY = "secagg.stage"
RECORD = "secagg"
STATE_KEY = "participant"
DROP_KEY = "secagg.drop-users"
MIN_KEY = "secagg.min-survivors-count"
"""Fewest survivors a device helps unmask (the DP noise was calibrated for them)."""
Encoder = Callable[[Message, Context, SecAggParams], U64]
"""Makes the device's input in ``Z_{2^bits}`` (called once, in the masked stage)."""


class InjectedDropout(RuntimeError):
    """TEST-ONLY: a device listed in ``secagg.drop-users`` goes offline after sharing keys."""


def handles(msg: Message) -> bool:
    """Whether ``msg`` is a SecAgg stage message."""
    config = msg.content.config_records.get("config")
    return config is not None and STAGE_KEY in config


def _load(context: Context) -> Participant:
    rec = context.state.config_records.get(RECORD)
    if rec is None or STATE_KEY not in rec:
        raise SecAggAbort("no SecAgg state on this device (stage out of order)", where="secagg")
    return Participant.from_json(str(rec[STATE_KEY]))


def _save(context: Context, participant: Participant) -> None:
    context.state[RECORD] = ConfigRecord({STATE_KEY: participant.to_json()})


def _int(rec: ConfigRecord, key: str) -> int:
    value = rec[key]
    if not isinstance(value, int):
        raise SecAggAbort(f"{key} must be an integer", where="secagg message")
    return value


def _list(rec: ConfigRecord, key: str, kind: type) -> list[Any]:
    value = rec[key]
    if not isinstance(value, list) or not all(isinstance(v, kind) for v in value):
        raise SecAggAbort(f"{key} must be a list of {kind.__name__}", where="secagg message")
    return list(value)


def _reply(msg: Message, record: dict[str, object]) -> Message:
    return Message(RecordDict({RECORD: ConfigRecord(record)}), reply_to=msg)  # type: ignore[arg-type]


def handle(msg: Message, context: Context, encode: Encoder) -> Message:
    """Answer one SecAgg stage; ``encode`` makes the input in the masked stage."""
    config = msg.content.config_records["config"]
    rec = msg.content.config_records[RECORD]
    stage = str(config[STAGE_KEY])
    if stage == "advertise":
        params = SecAggParams(
            bits=_int(rec, "params.bits"),
            length=_int(rec, "params.length"),
            threshold=_int(rec, "params.threshold"),
            round_id=str(rec["params.round_id"]),
        )
        participant = Participant(_int(rec, "id"), params)
        enc, mask = participant.advertise()
        _save(context, participant)
        return _reply(msg, {"enc-pk": enc, "mask-pk": mask})
    participant = _load(context)
    if _int(rec, "id") != participant.node:
        raise SecAggAbort("message addressed to another SecAgg id", where="secagg")
    if stage == "share":
        ids = _list(rec, "ids", int)
        pks = zip(_list(rec, "enc-pks", bytes), _list(rec, "mask-pks", bytes), strict=True)
        keys = dict(zip(ids, pks, strict=True))
        cts = participant.share_keys(keys, shamir.split)
        _save(context, participant)
        order = sorted(cts)
        return _reply(msg, {"ids": order, "ciphertexts": [cts[v] for v in order]})
    if stage == "masked":
        user = int(context.node_config["partition-id"])
        if user in fail_users(config, DROP_KEY):
            context.state.config_records.pop(RECORD, None)
            raise InjectedDropout(f"test-only dropout of user {user} after sharing keys")
        ids = _list(rec, "ids", int)
        inbox = dict(zip(ids, _list(rec, "ciphertexts", bytes), strict=True))
        value = encode(msg, context, participant.params)
        masked = participant.masked_input(value, inbox)
        del value
        _save(context, participant)
        return Message(RecordDict({"arrays": ArrayRecord([masked])}), reply_to=msg)
    if stage == "unmask":
        survivors = _list(rec, "survivors", int)
        need = config.get(MIN_KEY, 0)
        if isinstance(need, int) and len(survivors) < need:
            context.state.config_records.pop(RECORD, None)
            raise SecAggAbort(
                f"{len(survivors)} survivors, fewer than the {need} the noise was calibrated "
                "for: this device does not help unmask",
                where="secagg unmask",
            )
        shares = participant.unmask(survivors)
        context.state.config_records.pop(RECORD, None)  # secrets are no longer needed
        order = sorted(shares)
        return _reply(
            msg,
            {
                "ids": order,
                "kinds": [shares[v][0] for v in order],
                "shares": [shares[v][1] for v in order],
            },
        )
    raise SecAggAbort(f"unknown SecAgg stage {stage!r}", where="secagg")


__all__ = ["DROP_KEY", "STAGE_KEY", "Encoder", "InjectedDropout", "handle", "handles"]
