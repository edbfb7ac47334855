"""The learned item space: item vectors of each model kind, cosine, similar items.

Design rule: everything on the recommendation side (explanations, diversity,
similar items) reads one matrix, ``item_vectors [n_items, d]``, picked out of the
global item-side arrays by :func:`item_vectors`, and compares items by the cosine of
its rows. Item-item cosine in a learned embedding is the item-based similarity of
Sarwar et al. (WWW 2001) and Deshpande & Karypis (TOIS 2004), computed on learned
factors instead of co-occurrence columns (Koren, KDD 2008). The functions are pure and
need only the global item parameters, so a device can run them on its own.

Which item-side array holds the item vectors (rows indexed by item) is the model
class's ``ITEM_VECTORS`` (:mod:`fedrec.models.base`); today:

- ``mf``: ``item_emb.weight`` ``[n_items, dim]`` (the ``Q`` of ``p_u . q_i``);
- ``cdae``: ``decoder.weight`` ``[n_items, dim]`` (``nn.Linear(dim, n_items)`` stores
  ``W_dec`` as ``[out, in]``: row ``i`` is item ``i``'s output vector, no transpose);
- ``multvae``: ``dec_out.weight`` ``[n_items, hidden]`` (the last decoder layer);
- ``ials``: ``item_emb.weight`` ``[n_items, dim]`` (the ``Q`` of ``p_u . q_i``);
- ``ncf``: ``item_gmf.weight`` ``[n_items, dim]`` (the GMF tower's item vectors; the MLP
  tower's item vectors only mean something through the nonlinear tower).

The array is found by that name in the model class's ``ITEM_SIDE`` (upload order), so
a change of upload order cannot silently pick the wrong array.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError

FloatArray = npt.NDArray[np.float64]


def item_vectors(
    model_kind: str, item_arrays: list[npt.NDArray[np.float32]] | list[FloatArray]
) -> FloatArray:
    """The item embedding matrix ``[n_items, d]`` in the global item-side arrays.

    Parameters
    ----------
    model_kind
        A trained model kind (:data:`fedrec.models.registry.MODEL_KINDS`).
    item_arrays
        The model's item-side arrays in upload order (e.g. the server's global
        parameters, or :func:`fedrec.models.base.get_item_arrays`).
    """
    from fedrec.models.registry import MODEL_KINDS
    from fedrec.models.torch_free import facts

    if model_kind not in MODEL_KINDS:
        raise ConfigError(
            f"no item vectors for model kind {model_kind!r}",
            where="model.kind",
            fix=f"use one of {', '.join(MODEL_KINDS)}",
        )
    cls = facts(model_kind)  # the class, or for MF / iALS a copy of its facts (no torch)
    names = cls.ITEM_SIDE
    if len(item_arrays) != len(names):
        raise ConfigError(
            f"{model_kind} has {len(names)} item-side arrays {names}, got {len(item_arrays)}",
            where="item_arrays",
            fix="pass every item-side array in upload order",
        )
    vectors = np.asarray(item_arrays[names.index(cls.ITEM_VECTORS)])
    if vectors.ndim != 2:
        raise ConfigError(
            f"item vectors must be 2-D, got shape {vectors.shape}", where="item_arrays"
        )
    return vectors.astype(np.float64)


def unit_rows(features: npt.ArrayLike) -> FloatArray:
    """Rows scaled to unit L2 norm; an all-zero row stays zero (cosine 0 with everything)."""
    x = np.asarray(features, dtype=np.float64)
    if x.ndim != 2:
        raise ValueError(f"item features must be 2-D [n_items, d], got shape {x.shape}")
    norms = np.linalg.norm(x, axis=1, keepdims=True)
    unit: FloatArray = np.divide(x, norms, out=np.zeros_like(x), where=norms > 0)
    return unit


def check_item_indices(items: npt.NDArray[np.int64], n_items: int, what: str) -> None:
    if items.size and (items.min() < 0 or items.max() >= n_items):
        raise ValueError(f"{what} must be item indices in [0, {n_items})")


def similar_items(
    item_vectors: npt.ArrayLike, item: int, *, k: int = 10
) -> list[tuple[int, float]]:
    """The ``k`` items closest to ``item`` by cosine in the learned item space.

    Parameters
    ----------
    item_vectors
        ``[n_items, d]``, e.g. from :func:`item_vectors`.
    item
        The query item's index.
    k
        How many neighbours; fewer when the catalogue is smaller.

    Returns
    -------
    list
        ``(item index, cosine)`` best first, ties by lower index; ``item`` itself is
        never included.
    """
    unit = unit_rows(item_vectors)
    check_item_indices(np.array([item], dtype=np.int64), len(unit), "item")
    cosine = unit @ unit[item]
    order = np.lexsort((np.arange(len(unit)), -cosine))
    order = order[order != item][: max(k, 0)]
    return [(int(j), float(cosine[j])) for j in order]
