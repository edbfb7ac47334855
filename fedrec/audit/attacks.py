"""Item-inference attacks on one item-side update, and their metrics.

Design rule: an attack maps an update ``delta = upload - global`` (item-side arrays in
upload order) to one score per item; a higher score means "the user trained on this
item". Every model is handled alike: an array whose first axis has ``n_items`` rows
(MF ``Q``, ``b``; the autoencoders' decoder) contributes its rows, an array whose last
axis has ``n_items`` columns (the autoencoders' encoder) its columns, so each item
gets one vector :func:`item_rows`. Without noise, rows of items the user never
touched change only through shared parameters (none in MF): ranking rows by the norm
of their change recovers the user's items (FCF's leak, Ammad-ud-din et al. 2019).

Attacks:

- ``row_norm``: ``||delta_i||``.
- ``bias_change``: the signed change of the item bias: a positive's logit is pushed
  up, a sampled negative's down (BCE), so the sign separates them.
- ``alignment``: ``|<delta_i, v>|`` with ``v`` the top right singular vector of the
  row matrix: a user's items move along the direction of ``p_u`` (MF), noise does not.
- ``classifier``: logistic regression on per-row features (:func:`row_features`),
  calibrated on shadow clients (:mod:`fedrec.audit.shadow`; Shokri et al., S&P 2017).
"""

from __future__ import annotations

import math

import numpy as np
import numpy.typing as npt
from scipy.stats import rankdata

from fedrec.models.base import Arrays

FloatArray = npt.NDArray[np.float64]
FEATURES = ("log_row_norm", "bias_change", "alignment", "popularity")


def item_rows(arrays: Arrays, n_items: int) -> tuple[FloatArray, FloatArray]:
    """Per-item vectors ``[n_items, m]`` of the matrices and per-item scalars of the vectors.

    Returns ``(rows, biases)``: ``biases`` sums the 1-D item-indexed arrays (e.g. MF
    ``b``, signed); zeros when there is none.
    """
    parts: list[FloatArray] = []
    biases = np.zeros(n_items)
    for a in arrays:
        x = np.asarray(a, dtype=np.float64)
        if x.ndim == 1 and x.shape[0] == n_items:
            biases += x
        elif x.ndim == 2 and x.shape[0] == n_items and x.shape[1] == 1:
            biases += x[:, 0]
        elif x.ndim >= 2 and x.shape[0] == n_items:
            parts.append(x.reshape(n_items, -1))
        elif x.ndim == 2 and x.shape[1] == n_items:
            parts.append(x.T)
    rows = np.concatenate(parts, axis=1) if parts else biases[:, None].copy()
    return rows, biases


def update_of(upload: Arrays, global_items: Arrays) -> Arrays:
    """``upload - global``, array by array."""
    return [
        (np.asarray(u, np.float64) - np.asarray(g, np.float64)).astype(np.float32)
        for u, g in zip(upload, global_items, strict=True)
    ]


def row_norm_scores(delta: Arrays, n_items: int) -> FloatArray:
    """``||delta_i||`` over every item-indexed parameter (biases included)."""
    rows, biases = item_rows(delta, n_items)
    return np.asarray(np.sqrt(np.sum(rows**2, axis=1) + biases**2), dtype=np.float64)


def bias_change_scores(delta: Arrays, n_items: int) -> FloatArray:
    """The signed change of the item-indexed 1-D arrays (MF ``b``; zeros without one)."""
    return item_rows(delta, n_items)[1]


def alignment_scores(delta: Arrays, n_items: int) -> FloatArray:
    """``|<delta_i, v>|`` for the top right singular vector ``v`` of the row matrix."""
    rows, _ = item_rows(delta, n_items)
    if not np.any(rows):
        return np.zeros(n_items)
    _, _, vt = np.linalg.svd(rows, full_matrices=False)
    return np.asarray(np.abs(rows @ vt[0]), dtype=np.float64)


def _standardize(x: FloatArray) -> FloatArray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / (sd if sd > 0 else 1.0)


def row_features(delta: Arrays, n_items: int, popularity: FloatArray) -> FloatArray:
    """Features ``[n_items, len(FEATURES)]``, standardized within the update.

    Standardizing per update makes a classifier transfer between clients with
    different numbers of items and between noise levels. ``popularity`` is a public
    per-item proxy (e.g. the global item bias).
    """
    rows, biases = item_rows(delta, n_items)
    norm = np.sqrt(np.sum(rows**2, axis=1))
    columns = [
        np.log(norm + 1e-12),
        biases,
        alignment_scores(delta, n_items),
        np.asarray(popularity, dtype=np.float64),
    ]
    return np.stack([_standardize(c) for c in columns], axis=1)


def fit_logistic(
    x: FloatArray, y: npt.NDArray[np.bool_], *, l2: float = 1e-3, iters: int = 50
) -> FloatArray:
    """L2-regularized logistic regression by Newton's method; returns ``[bias, w...]``."""
    xb = np.hstack([np.ones((len(x), 1)), x])
    w = np.zeros(xb.shape[1])
    target = y.astype(np.float64)
    reg = l2 * len(x) * np.eye(len(w))
    reg[0, 0] = 0.0
    for _ in range(iters):
        p = 1.0 / (1.0 + np.exp(-np.clip(xb @ w, -30, 30)))
        grad = xb.T @ (p - target) + reg @ w
        hess = (xb * (p * (1 - p))[:, None]).T @ xb + reg + 1e-9 * np.eye(len(w))
        step = np.linalg.solve(hess, grad)
        w -= step
        if float(np.max(np.abs(step))) < 1e-8:
            break
    return w


def logistic_scores(weights: FloatArray, x: FloatArray) -> FloatArray:
    """Log-odds ``[bias, w] . [1, x]`` (monotone in the probability)."""
    return np.asarray(weights[0] + x @ weights[1:], dtype=np.float64)


def roc_auc(scores: npt.ArrayLike, labels: npt.ArrayLike) -> float:
    """Area under the ROC curve (Mann-Whitney U; ties count one half); NaN if one class."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    pos, neg = int(y.sum()), int((~y).sum())
    if pos == 0 or neg == 0:
        return math.nan
    ranks = rankdata(s)
    return float((ranks[y].sum() - pos * (pos + 1) / 2) / (pos * neg))


def precision_at_k(scores: npt.ArrayLike, labels: npt.ArrayLike, k: int) -> float:
    """Fraction of true items among the ``k`` top-scored (ties broken by index)."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    if k < 1:
        return math.nan
    top = np.argsort(-s, kind="stable")[:k]
    return float(np.mean(y[top]))


def roc_curve(scores: npt.ArrayLike, labels: npt.ArrayLike) -> tuple[FloatArray, FloatArray]:
    """``(fpr, tpr)`` at every threshold, from ``(0, 0)`` to ``(1, 1)``."""
    s = np.asarray(scores, dtype=np.float64)
    y = np.asarray(labels, dtype=bool)
    order = np.argsort(-s, kind="stable")
    tp = np.concatenate([[0], np.cumsum(y[order])])
    fp = np.concatenate([[0], np.cumsum(~y[order])])
    return fp / max(1, int((~y).sum())), tp / max(1, int(y.sum()))
