"""The Flower ``ServerApp``: wiring only; every decision is a fedrec function.

Design rule: the round loop is our own (not ``Strategy.start``) because a fedrec run
must (a) start from a checkpoint at any round, (b) evaluate every ``eval-every``
rounds on a *sample* of users and at the end on *all* users, and (c) log who
participated and who failed in each round. The loop calls the strategy's four hooks
(:mod:`server.strategies`) with ``grid.send_and_receive``; everything durable goes
through :mod:`server.checkpoint`, in this order per round: the round's line in
``rounds.jsonl``, then the checkpoint (a resume drops log lines past the checkpoint).

Settings come from :class:`server.settings.RunSettings`: from ``[tool.flwr.app.config]``
under ``flwr run``, or given directly by ``fedrec simulate`` (:func:`make_server_app`).
The server also loads the split: to know which users exist and which have test items
(a deployment would replace that with registration data).

Evaluation is not part of the protocol. ``fedrec simulate`` passes an ``evaluator``
(:mod:`simulations.evaluation`): the harness scores the devices it owns, and no
evaluate message is sent. Without one (a deployment: ``flwr run``, ``deploy-local``)
the server may only ask the devices for an aggregate of their metrics, never a list:
in ``local``/``central`` mode a DP one (:mod:`fedrec.metrics.private`), and only when
``privacy.eval-epsilon`` is set; a central release is accounted (written ahead)
before its noisy result reaches a run file.
"""

from __future__ import annotations

import dataclasses
import logging
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from flwr.app import ArrayRecord, ConfigRecord, Context, MetricRecord
from flwr.serverapp import Grid, ServerApp

from fedrec.baselines import reference_metrics
from fedrec.data.split import Split
from fedrec.federated.aggregation import build_server_optimizer
from fedrec.metrics.private import evaluation_mechanism
from fedrec.models.base import Arrays
from fedrec.models.registry import init_item_arrays, item_array_shapes
from server.checkpoint import (
    METRICS_JSON,
    Checkpoint,
    append_round,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
    truncate_rounds,
)
from server.privacy_run import DeviceLedgers, RunPrivacy, eligible_users, resolve_settings
from server.sampling import discover_users, eval_sample
from server.settings import RunSettings, load_split
from server.shaped import apply_shaped_defaults
from server.strategies import EVAL_ALL_KEY, Outcome, RoundPlan, build_strategy

RoundCallback = Callable[[dict[str, Any]], None]
Evaluator = Callable[[Arrays, int, bool], dict[str, Any] | None]
"""Simulation only: the harness's measurement ``(global items, round, every_user) ->
metrics`` (``None``: nobody evaluated), taken outside the federated messages."""
log = logging.getLogger("fedrec.server")


