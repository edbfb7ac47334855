"""The centralized twin of a sequential model, and what reads a model's need for order.

Design rule: the twin is the device model with the same examples and loss trained on
every user at once (:mod:`fedrec.training.centralized`), except that the pairs it feeds
to ``make_examples`` are each user's train items *in time order*
(:func:`fedrec.data.sequences.sequence_pairs`) and its scorer passes ordered histories
(:func:`fedrec.data.sequences.ordered_history`): a sequential model reads the order.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data.sequences import ordered_history, sequence_pairs, train_sequences
from fedrec.data.split import Split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import MODEL_KINDS, model_class
from fedrec.models.trainable import ScoreFn, TrainableRecommender

SASREC_CENTRAL_TRAIN = LocalTrainConfig(optimizer="adam", lr=1e-3, batch_size=128)
"""SASRec's twin: Adam at 1e-3 on minibatches of 128 windows (Kang & McAuley 2018)."""
SASREC_CENTRAL_EPOCHS = 20
"""Twin epochs unless told (measured on ml-100k's temporal split, docs/RESULTS.md)."""


def reads_order(kind: str) -> bool:
    """Whether ``kind`` reads the order of a user's items (its class's ``ORDERED``);
    ``False`` for a kind that is not a trained model (a baseline)."""
    return kind in MODEL_KINDS and model_class(kind).ORDERED


def sequence_score_function(model: TrainableRecommender, split: Split) -> ScoreFn:
    """``score_fn(users) -> [b, n_items]`` from each user's ordered train history."""
    model.eval()
    sequences = train_sequences(split)

    def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
        u = np.asarray(users, dtype=np.int64)
        rows = [ordered_history(sequences[int(user)], split.n_items) for user in u]
        history = torch.cat(rows) if rows else torch.zeros(0, split.n_items)
        with torch.no_grad():
            return model.score(torch.as_tensor(u), history)

    return score


def train_sequential_twin(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    *,
    seed: int,
    epochs: int | None = None,
) -> ScoreFn:
    """Train ``model_cfg.kind`` on every user's time-ordered train sequence.

    ``epochs``: ``None`` = :data:`SASREC_CENTRAL_EPOCHS`. Seeds initialization,
    dropout and batch order from ``seed``.
    """
    from fedrec.training.centralized import train_generic

    return train_generic(
        model_cfg,
        train_cfg,
        split,
        seed=seed,
        epochs=epochs,
        pairs=sequence_pairs,
        default_epochs=SASREC_CENTRAL_EPOCHS,
        scorer=sequence_score_function,
    )
