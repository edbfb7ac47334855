"""The local training loop a device runs, shared with the centralized twin.

Design rule: the loop is split into replaceable pieces so that DP-SGD can wrap it
without a rewrite. :func:`make_optimizer` builds a plain optimizer; a DP variant passes
an Opacus ``DPOptimizer`` (over a ``GradSampleModule`` wrapping the same model) and its
own ``batches`` sampler (Poisson) to :func:`train_epochs` instead. The FedProx term
(Li et al. 2020) is added to the *gradient* after backward (:class:`Proximal`), not to
the loss: it is data-independent, so under DP it is applied to the privatized gradient
at no privacy cost and never enters Opacus' per-example clipping.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedrec.models.config import LocalTrainConfig
from fedrec.models.trainable import Examples, TrainableRecommender

Batches = Callable[[int, int, torch.Generator], Iterator[torch.Tensor]]
"""``(n_examples, batch_size, generator) -> iterator of example-index tensors``."""


def shuffled_batches(n: int, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
    """One epoch of shuffled minibatches covering every example once."""
    perm = torch.randperm(n, generator=generator)
    yield from perm.split(batch_size)


def make_optimizer(
    params: Sequence[nn.Parameter],
    cfg: LocalTrainConfig,
    *,
    lr: float | None = None,
    kind: str | None = None,
) -> torch.optim.Optimizer:
    """A fresh local optimizer (``kind``, default ``cfg.optimizer``) over ``params``."""
    rate = cfg.lr if lr is None else lr
    trainable = [p for p in params if p.requires_grad]
    if (cfg.optimizer if kind is None else kind) == "adam":
        return torch.optim.Adam(trainable, lr=rate, weight_decay=cfg.weight_decay)
    return torch.optim.SGD(trainable, lr=rate, weight_decay=cfg.weight_decay)


def update_optimizer(
    model: TrainableRecommender, cfg: LocalTrainConfig, *, item_lr: float | None = None
) -> torch.optim.Optimizer:
    """The local update's optimizer: item side at ``item_lr`` (default ``cfg.lr``), the
    user side at ``cfg.user_lr`` (default: the item rate) in a second parameter group."""
    item_rate = cfg.lr if item_lr is None else item_lr
    if cfg.user_lr is None and item_lr is None:
        return make_optimizer(list(model.parameters()), cfg)
    names = set(model.USER_SIDE)
    opt = make_optimizer([p for n, p in model.named_parameters() if n not in names], cfg,
                         lr=item_rate)  # fmt: skip
    user = [p for n, p in model.named_parameters() if n in names and p.requires_grad]
    if user:
        opt.add_param_group({"params": user, "lr": cfg.user_lr or cfg.lr})
    return opt


@dataclass
class Proximal:
    """FedProx term ``mu/2 ||w - w_global||^2`` on ``params``, as a gradient addition."""

    params: list[nn.Parameter]
    anchors: list[torch.Tensor]
    mu: float

    @classmethod
    def around(cls, params: Sequence[nn.Parameter], mu: float) -> Proximal:
        """Anchor the term at the current values of ``params`` (the global model)."""
        return cls(list(params), [p.detach().clone() for p in params], mu)

    def add_grad(self) -> None:
        """``grad += mu (w - w_global)`` for every anchored parameter."""
        with torch.no_grad():
            for p, a in zip(self.params, self.anchors, strict=True):
                if p.grad is not None:
                    p.grad.add_(p - a, alpha=self.mu)


def train_epochs(
    model: TrainableRecommender,
    optimizer: torch.optim.Optimizer,
    examples: Callable[[torch.Generator], Examples],
    *,
    epochs: int,
    batch_size: int,
    generator: torch.Generator,
    proximal: Proximal | None = None,
    batches: Batches = shuffled_batches,
) -> float:
    """Run ``epochs`` passes of minibatch training; return the mean minibatch loss.

    Parameters
    ----------
    examples
        Builds one epoch's examples (fresh negatives) from ``generator``.
    batches
        Minibatch sampler; DP-SGD passes a Poisson sampler here.
    """
    model.train()
    total, steps = 0.0, 0
    for _ in range(epochs):
        ex = examples(generator)
        for idx in batches(len(ex), batch_size, generator):
            batch = ex.take(idx)
            optimizer.zero_grad(set_to_none=True)
            loss = model.loss(model(*batch.inputs), batch.target)
            loss.backward()
            if proximal is not None and proximal.mu > 0:
                proximal.add_grad()
            optimizer.step()
            total += float(loss.detach())
            steps += 1
    return total / max(steps, 1)


def user_examples(
    model: TrainableRecommender,
    train_items: npt.NDArray[np.int64],
    *,
    key: bytes | None = None,
) -> Callable[[torch.Generator], Examples]:
    """Example builder for one device user (user slot 0) with items ``train_items``.

    ``key``: the device key of MF's keyed negatives (:mod:`fedrec.training.negatives`);
    ``None``: the public key.
    """
    items = np.asarray(train_items, dtype=np.int64)
    users = np.zeros(len(items), dtype=np.int64)

    def build(generator: torch.Generator) -> Examples:
        if key is None:
            return model.make_examples(users, items, generator=generator)
        return model.make_examples(users, items, generator=generator, key=key)

    return build


def freeze_except(model: nn.Module, names: Sequence[str]) -> dict[str, bool]:
    """Set ``requires_grad`` only on ``names``; return the previous flags to restore."""
    before = {n: p.requires_grad for n, p in model.named_parameters()}
    for n, p in model.named_parameters():
        p.requires_grad_(before[n] and n in names)
    return before


def restore_grad_flags(model: nn.Module, flags: dict[str, bool]) -> None:
    """Undo :func:`freeze_except`."""
    for n, p in model.named_parameters():
        p.requires_grad_(flags[n])


def refit_user(
    model: TrainableRecommender,
    cfg: LocalTrainConfig,
    examples: Callable[[torch.Generator], Examples],
    *,
    generator: torch.Generator,
) -> float:
    """Fit only the user-side parameters on fixed item-side ones (Singhal et al. 2021).

    The reconstruction step of Federated Reconstruction: ``cfg.refit_steps`` epochs
    with a fresh ``cfg.refit_optimizer`` at ``cfg.refit_lr``. Returns the mean loss (NaN when
    there is nothing to refit). A model with a closed-form user solve (``solve_users``,
    iALS) takes it instead, whatever ``cfg.refit_steps``: its user vector is that solve.
    """
    solve = getattr(model, "solve_users", None)
    if solve is not None:
        return float(solve(examples(generator)))
    if cfg.refit_steps == 0 or not model.USER_SIDE:
        return float("nan")
    flags = freeze_except(model, model.USER_SIDE)
    try:
        params = [p for n, p in model.named_parameters() if n in model.USER_SIDE]
        optimizer = make_optimizer(params, cfg, lr=cfg.refit_lr, kind=cfg.refit_optimizer)
        return train_epochs(
            model,
            optimizer,
            examples,
            epochs=cfg.refit_steps,
            batch_size=cfg.batch_size,
            generator=generator,
        )
    finally:
        restore_grad_flags(model, flags)
