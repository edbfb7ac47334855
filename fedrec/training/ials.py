"""iALS maths: closed-form user solves, the device's dense item gradient, the ALS twin.

The loss is implicit ALS (Hu, Koren & Volinsky, ICDM 2008) in the form of Rendle et al.
("Revisiting the Performance of iALS on Item Recommendation Benchmarks", RecSys 2022),
with their frequency-scaled regularization at ``nu = 1``. For user ``u`` with train
items ``S`` (``|S| = s``) and ``n`` catalog items, the device's share of the loss is

``f_u(p, Q) = sum_{i in S} (p.q_i - 1)^2 + alpha0 p^T G p + lam (s + alpha0 n) ||p||^2
+ lam (sum_{i in S} ||q_i||^2 + alpha0 ||Q||_F^2)``,

with ``G = Q^T Q`` the Gramian (``d x d``): the all-unobserved term ``alpha0 sum_i
(p.q_i)^2`` needs no negative sampling. Summed over the ``N`` users the item term is
Rendle's ``lam (|U_i| + alpha0 N) ||q_i||^2``, so the federated objective is the
centralized one exactly (``nu = 1`` is the exponent for which the item-side
regularization splits into per-user shares).

- The user vector has a closed form (:func:`solve_user`):
  ``p = (Q_S^T Q_S + alpha0 G + lam (s + alpha0 n) I)^{-1} Q_S^T 1``.
- At that ``p`` the gradient of ``min_p f_u`` in ``Q`` is the partial gradient
  (envelope theorem), :func:`item_gradient`: rows ``i in S`` get ``2 (p.q_i - 1) p +
  2 lam q_i``, and every row gets ``2 alpha0 (q_i.p) p + 2 lam alpha0 q_i``: a dense
  ``n x d`` array. The federated form (Ammad-ud-din et al. 2019, "Federated
  Collaborative Filtering") uploads ``Q - lr * grad``; the server's Adam steps on the
  cohort mean, as the autoencoders' FedSGD presets do.
- The centralized twin (:func:`train_als`) alternates the same closed form over all
  users and all items (the item solve is the user solve with the roles swapped).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.models.config import LocalTrainConfig, ModelConfig

if TYPE_CHECKING:  # the user solve and serving need neither (no torch import: scores)
    import scipy.sparse as sp
    import torch

    from fedrec.data.split import Split
    from fedrec.models.base import Arrays

F64 = npt.NDArray[np.float64]
USER_KEY = "user_emb.weight"
ALS_ITERATIONS = 10
"""Alternations of the centralized twin (each an item solve then a user solve)."""
SOLVE_CHUNK = 512
"""Users solved together by :func:`solve_rows` (bounds the ``chunk x d x d`` stack)."""


def user_regularization(n_user_items: int, n_items: int, alpha0: float, lam: float) -> float:
    """Rendle et al.'s frequency-scaled ``lam (s + alpha0 n)`` at ``nu = 1``."""
    return lam * (n_user_items + alpha0 * n_items)


def gramian(q: npt.ArrayLike) -> F64:
    """``G = Q^T Q`` (``d x d``, float64)."""
    q64 = np.asarray(q, dtype=np.float64)
    out: F64 = q64.T @ q64
    return out


_LAST_GRAMIAN: list[tuple[F64, F64]] = []
"""The last ``(Q, G)`` of :func:`round_gramian` (one entry)."""


def round_gramian(q64: F64) -> F64:
    """:func:`gramian` of ``q64``, reused while ``Q`` is bitwise the same array content.

    Every device of a round solves against the same global ``Q``; in a simulation they
    share a process, and recomputing ``Q^T Q`` (``n d^2`` flops) per device was most of a
    round's CPU (ml-1m sparse cut: 0.13 s of a device's 0.13 s). The check is an exact
    comparison of the whole array, so the result is the one :func:`gramian` returns.
    """
    if _LAST_GRAMIAN:
        cached_q, cached_g = _LAST_GRAMIAN[0]
        if cached_q.shape == q64.shape and np.array_equal(cached_q, q64):
            return cached_g.copy()
    g = gramian(q64)
    _LAST_GRAMIAN[:] = [(q64.copy(), g.copy())]
    return g


