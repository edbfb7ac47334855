"""The interaction log every model and metric in fedrec reads.

Design rule: ids are remapped once, at load time, to contiguous integers
``0..n-1`` assigned in ascending original-id order (numeric order when every id is
an integer, string order otherwise). The original ids are kept beside the indices,
so everything a user sees (split files, recommendations, reports) uses original ids.
Rows keep the order of the source file, which the split protocol depends on.
"""

from __future__ import annotations

from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt


@dataclass(frozen=True)
class Interactions:
    """An implicit-feedback interaction log with its id mappings.

    Attributes
    ----------
    user, item
        Contiguous indices (int64), one entry per interaction, in source-file order.
    user_ids, item_ids
        Original ids by index: ``user_ids[user[j]]`` is the id in the source file.
        Kept exactly as given (strings keep leading zeros); int64 when every id is
        an integer.
    rating, timestamp
        Optional per-interaction values (float64 / int64), aligned with ``user``.
    item_genres
        Optional boolean matrix ``[n_items, n_genres]`` (ml-100k ``u.item``,
        ml-1m ``movies.dat``); used by the diversity metric.
    item_titles
        Optional titles by item index, for explanations and reports.
    source
        Where the data came from (a path or ``"synthetic(...)"``), for error
        messages and run configs.
    """

    user: npt.NDArray[np.int64]
    item: npt.NDArray[np.int64]
    user_ids: npt.NDArray[np.generic]
    item_ids: npt.NDArray[np.generic]
    rating: npt.NDArray[np.float64] | None = None
    timestamp: npt.NDArray[np.int64] | None = None
    item_genres: npt.NDArray[np.bool_] | None = None
    item_titles: tuple[str, ...] | None = None
    genre_names: tuple[str, ...] | None = None
    source: str = ""
    extra: dict[str, object] = field(default_factory=dict, compare=False)

    @property
    def n_users(self) -> int:
        return len(self.user_ids)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __len__(self) -> int:
        return len(self.user)
