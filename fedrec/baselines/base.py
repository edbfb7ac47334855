"""The contract every centralized baseline keeps.

Design rule: a baseline sees the whole binary train matrix once (:meth:`Baseline.fit`)
and then scores all items for any batch of users (:meth:`Baseline.score`). It does
not mask the users' train items: the evaluator does that, the same way for every
model, federated or not, so baselines and federated runs are ranked identically.
"""

from __future__ import annotations

from typing import Protocol, Self, runtime_checkable

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.errors import ConfigError


@runtime_checkable
class Baseline(Protocol):
    """A centralized recommender fitted on the whole train matrix."""

    name: str

    def fit(self, train: sp.csr_matrix) -> Self:
        """Fit on a binary ``[n_users, n_items]`` CSR train matrix; return ``self``."""
        ...

    def score(self, users: npt.NDArray[np.int64]) -> torch.Tensor:
        """Scores ``float32 [len(users), n_items]`` for the given user rows; higher is better."""
        ...


def as_binary_csr(train: sp.spmatrix | sp.sparray) -> sp.csr_matrix:
    """``train`` as a float32 CSR matrix with every stored entry set to 1."""
    x = sp.csr_matrix(train, dtype=np.float32, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    x.data[:] = 1.0
    return x


def user_rows(
    train: sp.csr_matrix | None, users: npt.NDArray[np.int64], name: str
) -> sp.csr_matrix:
    """The train rows of ``users``, or a :class:`ConfigError` when ``fit`` was not called."""
    if train is None:
        raise ConfigError(
            f"{name} is not fitted", where=f"{name}.score", fix="call fit(train) first"
        )
    return train[np.asarray(users, dtype=np.int64)]


def to_scores(block: npt.ArrayLike) -> torch.Tensor:
    """A dense numpy/matrix block of scores as a contiguous float32 tensor."""
    return torch.from_numpy(np.ascontiguousarray(np.asarray(block), dtype=np.float32))
