"""Next-item baseline: a first-order Markov chain on the user's last item.

The classic sequential reference (the "first-order Markov chain" baselines of Rendle
et al., "Factorizing Personalized Markov Chains", WWW 2010, and of SASRec's paper):
count, over every user's train sequence in time order, how often item ``j`` directly
follows item ``i``; a user's scores are the counts of the transitions out of their
last train item, ``T[last, :]``. Ties (most items never follow ``last``) are broken by
popularity: ``score = T[last, j] + pop_j / (max pop + 1)``, which stays below one
transition, so any observed transition outranks any popular item. A user without a
train item gets popularity.

The transition counts need each user's order, which a binary train matrix does not
hold: fit with :meth:`MarkovNextItem.fit_sequences` or :meth:`fit_split`
(:func:`fedrec.data.sequences.train_sequences`); :meth:`fit` on a matrix is refused.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.data.split import Split
from fedrec.errors import ConfigError


class MarkovNextItem:
    """First-order Markov next-item scores with a popularity tie-break."""

    name = "markov"

    def __init__(self) -> None:
        self.transitions: sp.csr_matrix | None = None
        self.popularity: npt.NDArray[np.float32] | None = None
        self.last: npt.NDArray[np.int64] | None = None

    def fit(self, train: sp.csr_matrix) -> Self:
        """Refused: a binary matrix has no order (use :meth:`fit_split`)."""
        del train
        raise ConfigError(
            "the Markov next-item baseline needs each user's train items in time order, "
            "which a binary train matrix does not hold",
            where="MarkovNextItem.fit",
            fix="call fit_split(split) or fit_sequences(sequences, n_items)",
        )

    def fit_split(self, split: Split) -> Self:
        """Fit on ``split``'s train sequences (time order, :mod:`fedrec.data.sequences`)."""
        from fedrec.data.sequences import train_sequences

        return self.fit_sequences(train_sequences(split), split.n_items)

    def fit_sequences(self, sequences: Sequence[npt.NDArray[np.int64]], n_items: int) -> Self:
        """Fit on one ordered item sequence per user (index = user row)."""
        if n_items < 1:
            raise ConfigError(
                f"need n_items >= 1, got {n_items}", where="MarkovNextItem", fix="check the data"
            )
        src: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
        dst: list[npt.NDArray[np.int64]] = [np.zeros(0, dtype=np.int64)]
        pop = np.zeros(n_items, dtype=np.float64)
        last = np.full(len(sequences), -1, dtype=np.int64)
        for user, seq in enumerate(sequences):
            s = np.asarray(seq, dtype=np.int64)
            if s.size and (s.min() < 0 or s.max() >= n_items):
                raise ConfigError(
                    f"user {user}: item index outside 0..{n_items - 1}",
                    where="MarkovNextItem.fit_sequences",
                    fix="pass item indices of the catalog",
                )
            if s.size:
                last[user] = s[-1]
                pop[np.unique(s)] += 1.0
                src.append(s[:-1])
                dst.append(s[1:])
        rows, cols = np.concatenate(src), np.concatenate(dst)
        counts = sp.csr_matrix(
            (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_items, n_items)
        )
        counts.sum_duplicates()
        self.transitions = counts
        self.popularity = (pop / (pop.max() + 1.0)).astype(np.float32)
        self.last = last
        return self

    def score_last(self, last_items: npt.NDArray[np.int64]) -> torch.Tensor:
        """Scores ``[b, n_items]`` for users whose last item is ``last_items`` (-1: none)."""
        if self.transitions is None or self.popularity is None:
            raise ConfigError(
                "markov is not fitted", where="MarkovNextItem.score", fix="call fit_split first"
            )
        last = np.asarray(last_items, dtype=np.int64)
        out = np.tile(self.popularity, (len(last), 1))
        known = last >= 0
        if known.any():
            out[known] += self.transitions[last[known]].toarray()
        return torch.from_numpy(np.ascontiguousarray(out, dtype=np.float32))

    def score(self, users: npt.NDArray[np.int64]) -> torch.Tensor:
        """Scores ``[len(users), n_items]`` from each user's last train item."""
        if self.last is None:
            raise ConfigError(
                "markov is not fitted", where="MarkovNextItem.score", fix="call fit_split first"
            )
        return self.score_last(self.last[np.asarray(users, dtype=np.int64)])
