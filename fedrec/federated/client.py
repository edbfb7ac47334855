"""What a device does in one round, as pure functions of arrays (no Flower).

Design rule: a client receives the global item-side arrays and its own stored user
state, and returns *only* item-side arrays (all rows, dense, in upload order) plus the
user state to keep on the device. Flower's ``ClientApp`` and the in-process reference
loop (:mod:`fedrec.federated.loop`) call exactly these functions.

A user with no stored state first reconstructs its user-side parameters on the current
global items (Federated Reconstruction, Singhal et al. 2021), then trains item-side and
user-side parameters together for ``epochs`` local epochs (FCF, Ammad-ud-din et al.
2019), optionally with the FedProx proximal term (Li et al. 2020).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data.sequences import ordered_history
from fedrec.federated.seeds import derive_seed as derive_seed
from fedrec.models.base import (
    Arrays,
    get_item_arrays,
    get_user_state,
    item_side,
    set_item_arrays,
    set_user_state,
)
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, model_class
from fedrec.models.trainable import TrainableRecommender
from fedrec.training.local import (
    Proximal,
    refit_user,
    train_epochs,
    update_optimizer,
    user_examples,
)

UserState = dict[str, npt.NDArray[np.float32]]


@dataclass(frozen=True)
class FitResult:
    """The outcome of :func:`client_fit`.

    Attributes
    ----------
    item_arrays
        New item-side arrays after local training (all rows, upload order).
    user_state
        User-side parameters to store on the device (never uploaded).
    num_examples
        The user's positive interactions. Private: aggregation ignores it unless
        count weighting is explicitly enabled.
    train_loss
        Mean minibatch loss of the local update.
    """

    item_arrays: Arrays
    user_state: UserState
    num_examples: int
    train_loss: float


def load_device_model(
    model_cfg: ModelConfig,
    global_items: Arrays,
    user_state: UserState | None,
    *,
    seed: int,
) -> TrainableRecommender:
    """A one-user model holding the global items and the stored (or a fresh) user state."""
    n_items = int(global_items[0].shape[0])
    model = build_model(model_cfg, n_items, 1, seed=seed, item_init=False)
    set_item_arrays(model, global_items)
    if user_state is not None:
        set_user_state(model, user_state)
    return model


def client_fit(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    fast: bool = True,
    key: bytes | None = None,
) -> FitResult:
    """One local update: reconstruct the user state if needed, then train.

    Parameters
    ----------
    global_items
        The current global item-side arrays (upload order).
    user_state
        The device's stored user state, or ``None`` at first participation.
    train_items
        The user's train item indices.
    seed
        Seeds every random choice of this call (user init, negatives, batches).

    fast
        Take the model's fast path where it applies (its class's ``fast_fit``: MF's
        :func:`fedrec.training.mf_fast.fit`, iALS's closed forms): the same update
        without autograd; ``False`` forces the autograd reference path.
    key
        The device's secret key of MF's keyed negatives (:mod:`fedrec.training.negatives`);
        ``None``: the public key (reference loop, simulated devices).
    """
    if fast:
        r = model_class(model_cfg.kind).fast_fit(
            model_cfg, train_cfg, global_items, user_state, train_items, seed=seed, key=key
        )
        if r is not None:
            return FitResult(r.item_arrays, r.user_state, len(train_items), r.train_loss)
    model = load_device_model(model_cfg, global_items, user_state, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    examples = user_examples(model, train_items, key=key)
    if user_state is None or train_cfg.refit_every_round:
        refit_user(model, train_cfg.for_refit(first=user_state is None), examples, generator=gen)
    optimizer = update_optimizer(model, train_cfg)
    proximal = Proximal.around(list(item_side(model).values()), train_cfg.proximal_mu)
    loss = train_epochs(
        model,
        optimizer,
        examples,
        epochs=train_cfg.epochs,
        batch_size=train_cfg.batch_size,
        generator=gen,
        proximal=proximal if train_cfg.proximal_mu > 0 else None,
    )
    return FitResult(get_item_arrays(model), get_user_state(model), len(train_items), loss)


def client_evaluate(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    test_items: npt.NDArray[np.int64],
    *,
    seed: int,
) -> tuple[dict[str, float], npt.NDArray[np.int64]]:
    """Rank all items for one user with the global items and the local user state.

    The user state is first refitted on ``global_items`` (``train_cfg.refit_steps``
    epochs; 0 = off), which matters because the stored state was fitted on older item
    parameters. Train items are excluded from the ranking. The stored state is not
    changed. Returns ``fedrec.metrics.evaluate.evaluate_user``'s metrics and top-10.
    """
    from fedrec.metrics.evaluate import evaluate_user

    scores = client_scores(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed)
    metrics, top = evaluate_user(scores, train_items, test_items)
    return metrics, np.asarray(top, dtype=np.int64)


def client_scores(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    fast: bool = True,
) -> torch.Tensor:
    """Scores ``[n_items]`` of every item for one user (refitted as in evaluation).

    ``fast`` as in :func:`client_fit` (the class's ``fast_scores``: MF's refit without
    autograd, iALS's closed-form user vector).
    """
    if fast:
        scores = model_class(model_cfg.kind).fast_scores(
            model_cfg, train_cfg, global_items, user_state, train_items, seed=seed
        )
        if scores is not None:
            return scores
    model = load_device_model(model_cfg, global_items, user_state, seed=seed)
    gen = torch.Generator().manual_seed(seed)
    refit_user(model, train_cfg, user_examples(model, train_items), generator=gen)
    model.eval()
    ordered = model.ORDERED  # a sequential model reads the order of the history
    history = ordered_history(train_items, model.n_items, ordered=ordered)
    with torch.no_grad():
        return model.score(torch.zeros(1, dtype=torch.int64), history)[0]
