"""Centralized training of the autoencoders (CDAE, Mult-VAE) and their tuned presets.

Design rule: the autoencoders use the shared contract of
:class:`~fedrec.models.trainable.TrainableRecommender` (one example = one user's row),
so a device trains them with the generic :func:`fedrec.federated.client.client_fit`
and nothing here is needed on a device. This module adds what is specific to the
centralized twin: KL annealing for Mult-VAE (Liang et al., WWW 2018: ``beta`` rises
linearly from 0 to ``cfg.beta``), and the presets the defaults were tuned to (see
:data:`PRESETS`). :func:`train_autoencoder_centralized` has the signature of
:data:`fedrec.training.centralized.CENTRAL_TRAINERS` entries.
"""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data.split import Split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import TrainableRecommender
from fedrec.training.local import make_optimizer, shuffled_batches

ScoreFn = Callable[[npt.NDArray[np.int64]], torch.Tensor]
EpochHook = Callable[[int, ScoreFn], None]

CENTRAL_AE_EPOCHS = 70
"""Default centralized epochs for the autoencoders (one epoch = one pass over users)."""

ANNEAL_FRACTION = 0.5
"""Mult-VAE: fraction of the centralized steps over which ``beta`` rises to ``cfg.beta``."""

PRESETS: dict[str, tuple[ModelConfig, LocalTrainConfig]] = {
    "cdae": (
        ModelConfig(kind="cdae", dim=200, dropout=0.5),
        LocalTrainConfig(lr=1e-3, batch_size=100, optimizer="adam", weight_decay=0.01),
    ),
    "multvae": (
        ModelConfig(kind="multvae", dim=200, hidden=600, dropout=0.5, beta=1.0),
        LocalTrainConfig(lr=1e-3, batch_size=100, optimizer="adam", weight_decay=0.001),
    ),
}
"""Centralized configurations of the autoencoders, tuned on ml-100k (seed-0 split).

Adam's coupled L2 ``weight_decay`` is the main regularizer (Liang et al. use L2 0.01 for
Mult-DAE); on ml-100k Mult-VAE needs a full KL weight (``beta = 1``) against overfitting.
"""


def score_rows(model: TrainableRecommender, split: Split) -> ScoreFn:
    """``score_fn(users) -> [b, n_items]`` from the users' train rows (eval mode)."""

    def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
        model.eval()
        u = np.asarray(users, dtype=np.int64)
        history = torch.as_tensor(split.train[u].toarray(), dtype=torch.float32)
        with torch.no_grad():
            return model.score(torch.as_tensor(u), history)

    return score


def _set_beta(model: TrainableRecommender, target: float, step: int, anneal_steps: int) -> None:
    if hasattr(model, "beta"):
        model.beta = target * min(1.0, step / max(anneal_steps, 1))


def train_autoencoder_centralized(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    seed: int,
    epochs: int | None = None,
    *,
    on_epoch: EpochHook | None = None,
) -> ScoreFn:
    """Train CDAE / Mult-VAE on every user row of ``split``; return its scorer.

    Parameters
    ----------
    model_cfg, train_cfg
        Model and optimizer (``lr``, ``batch_size`` in users, ``weight_decay``,
        ``optimizer``); ``train_cfg.epochs`` (local epochs per round) is not used.
    split
        Train rows are the examples; users without train items are skipped.
    seed
        Seeds initialization, corruption, reparameterization noise and batch order.
    epochs
        Passes over all users (default :data:`CENTRAL_AE_EPOCHS`).
    on_epoch
        Called as ``on_epoch(epoch, score_fn)`` after each epoch (e.g. validation).
    """
    model = build_model(model_cfg, split.n_items, split.n_users, seed=seed)
    m = split.train
    users = np.repeat(np.arange(m.shape[0], dtype=np.int64), np.diff(m.indptr))
    items = m.indices.astype(np.int64)
    gen = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(list(model.parameters()), train_cfg)
    n_epochs = CENTRAL_AE_EPOCHS if epochs is None else epochs
    n_rows = len(np.unique(users))
    anneal_steps = int(ANNEAL_FRACTION * n_epochs * -(-n_rows // train_cfg.batch_size))
    score, step = score_rows(model, split), 0
    for epoch in range(n_epochs):
        model.train()
        ex = model.make_examples(users, items, generator=gen)
        for idx in shuffled_batches(len(ex), train_cfg.batch_size, gen):
            _set_beta(model, model_cfg.beta, step, anneal_steps)
            batch = ex.take(idx)
            optimizer.zero_grad(set_to_none=True)
            model.loss(model(*batch.inputs), batch.target).backward()
            optimizer.step()
            step += 1
        if on_epoch is not None:
            on_epoch(epoch + 1, score)
    return score
