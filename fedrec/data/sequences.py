"""Each user's interactions in time order: what a sequential model and its baseline read.

Design rule: a split stores each user's train items as a *set* (sorted item indices,
:meth:`fedrec.data.split.Split.train_items`), which is all a set model needs. A
sequential model (:mod:`fedrec.models.sasrec`) and the next-item baseline
(:mod:`fedrec.baselines.markov`) need the *order*: a user's train interactions sorted
by timestamp, ties by position in the source file (the temporal split's own order,
``docs/PROTOCOL.md``), oldest first. Without timestamps the file order is the order.

Where a model reads a user's history as a vector (``Recommender.score``), an ordered
history carries the order in its values (:func:`ordered_history`): item ``i`` has the
value ``1 + its position`` in the sequence, ``0`` when absent, so the largest value is
the most recent item. A binary history (every value 1) is the degenerate case: no order
is known and ties fall back to item index (:func:`sequence_from_history`).
"""

from __future__ import annotations

import weakref
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:  # reading a user's items needs neither torch nor scipy (serving)
    import torch

    from fedrec.data.interactions import Interactions
    from fedrec.data.split import Split

_CACHE: dict[int, list[npt.NDArray[np.int64]]] = {}


def user_sequences(data: Interactions, rows: npt.NDArray[np.int64]) -> list[npt.NDArray[np.int64]]:
    """The items of ``rows`` grouped by user (index = user), each in time order.

    Order: timestamp ascending, ties by position in ``rows`` (stable); ``rows`` in file
    order give the temporal split's tie rule. Users without rows get an empty array.
    """
    rows = np.asarray(rows, dtype=np.int64)
    if data.timestamp is not None:
        rows = rows[np.argsort(data.timestamp[rows], kind="stable")]
    users = data.user[rows]
    order = np.argsort(users, kind="stable")
    bounds = np.searchsorted(users[order], np.arange(data.n_users + 1))
    items = data.item[rows[order]].astype(np.int64)
    return [items[bounds[u] : bounds[u + 1]] for u in range(data.n_users)]


def train_sequences(split: Split) -> list[npt.NDArray[np.int64]]:
    """Every user's train items in time order (cached per split object)."""
    key = id(split)
    found = _CACHE.get(key)
    if found is None:
        found = user_sequences(split.data, np.sort(split.train_rows))
        _CACHE[key] = found
        weakref.finalize(split, _CACHE.pop, key, None)
    return found


def train_sequence(split: Split, user: int) -> npt.NDArray[np.int64]:
    """``user``'s train items in time order, oldest first."""
    return train_sequences(split)[int(user)]


def user_train_items(split: Split, user: int, *, ordered: bool) -> npt.NDArray[np.int64]:
    """``user``'s train items: in time order for a sequential model, else sorted."""
    return train_sequence(split, user) if ordered else split.train_items(user)


def sequence_pairs(split: Split) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """All (user, item) train pairs, user-major, each user's items in time order."""
    seqs = train_sequences(split)
    lengths = np.array([len(s) for s in seqs], dtype=np.int64)
    users = np.repeat(np.arange(len(seqs), dtype=np.int64), lengths)
    empty = np.zeros(0, dtype=np.int64)
    return users, np.concatenate([empty, *seqs]).astype(np.int64)


def ordered_history(
    items: npt.NDArray[np.int64], n_items: int, *, ordered: bool = True
) -> torch.Tensor:
    """A ``[1, n_items]`` history row of ``items``: ``1 + position`` (``ordered``) or 1.

    A repeated item keeps its last position (its most recent interaction).
    """
    import torch

    history = torch.zeros(1, n_items)
    values = np.asarray(items, dtype=np.int64)
    if ordered and len(np.unique(values)) != len(values):
        values = np.asarray(last_unique([int(i) for i in values]), dtype=np.int64)
    idx = torch.as_tensor(values)
    if ordered:
        history[0, idx] = torch.arange(1, len(idx) + 1, dtype=torch.float32)
    else:
        history[0, idx] = 1.0
    return history


def sequence_from_history(history: torch.Tensor) -> torch.Tensor:
    """The items of one history row (values > 0), ordered by value, ties by index."""
    import torch

    present = torch.nonzero(history > 0).flatten()
    order = torch.argsort(history[present], stable=True)
    return present[order]


def last_unique(items: list[int]) -> list[int]:
    """``items`` with each repeated item kept at its last occurrence only."""
    seen: set[int] = set()
    out: list[int] = []
    for item in reversed(items):
        if item not in seen:
            seen.add(item)
            out.append(item)
    return out[::-1]
