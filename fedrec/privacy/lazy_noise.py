"""Deferred DP-SGD noise for embedding tables trained by plain SGD.

Design rule: DP-SGD (Abadi et al., CCS 2016) adds ``N(0, s^2)`` to every coordinate of
every step's gradient, so a step on an item table of ``n x d`` costs ``n d`` normal
draws even when the batch looked up a few hundred rows. Under *plain* SGD (no momentum,
no weight decay, no proximal term) the noise enters a row linearly:
``theta_r <- theta_r - lr (S_r + n_r)``. A row that no step reads between two reads
therefore only accumulates a sum of independent Gaussians, and drawing that sum once,
``N(0, sum_t (lr_t s_t)^2)``, right before the row is next read (a forward pre-hook
on the ``nn.Embedding``) or when training ends (:meth:`LazyRowNoise.settle` with no
rows) gives **exactly** the eager process's joint distribution of every value the
computation reads and of the final parameters. The upload, which is computed from the
final parameters, is therefore distributed exactly as with eager noise and carries the
same guarantee (Opacus accounting unchanged); only the intermediate iterates, which
never leave the device, differ. The same trick is what makes sparse updates with lazy
regularization exact for sparse SGD (Carpenter, "Lazy sparse stochastic gradient
descent for regularized multinomial logistic regression", 2008).

The cost per step becomes proportional to the rows the batch reads; the whole table
is noised once per local update instead of once per step.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import torch
from torch import nn

from fedrec.privacy.fast_dp import secret_normal


def lazy_eligible(optimizer: torch.optim.Optimizer, has_proximal: bool) -> bool:
    """Whether ``optimizer`` applies its gradient linearly (plain SGD), so noise can wait."""
    if has_proximal or type(optimizer) is not torch.optim.SGD:
        return False
    return all(
        not g["momentum"] and not g["weight_decay"] and not g.get("maximize", False)
        for g in optimizer.param_groups
    )


class LazyRowNoise:
    """The DP noise that equally long ``nn.Embedding`` tables owe, row by row.

    Tables of one group (MF's item vectors and item biases, looked up together) share
    the record of when each row was last settled, so one draw settles a row of all of
    them: settling a row early is as exact as settling it at its read.

    Parameters
    ----------
    layers
        Embeddings with the same number of rows, trained by plain SGD.
    rng
        The secret generator of the DP step (:func:`fedrec.privacy.noise.secure_rng`).
    """

    def __init__(self, layers: Sequence[nn.Embedding], rng: np.random.Generator) -> None:
        self.weights = [layer.weight for layer in layers]
        self.rng = rng
        self.steps = 0
        # cum[j, t]: table j's per-coordinate noise variance summed over steps < t
        self._cum = torch.zeros(len(layers), 64, dtype=torch.float64)
        self.last = torch.zeros(layers[0].num_embeddings, dtype=torch.int64)
        self._settled_lookup: tuple[int, int, int, int] | None = None
        self._hooks = [layer.register_forward_pre_hook(self._before_lookup) for layer in layers]

    def accrue(self, stds: Sequence[float]) -> None:
        """One step: noise ``N(0, stds[j]^2)`` per coordinate of table ``j``, owed."""
        t = self.steps
        if t + 1 >= self._cum.shape[1]:
            self._cum = torch.cat([self._cum, torch.zeros_like(self._cum)], dim=1)
        step = torch.tensor(stds, dtype=torch.float64).square_()
        torch.add(self._cum[:, t], step, out=self._cum[:, t + 1])
        self.steps = t + 1

    def settle(self, rows: torch.Tensor | None = None) -> None:
        """Add the owed noise to ``rows`` (distinct indices; ``None`` = every row)."""
        t = self.steps
        since = self.last if rows is None else self.last[rows]
        if not len(since) or int(since.min()) >= t:
            return
        widths = [w.shape[1] for w in self.weights]
        first = self.weights[0]
        noise = secret_normal(len(since) * sum(widths), 1.0, self.rng, device=first.device,
                              dtype=first.dtype).view(len(since), sum(widths))  # fmt: skip
        # rows settled at t already get std 0 (a wasted draw, never a wrong one)
        var = self._cum[:, t].unsqueeze(1) - self._cum[:, since]
        stds = var.clamp_(min=0.0).sqrt_().to(first)
        with torch.no_grad():
            for w, std, piece in zip(self.weights, stds, noise.split(widths, 1), strict=True):
                piece = piece * std.unsqueeze(1)
                if rows is None:
                    w.add_(piece)
                else:
                    w.index_add_(0, rows.to(w.device), piece)
        if rows is None:
            self.last.fill_(t)
        else:
            self.last[rows] = t

    def close(self) -> None:
        """Settle every row and detach the hooks."""
        self.settle()
        for hook in self._hooks:
            hook.remove()
        self._hooks = []

    def _before_lookup(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
        del module
        index = args[0]
        key = (index.data_ptr(), index._version, index.numel(), self.steps)
        if key != self._settled_lookup:  # the group's other tables read the same rows
            self.settle(torch.unique(index.reshape(-1)).cpu())
            self._settled_lookup = key
