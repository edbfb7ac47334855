"""``fedrec baseline``: train one centralized model, evaluate it, write a run directory.

Centralized references for the federated runs, on exactly the same split and
evaluator: popularity, item-kNN and EASE from :mod:`fedrec.baselines`, and the
centralized twins of the federated models (mf, cdae, multvae). ``--seeds 0,1,2``
repeats split + fit + evaluation per seed and reports the mean and std of each metric.
"""

from __future__ import annotations

import argparse
import json
import platform
import time
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError
from fedrec.models.config import MODEL_KIND_NAMES
from fedrec.training.device import DEVICES, compute_device
from simulations.commands.common import add_data_arguments, load_data, prepare_output_dir
from simulations.seeds import SeedSummary, parse_seeds, run_seeds
from simulations.tracking import TRACKERS, check_tracker, open_tracker

if TYPE_CHECKING:  # torch and the models load in the functions: the parser is built without
    import torch

    from fedrec.data.interactions import Interactions
    from fedrec.data.split import Split
    from fedrec.metrics.evaluate import Metrics

    ScoreFn = Callable[[npt.NDArray[np.int64]], torch.Tensor]

NAME = "baseline"
BASELINE_NAMES = ("popularity", "itemknn", "ease", "markov")
"""The keys of :data:`fedrec.baselines.BASELINES`, which imports torch (a test checks)."""
TRAINED = MODEL_KIND_NAMES
MODELS = (*BASELINE_NAMES, *TRAINED)
HELP = f"Train a centralized reference ({', '.join(MODELS)})."
MAX_DENSE_ITEMS = 20_000
"""Item-kNN's similarity is saved densely (a model file) only up to this many items."""


@dataclass(frozen=True)
class BaselineConfig:
    """Everything that decides a baseline run's result (written to ``config.json``)."""

    data: str
    model: str
    seeds: tuple[int, ...]
    split: str = "random"
    test_fraction: float = 0.2
    ease_lambda: float = 500.0
    knn_k: int = 20
    epochs: int | None = None
    min_rating: float | None = None
    k_core: int | None = None

    @classmethod
    def from_args(cls, args: argparse.Namespace) -> BaselineConfig:
        seeds = parse_seeds(args.seeds) if args.seeds else (int(args.seed),)
        if args.epochs is not None and args.epochs < 1:
            raise ConfigError(f"must be >= 1, got {args.epochs}", where="--epochs", fix="use 1+")
        if not args.ease_lambda > 0:
            raise ConfigError(
                f"must be > 0, got {args.ease_lambda}", where="--ease-lambda", fix="use e.g. 500"
            )
        if args.knn_k < 1:
            raise ConfigError(f"must be >= 1, got {args.knn_k}", where="--knn-k", fix="use e.g. 20")
        if not 0.0 < args.test_fraction < 1.0:
            raise ConfigError(
                f"must be in (0, 1), got {args.test_fraction}",
                where="--test-fraction",
                fix="use e.g. 0.2",
            )
        return cls(
            data=str(args.data),
            model=args.model,
            seeds=seeds,
            split=args.split,
            test_fraction=float(args.test_fraction),
            ease_lambda=float(args.ease_lambda),
            knn_k=int(args.knn_k),
            epochs=args.epochs,
            min_rating=args.min_rating,
            k_core=args.k_core,
        )


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_data_arguments(parser)
    parser.add_argument("--model", required=True, choices=MODELS, help="model to train")
    parser.add_argument("--out", required=True, type=Path, help="run directory to create")
    parser.add_argument("--seed", type=int, default=0, help="split and model seed (default 0)")
    parser.add_argument("--seeds", default=None, help="several seeds, e.g. 0,1,2 (mean and std)")
    parser.add_argument("--split", choices=("random", "temporal"), default="random")
    parser.add_argument("--test-fraction", type=float, default=0.2, help="held-out share per user")
    parser.add_argument("--ease-lambda", type=float, default=500.0, help="EASE L2 penalty")
    parser.add_argument("--knn-k", type=int, default=20, help="item-kNN neighbours per item")
    parser.add_argument(
        "--epochs",
        type=int,
        default=None,
        help="mf/cdae/multvae/ncf: training epochs; ials: ALS iterations (default: model's)",
    )
    parser.add_argument(
        "--device",
        choices=DEVICES,
        default="cpu",
        help="where EASE's Gram inverse and the evaluation's ranking run (the trained twins "
        "train on the CPU); cuda is refused where it is unavailable",
    )
    parser.add_argument(
        "--track",
        choices=TRACKERS,
        default=None,
        help="also write the metrics for TensorBoard under OUT/tensorboard "
        "(pip install 'fedrec[track]')",
    )


def make_split(data: Interactions, config: BaselineConfig, seed: int) -> Split:
    """The protocol split of ``data`` for one seed (temporal splits ignore the seed)."""
    from fedrec.data.split import random_split, temporal_split

    if config.split == "temporal":
        return temporal_split(data, test_fraction=config.test_fraction)
    return random_split(data, test_fraction=config.test_fraction, seed=seed)


def fit_scores(config: BaselineConfig, split: Split, seed: int) -> ScoreFn:
    """Fit ``config.model`` on ``split.train`` and return its score function."""
    return fit_model(config, split, seed)[0]


