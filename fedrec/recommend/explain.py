"""Faithful "because you interacted with X and Y" explanations, computed on a device.

Method: an item-based score decomposition in the learned item space (the item-based
CF of Sarwar et al., WWW 2001, on learned item vectors; explanation style of
Herlocker et al., CSCW 2000). With ``sim(i, j)`` the cosine of item vectors
(:func:`fedrec.recommend.similar.item_vectors`) and ``H`` the user's history (a set),
the *explained score* of item ``i`` is::

    s_i = sum_{j in H} sim(i, j)

and the explanation of ``i`` cites the history items with the largest contributions
``w_j = sim(i, j)``, keeping only ``w_j > 0``.

Why this method: the explanation is *exact*, not a post-hoc fit. ``s_i`` is additive
over history items, so ``w_j`` is at the same time the leave-one-out effect of ``j``,
its Shapley value (for an additive game the Shapley values are the terms), and the
exact drop of ``s_i`` when ``j`` is removed: removing the cited set ``C`` lowers
``s_i`` by exactly ``sum_{j in C} w_j > 0``. It needs only the global item vectors and
the device's own history (no user vector, no training), works unchanged for MF and
the autoencoders, and costs one ``[n_items, d] x [d]`` product. The alternative for MF,
decomposing a user vector refitted as a linear function of the history, is faithful
only up to the fit's residual and has no analogue for Mult-VAE (no user vector).

Scope of the guarantee: it holds for ``s_i``. When items are ranked by the model's own
score (``recommend_with_explanations(model_scores, ...)``) the citations are the
item-space evidence for each recommended item; to rank *by* the explained score
(explain mode, fully faithful), pass ``item_based_scores(...)`` as ``scores``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedrec.recommend.similar import FloatArray, check_item_indices, unit_rows
from fedrec.recommend.types import Recommendation

IntArray = npt.NDArray[np.int64]


def _history(history_items: npt.ArrayLike, n_items: int) -> IntArray:
    history = np.unique(np.asarray(history_items, dtype=np.int64))
    check_item_indices(history, n_items, "history items")
    return history


def item_based_scores(item_vectors: npt.ArrayLike, history_items: npt.ArrayLike) -> FloatArray:
    """Explained score ``s_i = sum_{j in H} cos(v_i, v_j)`` of every item ``[n_items]``.

    Parameters
    ----------
    item_vectors
        ``[n_items, d]`` learned item vectors.
    history_items
        The user's item indices (repeats count once); empty gives all zeros.
    """
    unit = unit_rows(item_vectors)
    history = _history(history_items, len(unit))
    scores: FloatArray = unit @ unit[history].sum(axis=0)
    return scores


def contributions(
    item_vectors: npt.ArrayLike, history_items: npt.ArrayLike, items: npt.ArrayLike
) -> tuple[IntArray, FloatArray]:
    """The deduplicated history ``H`` and ``w[r, j] = cos(v_items[r], v_H[j])``.

    Row ``r`` sums to ``item_based_scores(...)[items[r]]`` (the exact decomposition).
    """
    unit = unit_rows(item_vectors)
    history = _history(history_items, len(unit))
    targets = np.asarray(items, dtype=np.int64).reshape(-1)
    check_item_indices(targets, len(unit), "recommended items")
    weights: FloatArray = unit[targets] @ unit[history].T
    return history, weights


def explain(
    item_vectors: npt.ArrayLike,
    history_items: npt.ArrayLike,
    recommended: npt.ArrayLike,
    *,
    top: int = 3,
) -> list[list[tuple[int, float]]]:
    """Cite, for each recommended item, the history items that support it most.

    Parameters
    ----------
    item_vectors
        ``[n_items, d]`` learned item vectors.
    history_items
        The user's item indices.
    recommended
        Item indices to explain.
    top
        At most this many citations per item.

    Returns
    -------
    list
        One list per recommended item of ``(history item, weight)``, largest weight
        first (ties by lower index), only weights ``> 0``; removing these items from
        the history lowers that item's explained score by the sum of their weights.
    """
    history, weights = contributions(item_vectors, history_items, recommended)
    out: list[list[tuple[int, float]]] = []
    for row in weights:
        order = np.lexsort((history, -row))[: max(top, 0)]
        out.append([(int(history[j]), float(row[j])) for j in order if row[j] > 0])
    return out


def _top_items(scores: FloatArray, exclude: IntArray, k: int) -> IntArray:
    masked = scores.copy()
    masked[exclude] = -np.inf
    order = np.lexsort((np.arange(len(masked)), -masked))
    order = order[masked[order] > -np.inf]
    return order[: max(k, 0)].astype(np.int64)


def recommend_with_explanations(
    scores: npt.ArrayLike,
    history: npt.ArrayLike,
    item_vectors: npt.ArrayLike,
    *,
    k: int,
    exclude_seen: bool = True,
    top: int = 3,
) -> list[Recommendation]:
    """Top-``k`` items by ``scores``, each with its "because" citations.

    Parameters
    ----------
    scores
        ``[n_items]`` ranking scores (the model's, or :func:`item_based_scores` for
        explain mode); a ``-inf`` score is never recommended.
    history
        The user's item indices.
    item_vectors
        ``[n_items, d]`` learned item vectors.
    k
        How many recommendations.
    exclude_seen
        Do not recommend history items.
    top
        At most this many citations per recommendation.

    Returns
    -------
    list
        :class:`Recommendation` objects whose ``item`` and cited items are *indices*
        (map them with :func:`fedrec.recommend.types.with_original_ids`); best first,
        ties by lower index. ``fallback`` is ``True`` where nothing is cited.
    """
    values = np.asarray(scores, dtype=np.float64).reshape(-1)
    if np.isnan(values).any():
        raise ValueError("scores contain NaN; the model diverged or the scorer is wrong")
    n_vectors = np.shape(item_vectors)[0]
    if n_vectors != len(values):
        raise ValueError(f"{len(values)} scores but {n_vectors} item vectors; use one catalogue")
    seen = _history(history, len(values))
    items = _top_items(values, seen if exclude_seen else seen[:0], k)
    because = explain(item_vectors, seen, items, top=top)
    return [
        Recommendation(item=int(i), score=float(values[i]), because=list(b), fallback=not b)
        for i, b in zip(items, because, strict=True)
    ]
