"""What a device shows its user: a recommended item, its score, and why."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field, replace

import numpy as np
import numpy.typing as npt

ItemId = int | str
"""An item id: a contiguous index inside fedrec, the source file's id once mapped back."""


@dataclass(frozen=True)
class Recommendation:
    """One recommended item with its explanation.

    Attributes
    ----------
    item
        The item: an index as returned by
        :func:`fedrec.recommend.explain.recommend_with_explanations`, the original id
        after :func:`with_original_ids`.
    score
        The ranking score the item was recommended by (higher is better).
    because
        ``(history item, weight)`` pairs, largest weight first: the user's own items
        whose item-space similarity supports this item (see
        :mod:`fedrec.recommend.explain`); every weight is > 0.
    fallback
        ``True`` when no history item supports the item (empty ``because``), e.g. a
        user without history: the item is shown without a "because".
    title
        The item's title from public catalog metadata, when the model carries titles.
    """

    item: ItemId
    score: float
    because: list[tuple[ItemId, float]] = field(default_factory=list)
    fallback: bool = False
    title: str | None = None


def with_original_ids(
    recommendations: Sequence[Recommendation], item_ids: npt.NDArray[np.generic]
) -> list[Recommendation]:
    """Map every item index (recommended and cited) to its original id.

    Parameters
    ----------
    recommendations
        Recommendations whose items are indices.
    item_ids
        ``Interactions.item_ids``: the original id of each index.
    """

    def original(index: ItemId) -> ItemId:
        value = item_ids[int(index)]
        return int(value) if isinstance(value, np.integer | int) else str(value)

    return [
        replace(r, item=original(r.item), because=[(original(j), w) for j, w in r.because])
        for r in recommendations
    ]
