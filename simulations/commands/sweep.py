"""``fedrec sweep``: the privacy-utility frontier over a list of target epsilons.

``fedrec sweep --data PATH --privacy local|central --epsilons 1,4,8 --out DIR`` runs
``fedrec simulate`` (every simulate flag applies) once without privacy and once per
epsilon, each in ``DIR/<run>``, then writes ``DIR/sweep.json`` and ``DIR/report.md``
with the frontier plot (:mod:`simulations.sweep`).
"""

from __future__ import annotations

import argparse
import os
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from simulations.commands import simulate as simulate_cmd

NAME = "sweep"
HELP = "Run one simulation per target epsilon (and a non-private one); plot the frontier."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    simulate_cmd.add_arguments(parser)
    parser.add_argument(
        "--epsilons", required=True, help="comma-separated target epsilons, e.g. 1,4,8,16,32"
    )


def run(args: argparse.Namespace) -> int:
    umask = os.umask(0o077)  # run files hold user data: private, in Ray's workers too
    try:
        return _run(args)
    finally:
        os.umask(umask)


def _run(args: argparse.Namespace) -> int:
    from server.settings import load_split
    from simulations.inprocess import simulate_in_process
    from simulations.report import references
    from simulations.run_dir import open_new_run_dir
    from simulations.simulation import simulate
    from simulations.sweep import parse_epsilons, summarize, sweep_settings, write_sweep

    if args.out is None or args.resume is not None:
        raise ConfigError("give --out DIR (a sweep cannot be resumed)", where="fedrec sweep")
    if args.privacy == "none":
        raise ConfigError("a sweep needs --privacy local or central", where="--privacy")
    epsilons = parse_epsilons(args.epsilons)
    out_dir = Path(args.out).resolve()
    args.target_epsilon = epsilons[0]  # validates the private settings once
    base = simulate_cmd.settings_from_args(args)
    split = load_split(base)  # one data set and split for every run of the sweep
    runs = [
        (eps, simulate_cmd.prepare_settings(settings, split))
        for eps, settings in sweep_settings(base, epsilons, out_dir)
    ]  # every run's settings resolved (and so validated) before any directory exists
    rows: list[dict[str, Any]] = []
    refs: dict[str, Any] = {}
    print(simulate_cmd.engine_line(args.engine))
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
        print(
            f"{rows[-1]['run']}: NDCG@10 {rows[-1]['metrics'].get('ndcg@10')}, "
            f"epsilon {rows[-1]['epsilon']}"
        )
    print(write_sweep(out_dir, args.privacy, rows, refs))
    return 0


__all__ = ["HELP", "NAME", "add_arguments", "run"]
