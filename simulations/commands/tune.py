"""``fedrec tune``: federated hyperparameter search on a validation split.

``fedrec tune --data PATH --model M --budget N --out DIR`` runs ``N`` federated
simulations (trials) with settings sampled by Optuna, each trained on the protocol
train set minus a per-user validation holdout and scored on that holdout only
(:mod:`simulations.tuning`). It writes ``DIR/trials.jsonl``, ``DIR/best.json`` (flat
settings for ``fedrec simulate --config DIR/best.json``) and ``DIR/report.md``.
"""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.data.atomic import private_files
from fedrec.errors import ConfigError
from fedrec.privacy.config import PRIVACY_MODES
from simulations.commands.common import add_data_arguments
from simulations.tuning import SEARCH_SPACES, VALIDATION_FRACTION, TuneSpec, tune

NAME = "tune"
HELP = "Tune a model's federated settings on a validation split (Optuna); writes best.json."

PRIVATE_TUNING_REFUSED = (
    "tuning on private data spends privacy that fedrec does not account: every trial "
    "trains on the users' data and the choice of the best trial is itself a release "
    "(the cost of repeating a DP run and releasing the best is what dp-accounting's "
    "RepeatAndSelectDpEvent accounts, Papernot & Steinke 2022), so a tuned private run's "
    "epsilon would understate its loss"
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--model", required=True, choices=tuple(SEARCH_SPACES), help="model")
    parser.add_argument("--out", required=True, type=Path, metavar="DIR", help="new folder")
    parser.add_argument("--budget", type=int, default=20, metavar="N", help="number of trials")
    parser.add_argument(
        "--max-rounds",
        type=int,
        default=None,
        metavar="R",
        help="rounds searched in [ceil(R/3), R] (default: the data-shaped rounds of iALS "
        "and NCF, else the model's default rounds)",
    )
    parser.add_argument(
        "--clients-per-round",
        type=int,
        default=None,
        metavar="K",
        help="as for simulate (default: the data-shaped one of iALS and NCF, else 100)",
    )
    parser.add_argument("--seed", type=int, default=0, help="split, run and sampler seed")
    parser.add_argument(
        "--validation-fraction",
        type=float,
        default=VALIDATION_FRACTION,
        metavar="F",
        help="share of each device's train items held out to score the trials",
    )
    parser.add_argument(
        "--eval-every",
        type=int,
        default=5,
        metavar="N",
        help="periodic validation every N rounds (the pruner's signal; 0: no pruning)",
    )
    parser.add_argument(
        "--eval-clients", type=int, default=100, help="users in each periodic validation"
    )
    parser.add_argument("--no-prune", action="store_true", help="run every trial to its end")
    parser.add_argument("--keep-runs", action="store_true", help="keep each trial's run directory")
    parser.add_argument(
        "--privacy",
        choices=PRIVACY_MODES,
        default="none",
        help="only none: tuning on private data is refused (docs/PRIVACY.md)",
    )


def run(args: argparse.Namespace) -> int:
    if args.privacy != "none":
        raise ConfigError(
            PRIVATE_TUNING_REFUSED,
            where=f"--privacy {args.privacy}",
            fix="tune on a public or non-private data set of the same shape (--privacy none), "
            "then run the private training once with `fedrec simulate --config DIR/best.json "
            f"--privacy {args.privacy} ...`",
        )
    if args.seed < 0:
        raise ConfigError(f"must be >= 0, got {args.seed}", where="--seed")
    spec = TuneSpec(
        data=str(args.data),
        model=args.model,
        budget=args.budget,
        out=Path(args.out).resolve(),
        seed=args.seed,
        max_rounds=args.max_rounds,
        clients_per_round=args.clients_per_round,
        eval_every=args.eval_every,
        eval_clients=args.eval_clients,
        min_rating=args.min_rating,
        k_core=args.k_core,
        validation_fraction=args.validation_fraction,
        prune=not args.no_prune and args.eval_every > 0,
        keep_runs=args.keep_runs,
    )
    with private_files():  # trial runs hold user data
        best = tune(spec)
    print(
        f"best: trial {best['trial']}, validation NDCG@10 {best['validation_ndcg@10']:.4f}; "
        f"wrote {spec.out}/trials.jsonl, best.json, report.md. Test metrics: "
        f"fedrec simulate --config {spec.out}/best.json --out RUN_DIR"
    )
    return 0