def solve_user(
    q: npt.ArrayLike,
    items: npt.NDArray[np.int64],
    *,
    alpha0: float,
    lam: float,
    gram: F64 | None = None,
) -> F64:
    """The minimiser ``p`` of ``f_u(., Q)`` for a user with train ``items`` (``[d]``)."""
    q64 = np.asarray(q, dtype=np.float64)
    n, d = q64.shape
    qs = q64[np.asarray(items, dtype=np.int64)]
    g = round_gramian(q64) if gram is None else gram
    a = alpha0 * g + qs.T @ qs
    a[np.diag_indices(d)] += user_regularization(len(qs), n, alpha0, lam)
    p: F64 = np.linalg.solve(a, qs.sum(axis=0))
    return p


def user_loss(
    p: npt.ArrayLike,
    q: npt.ArrayLike,
    items: npt.NDArray[np.int64],
    *,
    alpha0: float,
    lam: float,
    gram: F64 | None = None,
) -> float:
    """``f_u(p, Q)`` (the device's share of the loss, item regularization included).

    ``gram``: ``Q``'s :func:`gramian`, when the caller has it: the all-item sums are then
    ``p^T G p`` and ``trace(G)`` (``d^2`` flops instead of two passes over ``Q``; equal
    up to float rounding)."""
    p64, q64 = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    n = q64.shape[0]
    qs = q64[np.asarray(items, dtype=np.int64)]
    fit = float(((qs @ p64 - 1.0) ** 2).sum())
    if gram is None:
        all_scores, all_norms = float(((q64 @ p64) ** 2).sum()), float((q64 * q64).sum())
    else:
        all_scores, all_norms = float(p64 @ gram @ p64), float(np.trace(gram))
    reg_user = user_regularization(len(qs), n, alpha0, lam) * float(p64 @ p64)
    reg_items = lam * (float((qs * qs).sum()) + alpha0 * all_norms)
    return fit + alpha0 * all_scores + reg_user + reg_items


def item_gradient(
    p: npt.ArrayLike, q: npt.ArrayLike, items: npt.NDArray[np.int64], *, alpha0: float, lam: float
) -> F64:
    """``d f_u / d Q`` at ``p`` (``[n, d]``; every row is non-zero in general)."""
    p64, q64 = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    idx = np.asarray(items, dtype=np.int64)
    scores = q64 @ p64
    grad: F64 = 2.0 * alpha0 * np.outer(scores, p64) + (2.0 * lam * alpha0) * q64
    grad[idx] += 2.0 * np.outer(scores[idx] - 1.0, p64) + (2.0 * lam) * q64[idx]
    return grad


def user_gradient(
    p: npt.ArrayLike,
    q: npt.ArrayLike,
    items: npt.NDArray[np.int64],
    *,
    alpha0: float,
    lam: float,
    gram: F64 | None = None,
) -> F64:
    """``d f_u / d p`` (zero at :func:`solve_user`'s solution); ``gram`` as in
    :func:`user_loss` (``G p`` for ``Q^T (Q p)``)."""
    p64, q64 = np.asarray(p, dtype=np.float64), np.asarray(q, dtype=np.float64)
    qs = q64[np.asarray(items, dtype=np.int64)]
    reg = user_regularization(len(qs), q64.shape[0], alpha0, lam)
    gp = q64.T @ (q64 @ p64) if gram is None else gram @ p64
    grad: F64 = 2.0 * (qs.T @ (qs @ p64 - 1.0) + alpha0 * gp + reg * p64)
    return grad


@dataclass(frozen=True)
class IalsFit:
    """One device's round: the upload, the user vector to keep, the mean loss."""

    item_arrays: Arrays
    user_state: dict[str, npt.NDArray[np.float32]]
    train_loss: float


