"""``fedrec sweep``: the privacy-utility frontier over a list of target epsilons.

``fedrec sweep --data PATH --privacy local|central --epsilons 1,4,8 --out DIR`` runs
``fedrec simulate`` (every simulate flag applies) once without privacy and once per
epsilon, each in ``DIR/<run>``, then writes ``DIR/sweep.json`` and ``DIR/report.md``
with the frontier plot (:mod:`simulations.sweep`). ``--model ease`` sweeps federated
EASE's one Gram release (``--privacy central`` or ``distributed``). ``--quick`` is a
first look in minutes (:data:`QUICK`). ``fedrec report DIR`` re-renders the report.
"""

from __future__ import annotations

import argparse
from pathlib import Path
from typing import Any

from fedrec.data.atomic import private_files
from fedrec.errors import ConfigError
from simulations.commands import simulate as simulate_cmd

NAME = "sweep"
HELP = "Run one simulation per target epsilon (and a non-private one); plot the frontier."
QUICK = {"epsilons": "1,8,32", "rounds": 10, "eval_every": 0}
"""``--quick``: these values for the flags not given (evaluation only at the end)."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    simulate_cmd.add_arguments(parser)
    parser.add_argument(
        "--epsilons",
        default=None,
        help="comma-separated target epsilons, e.g. 1,4,8,16,32 (required unless --quick)",
    )
    parser.add_argument(
        "--quick",
        action="store_true",
        help=f"a first look: epsilons {QUICK['epsilons']} and {QUICK['rounds']} rounds unless "
        "--epsilons/--rounds are given, evaluation only at the end",
    )
    parser.add_argument(
        "--compare",
        action="append",
        type=Path,
        default=[],
        metavar="SWEEP_DIR",
        help="draw an earlier sweep's frontier on this one's plot (repeatable), e.g. the "
        "central sweep next to a distributed one; each legend entry names its unit",
    )


def run(args: argparse.Namespace) -> int:
    with private_files():  # run files hold user data: private, in Ray's workers too
        return _run(args)


def apply_quick(args: argparse.Namespace) -> None:
    """Fill in :data:`QUICK` for the flags ``--quick`` governs that were not given."""
    if args.epsilons is None:
        args.epsilons = QUICK["epsilons"]
    if args.rounds is None:
        args.rounds = QUICK["rounds"]
    args.eval_every = QUICK["eval_every"]


def _run(args: argparse.Namespace) -> int:
    from server.settings import load_split
    from simulations.inprocess import simulate_in_process
    from simulations.progress import Progress
    from simulations.report import references
    from simulations.run_dir import open_new_run_dir
    from simulations.simulation import simulate
    from simulations.sweep import (
        load_compared,
        parse_epsilons,
        summarize,
        sweep_settings,
        write_sweep,
    )

    if args.out is None or args.resume is not None:
        raise ConfigError("give --out DIR (a sweep cannot be resumed)", where="fedrec sweep")
    if args.privacy == "none":
        raise ConfigError(
            "a sweep needs a privacy mode",
            where="--privacy",
            fix="add --privacy local or central (--model ease: central or distributed)",
        )
    if args.quick:
        apply_quick(args)
    if args.epsilons is None:
        raise ConfigError(
            "give the target epsilons", where="--epsilons", fix="e.g. 1,4,8 or --quick"
        )
    epsilons = parse_epsilons(args.epsilons)
    out_dir = Path(args.out).resolve()
    compare = load_compared(getattr(args, "compare", []))  # before any run: a bad path fails
    if args.model == simulate_cmd.GRAM_MODEL:
        return _run_gram(args, epsilons, out_dir, compare)
    args.target_epsilon = epsilons[0]  # validates the private settings once
    base = simulate_cmd.settings_from_args(args)
    split = load_split(base)  # one data set and split for every run of the sweep
    simulate_cmd.check_clients_per_round(args, split)
    runs = [
        (eps, simulate_cmd.prepare_settings(settings, split))
        for eps, settings in sweep_settings(base, epsilons, out_dir)
    ]  # every run's settings resolved (and so validated) before any directory exists
    rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    print(simulate_cmd.engine_line(args.engine))
    with Progress(len(runs), "sweep") as bar:
        for eps, settings in runs:
            with open_new_run_dir(Path(settings.run_dir), settings, split):
                if args.engine == "inprocess":
                    metrics = simulate_in_process(settings)
                else:
                    metrics = simulate(
                        settings, verbose=args.verbose, cpus_per_client=args.cpus_per_client
                    )
            refs = references(metrics) or refs
            rows.append(summarize(eps, Path(settings.run_dir), metrics))
            _progress(bar, rows[-1])
    print(write_sweep(out_dir, args.privacy, rows, refs, model=args.model, compare=compare))
    return 0


def _run_gram(
    args: argparse.Namespace,
    epsilons: list[float],
    out_dir: Path,
    compare: list[dict[str, Any]] | None = None,
) -> int:
    """``--model ease``: each point is ``fedrec simulate --model ease`` in ``DIR/<run>``."""
    from simulations.progress import Progress
    from simulations.report import references
    from simulations.run_dir import read_metrics
    from simulations.sweep import run_name, summarize, write_sweep

    rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    points: list[float | None] = [None, *epsilons]
    with Progress(len(points), "sweep") as bar:
        for eps in points:
            point = argparse.Namespace(**vars(args))
            point.out = out_dir / run_name(eps)
            if eps is None:  # the non-private run: no privacy flag may remain
                point.privacy = "none"
                for name in simulate_cmd.PRIVACY_FLAGS:
                    setattr(point, name, False if name == "adaptive_clipping" else None)
            else:
                point.target_epsilon, point.noise_multiplier = eps, None
            simulate_cmd.run(point)
            metrics = read_metrics(point.out)
            refs = references(metrics) or refs
            rows.append(summarize(eps, point.out, metrics))
            _progress(bar, rows[-1])
    print(write_sweep(out_dir, args.privacy, rows, refs, model=args.model, compare=compare))
    return 0


def _progress(bar: Any, row: dict[str, Any]) -> None:
    fields: dict[str, object] = {"run": row["run"]}
    if row["metrics"].get("ndcg@10") is not None:
        fields["ndcg@10"] = float(row["metrics"]["ndcg@10"])
    if row.get("epsilon") is not None:
        fields["eps"] = round(float(row["epsilon"]), 3)
    bar.update(1, **fields)


__all__ = ["HELP", "NAME", "QUICK", "add_arguments", "apply_quick", "run"]
