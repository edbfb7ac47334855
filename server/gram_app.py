"""The server of one-shot federated EASE (:mod:`fedrec.federated.gram`): one round.

Design rule: this module only wires. Every eligible user (all users with train items,
``q = 1``) is asked once for its dense packed Gram contribution; replies are added into
one float64 sum as they arrive and dropped (a bounded window of messages is in flight,
through ``Grid.push_messages`` / ``pull_messages``; a grid without them, such as the
in-process one, gets windows of ``send_and_receive``), so the server never holds all
uploads (ml-100k: 943 x 5.7 MB). Each reply names its user's items (its diagonal is
``x`` or ``x / |x|^2``): the server sees every user's item set in the clear, which is
why central mode must trust it (docs/PRIVACY.md). The sum is released (central: one Gaussian
mechanism, history ``[[z, 1.0, 1]]``) and EASE is solved once. Federated EASE exists
only in simulation, so it is measured by the harness (``evaluator``,
:func:`simulations.evaluation.gram_evaluator`): each test user's ranking ``x_u B``
scored outside the federated messages; no evaluate message is sent and no list leaves
a device. A device would receive ``B`` rather than the released Gram matrix because
the solve is ``O(I^3)``: once on the server instead of once per device.

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
import numpy.typing as npt
from flwr.app import ConfigRecord, Context, Message, MessageType, RecordDict
from flwr.serverapp import Grid, ServerApp

from fedrec.baselines import reference_metrics
from fedrec.data.split import Split
from fedrec.errors import ConfigError
from fedrec.federated import gram
from fedrec.privacy.accounting import PrivacyAccount, default_delta
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import central_report, none_report, write_privacy_json
from server.checkpoint import (
    METRICS_JSON,
    Checkpoint,
    append_round,
    atomic_write_json,
    save_checkpoint,
)
from server.gram_settings import MODEL_KIND, GramSettings
from server.privacy_run import PRIVACY_JSON, eligible_users, resolve_settings
from server.sampling import discover_users
from server.settings import load_split
from server.strategies import ARRAYS_KEY, CONFIG_KEY

RoundCallback = Callable[[dict[str, Any]], None]
OnReply = Callable[[int, Message], None]
GramEvaluator = Callable[[Any], dict[str, Any] | None]
"""Simulation only: the harness's measurement of the EASE weights ``B`` (no message)."""
SERVER_SEES = (
    "the server itself: each device's upload names the user's exact item set and its "
    "size (diagonal x / |x|^2); central mode trusts the server with them"
)
WINDOW = 32
"""Messages in flight at once (bounds the server's memory to ~WINDOW uploads)."""
log = logging.getLogger("fedrec.server")


def resolve(settings: GramSettings, split: Split) -> GramSettings:
    """Check the catalog and mode; fill in delta, ``z`` and the accountant; idempotent.

    Central mode: one Gaussian release at ``q = 1``, so ``z`` is calibrated with the
    accountant that needs the least noise (or, with ``z`` given, the accountant that
    certifies the smaller epsilon is used): :func:`fedrec.federated.gram.gram_calibration`.
    The configured ``--accountant`` is replaced by that choice.
    """
    gram.check_privacy_mode(settings.base.privacy.mode)
    gram.check_catalog(split.n_items, settings.ease.max_items)
    n_clients = len(eligible_users(split))
    base = dataclasses.replace(settings.base, rounds=1, clients_per_round=max(n_clients, 1))
    privacy = base.privacy
    if privacy.mode == "central":
        delta = privacy.delta if privacy.delta is not None else default_delta(split.n_users)
        if privacy.noise_multiplier is None:
            calibration = gram.gram_calibration(delta, target_epsilon=privacy.target_epsilon)
        else:
            calibration = gram.gram_calibration(delta, noise_multiplier=privacy.noise_multiplier)
        target = privacy.target_epsilon
        if target is not None and calibration.epsilon > target * (1 + 1e-9):
            raise ConfigError(
                f"noise multiplier {privacy.noise_multiplier} spends epsilon "
                f"{calibration.epsilon:.4g} > the target epsilon {target}",
                where="--noise-multiplier",
                fix="drop --noise-multiplier to calibrate it, or raise it",
            )
        privacy = dataclasses.replace(
            privacy,
            delta=delta,
            noise_multiplier=calibration.noise_multiplier,
            accountant=calibration.accountant,
        )
    base = resolve_settings(dataclasses.replace(base, privacy=privacy), split)
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
        problem, upload = _reason(reply), None
        if not problem:
            problem, upload = _read_upload(reply.content, total.total.shape)
        if upload is None:
            failed[user] = problem
            return
        total.add(upload)
        added.append(user)

    messages = (Message(record, node, MessageType.TRAIN) for node in user_of)
    stream(grid, messages, on_reply, timeout=settings.base.round_timeout)
    failed.update({u: "no reply" for u in user_of.values() if u not in added and u not in failed})
    return total, sorted(added), dict(sorted(failed.items()))


