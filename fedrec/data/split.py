"""Train/test splits, exactly as the evaluation protocol in ``docs/PROTOCOL.md`` says.

Both splits hold out, per user, ceil(test_fraction * n) of the n distinct items the user
interacted with (a repeated pair counts once, at its first position in the file). Users
with fewer than ``min_interactions`` interactions keep everything in train. The ceiling
is taken of the exact decimal product (0.2 * 15 = 3, not 3.0000000000000004); the
random split draws ONE ``numpy.random.default_rng(seed)`` and one ``rng.permutation(n)``
per eligible user, users in ascending index (= original id) order.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from fractions import Fraction

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fedrec.data.interactions import Interactions
from fedrec.errors import ConfigError, DataError


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


def _check_fraction(test_fraction: float) -> None:
    if not 0.0 < float(test_fraction) < 1.0:  # also rejects NaN
        raise ConfigError(
            f"test fraction must be strictly between 0 and 1, got {test_fraction}",
            where="--test-fraction",
            fix="use e.g. 0.2",
        )


def holdout_size(n: int, test_fraction: float) -> int:
    """``ceil(test_fraction * n)`` computed on the decimal value of ``test_fraction``.

    ``Fraction(repr(0.2))`` is exactly 1/5, so 15 interactions give 3 test items, where
    ``math.ceil(0.2 * 15)`` would give 4 through floating-point rounding.
    """
    return math.ceil(Fraction(repr(float(test_fraction))) * n)


def first_occurrences(data: Interactions) -> npt.NDArray[np.int64]:
    """Rows of ``data`` holding the first occurrence of each user-item pair, in file order."""
    pair = data.user * max(data.n_items, 1) + data.item
    _, first = np.unique(pair, return_index=True)
    return np.sort(first).astype(np.int64)


def _by_user(data: Interactions, rows: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """``rows`` grouped by user (ascending user index), each group in the given order."""
    users = data.user[rows]
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(data.n_users + 1))
    grouped = rows[order]
    return [grouped[bounds[u] : bounds[u + 1]] for u in range(data.n_users)]


def _matrix(data: Interactions, rows: npt.NDArray[np.int64]) -> sp.csr_matrix:
    ones = np.ones(len(rows), dtype=np.float32)
    m = sp.csr_matrix(
        (ones, (data.user[rows], data.item[rows])), shape=(data.n_users, data.n_items)
    )
    m.sum_duplicates()
    m.data[:] = 1.0
    m.sort_indices()
    return m


def _assemble(
    data: Interactions,
    train_rows: list[npt.NDArray[np.int64]],
    test_rows: list[npt.NDArray[np.int64]],
    method: str,
    seed: int,
    test_fraction: float,
) -> Split:
    empty = np.zeros(0, dtype=np.int64)
    train = np.sort(np.concatenate([empty, *train_rows]))
    test = np.concatenate([empty, *test_rows])
    return Split(
        train=_matrix(data, train),
        test=_matrix(data, test),
        data=data,
        train_rows=train.astype(np.int64),
        method=method,
        seed=seed,
        test_fraction=test_fraction,
    )


def _random_holdout(
    data: Interactions,
    rows: npt.NDArray[np.int64],
    *,
    test_fraction: float,
    seed: int,
    min_interactions: int,
    method: str,
) -> Split:
    _check_fraction(test_fraction)
    rng = np.random.default_rng(seed)
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for user_rows in _by_user(data, rows):
        n = len(user_rows)
        if n < min_interactions:
            train.append(user_rows)
            continue
        perm = rng.permutation(n)
        k = holdout_size(n, test_fraction)
        test.append(user_rows[perm[:k]])
        train.append(user_rows[perm[k:]])
    return _assemble(data, train, test, method, seed, test_fraction)


def random_split(
    data: Interactions,
    *,
    test_fraction: float = 0.2,
    seed: int = 0,
    min_interactions: int = 5,
) -> Split:
    """Hold out ``ceil(test_fraction * n)`` random items of every user with ``n >= 5``.

    The protocol of ``docs/PROTOCOL.md``: full-ranking evaluation on a per-user random
    holdout (Krichene & Rendle, KDD 2020, on why not sampled metrics). See the module
    docstring for the exact random procedure.
    """
    return _random_holdout(
        data,
        first_occurrences(data),
        test_fraction=test_fraction,
        seed=seed,
        min_interactions=min_interactions,
        method="random",
    )


def _temporal_holdout(
    data: Interactions,
    rows: npt.NDArray[np.int64],
    *,
    test_fraction: float,
    min_interactions: int,
    method: str,
) -> Split:
    _check_fraction(test_fraction)
    if data.timestamp is None:
        raise DataError(
            "temporal split needs timestamps, but the data has none",
            where=data.source,
            fix="use --split random or add a timestamp column",
        )
    train: list[npt.NDArray[np.int64]] = []
    test: list[npt.NDArray[np.int64]] = []
    for user_rows in _by_user(data, rows):
        n = len(user_rows)
        k = holdout_size(n, test_fraction) if n >= min_interactions else 0
        ordered = user_rows[np.argsort(data.timestamp[user_rows], kind="stable")]
        train.append(ordered[: n - k])
        test.append(ordered[n - k :])
    return _assemble(data, train, test, method, 0, test_fraction)


def temporal_split(
    data: Interactions,
    *,
    test_fraction: float = 0.2,
    min_interactions: int = 5,
) -> Split:
    """Hold out every user's last ``ceil(test_fraction * n)`` items by timestamp.

    Ties in timestamp are broken by position in the file (later line = later).
    """
    return _temporal_holdout(
        data,
        first_occurrences(data),
        test_fraction=test_fraction,
        min_interactions=min_interactions,
        method="temporal",
    )


def validation_split(
    split: Split,
    *,
    seed: int = 0,
    test_fraction: float = 0.2,
    min_interactions: int = 5,
) -> Split:
    """Carve a validation split from ``split.train`` by the split's own procedure.

    A random split gets a random holdout of its train items (``seed``); a temporal split
    holds out each user's latest train items by timestamp, so a sequential model is
    chosen on the same kind of task it is tested on (the past predicts the future).
    Returns a :class:`Split` whose ``train`` is the reduced train set and whose
    ``test`` holds the validation items; the original test items appear in neither.
    """
    method = f"{split.method}-validation"
    if split.method == "temporal":
        return _temporal_holdout(
            split.data,
            split.train_rows,
            test_fraction=test_fraction,
            min_interactions=min_interactions,
            method=method,
        )
    return _random_holdout(
        split.data,
        split.train_rows,
        test_fraction=test_fraction,
        seed=seed,
        min_interactions=min_interactions,
        method=method,
    )