def fit_model(
    config: BaselineConfig, split: Split, seed: int
) -> tuple[ScoreFn, list[npt.NDArray[np.float32]] | None]:
    """Fit ``config.model``; its score function and the arrays a model file holds.

    The arrays are ``[counts]`` (popularity), ``[B]`` (EASE) or ``[S]`` (item-kNN, dense;
    ``None`` above :data:`MAX_DENSE_ITEMS` items), and ``None`` for the trained twins,
    whose centralized user embeddings a device model file would not carry.
    """
    if config.model in TRAINED:
        from fedrec.training.centralized import central_preset, train_centralized

        model_cfg, train_cfg = central_preset(config.model)
        scorer = train_centralized(model_cfg, train_cfg, split, seed=seed, epochs=config.epochs)
        return scorer, None
    from fedrec.baselines import fit_baseline, make_baseline

    options: dict[str, object] = {}
    if config.model == "ease":
        options["lam"] = config.ease_lambda
    elif config.model == "itemknn":
        options["k"] = config.knn_k
    fitted = fit_baseline(make_baseline(config.model, **options), split)
    return fitted.score, _model_arrays(fitted, split.n_items)


def _model_arrays(fitted: object, n_items: int) -> list[npt.NDArray[np.float32]] | None:
    if hasattr(fitted, "weights"):  # EASE's B
        return [np.asarray(fitted.weights, dtype=np.float32)]
    if hasattr(fitted, "counts"):  # popularity
        return [np.asarray(fitted.counts, dtype=np.float32).reshape(-1)]
    similarity = getattr(fitted, "similarity", None)
    if similarity is not None and n_items <= MAX_DENSE_ITEMS:
        return [np.asarray(similarity.toarray(), dtype=np.float32)]
    return None


def evaluate_seed(config: BaselineConfig, data: Interactions, seed: int) -> Metrics:
    """Split, fit and evaluate for one seed: the protocol's metric dict."""
    from fedrec.metrics import evaluate_scores

    split = make_split(data, config, seed)
    return evaluate_scores(fit_scores(config, split, seed), split)


def run(args: argparse.Namespace) -> int:
    check_tracker(getattr(args, "track", None))
    with compute_device(getattr(args, "device", "cpu")):  # cuda refused before any work
        return _run(args)


def _run(args: argparse.Namespace) -> int:
    from fedrec.metrics import evaluate_scores

    config = BaselineConfig.from_args(args)
    data = load_data(args)
    kept: list[tuple[Split, list[npt.NDArray[np.float32]] | None]] = []

    def one_seed(seed: int) -> Metrics:
        split = make_split(data, config, seed)
        scorer, arrays = fit_model(config, split, seed)
        if not kept:  # the first seed's model is the run's model
            kept.append((split, arrays))
        return evaluate_scores(scorer, split)

    # Enter first: a bad --out fails before the work, and a failure leaves nothing behind.
    with prepare_output_dir(args.out) as tmp:
        start = time.monotonic()
        summary = run_seeds(config.seeds, one_seed)
        elapsed = time.monotonic() - start
        _write_json(Path(tmp) / "config.json", _config_json(config, data, elapsed))
        _write_json(Path(tmp) / "metrics.json", _metrics_json(summary))
        tracker = open_tracker(getattr(args, "track", None), Path(tmp))
        if tracker is not None:
            tracker.log_final(dict(summary.mean))
            tracker.close()
        split, arrays = kept[0]
        if arrays is not None:
            from simulations.run_model import save_baseline_model

            save_baseline_model(Path(tmp), config.model, arrays, split, seed=config.seeds[0])
    print(format_table(config, summary))
    print(f"wrote {args.out}/metrics.json ({elapsed:.1f} s)")
    return 0


def _metrics_json(summary: SeedSummary) -> Mapping[str, object]:
    if len(summary.per_seed) == 1:
        return next(iter(summary.per_seed.values()))
    return summary.to_json()


def _config_json(config: BaselineConfig, data: Interactions, seconds: float) -> dict[str, object]:
    import torch

    return {
        "command": NAME,
        **asdict(config),
        "data_source": data.source,
        "n_users": data.n_users,
        "n_items": data.n_items,
        "n_interactions": len(data),
        "fit_and_evaluate_seconds": round(seconds, 3),
        "python": platform.python_version(),
        "torch": torch.__version__,
    }


def _write_json(path: Path, payload: Mapping[str, object]) -> None:
    path.write_text(json.dumps(payload, indent=2, sort_keys=False) + "\n", encoding="utf-8")


def format_table(config: BaselineConfig, summary: SeedSummary) -> str:
    """An aligned two-column table; ``mean ± std`` when there are several seeds."""
    many = len(summary.per_seed) > 1
    rows = [
        (key, _cell(value, summary.std[key] if many else None))
        for key, value in summary.mean.items()
    ]
    seeds = ",".join(str(s) for s in summary.per_seed)
    title = f"{config.model} on {config.data} ({config.split} split, seed {seeds})"
    width = max(len(k) for k, _ in rows)
    return "\n".join([title, *(f"  {k:<{width}}  {v}" for k, v in rows)])


def _cell(value: float | None, std: float | None) -> str:
    if value is None:
        return "n/a"
    if float(value).is_integer() and abs(value) >= 1:
        return f"{value:g}"
    return f"{value:.4f}" + (f" ± {std:.4f}" if std is not None else "")
