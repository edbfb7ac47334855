"""``fedrec deploy-local``: a real Flower deployment (SuperLink + SuperNodes) on 127.0.0.1.

``fedrec deploy-local --data PATH --nodes N --rounds R --out RUN_DIR`` starts one
``flower-superlink``, ``N`` ``flower-supernode`` processes (node ``i`` is user ``i``,
with its own store under ``RUN_DIR/clients/node-<i>``) and ``flwr run``, waits for the
run, and stops every process it started (also on Ctrl-C, SIGTERM and SIGHUP; a
watchdog does it after SIGKILL). ``RUN_DIR`` gets the files of
``fedrec simulate`` plus ``logs/`` (docs/DEPLOYMENT.md). ``--resume RUN_DIR --nodes N``
continues a stopped run from its checkpoint, with the node stores it left.

Defaults are ``fedrec simulate``'s (the model it would choose, evaluation every 5
rounds, the data-shaped model settings) except two a live deployment sets itself: the
rounds (3: each round starts real processes) and the devices per round (every node).
"""

from __future__ import annotations

import argparse
import signal
import sys
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from types import FrameType
from typing import TYPE_CHECKING, Any

from fedrec.errors import ConfigError, FedrecError
from fedrec.federated.aggregation import STRATEGIES
from fedrec.models.config import MODEL_KIND_NAMES
from server.checkpoint import headcount
from server.settings import RunSettings
from simulations.commands.common import add_data_arguments
from simulations.commands.simulate import GRAM_MODEL
from simulations.config_file import track_explicit
from simulations.progress import Progress

if TYPE_CHECKING:
    from fedrec.data.split import Split

