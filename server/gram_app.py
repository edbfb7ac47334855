"""The server of one-shot federated EASE (:mod:`fedrec.federated.gram`): one round.

Design rule: this module only wires. Every eligible user (all users with train items,
``q = 1``) is asked once for its dense packed Gram contribution; replies are added into
one float64 sum as they arrive and dropped (a bounded window of messages is in flight,
through ``Grid.push_messages`` / ``pull_messages``; a grid without them, such as the
in-process one, gets windows of ``send_and_receive``), so the server never holds all
uploads (ml-100k: 943 x 5.7 MB). The sum is released (central: one Gaussian
mechanism, history ``[[z, 1.0, 1]]``), EASE is solved once, and ``B`` goes to every
test user, who ranks on the device and replies with its metrics; the server averages
uniformly. ``B`` rather than the released Gram matrix is sent because the solve is
``O(I^3)``: once on the server instead of once per device, for twice the download.

The run directory is the one of every run (:mod:`server.checkpoint`): ``rounds.jsonl``
with its one round, ``checkpoint.npz`` holding ``B`` and the released diagonal of ``G``
(a DP popularity signal for cold-start fallbacks), ``metrics.json`` with the
popularity / EASE references, ``privacy.json`` (:mod:`fedrec.privacy.report`).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import time
from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedrec.baselines import reference_metrics
from fedrec.data.split import Split
from fedrec.errors import ConfigError
from fedrec.federated import gram
from fedrec.metrics import aggregate
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import central_report, none_report, write_privacy_json
from server.checkpoint import (
    METRICS_JSON,
    Checkpoint,
    append_round,
    atomic_write_json,
    save_checkpoint,
)
from server.gram_settings import GramSettings
from server.privacy_run import PRIVACY_JSON, eligible_users, resolve_settings
from server.sampling import discover_users
from server.settings import load_split
from server.strategies import ARRAYS_KEY, CONFIG_KEY, METRICS_KEY, TOP_KEY

RoundCallback = Callable[[dict[str, Any]], None]
OnReply = Callable[[int, Message], None]
WINDOW = 32
"""Messages in flight at once (bounds the server's memory to ~WINDOW uploads)."""
log = logging.getLogger("fedrec.server")


def resolve(settings: GramSettings, split: Split) -> GramSettings:
    """Check the catalog and mode; fill in delta and ``z`` (one release at ``q = 1``)."""
    gram.check_privacy_mode(settings.base.privacy.mode)
    gram.check_catalog(split.n_items, settings.ease.max_items)
    n_clients = len(eligible_users(split))
    base = dataclasses.replace(settings.base, rounds=1, clients_per_round=max(n_clients, 1))
    base = resolve_settings(base, split)
    privacy = base.privacy
    if privacy.enabled and privacy.target_epsilon is not None:
        assert privacy.noise_multiplier is not None and privacy.delta is not None
        account = PrivacyAccount(accountant=privacy.accountant)
        account.record_release(gram.gram_release(privacy.noise_multiplier))
        if account.epsilon(privacy.delta) > privacy.target_epsilon * (1 + 1e-9):
            raise ConfigError(
                f"noise multiplier {privacy.noise_multiplier} spends more than the target "
                f"epsilon {privacy.target_epsilon}",
                where="--noise-multiplier",
                fix="drop --noise-multiplier to calibrate it, or raise it",
            )
    return dataclasses.replace(settings, base=base)


def stream(grid: Grid, messages: Iterable[Message], on_reply: OnReply, *, timeout: float) -> None:
    """Send ``messages`` with at most :data:`WINDOW` in flight; hand each reply over.

    ``on_reply(dst_node, reply)`` gets every reply as it arrives (the caller adds it
    to a sum and drops it). Nodes that never answer within ``timeout`` get no call.
    """
    pending = iter(messages)
    first = next(pending, None)
    if first is None:
        return
    try:
        ids = list(grid.push_messages([first]))
    except NotImplementedError:  # e.g. simulations.inprocess.InProcessGrid
        for window in _windows(itertools.chain([first], pending)):
            for reply in grid.send_and_receive(window, timeout=timeout):
                on_reply(reply.metadata.src_node_id, reply)
        return
    in_flight = {str(i): first.metadata.dst_node_id for i in ids}
    _pull_loop(grid, in_flight, pending, on_reply, timeout)


def _windows(messages: Iterator[Message]) -> Iterator[list[Message]]:
    while window := [m for _, m in zip(range(WINDOW), messages, strict=False)]:
        yield window


def _pull_loop(
    grid: Grid,
    in_flight: dict[str, int],
    pending: Iterator[Message],
    on_reply: OnReply,
    timeout: float,
) -> None:
    """Pull replies, refilling the window; the timeout counts from the last reply."""
    deadline = time.monotonic() + timeout
    while in_flight and time.monotonic() < deadline:
        while len(in_flight) < WINDOW and (msg := next(pending, None)) is not None:
            ids = list(grid.push_messages([msg]))
            in_flight.update({str(i): msg.metadata.dst_node_id for i in ids})
        replies = list(grid.pull_messages(list(in_flight)))
        for reply in replies:
            node = in_flight.pop(str(reply.metadata.reply_to_message_id), None)
            if node is not None:
                on_reply(node, reply)
        if replies:
            deadline = time.monotonic() + timeout
        else:
            time.sleep(0.01)


def _reason(reply: Message) -> str:
    text = (reply.error.reason or "error") if reply.has_error() else ""
    return text.rsplit("Message: ", 1)[-1].strip().splitlines()[0][:200] if text else ""


def _collect_sum(
    grid: Grid, settings: GramSettings, split: Split, nodes: dict[int, int]
) -> tuple[gram.GramSum, list[int], dict[int, str]]:
    """Ask every eligible user for its upload; return the sum, who added, who failed."""
    total = gram.GramSum(split.n_items, clip=settings.base.privacy.mode == "central")
    config = ConfigRecord(settings.client_config())
    config["server-round"] = 1
    record = RecordDict({CONFIG_KEY: config})
    users = [int(u) for u in eligible_users(split)]
    user_of = {nodes[u]: u for u in users if u in nodes}
    added: list[int] = []
    failed = {u: "no node" for u in users if u not in nodes}

    def on_reply(node: int, reply: Message) -> None:
        user = user_of[node]
        problem = _reason(reply) or _check_upload(reply.content, total.total.shape)
        if problem:
            failed[user] = problem
            return
        total.add(reply.content.array_records[ARRAYS_KEY].to_numpy_ndarrays()[0])
        added.append(user)

    messages = (Message(record, node, MessageType.TRAIN) for node in user_of)
    stream(grid, messages, on_reply, timeout=settings.base.round_timeout)
    failed.update({u: "no reply" for u in user_of.values() if u not in added and u not in failed})
    return total, sorted(added), dict(sorted(failed.items()))


def _check_upload(content: RecordDict, shape: tuple[int, ...]) -> str:
    if set(content.array_records) != {ARRAYS_KEY} or content.config_records:
        return "reply must hold exactly one ArrayRecord 'arrays'"
    if content.metric_records:
        return "reply carries metrics that are not allowed"
    arrays = content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
    if len(arrays) != 1 or arrays[0].shape != shape or arrays[0].dtype != np.float32:
        return f"upload must be one dense float32 array of shape {shape}"
    return ""


def _evaluate(
    grid: Grid, settings: GramSettings, split: Split, nodes: dict[int, int], weights: Any
) -> tuple[dict[str, Any] | None, dict[int, str]]:
    config = ConfigRecord(settings.client_config())
    config["server-round"] = 1
    record = RecordDict({ARRAYS_KEY: ArrayRecord([weights]), CONFIG_KEY: config})
    user_of = {nodes[int(u)]: int(u) for u in split.test_users() if int(u) in nodes}
    per_user: dict[int, tuple[dict[str, float], Any]] = {}
    failed: dict[int, str] = {}

    def on_reply(node: int, reply: Message) -> None:
        if reply.has_error():
            failed[user_of[node]] = _reason(reply)
            return
        m = reply.content.metric_records[METRICS_KEY]
        metrics = {k: float(v) for k, v in m.items() if k != TOP_KEY}  # type: ignore[arg-type]
        per_user[user_of[node]] = (metrics, np.asarray(m[TOP_KEY], dtype=np.int64))

    messages = (Message(record, node, MessageType.EVALUATE) for node in user_of)
    stream(grid, messages, on_reply, timeout=settings.base.round_timeout)
    if not per_user:
        return None, failed
    order = sorted(per_user)
    summary = aggregate([per_user[u][0] for u in order], [per_user[u][1] for u in order], split)
    return {k: v for k, v in summary.items() if v is not None}, failed


def run_gram_server(
    grid: Grid, settings: GramSettings, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Run the one round of federated EASE; write the run directory; return the metrics."""
    run_dir = Path(settings.base.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
    split = load_split(settings.base)
    settings = resolve(settings, split)
    privacy = settings.base.privacy
    nodes = discover_users(grid, split.n_users, timeout=settings.base.round_timeout)
    t0 = time.perf_counter()
    total, added, failed = _collect_sum(grid, settings, split, nodes)
    account = PrivacyAccount(accountant=privacy.accountant)
    z = privacy.noise_multiplier if privacy.mode == "central" else None
    packed = total.total
    if z is not None:
        packed = gram.release(
            packed, noise_multiplier=z, rng=secure_rng(privacy.insecure_noise_seed)
        )
        account.record_release(gram.gram_release(z))
    del total
    matrix = gram.unpack(packed, split.n_items)
    weights, lam, rank = gram.solve_release(matrix, z, settings.ease)
    popularity = np.diag(matrix).astype(np.float32)  # released: a DP popularity signal
    del matrix, packed
    t_eval = time.perf_counter()
    metrics, eval_failed = _evaluate(grid, settings, split, nodes, weights)
    epsilon = account.epsilon(privacy.delta) if z is not None and privacy.delta else None
    record = {"round": 1, "metrics": metrics, "participants": added, "failed": sorted(failed),
              "failures": {str(u): why for u, why in failed.items()}, "budget_exhausted": [],
              "refused": {}, "seconds": round(time.perf_counter() - t0, 4),
              "eval_seconds": round(time.perf_counter() - t_eval, 4), "epsilon": epsilon,
              "train_loss": None, "lambda": lam, "rank": rank,
              "eval_failed": len(eval_failed)}  # fmt: skip
    append_round(run_dir, record)
    state = {"account": account.to_json(), "lambda": lam, "rank": rank, "noise_multiplier": z}
    save_checkpoint(run_dir, Checkpoint(1, [weights, popularity], {}, state))
    write_privacy_json(run_dir / PRIVACY_JSON, _privacy_report(settings, account))
    if on_round is not None:
        on_round(record)
    out: dict[str, Any] = dict(metrics or {})
    out["reference"] = reference_metrics(split, ease_lambda=settings.ease.ease_lambda)
    atomic_write_json(run_dir / METRICS_JSON, out)
    return out


def _privacy_report(settings: GramSettings, account: PrivacyAccount) -> dict[str, Any]:
    privacy = settings.base.privacy
    if privacy.mode != "central":
        return none_report()
    assert privacy.delta is not None
    out = central_report(account, delta=privacy.delta)
    out.update(noise_multiplier=privacy.noise_multiplier, clip_norm=1.0,
               target_epsilon=privacy.target_epsilon,
               insecure_noise_seed=privacy.insecure_noise_seed,
               mechanism="one Gaussian release of the sum of row-normalized Gram "
                         "contributions (Frobenius norm 1 each), every user included")  # fmt: skip
    return out


def make_gram_server_app(
    settings: GramSettings, on_round: RoundCallback | None = None
) -> ServerApp:
    """A ``ServerApp`` running federated EASE with ``settings``."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        run_gram_server(grid, settings, on_round)

    return server_app


__all__ = ["GramSettings", "make_gram_server_app", "resolve", "run_gram_server", "stream"]
