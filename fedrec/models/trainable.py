"""The training contract every fedrec model implements, on a device and centrally.

Design rule: one *example* is the unit a minibatch is made of and, later, the unit
DP-SGD protects (Opacus clips one gradient per example). A model turns interaction
pairs into :class:`Examples` (``inputs`` fed to ``forward``, ``target`` fed to
:meth:`TrainableRecommender.loss`), so the local loop is the canonical
``loss = model.loss(model(*inputs), target)`` that Opacus' ``GradSampleModule`` and
``DPOptimizer`` wrap without changes. Losses use ``reduction="mean"``, as Opacus assumes.

- MF: one example = one (user, item, label) triple, a positive or a sampled negative
  (BCE), or one (user, positive, negative) triple (BPR).
- Autoencoders: one example = one user's whole interaction vector.
"""

from __future__ import annotations

from abc import abstractmethod
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.models.base import Recommender


@dataclass(frozen=True)
class Examples:
    """A set of training examples; every tensor's first dimension indexes examples.

    Attributes
    ----------
    inputs
        Positional arguments of the model's ``forward``.
    target
        Second argument of the model's ``loss``.
    """

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, index: torch.Tensor) -> Examples:
        """The examples at ``index`` (int64 positions)."""
        return Examples(tuple(t[index] for t in self.inputs), self.target[index])


class TrainableRecommender(Recommender):
    """A :class:`Recommender` that builds its own examples and loss.

    Subclasses implement ``forward``, :meth:`make_examples`, :meth:`loss` and
    ``score``; :func:`fedrec.training.local.train_epochs` drives them.
    """

    @abstractmethod
    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """Examples for one epoch from positive pairs ``(users[j], items[j])``.

        ``users`` are user *slots* of this model (all ``0`` on a device). Any random
        choice (negatives, corruption) draws from ``generator`` only, so a call is
        reproducible; call again each epoch for fresh negatives. ``key``: the device's
        secret key of keyed choices (MF negatives,
        :mod:`fedrec.training.negatives`); ``None`` a public one; other models ignore it.
        """

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over a minibatch, from ``forward``'s output and the target."""