def run_server(
    grid: Grid,
    settings: RunSettings,
    on_round: RoundCallback | None = None,
    *,
    device_ledgers: DeviceLedgers | None = None,
    evaluator: Evaluator | None = None,
) -> dict[str, Any]:
    """Run (or resume) the rounds of ``settings`` and return the final metrics.

    ``evaluator``: simulation only, the harness's measurement (no evaluate message is
    sent); without it the deployed, aggregate-only evaluation runs.

    ``device_ledgers``: simulation only, the harness's reader of the simulated devices'
    ledgers (local DP's ``privacy.json``; :mod:`server.privacy_run`).
    """
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(mode=0o700, parents=True, exist_ok=True)  # user data
    split = load_split(settings)
    settings = resolve_settings(settings, split)
    ckpt = load_checkpoint(run_dir)
    optimizer = build_server_optimizer(settings.server, settings.rounds)
    if ckpt is None:
        items = init_item_arrays(settings.model, split.n_items, seed=settings.seed)
        start = 0
    else:
        items, start = ckpt.item_arrays, ckpt.round
        optimizer.load_state_dict(ckpt.optimizer_state)
    truncate_rounds(run_dir, start)
    user_nodes = discover_users(grid, split.n_users, timeout=settings.round_timeout)
    plan = RoundPlan(
        eligible=eligible_users(split),
        test_users=split.test_users(),
        user_nodes=user_nodes,
        clients_per_round=settings.clients_per_round,
        eval_clients=settings.eval_clients,
        seed=settings.seed,
        item_shapes=item_array_shapes(settings.model, split.n_items),
        catalog=split,
        weighted=settings.server.weighted,
        privacy_mode=settings.privacy.mode,
        evaluation=None if evaluator is not None else evaluation_mechanism(settings.privacy),
        eval_noise_seed=_eval_noise_seed(settings),
        upload=settings.train.upload_codec(),
    )
    privacy = RunPrivacy(
        settings,
        split,
        build_strategy(settings.server, plan, optimizer, proximal_mu=settings.train.proximal_mu),
        device_ledgers=device_ledgers,
    )
    privacy.restore(None if ckpt is None else ckpt.privacy_state, start, run_dir)
    privacy.write(run_dir)
    strategy = privacy.strategy
    final: dict[str, Any] | None = None
    evaluated_last = False
    for rnd in range(start + 1, settings.rounds + 1):
        stop = privacy.stop_reason(rnd)
        if stop is not None:
            log.warning(stop)
            append_round(run_dir, _stop_record(rnd, stop, privacy))
            break
        t0 = time.perf_counter()
        config = _client_config(settings)
        replies = grid.send_and_receive(
            strategy.configure_train(rnd, ArrayRecord(items), config, grid),
            timeout=settings.round_timeout,
        )
        new_items, train_metrics = strategy.aggregate_train(rnd, replies)
        privacy.after_train(run_dir, rnd, strategy.last_train)  # write ahead: before any send
        items = new_items.to_numpy_ndarrays() if new_items is not None else items
        metrics, t_eval = None, time.perf_counter()
        last = rnd == settings.rounds
        if last or (settings.eval_every and rnd % settings.eval_every == 0):
            every = last and settings.final_eval_all
            metrics = _evaluate(grid, privacy, settings, items, rnd, every, evaluator)
        record = {
            "round": rnd,
            "metrics": metrics,
            **privacy.participation(strategy.last_train),  # central: counts only
            "seconds": round(time.perf_counter() - t0, 4),
            "eval_seconds": round(time.perf_counter() - t_eval, 4) if metrics else None,
            "epsilon": privacy.epsilon(),
            "train_loss": _train_loss(train_metrics),
        }
        append_round(run_dir, record)
        save_checkpoint(run_dir, Checkpoint(rnd, items, optimizer.state_dict(), privacy.state()))
        privacy.write(run_dir)
        if on_round is not None:
            on_round(record)
        final, evaluated_last = metrics, last
    privacy.finish()  # local simulation: every device's ledger, once more
    privacy.write(run_dir)
    if not evaluated_last:  # resumed after the last checkpoint, or stopped: evaluate now
        every = settings.final_eval_all
        final = _evaluate(grid, privacy, settings, items, settings.rounds, every, evaluator)
    sample = None  # the final evaluation's users, when it was a sample (scale runs)
    if not settings.final_eval_all:
        sample = eval_sample(
            split.test_users(), settings.eval_clients, settings.rounds, settings.seed
        )
    return _write_metrics(run_dir, split, final, sample)


def _stop_record(rnd: int, why: str, privacy: RunPrivacy) -> dict[str, Any]:
    """The ``rounds.jsonl`` line of a round the privacy budget did not allow."""
    return {"round": rnd, "stopped": why, "metrics": None,
            **privacy.participation(Outcome()), "seconds": 0.0, "eval_seconds": None,
            "epsilon": privacy.epsilon()}  # fmt: skip


def _client_config(settings: RunSettings) -> ConfigRecord:
    return ConfigRecord(dict(settings.client_config()))


