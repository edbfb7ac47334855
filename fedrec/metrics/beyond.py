"""Beyond-accuracy metrics of a whole set of top-k lists.

Every function takes ``top_lists``, an int array ``[n_users, k]`` of item indices
with ``-1`` padding for short lists, and looks only at the lists given (one per
evaluated user). Definitions:

- catalog coverage: distinct recommended items / ``n_items`` (Ge et al., RecSys 2010);
- novelty: mean self-information ``-log2 p_i`` over every list entry, ``p_i`` being
  the share of train users (users with >= 1 train item) who have item ``i``
  (Zhou et al., PNAS 2010). An item no train user has is counted as if exactly one
  had it (``p_i = 1 / #train users``), so novelty stays finite;
- Gini index of exposure (how many lists contain each item) over *all* catalog
  items, never-recommended items counting with exposure 0: 0 is perfectly even,
  ``(n - 1) / n`` is everything on one item (Fleder & Hosanagar 2009);
- intra-list diversity: per list, mean pairwise ``1 - cosine`` of the items' genre
  vectors, then the mean over lists with at least two items (Ziegler et al., WWW
  2005). An item without any genre has cosine 0 with everything. ``None`` when the
  data have no genres.

Empty inputs give 0.0 (nothing recommended: no coverage, no novelty, no inequality).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp


def _entries(top_lists: npt.NDArray[np.int64]) -> npt.NDArray[np.int64]:
    flat = np.asarray(top_lists, dtype=np.int64).ravel()
    return flat[flat >= 0]


def coverage(top_lists: npt.NDArray[np.int64], n_items: int) -> float:
    """Share of the catalog that appears in at least one list."""
    return float(np.unique(_entries(top_lists)).size) / n_items if n_items else 0.0


def novelty(top_lists: npt.NDArray[np.int64], train: sp.csr_matrix) -> float:
    """Mean ``-log2(p_i)`` over every list entry, ``p_i`` from the train matrix."""
    entries = _entries(top_lists)
    if entries.size == 0:
        return 0.0
    binary = sp.csr_matrix(train, copy=True)
    binary.data = np.ones_like(binary.data)
    binary.sum_duplicates()
    binary.data = np.ones_like(binary.data)
    n_train_users = max(int((np.diff(binary.indptr) > 0).sum()), 1)
    item_users = np.asarray(binary.sum(axis=0), dtype=np.float64).ravel()
    p = np.maximum(item_users[entries], 1.0) / n_train_users
    return float(np.mean(-np.log2(p)))


def gini(top_lists: npt.NDArray[np.int64], n_items: int) -> float:
    """Gini index of per-item exposure counts over all ``n_items`` items."""
    exposure = np.sort(np.bincount(_entries(top_lists), minlength=n_items)).astype(np.float64)
    total = exposure.sum()
    if n_items == 0 or total == 0:
        return 0.0
    index = np.arange(1, n_items + 1, dtype=np.float64)
    return float(np.sum((2 * index - n_items - 1) * exposure) / (n_items * total))


def intra_list_diversity(
    top_lists: npt.NDArray[np.int64], item_genres: npt.NDArray[np.bool_] | None
) -> float | None:
    """Mean over lists of the mean pairwise ``1 - cosine`` of genre vectors."""
    if item_genres is None or item_genres.size == 0:
        return None
    lists = np.asarray(top_lists, dtype=np.int64)
    if lists.ndim != 2 or lists.shape[0] == 0:
        return 0.0
    vectors = np.asarray(item_genres, dtype=np.float64)
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    unit = np.divide(vectors, norms, out=np.zeros_like(vectors), where=norms > 0)
    valid = lists >= 0
    v = unit[np.where(valid, lists, 0)] * valid[..., None]
    cosine = np.einsum("ukg,ulg->ukl", v, v)
    pair = valid[:, :, None] & valid[:, None, :] & ~np.eye(lists.shape[1], dtype=bool)
    n_pairs = pair.sum(axis=(1, 2))
    keep = n_pairs > 0
    if not keep.any():
        return 0.0
    per_list = ((1.0 - cosine) * pair).sum(axis=(1, 2))[keep] / n_pairs[keep]
    return float(per_list.mean())
