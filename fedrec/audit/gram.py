"""Item inference on what a federated-EASE server receives (:mod:`fedrec.federated.gram`).

Design rule: one attack, whatever the privacy mode, on a device's upload read as a
packed Gram contribution (the isometric upper triangle of ``x x^T``, normalized or
not). In central and ``none`` mode that is the upload itself; under
``--privacy distributed`` it is the masked SecAgg+ ring vector decoded with the
public plan (:func:`fedrec.privacy.distributed.decode`: centre, un-rotate, divide by
the scale), exactly what the server would do to an unmasked input. The item set
leaks through the diagonal (``x`` or ``x / |x|^2``) and through each item's row.

Attacks (a higher score means "the user has this item"):

- ``popularity_prior``: the released diagonal of the Gram matrix (the run's DP item
  popularity, public after the release): what the server knows of every user.
- ``upload_diagonal``: the diagonal of the (decoded) upload.
- ``upload_row_norm``: each item's row norm of the (decoded) upload.
- ``upload_classifier``: logistic regression over the prior, the two upload scores
  and (distributed) the diagonal of the audited cohort's noisy sum, fitted on half of
  the audited users with their true items (a server that knows some users' data) and
  scored on the other half (Shokri et al., S&P 2017's shadow-model idea).

A masked upload is uniform in the ring whatever the input, so under distributed DP no
attack should beat the prior; in central mode (the positive control) the diagonal
alone recovers the items.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import FloatArray, fit_logistic, logistic_scores, roc_auc

IntArray = npt.NDArray[np.int64]
MAX_ABOVE_PRIOR = 0.02
"""How far above the popularity prior an attack on masked uploads may score (AUC)."""


def diagonal_positions(n_items: int) -> IntArray:
    """Positions of ``(i, i)`` in a packed upper triangle of an ``I x I`` matrix."""
    i = np.arange(n_items, dtype=np.int64)
    return i * n_items - i * (i - 1) // 2


def diagonal_scores(packed: npt.ArrayLike, n_items: int) -> FloatArray:
    """Each item's diagonal entry of a packed Gram contribution."""
    return np.asarray(np.asarray(packed, np.float64)[diagonal_positions(n_items)], np.float64)


def row_norm_scores(packed: npt.ArrayLike, n_items: int) -> FloatArray:
    """Each item's row L2 norm of a packed (isometric) Gram contribution.

    Off-diagonal packed values carry a factor ``sqrt(2)``; row ``i`` of the matrix
    holds ``(i, i)`` once and each ``(i, j)`` once, so ``sum_j G_ij^2`` =
    ``diag^2 + (sum of the squared packed off-diagonals of row i and column i) / 2``.
    """
    p = np.asarray(packed, dtype=np.float64)
    rows, cols = np.triu_indices(n_items)
    sq = p**2
    off = rows != cols
    half = sq[off] / 2
    total = np.asarray(np.bincount(rows[off], half, n_items), dtype=np.float64)
    total = total + np.bincount(cols[off], half, n_items) + diagonal_scores(p, n_items) ** 2
    return np.asarray(np.sqrt(total), dtype=np.float64)


def _standardize(x: FloatArray) -> FloatArray:
    sd = float(np.std(x))
    return (x - float(np.mean(x))) / (sd if sd > 0 else 1.0)


def user_features(
    packed: npt.ArrayLike, n_items: int, prior: FloatArray, extra: list[FloatArray]
) -> FloatArray:
    """``[n_items, 3 + len(extra)]`` features of one user, standardized within the user."""
    columns = [prior, diagonal_scores(packed, n_items), row_norm_scores(packed, n_items), *extra]
    return np.stack([_standardize(np.asarray(c, np.float64)) for c in columns], axis=1)


@dataclass(frozen=True)
class UploadAttack:
    """Mean per-user AUC of each attack, and the users each was scored on."""

    auc: dict[str, float]
    users: dict[str, int]
    scores: dict[str, list[tuple[FloatArray, IntArray]]]
    """Per attack, per scored user: ``(scores, train items)`` (for pooled ROC curves)."""

    def above_prior(self) -> float:
        """The largest AUC of an upload attack minus the prior's (on the same users)."""
        prior = self.auc["popularity_prior"]
        return max(v for k, v in self.auc.items() if k != "popularity_prior") - prior


def _mean_auc(per_user: list[tuple[FloatArray, IntArray]], n_items: int) -> float:
    aucs = []
    for scores, items in per_user:
        y = np.zeros(n_items, dtype=bool)
        y[items] = True
        aucs.append(roc_auc(scores, y))
    return float(np.nanmean(aucs)) if aucs else float("nan")


def attack_uploads(
    uploads: dict[int, npt.NDArray[np.floating]],
    train: dict[int, IntArray],
    prior: FloatArray,
    n_items: int,
    *,
    extra: list[FloatArray] | None = None,
    seed: int = 0,
) -> UploadAttack:
    """Run every attack on the packed uploads ``uploads`` (user -> packed vector).

    ``prior``: the released diagonal; ``extra``: further per-item features the server
    holds, the same for every user (e.g. the audited cohort's noisy sum's diagonal).
    The classifier is fitted on a seeded half of the users and scored on the rest; the
    other attacks are scored on that same rest, so their AUCs compare.
    """
    extra = extra or []
    users = sorted(uploads)
    rng = np.random.default_rng([seed, 0x6A3])
    order = rng.permutation(len(users))
    fit_users = {users[i] for i in order[: len(users) // 2]}
    held = [u for u in users if u not in fit_users]
    feats = {u: user_features(uploads[u], n_items, prior, extra) for u in users}
    labels = {u: np.isin(np.arange(n_items), train[u]) for u in users}
    x = np.concatenate([feats[u] for u in fit_users]) if fit_users else np.zeros((0, 1))
    y = np.concatenate([labels[u] for u in fit_users]) if fit_users else np.zeros(0, bool)
    weights = fit_logistic(x, y) if len(y) and y.any() and (~y).any() else None
    scores: dict[str, list[tuple[FloatArray, IntArray]]] = {
        "popularity_prior": [(np.asarray(prior, np.float64), train[u]) for u in held],
        "upload_diagonal": [(diagonal_scores(uploads[u], n_items), train[u]) for u in held],
        "upload_row_norm": [(row_norm_scores(uploads[u], n_items), train[u]) for u in held],
    }
    if weights is not None:
        scores["upload_classifier"] = [(logistic_scores(weights, feats[u]), train[u]) for u in held]
    auc = {name: _mean_auc(per_user, n_items) for name, per_user in scores.items()}
    return UploadAttack(auc=auc, users={k: len(v) for k, v in scores.items()}, scores=scores)


__all__ = [
    "MAX_ABOVE_PRIOR",
    "UploadAttack",
    "attack_uploads",
    "diagonal_positions",
    "diagonal_scores",
    "row_norm_scores",
    "user_features",
]
