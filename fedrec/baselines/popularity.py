"""Most-popular baseline: every user gets the same ranking by train count.

The scores are the item counts themselves, so the model can also be built from
counts released by someone else (e.g. counts noised by a differentially private
mechanism) with :meth:`Popularity.from_counts`, without ever seeing the matrix.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.baselines.base import as_binary_csr
from fedrec.errors import ConfigError


class Popularity:
    """Score of item ``i`` = number of train users who have ``i``.

    Ties keep the evaluator's tie-breaking; no personalisation at all, which makes
    it the floor any collaborative model must clear (Cremonesi et al., RecSys 2010).
    """

    name = "popularity"

    def __init__(self) -> None:
        self.counts: torch.Tensor | None = None

    @classmethod
    def from_counts(cls, counts: npt.ArrayLike) -> Popularity:
        """A fitted model from given per-item counts (any real values, e.g. DP-noised)."""
        values = np.asarray(counts, dtype=np.float64)
        if values.ndim != 1 or not np.all(np.isfinite(values)):
            raise ConfigError(
                f"popularity counts must be a finite 1-d array, got shape {values.shape}",
                where="Popularity.from_counts",
                fix="pass one count per item",
            )
        model = cls()
        model.counts = torch.from_numpy(values.astype(np.float32))
        return model

    def fit(self, train: sp.csr_matrix) -> Self:
        x = as_binary_csr(train)
        self.counts = torch.from_numpy(np.asarray(x.sum(axis=0), dtype=np.float32).ravel())
        return self

    def score(self, users: npt.NDArray[np.int64]) -> torch.Tensor:
        if self.counts is None:
            raise ConfigError(
                "popularity is not fitted", where="Popularity.score", fix="call fit(train) first"
            )
        return self.counts.expand(len(users), -1).clone()