def _evaluate(
    grid: Grid,
    privacy: RunPrivacy,
    settings: RunSettings,
    items: Arrays,
    rnd: int,
    every_user: bool,
    evaluator: Evaluator | None,
) -> dict[str, Any] | None:
    """The round's evaluation: the harness's (simulation) or the deployed aggregate."""
    if evaluator is not None:  # simulation: measured outside the federated messages
        return evaluator(items, rnd, every_user)
    strategy = privacy.strategy
    if settings.privacy.enabled and privacy.inner.plan.evaluation is None:
        log.warning(
            "evaluation round %d skipped: a %s-DP deployment evaluates only with "
            "privacy.eval-epsilon set (a DP aggregate; docs/PRIVACY.md)",
            rnd,
            settings.privacy.mode,
        )
        return None
    config = _client_config(settings)
    config[EVAL_ALL_KEY] = every_user
    arrays = ArrayRecord(items)
    replies = grid.send_and_receive(
        strategy.configure_evaluate(rnd, arrays, config, grid), timeout=settings.round_timeout
    )
    summary = strategy.aggregate_evaluate(rnd, replies)
    release = privacy.inner.eval_release
    if release is not None:  # central: accounted before the noisy mean is written anywhere
        privacy.record_evaluation(Path(settings.run_dir), rnd, release)
    if strategy.last_eval.failed:  # a failure's text may name its user: private modes count
        why = (
            ""
            if settings.privacy.enabled
            else f" ({next(iter(strategy.last_eval.failed.values()))})"
        )
        log.warning(
            "evaluation round %d: %d users failed%s", rnd, len(strategy.last_eval.failed), why
        )
    return None if summary is None else dict(summary)


def _write_metrics(
    run_dir: Path, split: Split, final: dict[str, Any] | None, users: Any = None
) -> dict[str, Any]:
    metrics: dict[str, Any] = dict(final or {})
    metrics["reference"] = reference_metrics(split, users=users)
    atomic_write_json(run_dir / METRICS_JSON, metrics)
    return metrics


def make_server_app(
    settings: RunSettings,
    on_round: RoundCallback | None = None,
    *,
    device_ledgers: DeviceLedgers | None = None,
    evaluator: Evaluator | None = None,
) -> ServerApp:
    """A ``ServerApp`` running ``settings`` (``fedrec simulate``), ignoring run_config.

    ``evaluator`` (the harness's measurement) runs in the process of the ServerApp:
    the driver, under Ray too.
    """
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        run_server(grid, settings, on_round, device_ledgers=device_ledgers, evaluator=evaluator)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: settings from ``[tool.flwr.app.config]`` (kebab-case keys)."""
    from server import gram_app  # --model ease: the one-round Gram server

    if gram_app.is_gram_run_config(dict(context.run_config)):
        gram_app.run_from_run_config(grid, dict(context.run_config))
        return
    config = dict(context.run_config)
    settings = RunSettings.from_run_config(config)
    # issue 17 item 4: what the run config leaves unset comes from the data's shape
    settings, reasons = apply_shaped_defaults(settings, load_split(settings), set(config))
    for reason in reasons:
        log.info("default from the data's shape: %s", reason)
    run_dir = str(Path(settings.run_dir).resolve())  # clients get the store path from it
    run_server(grid, dataclasses.replace(settings, run_dir=run_dir))


def _eval_noise_seed(settings: RunSettings) -> int | None:
    """TESTS ONLY: the central evaluation noise's seed, apart from the training noise's."""
    seed = settings.privacy.insecure_noise_seed
    return None if seed is None else seed + 2_000_029


def _train_loss(metrics: MetricRecord | None) -> float | None:
    """Mean client training loss of the round (sent only by non-private clients)."""
    if metrics is None or "train-loss" not in metrics:
        return None
    return float(metrics["train-loss"])  # type: ignore[arg-type]
