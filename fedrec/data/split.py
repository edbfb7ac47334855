"""Train/test splits, exactly as the evaluation protocol in ``docs/PROTOCOL.md`` says.

(Split functions are implemented below the :class:`Split` container.)
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fedrec.data.interactions import Interactions


@dataclass(frozen=True)
class Split:
    """A per-user train/test split of one :class:`Interactions` log.

    Attributes
    ----------
    train, test
        Binary ``float32`` CSR matrices ``[n_users, n_items]`` (a repeated user-item
        pair counts once).
    data
        The interaction log the split was made from (id mappings, genres).
    train_rows
        Indices into ``data`` of the train interactions, in source-file order (the
        first occurrence of each user-item pair); a validation split is carved from
        these by the same procedure.
    method, seed, test_fraction
        How the split was made, for run configs.
    """

    train: sp.csr_matrix
    test: sp.csr_matrix
    data: Interactions
    train_rows: npt.NDArray[np.int64]
    method: str = "random"
    seed: int = 0
    test_fraction: float = 0.2

    @property
    def n_users(self) -> int:
        return int(self.train.shape[0])

    @property
    def n_items(self) -> int:
        return int(self.train.shape[1])

    def train_items(self, user: int) -> npt.NDArray[np.int64]:
        """Item indices in ``user``'s train set (sorted)."""
        m = self.train
        return np.asarray(m.indices[m.indptr[user] : m.indptr[user + 1]], dtype=np.int64)

    def test_items(self, user: int) -> npt.NDArray[np.int64]:
        """Item indices in ``user``'s test set (sorted)."""
        m = self.test
        return np.asarray(m.indices[m.indptr[user] : m.indptr[user + 1]], dtype=np.int64)

    def test_users(self) -> npt.NDArray[np.int64]:
        """Users with at least one test item: the users every metric averages over."""
        return np.flatnonzero(np.diff(self.test.indptr) > 0).astype(np.int64)