def _read_upload(
    content: RecordDict, shape: tuple[int, ...]
) -> tuple[str, npt.NDArray[np.float32] | None]:
    """Why ``content`` is not a valid Gram upload ('' when it is), and the upload,
    deserialized here once (``None`` when refused)."""
    if set(content.array_records) != {ARRAYS_KEY} or content.config_records:
        return "reply must hold exactly one ArrayRecord 'arrays'", None
    if content.metric_records:
        return "reply carries metrics that are not allowed", None
    arrays = content.array_records[ARRAYS_KEY].to_numpy_ndarrays()
    if len(arrays) != 1 or arrays[0].shape != shape or arrays[0].dtype != np.float32:
        return f"upload must be one dense float32 array of shape {shape}", None
    return "", arrays[0]


def _evaluate(
    evaluator: GramEvaluator | None, split: Split, weights: Any
) -> tuple[dict[str, Any] | None, int]:
    """The harness's measurement of ``B`` and how many test users it left out."""
    if evaluator is None:
        log.warning("no evaluation: federated EASE is measured by the simulation's harness")
        return None, 0
    metrics = evaluator(weights)
    evaluated = 0 if metrics is None else int(metrics.get("users_evaluated", 0))
    return metrics, len(split.test_users()) - evaluated


def run_gram_server(
    grid: Grid,
    settings: GramSettings,
    on_round: RoundCallback | None = None,
    *,
    evaluator: GramEvaluator | None = None,
) -> dict[str, Any]:
    """Run the one round of federated EASE; write the run directory; return the metrics.

    ``evaluator`` is the simulation harness's measurement of ``B``
    (:func:`simulations.evaluation.gram_evaluator`); no evaluate message is sent.
    """
    run_dir = Path(settings.base.run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # user data
    split = load_split(settings.base)
    settings = resolve(settings, split)
    privacy = settings.base.privacy
    nodes = discover_users(grid, split.n_users, timeout=settings.base.round_timeout)
    t0 = time.perf_counter()
    distributed = None
    if privacy.mode == "distributed":  # SecAgg+: the server only ever sees the noisy sum
        from server.gram_secagg import collect_gram

        distributed = collect_gram(grid, settings, split, nodes, stream)
        packed, added, failed = distributed.packed, distributed.added, distributed.failed
    else:
        total, added, failed = _collect_sum(grid, settings, split, nodes)
        packed = total.total
        del total
    account = PrivacyAccount(accountant=privacy.accountant)
    z = privacy.noise_multiplier if privacy.mode == "central" else None
    if z is not None:
        packed = gram.release(
            packed, noise_multiplier=z, rng=secure_rng(privacy.insecure_noise_seed)
        )
        account.record_release(gram.gram_release(z))
    matrix = gram.unpack(packed, split.n_items)
    z_release = distributed.noise_std if distributed is not None else z
    weights, lam, rank = gram.solve_release(matrix, z_release, settings.ease)
    popularity = np.diag(matrix).astype(np.float32)  # released: a DP popularity signal
    del matrix, packed
    # the ledger before the release: privacy.json is durable before any file holds the
    # noisy model (checkpoint, model.safetensors) or the harness measures it
    if distributed is not None:
        from server.gram_secagg import distributed_report

        report = distributed_report(settings, distributed)
    else:
        report = _privacy_report(settings, account)
    write_privacy_json(run_dir / PRIVACY_JSON, report)
    t_eval = time.perf_counter()
    metrics, eval_failed = _evaluate(evaluator, split, weights)
    epsilon = account.epsilon(privacy.delta) if z is not None and privacy.delta else None
    if distributed is not None:
        epsilon = float(distributed.record["epsilon"])
    ids = split.data.user_ids.tolist()  # run files name users by their original ids
    who: dict[str, Any] = {"participants": [ids[int(u)] for u in added],
                           "failed": [ids[int(u)] for u in sorted(failed)],
                           "failures": {str(ids[int(u)]): why for u, why in failed.items()},
                           "budget_exhausted": [], "refused": {}}  # fmt: skip
    if privacy.mode != "none":  # private modes write counts only, as server.privacy_run
        who = {"participants": len(added), "failed": len(failed), "budget_exhausted": 0,
               "refused": 0}  # fmt: skip
    record = {"round": 1, "metrics": metrics, **who, "seconds": round(time.perf_counter() - t0, 4),
              "eval_seconds": round(time.perf_counter() - t_eval, 4), "epsilon": epsilon,
              "train_loss": None, "lambda": lam, "rank": rank,
              "eval_failed": eval_failed}  # fmt: skip
    append_round(run_dir, record)
    state = {"account": account.to_json(), "lambda": lam, "rank": rank, "noise_multiplier": z}
    save_checkpoint(run_dir, Checkpoint(1, [weights, popularity], {}, state))
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
    delta = privacy.delta
    assert delta is not None
    out = central_report(account, delta=delta)
    z, target = privacy.noise_multiplier, privacy.target_epsilon
    calibration = None if target is None else gram.gram_calibration(delta, target_epsilon=target)
    if calibration is None or calibration.noise_multiplier != z:  # z was given, not calibrated
        calibration = gram.gram_calibration(delta, noise_multiplier=z)
    out["calibration"] = calibration.record()
    out["not_protected"] = [*out["not_protected"], SERVER_SEES]
    out.update(noise_multiplier=privacy.noise_multiplier, clip_norm=1.0,
               target_epsilon=privacy.target_epsilon,
               insecure_noise_seed=privacy.insecure_noise_seed,
               mechanism="one Gaussian release of the sum of row-normalized Gram "
                         "contributions (Frobenius norm 1 each), every user included")  # fmt: skip
    return out


def make_gram_server_app(
    settings: GramSettings,
    on_round: RoundCallback | None = None,
    *,
    evaluator: GramEvaluator | None = None,
) -> ServerApp:
    """A ``ServerApp`` running federated EASE with ``settings`` (``evaluator``: the
    harness's measurement, run in the ServerApp's process)."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        run_gram_server(grid, settings, on_round, evaluator=evaluator)

    return server_app


def is_gram_run_config(run_config: dict[str, Any]) -> bool:
    """Whether a ``flwr run`` config (``[tool.flwr.app.config]``) is a federated-EASE run."""
    return run_config.get("model") == MODEL_KIND


def run_from_run_config(grid: Grid, run_config: dict[str, Any]) -> dict[str, Any]:
    """``flwr run`` (``fedrec deploy-local --model ease``): the run of ``run_config``.

    No evaluator: a deployment's server never scores users (``fedrec deploy-local``
    measures ``B`` afterwards, as the harness of a simulation does).
    """
    settings = GramSettings.from_flat(run_config)
    run_dir = str(Path(settings.base.run_dir).resolve())
    settings = dataclasses.replace(
        settings, base=dataclasses.replace(settings.base, run_dir=run_dir)
    )
    return run_gram_server(grid, settings)


__all__ = [
    "GramSettings",
    "is_gram_run_config",
    "make_gram_server_app",
    "resolve",
    "run_from_run_config",
    "run_gram_server",
    "stream",
]
