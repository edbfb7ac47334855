"""Private cold start: which popularity signal a "most popular" fallback may use.

Design rule: the fallback for a user with too little history ranks items by
popularity, and under a privacy mode that popularity must itself be DP, so that what a
device shows reveals nothing the run's guarantee does not cover. Raw counts are read
**only** in mode ``"none"``. Per mode:

- ``"none"``: per-item user counts of the train matrix (the popularity baseline of
  Cremonesi et al., RecSys 2010).
- ``"central"``: a DP release of the counts (:func:`fedrec.privacy.popularity.dp_item_counts`,
  run by the trusted server and recorded in ``privacy.json``), else the learned item
  biases of the global model (post-processing of DP-FedAvg: no extra cost).
- ``"local"``: the learned item biases, trained under DP-SGD on every device
  (post-processing). Nobody holds the raw counts in this trust model, so a count
  release is refused.

New items (catalog rows the signal does not cover, e.g. items added after the release,
or items the caller marks as new from public catalog metadata) are **excluded**:
their score is ``-inf`` and a fallback never recommends them. We do not give them a
prior: every prior would rank them somewhere among the noisy scores with no evidence at
all, and deciding from the data that "no client has seen an item" would be one more
count query, so "new" is taken from public information only. Items the release does
cover keep their (noisy) score even when their true count is zero: the noise is what
hides that.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp

from fedrec.errors import ConfigError
from fedrec.privacy.config import PRIVACY_MODES
from fedrec.privacy.popularity import DPCounts

FloatArray = npt.NDArray[np.float64]


def raw_counts(train: sp.spmatrix | sp.sparray) -> FloatArray:
    """Per-item number of users with an interaction (NOT private)."""
    x = sp.csr_matrix(train, copy=True)
    x.sum_duplicates()
    x.eliminate_zeros()
    return np.bincount(x.indices, minlength=x.shape[1]).astype(np.float64)


def _private_signal(
    privacy_mode: str, dp_counts: DPCounts | npt.ArrayLike | None, item_bias: npt.ArrayLike | None
) -> npt.ArrayLike:
    if privacy_mode == "local":
        if dp_counts is not None:
            raise ConfigError(
                "local mode has no trusted curator to release counts",
                where="popularity_source(dp_counts)",
                fix="use the learned item biases (item_bias=...) in local mode",
            )
        source: DPCounts | npt.ArrayLike | None = item_bias
    else:
        source = dp_counts if dp_counts is not None else item_bias
    if source is None:
        raise ConfigError(
            f"privacy mode {privacy_mode!r} needs a DP popularity signal",
            where="popularity_source",
            fix="pass dp_counts (central) or the model's learned item_bias",
        )
    return source.counts if isinstance(source, DPCounts) else source


def popularity_source(
    privacy_mode: str,
    *,
    train: sp.spmatrix | sp.sparray | None = None,
    dp_counts: DPCounts | npt.ArrayLike | None = None,
    item_bias: npt.ArrayLike | None = None,
    n_items: int | None = None,
    new_items: Sequence[int] | npt.NDArray[np.int64] = (),
) -> FloatArray:
    """The popularity scores ``[n_items]`` a fallback may rank by (higher first).

    Parameters
    ----------
    privacy_mode
        ``"none"``, ``"local"`` or ``"central"``; only ``"none"`` reads ``train``.
    train
        The train matrix (mode ``"none"`` only; never touched otherwise).
    dp_counts
        A DP count release (:class:`fedrec.privacy.popularity.DPCounts` or its counts).
    item_bias
        ``[n_items]`` learned item biases of a DP-trained global model.
    n_items
        Catalog size; rows past the signal's length are new items. Default: its length.
    new_items
        Further item indices known (publicly) to be new; excluded.

    Returns
    -------
    numpy.ndarray
        float64 scores, ``-inf`` for excluded (new) items.
    """
    if privacy_mode not in PRIVACY_MODES:
        raise ConfigError(
            f"unknown privacy mode {privacy_mode!r}", where="privacy", fix="use none|local|central"
        )
    if privacy_mode == "none":
        source: npt.ArrayLike | None = raw_counts(train) if train is not None else item_bias
        if source is None:
            source = dp_counts.counts if isinstance(dp_counts, DPCounts) else dp_counts
        if source is None:
            raise ConfigError("no popularity signal", where="popularity_source", fix="pass train")
    else:
        source = _private_signal(privacy_mode, dp_counts, item_bias)
    signal = np.asarray(source, dtype=np.float64).reshape(-1)
    size = len(signal) if n_items is None else int(n_items)
    if size < len(signal):
        raise ConfigError(
            f"{len(signal)} popularity scores for a catalog of {size} items",
            where="popularity_source(n_items)",
            fix="pass the catalog the signal was computed on (or a larger one)",
        )
    scores = np.full(size, -np.inf)
    scores[: len(signal)] = signal
    scores[np.asarray(new_items, dtype=np.int64)] = -np.inf
    return scores