def supports(model_cfg: ModelConfig, train_cfg: LocalTrainConfig) -> bool:
    """Whether :func:`fit` reproduces iALS's autograd path (plain SGD, the preset's;
    :meth:`fedrec.models.ials.IALS.fast_fit` asks)."""
    del model_cfg
    return train_cfg.optimizer == "sgd"


def fit(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, npt.NDArray[np.float32]] | None,
    train_items: npt.NDArray[np.int64],
) -> IalsFit:
    """A device's round: solve ``p`` in closed form, upload ``Q - lr * dL/dQ`` (dense).

    With the preset (one epoch of SGD at rate 1) the upload is minus the gradient of the
    device's share of the loss at its optimal ``p``. More epochs take further SGD steps
    on ``(p, Q)`` (``p`` at ``train_cfg.user_lr``, default ``lr``), with weight decay and
    the FedProx term as ``torch.optim.SGD`` and :class:`fedrec.training.local.Proximal`
    apply them: the autograd path of :func:`fedrec.federated.client.client_fit` step by
    step. Deterministic: no negatives, no minibatches. A stored ``user_state`` is used
    only when ``refit_every_round`` is off (else ``p`` is re-solved on ``Q``).
    """
    q_global = np.asarray(global_items[0], dtype=np.float64)
    q = q_global.copy()
    items = np.asarray(train_items, dtype=np.int64)
    a0, lam = model_cfg.alpha0, model_cfg.l2
    gram: F64 | None = round_gramian(q_global)  # the global Q's, valid for the first epoch
    if user_state is None or train_cfg.refit_every_round:
        p = solve_user(q, items, alpha0=a0, lam=lam, gram=gram)
    else:
        p = np.asarray(user_state[USER_KEY], dtype=np.float64)[0].copy()
    wd, mu = train_cfg.weight_decay, train_cfg.proximal_mu
    user_lr = train_cfg.user_lr or train_cfg.lr
    losses = []
    for _ in range(train_cfg.epochs):
        losses.append(user_loss(p, q, items, alpha0=a0, lam=lam, gram=gram))
        g_q = item_gradient(p, q, items, alpha0=a0, lam=lam)
        g_p = user_gradient(p, q, items, alpha0=a0, lam=lam, gram=gram)
        gram = None  # Q moves below
        if mu > 0:
            g_q += mu * (q - q_global)
        if wd > 0:
            g_q += wd * q
            g_p += wd * p
        q -= train_cfg.lr * g_q
        p -= user_lr * g_p
    state = {USER_KEY: p.astype(np.float32)[None, :]}
    return IalsFit([q.astype(np.float32)], state, float(np.mean(losses)))


def user_vector(model_cfg: ModelConfig, global_items: Arrays, train_items: npt.ArrayLike) -> F64:
    """The user's vector on the current global items (evaluation and serving)."""
    items = np.asarray(train_items, dtype=np.int64)
    return solve_user(global_items[0], items, alpha0=model_cfg.alpha0, lam=model_cfg.l2)


def scores(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, npt.NDArray[np.float32]] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    torch_free: bool = True,
) -> npt.NDArray[np.float32]:
    """``Q p`` ``[n_items]`` (float32) with the closed-form user vector (any ``train_cfg``:
    it is the refit; no draw, so ``seed`` and ``torch_free`` change nothing).

    :meth:`fedrec.models.ials.IALS.fast_scores`; serving calls it without torch.
    """
    del train_cfg, user_state, seed, torch_free
    p64 = user_vector(model_cfg, global_items, train_items)
    q64 = np.asarray(global_items[0], dtype=np.float64)
    out: npt.NDArray[np.float32] = (q64 @ p64).astype(np.float32)
    return out


