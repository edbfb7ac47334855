"""Run the fedrec Flower apps in Flower's simulation engine (one virtual node per user).

Design rule: this module only prepares the process (quiet logs, one torch thread per
client actor, absolute paths) and calls :func:`flwr.simulation.run_simulation` with
the same ``ServerApp`` logic and ``ClientApp`` that ``flwr run .`` uses. The settings
reach the ``ServerApp`` directly (:func:`server.server_app.make_server_app`) and the
clients through each message's config, because ``run_simulation`` has no run-config
argument.

Security: Ray's GCS, raylet and workers listen on every network interface, so every
Ray cluster started here uses Ray's token authentication with a token made for the run
(:mod:`fedrec.ray_auth`); the in-process engine (:mod:`simulations.inprocess`, the
default of ``fedrec simulate``) opens no sockets at all.

Several machines: ``ray_address`` joins a Ray cluster started with ``ray start`` (head
and worker nodes, token authentication on every node; docs/SCALE.md). The client
actors then run on every node and open the device stores under the run directory, so
the run directory and the data must be at the same absolute path on every node.

Resources: the Ray backend runs ``os.cpu_count() / cpus_per_client`` client actors;
on 2 cores one CPU per client (2 actors) was as fast as 0.5 (4 actors) and faster
than 2 (1 actor) for 100-client rounds, so ``cpus_per_client=1`` is the default.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections.abc import Callable, Iterator
from dataclasses import replace
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import ArrayRecord, ConfigRecord, Context
from flwr.serverapp import Grid, ServerApp

from clients.client_app import app as client_app
from fedrec.models.registry import init_item_arrays
from server.sampling import discover_users, train_cohort
from server.server_app import make_server_app
from server.settings import RunSettings, load_split
from server.strategies import ARRAYS_KEY, CONFIG_KEY

RoundCallback = Callable[[dict[str, Any]], None]


@contextlib.contextmanager
def quiet_flower(verbose: bool) -> Iterator[None]:
    """Silence Flower's and Ray's logs (and telemetry) unless ``verbose``."""
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    os.environ.setdefault("RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO", "0")
    os.environ.setdefault("RAY_DEDUP_LOGS", "0")
    logger = logging.getLogger("flwr")
    level = logger.level
    if not verbose:
        logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        logger.setLevel(level)


def _backend_config(
    verbose: bool, cpus_per_client: float, ray_address: str | None = None
) -> dict[str, Any]:
    init_args: dict[str, Any] = {
        "logging_level": "INFO" if verbose else "ERROR",
        "log_to_driver": verbose,
    }
    if ray_address is not None:
        init_args["address"] = ray_address  # ray.init joins that cluster, starts none
    return {
        "client_resources": {"num_cpus": cpus_per_client, "num_gpus": 0.0},
        "init_args": init_args,
    }


def check_ray_address(address: str) -> str:
    """``address`` (``HOST:PORT`` of a running Ray cluster's GCS) once its token is set.

    Joining a cluster needs the cluster's own token (Ray's ``RAY_AUTH_MODE=token`` with
    ``RAY_AUTH_TOKEN_PATH`` or ``RAY_AUTH_TOKEN``, docs/SCALE.md): a token made for the
    run would not be the cluster's, and a cluster without token auth is refused here.
    """
    from fedrec.errors import ConfigError
    from fedrec.ray_auth import user_token_configured

    host, sep, port = address.rpartition(":")
    if not sep or not host or not port.isdigit() or not 0 < int(port) < 65536:
        raise ConfigError(
            f"expected HOST:PORT of the Ray head's GCS, got {address!r}",
            where="--ray-address",
            fix="give the address `ray start --head` printed, e.g. 10.0.0.1:6379",
        )
    if not user_token_configured():
        raise ConfigError(
            "joining a Ray cluster needs the cluster's token, and none is configured",
            where="--ray-address",
            fix="start every node with token authentication and export the same settings "
            "here: export RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH=FILE (docs/SCALE.md)",
        )
    return address


def absolute(settings: RunSettings) -> RunSettings:
    """``settings`` with the run dir and a data path made absolute (actors' cwd differs)."""
    data = Path(settings.data).expanduser()
    data_spec = str(data.resolve()) if data.exists() else settings.data
    return replace(settings, data=data_spec, run_dir=str(Path(settings.run_dir).resolve()))


def run_apps(
    server_app: ServerApp,
    n_nodes: int,
    *,
    verbose: bool = False,
    cpus_per_client: float = 1.0,
    ray_address: str | None = None,
) -> None:
    """Run ``server_app`` against ``n_nodes`` fedrec client nodes in the simulation engine.

    Ray runs with token authentication (:func:`fedrec.ray_auth.ray_token_auth`): its
    ports, open on every interface, refuse any client without this run's token. With
    ``ray_address`` the client actors run on that already started (multi-node) Ray
    cluster, joined with the cluster's own token (:func:`check_ray_address`); the
    ServerApp and the evaluator stay in this process.
    """
    from flwr.simulation import run_simulation

    from fedrec.ray_auth import ray_token_auth

    auth: contextlib.AbstractContextManager[object]
    if ray_address is not None:
        auth = contextlib.nullcontext(check_ray_address(ray_address))
    else:
        auth = ray_token_auth()
    with quiet_flower(verbose), auth:
        run_simulation(
            server_app=server_app,
            client_app=client_app,
            num_supernodes=n_nodes,
            backend_config=_backend_config(verbose, cpus_per_client, ray_address),
            verbose_logging=verbose,
        )


def simulate(
    settings: RunSettings,
    *,
    on_round: RoundCallback | None = None,
    verbose: bool = False,
    cpus_per_client: float = 1.0,
    ray_address: str | None = None,
) -> dict[str, Any]:
    """Run (or continue, from the run dir's checkpoint) the rounds of ``settings``.

    The run directory must already exist with its ``config.json``
    (:func:`simulations.run_dir.create_run_dir`). Returns the final metrics, also
    written to ``metrics.json``; renders ``report.md`` when :mod:`simulations.report`
    is available.
    """
    from simulations.evaluation import device_evaluator
    from simulations.inprocess import simulated_ledgers
    from simulations.run_dir import read_metrics

    settings = absolute(settings)
    n_users = load_split(settings).n_users
    run_apps(
        make_server_app(
            settings,
            on_round,
            device_ledgers=simulated_ledgers(settings),
            evaluator=device_evaluator(settings),  # runs in this (the driver) process
        ),
        n_users,
        verbose=verbose,
        cpus_per_client=cpus_per_client,
        ray_address=ray_address,
    )
    run_dir = Path(settings.run_dir)
    _write_report(run_dir)
    return read_metrics(run_dir)


def _write_report(run_dir: Path) -> None:
    """The end of a run: its self-contained model file, then ``report.md``."""
    from simulations.run_model import finish_run

    finish_run(run_dir)


def time_noop_vs_train(
    settings: RunSettings, *, repeats: int = 2, verbose: bool = False
) -> dict[str, float]:
    """Seconds of a Flower no-op round vs a training round, same cohort and payload.

    In one simulation (one process, warm actors): a warm-up training round (loads the
    data in each actor), then ``repeats`` times a no-op round (clients echo the global
    arrays: same messages, same payload shapes, no training) and a training round, all
    to round 1's cohort. The run dir of ``settings`` receives client stores only.
    Returns the median seconds of each, their ratio ``noop / train`` and the cohort
    size. Measured on ml-100k shapes (MF, d=32, synthetic 943 x 1,682), 2 cores, 2
    actors, 91 clients, load average 2-6 (docs/BENCHMARKS.md): noop 1.37-1.60 s, train
    1.80-2.39 s, ratio 0.59-0.80 (train / noop 1.26-1.70). Inside an actor a client
    round costs about 6 ms of CPU: 3 ms the MF update (:mod:`fedrec.training.mf_fast`),
    the rest opening, reading and writing the device's SQLite store.
    """
    settings = absolute(settings)
    split = load_split(settings)
    times: dict[str, list[float]] = {"noop": [], "train": []}
    cohort_size: list[int] = []

    server_app = ServerApp()

    @server_app.main()
    def _main(grid: Grid, context: Context) -> None:
        del context
        user_nodes = discover_users(grid, split.n_users, timeout=settings.round_timeout)
        eligible = np.flatnonzero(np.diff(split.train.indptr) > 0).astype(np.int64)
        cohort = train_cohort(eligible, settings.clients_per_round, 1, settings.seed)
        nodes = [user_nodes[int(u)] for u in cohort if int(u) in user_nodes]
        cohort_size.append(len(nodes))
        arrays = ArrayRecord(init_item_arrays(settings.model, split.n_items, seed=settings.seed))
        plan = ["train"] + ["noop", "train"] * repeats
        for i, kind in enumerate(plan):
            times_kind = _timed_round(grid, nodes, arrays, settings, noop=kind == "noop", rnd=i + 1)
            if i > 0:
                times[kind].append(times_kind)

    run_apps(server_app, split.n_users, verbose=verbose)
    noop, train = float(np.median(times["noop"])), float(np.median(times["train"]))
    return {
        "noop_seconds": noop,
        "train_seconds": train,
        "ratio": noop / train,
        "clients": float(cohort_size[0]) if cohort_size else 0.0,
    }


def _timed_round(
    grid: Grid,
    nodes: list[int],
    arrays: ArrayRecord,
    settings: RunSettings,
    *,
    noop: bool,
    rnd: int,
) -> float:
    from flwr.app import Message, MessageType, RecordDict

    config = ConfigRecord(dict(settings.client_config()))
    config["noop"], config["server-round"] = noop, rnd
    record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
    t0 = time.perf_counter()
    replies = list(grid.send_and_receive([Message(record, n, MessageType.TRAIN) for n in nodes]))
    elapsed = time.perf_counter() - t0
    failed = sum(1 for r in replies if r.has_error())
    if failed or len(replies) != len(nodes):
        raise RuntimeError(
            f"timing round {rnd}: {failed} errors, {len(replies)}/{len(nodes)} replies"
        )
    return elapsed