NAME = "deploy-local"
HELP = (
    "Run a federated round loop on Flower's Deployment Engine over 127.0.0.1 "
    "(TLS, SuperNode authentication, SuperExec secret; credentials per deployment)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    from simulations.commands.simulate import add_privacy_arguments

    add_data_arguments(parser)
    parser.add_argument("--nodes", type=int, required=True, metavar="N", help="SuperNodes")
    parser.add_argument(
        "--rounds",
        type=int,
        default=3,
        help="server rounds (default 3, not shaped from the data as in fedrec simulate: "
        "each round starts real processes; a model's data-shaped settings, e.g. iALS's "
        "alpha0, do apply)",
    )
    parser.add_argument("--out", type=Path, default=None, help="run directory to create")
    parser.add_argument(
        "--resume",
        type=Path,
        default=None,
        metavar="RUN_DIR",
        help="continue a stopped run from its checkpoint and node stores (other flags ignored)",
    )
    parser.add_argument(
        "--model",
        choices=(*MODEL_KIND_NAMES, GRAM_MODEL),
        default=RunSettings().model.kind,
        help="ease: one-shot federated EASE, one round (the only model of --privacy "
        "distributed: SecAgg+ with Skellam noise; docs/SECAGG.md). Default: fedrec "
        "simulate's choice: ials (mf under --privacy local, or given MF's round flags "
        "such as --rounds); with --privacy central, ease when the catalog fits its cap",
    )
    parser.add_argument("--strategy", choices=STRATEGIES, default="fedadam")
    parser.add_argument(
        "--clients-per-round",
        type=int,
        default=None,
        metavar="K",
        help="expected users per round (default: every node)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split, init and sampling seed")
    parser.add_argument(
        "--eval-every",
        type=int,
        default=5,
        metavar="N",
        help="evaluate a sample of --eval-clients devices every N rounds (default 5, as "
        "fedrec simulate; 0: only at the end; a 3-round run is evaluated at its end only)",
    )
    parser.add_argument("--eval-clients", type=int, default=100, help="users per periodic eval")
    parser.add_argument("--server-lr", type=float, default=None, help="server learning rate")
    parser.add_argument("--proximal-mu", type=float, default=None, help="FedProx mu")
    add_privacy_arguments(parser)
    parser.add_argument(
        "--set",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="any flat setting, e.g. model.dim=16 (repeatable)",
    )
    parser.add_argument(
        "--timeout", type=float, default=3600.0, help="seconds before the run is stopped"
    )
    track_explicit(parser)  # which flags were given: the model's choice (as fedrec simulate)


def run(args: argparse.Namespace) -> int:
    from fedrec.data.atomic import private_files

    with private_files():  # run files hold user data: private, in every Flower process too
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from server.settings import load_split
    from simulations.commands.simulate import choose_model
    from simulations.deploy import check_nodes, deploy_local
    from simulations.run_dir import (
        acquire_run_dir,
        check_fingerprint,
        finished_round,
        open_new_run_dir,
        resume_settings,
    )

    if (args.out is None) == (args.resume is None):
        raise ConfigError("give exactly one of --out and --resume", where="fedrec deploy-local")
    if args.resume is None:
        choose_model(args)  # fedrec simulate's default model, its reason printed
    if args.resume is None and args.model == GRAM_MODEL:
        return _run_gram(args)
    if args.resume is not None and _is_gram_run(Path(args.resume)):
        raise ConfigError(
            "a federated-EASE run has one round: there is nothing to resume",
            where=str(args.resume),
            fix="start a new run with --out (a private run then spends its budget again)",
        )
    if args.resume is not None:
        settings = resume_settings(Path(args.resume).resolve())
        lock = acquire_run_dir(Path(settings.run_dir))  # one process per run directory
        try:  # the data first: a changed data set is the error to report, not its size
            check_fingerprint(Path(settings.run_dir), load_split(settings), settings)
            check_nodes(settings, args.nodes)
        except BaseException:
            lock.release()
            raise
        done = finished_round(Path(settings.run_dir))
    else:
        settings, split = _settings(args)
        lock = open_new_run_dir(Path(settings.run_dir), settings, split)
        done = 0
    with lock, _signals_as_interrupt(), Progress(settings.rounds - done, "rounds") as bar:

        def on_round(record: dict[str, Any]) -> None:
            ndcg = (record.get("metrics") or {}).get("ndcg@10")
            fields = {"round": record["round"], "failed": headcount(record["failed"])}
            bar.update(1, **fields, **({} if ndcg is None else {"ndcg@10": float(ndcg)}))

        metrics = deploy_local(
            settings,
            args.nodes,
            timeout=args.timeout,
            on_round=on_round,
            status=lambda line: print(f"deploy-local: {line}", file=sys.stderr),
        )
    ndcg = metrics.get("ndcg@10")
    ease = (metrics.get("reference") or {}).get("ease", {}).get("ndcg@10")
    print(
        f"{settings.model.kind}/{settings.server.strategy} on {args.nodes} nodes: "
        f"NDCG@10 {_fmt(ndcg)} after {settings.rounds} rounds; ease {_fmt(ease)}"
    )
    print(f"wrote {settings.run_dir}")
    return 0


def _is_gram_run(run_dir: Path) -> bool:
    from server.gram_settings import is_gram_run

    try:
        return is_gram_run(run_dir)
    except (OSError, ValueError, KeyError, TypeError, FedrecError):
        return False  # the regular resume path reports what is wrong


def _run_gram(args: argparse.Namespace) -> int:
    """``--model ease``: the one-round Gram server (``--privacy distributed``: SecAgg+)."""
    from simulations.commands.simulate import gram_settings, open_gram_run_dir
    from simulations.deploy import check_nodes, deploy_local

    settings, split = gram_settings(args)
    check_nodes(settings.base, args.nodes)
    lock = open_gram_run_dir(settings, split)
    with lock, _signals_as_interrupt():
        metrics = deploy_local(
            settings,
            args.nodes,
            timeout=args.timeout,
            status=lambda line: print(f"deploy-local: {line}", file=sys.stderr),
        )
    refs = metrics.get("reference") or {}
    print(
        f"ease (federated, privacy {settings.base.privacy.mode}) on {args.nodes} nodes: "
        f"NDCG@10 {_fmt(metrics.get('ndcg@10'))}; "
        f"popularity {_fmt(refs.get('popularity', {}).get('ndcg@10'))}; "
        f"EASE {_fmt(refs.get('ease', {}).get('ndcg@10'))}"
    )
    print(f"wrote {settings.base.run_dir}")
    return 0


def _fmt(value: Any) -> str:
    return "-" if value is None else f"{float(value):.4f}"


def _settings(args: argparse.Namespace) -> tuple[RunSettings, Split]:
    """The settings of ``fedrec simulate`` with the same flags, and the run's split.

    What the flags and ``--set`` leave unset takes the data-shaped defaults of
    ``fedrec simulate`` (:mod:`server.shaped`; iALS's ``model.alpha0``), reasons printed
    the same way; then privacy is resolved. The rounds (``--rounds``, 3) and devices per
    round (every node) stay deploy-local's: the shaped rounds are 50 or more, each
    starting real processes, and the nodes, not the data's users, bound a round.
    """
    from server.settings import load_split
    from server.shaped import CLIENTS_KEY, ROUNDS_KEY, apply_shaped_defaults
    from simulations.commands.simulate import prepare_settings, settings_from_args
    from simulations.deploy import check_nodes
    from simulations.shaped import given_keys

    ns = argparse.Namespace(**vars(args))
    ns.clients_per_round = args.clients_per_round or args.nodes
    settings = settings_from_args(ns)
    check_nodes(settings, args.nodes)  # before anything is printed
    split = load_split(settings)
    given = given_keys(args) | {ROUNDS_KEY, CLIENTS_KEY}
    settings, reasons = apply_shaped_defaults(settings, split, given)
    for reason in reasons:
        print(f"default from the data's shape: {reason}")
    return prepare_settings(settings, split), split


STOP_SIGNALS = (signal.SIGTERM, signal.SIGHUP)


@contextmanager
def _signals_as_interrupt() -> Iterator[None]:
    """Turn SIGTERM and SIGHUP into KeyboardInterrupt: ``kill`` or a closed terminal stops
    the deployment cleanly (every Flower process, the temporary folder), like Ctrl-C."""

    def interrupt(signum: int, frame: FrameType | None) -> None:
        raise KeyboardInterrupt

    old = {sig: signal.signal(sig, interrupt) for sig in STOP_SIGNALS}
    try:
        yield
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)


__all__ = ["HELP", "NAME", "add_arguments", "run"]