def refit_state(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, npt.NDArray[np.float32]] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    init_seed: int,
) -> dict[str, npt.NDArray[np.float32]]:
    """The device's serving refit without torch: :meth:`fedrec.models.ials.IALS.solve_users`
    on a one-user model (the closed-form vector, stored as float32; whatever the start,
    ``train_cfg`` and seeds)."""
    del train_cfg, user_state, seed, init_seed
    p = user_vector(model_cfg, global_items, train_items)
    return {USER_KEY: p.astype(np.float32)[None, :]}


def solve_rows(
    other: npt.ArrayLike,
    matrix: sp.csr_matrix,
    *,
    alpha0: float,
    lam: float,
    gram: F64 | None = None,
) -> F64:
    """Closed-form solve of every row of ``matrix`` against the factors ``other``.

    Rows are users and ``other`` is ``Q`` (the user step), or rows are items of the
    transposed matrix and ``other`` is ``P`` (the item step, whose regularization
    ``lam (|U_i| + alpha0 N)`` has the same form). The ``d x d`` systems are built row by
    row (``O_S^T O_S``, one BLAS call each) and solved together in chunks of
    :data:`SOLVE_CHUNK` rows. ``gram``: ``other``'s :func:`gramian`, when the caller has it.
    """
    import scipy.sparse as sp

    o = np.asarray(other, dtype=np.float64)
    m, d = o.shape
    csr = sp.csr_matrix(matrix)
    indptr, indices = csr.indptr, csr.indices
    base = alpha0 * (gramian(o) if gram is None else gram)
    n_rows = csr.shape[0]
    out = np.empty((n_rows, d), dtype=np.float64)
    diag = np.diag_indices(d)
    for start in range(0, n_rows, SOLVE_CHUNK):
        stop = min(start + SOLVE_CHUNK, n_rows)
        a = np.empty((stop - start, d, d))
        b = np.empty((stop - start, d))
        for k, row in enumerate(range(start, stop)):
            os_ = o[indices[indptr[row] : indptr[row + 1]]]
            a[k] = os_.T @ os_ + base
            a[k][diag] += lam * (len(os_) + alpha0 * m)
            b[k] = os_.sum(axis=0)
        out[start:stop] = np.linalg.solve(a, b[:, :, None])[:, :, 0]
    return out


def train_als(
    model_cfg: ModelConfig, train: sp.csr_matrix, *, iterations: int, q0: npt.ArrayLike
) -> tuple[F64, F64]:
    """Centralized iALS: ``iterations`` alternating closed-form solves from ``Q = q0``.

    Returns ``(P, Q)``: user factors ``[n_users, d]`` and item factors ``[n_items, d]``.
    """
    import scipy.sparse as sp

    a0, lam = model_cfg.alpha0, model_cfg.l2
    q = np.asarray(q0, dtype=np.float64)
    x = sp.csr_matrix(train)
    xt = sp.csr_matrix(x.T)
    p = solve_rows(q, x, alpha0=a0, lam=lam)
    for _ in range(iterations):
        q = solve_rows(p, xt, alpha0=a0, lam=lam)
        p = solve_rows(q, x, alpha0=a0, lam=lam)
    return p, q


def train_ials_centralized(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    seed: int,
    epochs: int | None,
) -> Callable[[npt.NDArray[np.int64]], torch.Tensor]:
    """The centralized twin: :func:`train_als` from the federated run's initial items.

    ``epochs``: ALS iterations (default :data:`ALS_ITERATIONS`); ``train_cfg`` is unused
    (closed-form solves have no optimizer).
    """
    import torch

    from fedrec.models.registry import init_item_arrays

    del train_cfg
    q0 = init_item_arrays(model_cfg, split.n_items, seed=seed)[0]
    iterations = ALS_ITERATIONS if epochs is None else epochs
    p, q = train_als(model_cfg, split.train, iterations=iterations, q0=q0)
    users_f, items_f = (
        torch.from_numpy(p.astype(np.float32)),
        torch.from_numpy(q.astype(np.float32)),
    )

    def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
        return users_f[torch.as_tensor(np.asarray(users, dtype=np.int64))] @ items_f.T

    return score
