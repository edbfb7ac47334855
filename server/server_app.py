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
In simulation the server also loads the split: to know which users exist, which have
test items, and the item popularity that novelty needs. A deployment would replace
that with registration data; the metrics themselves are computed on the devices.
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
from server.privacy_run import RunPrivacy, eligible_users, resolve_settings
from server.sampling import discover_users, eval_sample
from server.settings import RunSettings, load_split
from server.strategies import EVAL_ALL_KEY, RoundPlan, build_strategy

RoundCallback = Callable[[dict[str, Any]], None]
log = logging.getLogger("fedrec.server")


def run_server(
    grid: Grid, settings: RunSettings, on_round: RoundCallback | None = None
) -> dict[str, Any]:
    """Run (or resume) the rounds of ``settings`` and return the final metrics."""
    run_dir = Path(settings.run_dir)
    run_dir.mkdir(parents=True, exist_ok=True)
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
    )
    privacy = RunPrivacy(
        settings,
        split,
        build_strategy(settings.server, plan, optimizer, proximal_mu=settings.train.proximal_mu),
    )
    privacy.restore(None if ckpt is None else ckpt.privacy_state, start)
    privacy.write(run_dir)
    strategy = privacy.strategy
    final: dict[str, Any] | None = None
    evaluated_last = False
    for rnd in range(start + 1, settings.rounds + 1):
        stop = privacy.stop_reason(rnd)
        if stop is not None:
            log.warning(stop)
            append_round(run_dir, _stop_record(rnd, stop, privacy.epsilon()))
            break
        t0 = time.perf_counter()
        config = _client_config(settings)
        config.update(privacy.client_extras())
        replies = grid.send_and_receive(
            strategy.configure_train(rnd, ArrayRecord(items), config, grid),
            timeout=settings.round_timeout,
        )
        new_items, train_metrics = strategy.aggregate_train(rnd, replies)
        items = new_items.to_numpy_ndarrays() if new_items is not None else items
        metrics, t_eval = None, time.perf_counter()
        last = rnd == settings.rounds
        if last or (settings.eval_every and rnd % settings.eval_every == 0):
            metrics = _evaluate(
                grid, strategy, settings, items, rnd, every_user=last and settings.final_eval_all
            )
        record = {
            "round": rnd,
            "metrics": metrics,
            "participants": strategy.last_train.participants,
            "failed": sorted(strategy.last_train.failed),
            "failures": {str(u): why for u, why in strategy.last_train.failed.items()},
            "budget_exhausted": strategy.last_train.exhausted,
            "refused": {str(u): why for u, why in strategy.last_train.refused.items()},
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
    if not evaluated_last:  # resumed after the last checkpoint, or stopped: evaluate now
        final = _evaluate(
            grid, strategy, settings, items, settings.rounds, every_user=settings.final_eval_all
        )
    sample = None  # the final evaluation's users, when it was a sample (scale runs)
    if not settings.final_eval_all:
        sample = eval_sample(
            split.test_users(), settings.eval_clients, settings.rounds, settings.seed
        )
    return _write_metrics(run_dir, split, final, sample)


def _stop_record(rnd: int, why: str, epsilon: Any) -> dict[str, Any]:
    """The ``rounds.jsonl`` line of a round the privacy budget did not allow."""
    return {"round": rnd, "stopped": why, "metrics": None, "participants": [], "failed": [],
            "failures": {}, "budget_exhausted": [], "seconds": 0.0, "eval_seconds": None,
            "epsilon": epsilon}  # fmt: skip


def _client_config(settings: RunSettings) -> ConfigRecord:
    return ConfigRecord(dict(settings.client_config()))


def _evaluate(
    grid: Grid, strategy: Any, settings: RunSettings, items: Arrays, rnd: int, *, every_user: bool
) -> dict[str, Any] | None:
    config = _client_config(settings)
    config[EVAL_ALL_KEY] = every_user
    arrays = ArrayRecord(items)
    replies = grid.send_and_receive(
        strategy.configure_evaluate(rnd, arrays, config, grid), timeout=settings.round_timeout
    )
    summary = strategy.aggregate_evaluate(rnd, replies)
    if strategy.last_eval.failed:
        log.warning(
            "evaluation round %d: %d users failed (%s)",
            rnd,
            len(strategy.last_eval.failed),
            next(iter(strategy.last_eval.failed.values())),
        )
    return None if summary is None else dict(summary)


def _write_metrics(
    run_dir: Path, split: Split, final: dict[str, Any] | None, users: Any = None
) -> dict[str, Any]:
    metrics: dict[str, Any] = dict(final or {})
    metrics["reference"] = reference_metrics(split, users=users)
    atomic_write_json(run_dir / METRICS_JSON, metrics)
    return metrics


def make_server_app(settings: RunSettings, on_round: RoundCallback | None = None) -> ServerApp:
    """A ``ServerApp`` running ``settings`` (``fedrec simulate``), ignoring run_config."""
    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        run_server(grid, settings, on_round)

    return server_app


app = ServerApp()


@app.main()
def main(grid: Grid, context: Context) -> None:
    """``flwr run .``: settings from ``[tool.flwr.app.config]`` (kebab-case keys)."""
    settings = RunSettings.from_run_config(dict(context.run_config))
    run_dir = str(Path(settings.run_dir).resolve())  # clients get the store path from it
    run_server(grid, dataclasses.replace(settings, run_dir=run_dir))


def _train_loss(metrics: MetricRecord | None) -> float | None:
    """Mean client training loss of the round (sent only by non-private clients)."""
    if metrics is None or "train-loss" not in metrics:
        return None
    return float(metrics["train-loss"])  # type: ignore[arg-type]
