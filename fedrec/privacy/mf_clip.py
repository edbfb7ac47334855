"""Per-unit clipping for MF in closed form: the ghost clipper without autograd or hooks.

Design rule: :class:`fedrec.privacy.fast_dp.GhostClipper` is generic (any stack of
Linear and Embedding layers) and pays for it with forward hooks, an autograd pass and
some eighty small tensor operations per step, more than a device's whole plain MF
step. For :class:`fedrec.models.mf.MatrixFactorization` with the BCE loss the per-row
gradients are known in closed form (the same maths as :mod:`fedrec.training.mf_fast`):
with score ``x_r = p . q_r + b_r`` and the per-example penalty
``l2 (||q_r||^2 + ||p||^2)``, row ``r``'s own loss has

- ``dl_r/dq_r = (sigmoid(x_r) - y_r) p + 2 l2 q_r``,
- ``dl_r/dp = (sigmoid(x_r) - y_r) q_r + 2 l2 p``,
- ``dl_r/db_r = sigmoid(x_r) - y_r``,

which is what the ghost clipper reads off autograd (Opacus's ``loss_reduction="mean"``
rescaling). :class:`MFClipper` offers the ghost clipper's interface (``backward``,
``unit_norms``, ``add_clipped_``, ``clear``, ``owner``), so
:class:`fedrec.privacy.fast_dp.GhostDPStep` keeps its noise, lazy tables and optimizer
step; results equal the generic path (tested). The lookups go through the embedding
modules, so lazily noised rows are settled before they are read.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import torch
from torch import nn

from fedrec.models.trainable import Examples, TrainableRecommender


def supports(model: nn.Module) -> bool:
    """Whether ``model`` is MF with the BCE loss (BPR keeps the generic clipper)."""
    cfg = getattr(model, "cfg", None)
    return getattr(model, "kind", None) == "mf" and cfg is not None and cfg.loss == "bce"


class MFClipper:
    """Per-unit gradient norms and clipped sums of MF (BCE), in closed form.

    Parameters
    ----------
    model
        The device's ``MatrixFactorization``.
    params
        The parameters being clipped (e.g. only ``user_emb.weight`` in a refit).
    """

    def __init__(self, model: TrainableRecommender, params: Sequence[nn.Parameter]) -> None:
        self.l2 = float(model.cfg.l2)
        self.user: nn.Embedding = model.user_emb
        self.items: nn.Embedding = model.item_emb
        self.bias: nn.Embedding = model.item_bias
        self._owner = {id(m.weight): m for m in (self.user, self.items, self.bias)}
        self.wanted = {id(p) for p in params}
        self._rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
        self._item_keys: tuple[torch.Tensor, torch.Tensor] | None = None

    def owner(self, p: nn.Parameter) -> nn.Module:
        """The embedding that owns ``p``."""
        return self._owner[id(p)]

    def loss_of(self, batch: Examples) -> Callable[[], torch.Tensor]:
        """The ``loss_of`` to hand :class:`GhostDPStep`: records ``batch``'s rows."""
        return lambda: self._record(batch)

    def backward(self, loss_of: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Record per-row gradients by calling ``loss_of`` (from :meth:`loss_of`)."""
        return loss_of()

    def _record(self, batch: Examples) -> torch.Tensor:
        users, items = batch.inputs
        with torch.no_grad():
            p = self.user(users)  # the module calls settle lazily noised rows first
            q = self.items(items)
            x = (p * q).sum(1) + self.bias(items)[:, 0]
            s = torch.sigmoid(x).sub_(batch.target)
            rows: dict[int, tuple[torch.Tensor, torch.Tensor]] = {}
            if id(self.items.weight) in self.wanted:
                rows[id(self.items.weight)] = (
                    items,
                    torch.addcmul(q * (2 * self.l2), s[:, None], p),
                )
            if id(self.user.weight) in self.wanted:
                rows[id(self.user.weight)] = (
                    users,
                    torch.addcmul(p * (2 * self.l2), s[:, None], q),
                )
            if id(self.bias.weight) in self.wanted:
                rows[id(self.bias.weight)] = (items, s[:, None])
        self._rows, self._item_keys = rows, None
        return torch.zeros(())

    def unit_norms(
        self, units: torch.Tensor, n_units: int, weights: Mapping[nn.Parameter, float]
    ) -> torch.Tensor:
        """Norm ``[n_units]`` of each unit's gradient over the clipped parameters."""
        sq = torch.zeros(n_units, device=units.device)
        for pid, (index, grads) in self._rows.items():
            param = self._owner[pid].weight
            w = weights.get(param, 1.0)
            if pid == id(self.user.weight):  # one user row: sum the unit's rows, square
                per = torch.zeros(n_units, grads.shape[1], device=grads.device)
                part = per.index_add_(0, units, grads).square_().sum(1)
            else:  # a unit's table gradient has one summed row per distinct item
                key_unit, inverse = self._keys(units, index)
                sums = torch.zeros(len(key_unit), grads.shape[1], device=grads.device)
                row_sq = sums.index_add_(0, inverse, grads).square_().sum(1)
                part = torch.zeros(n_units, device=units.device).index_add_(0, key_unit, row_sq)
            sq += part if w == 1.0 else part * w**2
        return sq.sqrt_()

    def _keys(self, units: torch.Tensor, items: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Unit of each distinct (unit, item) pair and each row's pair (shared by tables)."""
        if self._item_keys is None:
            n = self.items.num_embeddings
            keys, inverse = torch.unique(units * n + items, return_inverse=True)
            self._item_keys = (torch.div(keys, n, rounding_mode="floor"), inverse)
        return self._item_keys

    def add_clipped_(
        self, p: nn.Parameter, out: torch.Tensor, unit_scale: torch.Tensor, units: torch.Tensor
    ) -> None:
        """``out += sum_u unit_scale[u] * grad_u(p)``, in place."""
        if (rows := self._rows.get(id(p))) is None:
            return
        index, grads = rows
        out.index_add_(0, index, grads * unit_scale[units].unsqueeze(1))

    def clear(self) -> None:
        """Drop the recorded rows."""
        self._rows, self._item_keys = {}, None
