"""Original ids and the contiguous indices that replace them at load time.

Design rule: ids are read as given (strings keep leading zeros). A column becomes
int64 only when every one of its ids is a canonical integer string (``"7"``, ``"-3"``,
not ``"007"`` or ``"+7"``), so that an id written back to a file is byte-for-byte the
id that was read. Indices are assigned in ascending original-id order: numeric order
for integer ids, string order otherwise.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.interactions import Interactions

# At most 18 digits, so every canonical id fits int64 without overflow checks.
_CANONICAL_INT = r"-?(?:0|[1-9][0-9]{0,17})"


def canonical_ids(values: npt.ArrayLike) -> npt.NDArray[np.generic]:
    """Return ``values`` as int64 if every one is a canonical integer, else as str objects."""
    arr = np.asarray(values)
    if arr.dtype.kind in "iu":
        return arr.astype(np.int64)
    strings = pd.Series(np.asarray(arr, dtype=object)).astype(str)
    if len(strings) and bool(strings.str.fullmatch(_CANONICAL_INT).all()):
        return strings.astype(np.int64).to_numpy()
    return strings.to_numpy(dtype=object)


def encode_ids(
    values: npt.ArrayLike,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.generic]]:
    """Map ids to contiguous indices in ascending id order.

    Returns
    -------
    codes, ids
        ``codes[j]`` is the index of ``values[j]``; ``ids[k]`` is the original id of
        index ``k`` (int64 when every id is a canonical integer, else str objects).
    """
    arr = np.asarray(values)
    if arr.dtype.kind not in "iu":
        arr = arr.astype(object)
    codes, uniques = pd.factorize(arr)
    ids = canonical_ids(np.asarray(uniques))
    order = np.argsort(ids, kind="stable")
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order), dtype=np.int64)
    return rank[np.asarray(codes, dtype=np.int64)], ids[order]


def id_lookup(ids: npt.NDArray[np.generic]) -> pd.Index:
    """An index from the string form of each original id to its position."""
    index: pd.Index = pd.Index(np.asarray([str(x) for x in ids], dtype=object))
    return index


def to_original_ids(
    data: Interactions,
    users: npt.ArrayLike,
    items: npt.ArrayLike,
) -> tuple[npt.NDArray[np.generic], npt.NDArray[np.generic]]:
    """Original user and item ids of the given indices, for anything a user will read."""
    u = np.asarray(users, dtype=np.int64)
    i = np.asarray(items, dtype=np.int64)
    return data.user_ids[u], data.item_ids[i]
