"""Hand-written local update of one MF device: same result as the autograd path, faster.

Design rule: :func:`fit` and :func:`refit` are a numerical twin of
:func:`fedrec.federated.client.client_fit` and :func:`fedrec.training.local.refit_user`
on :class:`fedrec.models.mf.MatrixFactorization` (non-private). They make *the same
``torch.Generator`` calls in the same order* (the epoch nonce of the keyed negatives of
:mod:`fedrec.training.negatives`, then ``randperm`` minibatches, per epoch; the fresh
user vector is the model's, :func:`initial_user_vector`, defined here and used by
:mod:`fedrec.models.mf`), so results agree with autograd to float rounding
(``tests/test_mf_fast.py``). A device holds one user and a few hundred examples: torch's
per-op autograd and optimizer overhead dominated, so the forward/backward here is closed
form in numpy.

Serving (:func:`scores` with ``torch_free=True``, e.g. ``fedrec recommend``) makes the
same draws from :class:`fedrec.training.torch_stream.TorchCpuStream` and imports no
torch: the refit and its scores are the same arrays. Training keeps torch's generator
(its C ``randperm`` is faster than the twin's Python shuffle).

Gradients of the MF loss of :mod:`fedrec.models.mf` for a minibatch of ``B`` examples
(score ``x = p.q_i + b_i``, per-example L2 ``l2 (||q_i||^2 + ||p||^2)``):

- BCE: ``dL/dx_j = (sigmoid(x_j) - y_j) / B``;
- BPR (Rendle et al., UAI 2009): ``d = x_pos - x_neg``, ``dL/dd_j = -sigmoid(-d_j) / B``;
- ``dL/dp = sum_j dL/dx_j q_j + 2 l2 p``, ``dL/dq_i = sum_{j: i_j = i} dL/dx_j p + 2 l2 q_i / B``,
  ``dL/db_i = sum_{j: i_j = i} dL/dx_j``.

FedProx (Li et al., MLSys 2020) adds ``mu (w - w_global)`` to the item-side gradients
after backward, as :class:`fedrec.training.local.Proximal` does. The optimizers follow
``torch.optim.SGD`` and ``torch.optim.Adam`` (Kingma & Ba, ICLR 2015; PyTorch's
single-tensor update with ``L2`` weight decay, ``betas=(0.9, 0.999)``, ``eps=1e-8``).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.torch_free import TORCH_FREE
from fedrec.training.negatives import keyed_negatives
from fedrec.training.torch_stream import TorchCpuStream

if TYPE_CHECKING:
    import torch

    from fedrec.models.base import Arrays

F32 = npt.NDArray[np.float32]
USER_KEY = TORCH_FREE["mf"].USER_SIDE[0]
"""``MatrixFactorization.USER_SIDE[0]`` (read from the copy: the class imports torch)."""
USER_INIT_STREAM = 0x6D665F75  # ("mf_u") tags the fresh user vector's seed sequence
BETAS, EPS = (0.9, 0.999), 1e-8


def supports(model_cfg: ModelConfig, train_cfg: LocalTrainConfig) -> bool:
    """Whether :func:`fit` / :func:`refit` reproduce the autograd path of MF for these
    configs (:meth:`fedrec.models.mf.MatrixFactorization.fast_fit` asks)."""
    # every other LocalTrainConfig combination (sgd/adam, decay, FedProx) is covered
    del model_cfg
    return train_cfg.user_lr is None


@dataclass
class FastOptimizer:
    """``torch.optim.SGD`` / ``Adam`` over named float32 arrays, updated in place."""

    kind: str
    lr: float
    weight_decay: float
    steps: dict[str, int] = field(default_factory=dict)
    moments: dict[str, tuple[F32, F32]] = field(default_factory=dict)

    @property
    def sparse_ok(self) -> bool:
        """Rows with a zero gradient stay unchanged (plain SGD without weight decay)."""
        return self.kind == "sgd" and self.weight_decay == 0

    def step(self, name: str, param: F32, grad: F32) -> None:
        if self.weight_decay != 0:
            grad = grad + np.float32(self.weight_decay) * param
        if self.kind == "sgd":
            param -= np.float32(self.lr) * grad
            return
        t = self.steps.get(name, 0) + 1
        self.steps[name] = t
        m, v = self.moments.setdefault(name, (np.zeros_like(param), np.zeros_like(param)))
        m += np.float32(1 - BETAS[0]) * (grad - m)
        v *= np.float32(BETAS[1])
        v += np.float32(1 - BETAS[1]) * grad * grad
        step_size = self.lr / (1 - BETAS[0] ** t)
        denom = np.sqrt(v) / np.float32((1 - BETAS[1] ** t) ** 0.5) + np.float32(EPS)
        param -= np.float32(step_size) * m / denom


@dataclass
class FastExamples:
    """One epoch's examples: item rows ``[n]`` (BCE) or ``[n, 2]`` (BPR), labels."""

    items: npt.NDArray[np.int64]
    labels: F32


def fast_examples(
    model_cfg: ModelConfig,
    pos: torch.Tensor | npt.NDArray[np.int64],
    n_items: int,
    gen: torch.Generator | TorchCpuStream,
    key: bytes | None,
) -> FastExamples:
    """:meth:`MatrixFactorization.make_examples`, with the same generator call."""
    k = model_cfg.negatives
    p = pos if isinstance(pos, np.ndarray) else pos.numpy()
    neg = keyed_negatives(gen, key, np.zeros(len(p), dtype=np.int64), p, k, n_items).reshape(-1)
    if model_cfg.loss == "bpr":
        pairs = np.stack([np.repeat(p, k), neg], axis=1)
        return FastExamples(pairs, np.ones(len(pairs), dtype=np.float32))
    labels = np.zeros(len(p) + len(neg), dtype=np.float32)
    labels[: len(p)] = 1.0
    return FastExamples(np.concatenate([p, neg]), labels)


def softplus(x: F32) -> F32:
    """``log(1 + e^x)`` without overflow."""
    out: F32 = np.maximum(x, 0) + np.log1p(np.exp(-np.abs(x)))
    return out


@dataclass
class _Grads:
    loss: float
    p: F32
    rows: npt.NDArray[np.int64]  # item row of each contribution
    q: F32  # [len(rows), d] contributions to dL/dQ
    b: F32  # [len(rows)] contributions to dL/db


def sigmoid(x: F32) -> F32:
    """The logistic function in float32 (``e^-x`` may overflow to ``inf``: 0)."""
    with np.errstate(over="ignore"):
        out: F32 = (1.0 / (1.0 + np.exp(-x))).astype(np.float32)
    return out


def _grads(
    cfg: ModelConfig, p: F32, q_all: F32, b_all: F32, ex: FastExamples, *, items: bool
) -> _Grads:
    """Loss and gradients of one minibatch (see the module docstring).

    With ``items=False`` (the refit: item rows frozen, loss unused) only ``dL/dp``.
    """
    rows = ex.items.reshape(-1)
    q = q_all[rows]
    x = q @ p + b_all[rows, 0]
    n = np.float32(len(ex.labels))
    if cfg.loss == "bpr":  # rows interleave (positive, negative) per example
        d = x[0::2] - x[1::2]
        gd = -sigmoid(-d) / n
        gx = np.stack([gd, -gd], axis=1).reshape(-1)
    else:
        gx = (sigmoid(x) - ex.labels) / n
    gp = gx @ q
    l2 = np.float32(cfg.l2)
    if cfg.l2 != 0:
        gp += np.float32(2) * l2 * p
    if not items:
        return _Grads(float("nan"), gp, rows, q[:0], gx[:0])
    gq = gx[:, None] * p[None, :]
    if cfg.loss == "bpr":
        data = float(np.mean(softplus(-d)))
    else:
        data = float(np.mean(softplus(x) - x * ex.labels))
    if cfg.l2 == 0:
        return _Grads(data, gp, rows, gq, gx)
    gq += (np.float32(2) * l2 / n) * q
    # the mean over examples of sum_i ||q_i||^2 + ||p||^2 (one p term per example)
    penalty = float(np.vdot(q, q)) / float(n) + float(p @ p)
    return _Grads(data + float(l2) * penalty, gp, rows, gq, gx)


def _dense(n_items: int, g: _Grads) -> tuple[F32, F32]:
    import torch

    q = torch.zeros((n_items, g.q.shape[1]))
    b = torch.zeros((n_items, 1))
    idx = torch.from_numpy(g.rows)
    q.index_add_(0, idx, torch.from_numpy(g.q))
    b.index_add_(0, idx, torch.from_numpy(g.b).unsqueeze(1))
    return q.numpy(), b.numpy()


def _summed(g: _Grads) -> tuple[npt.NDArray[np.int64], F32, F32]:
    """Unique touched rows and their summed gradient rows (Q, b)."""
    import torch

    uniq, inv = np.unique(g.rows, return_inverse=True)
    idx = torch.from_numpy(inv.reshape(-1))
    q = torch.zeros((len(uniq), g.q.shape[1])).index_add_(0, idx, torch.from_numpy(g.q))
    b = torch.zeros(len(uniq)).index_add_(0, idx, torch.from_numpy(g.b))
    return uniq, q.numpy(), b.numpy()


@dataclass
class FastModel:
    """The device's MF parameters as float32 arrays (own copies)."""

    p: F32  # [d]
    q: F32  # [n_items, d]
    b: F32  # [n_items, 1]


def initial_user_vector(model_cfg: ModelConfig, seed: int) -> F32:
    """A device's fresh ``p_u ~ N(0, init_std^2)`` ``[dim]``, from ``seed`` alone
    (``build_model(model_cfg, n_items, 1, seed=seed)``'s ``p_u`` for any ``n_items``).

    Drawn from NumPy's PCG64 seeded with ``(seed, USER_INIT_STREAM)``, not from
    torch's stream after the item table: its cost does not grow with the catalog
    (at 340,000 items the torch stream meant 10.9M draws per new user) and the
    stream is not the one the device's negatives are drawn from.
    """
    rng = np.random.default_rng([seed % 2**64, USER_INIT_STREAM])
    dim = model_cfg.dim
    out: F32 = (rng.standard_normal(dim) * model_cfg.init_std).astype(np.float32)
    return out


def load_model(
    model_cfg: ModelConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    seed: int,
    *,
    own_items: bool = True,
) -> FastModel:
    """``own_items=False``: ``q``/``b`` may be the caller's arrays (a refit never writes
    them; at 340,000 items the copies cost more than the refit)."""
    copy = True if own_items else None
    q = np.array(global_items[0], dtype=np.float32, copy=copy)
    b = np.array(global_items[1], dtype=np.float32, copy=copy)
    if user_state is None:
        p = initial_user_vector(model_cfg, seed)
    else:
        p = np.array(user_state[USER_KEY], dtype=np.float32).reshape(-1).copy()
    return FastModel(p, q, b)


@dataclass
class _Loop:
    """What :func:`fedrec.training.local.train_epochs` is given, for the MF twin."""

    cfg: ModelConfig
    pos: npt.NDArray[np.int64]
    gen: torch.Generator | TorchCpuStream
    batch_size: int
    opt: FastOptimizer
    train_items: bool = False
    train_bias: bool = False
    mu: float = 0.0
    anchor: tuple[F32, F32] | None = None
    key: bytes | None = None

    def epochs(self, m: FastModel, n: int) -> float:
        total, steps = 0.0, 0
        for _ in range(n):
            ex = fast_examples(self.cfg, self.pos, m.q.shape[0], self.gen, self.key)
            perm = _randperm(self.gen, len(ex.labels))
            for start in range(0, len(perm), self.batch_size):
                i = perm[start : start + self.batch_size]
                batch = FastExamples(ex.items[i], ex.labels[i])
                g = _grads(self.cfg, m.p, m.q, m.b, batch, items=self.train_items)
                self.opt.step("p", m.p, g.p)
                if self.train_items:
                    self._item_step(m, g)
                total += float(np.float32(g.loss))
                steps += 1
        return total / max(steps, 1)

    def _item_step(self, m: FastModel, g: _Grads) -> None:
        if self.opt.sparse_ok and self.mu == 0:  # only touched rows move
            rows, gq, gb = _summed(g)
            q = m.q[rows]
            self.opt.step("q", q, gq)
            m.q[rows] = q
            if self.train_bias:
                b = m.b[rows, 0]
                self.opt.step("b", b, gb)
                m.b[rows, 0] = b
            return
        gq, gb = _dense(m.q.shape[0], g)
        if self.mu > 0 and self.anchor is not None:
            gq += np.float32(self.mu) * (m.q - self.anchor[0])
            gb += np.float32(self.mu) * (m.b - self.anchor[1])
        self.opt.step("q", m.q, gq)
        if self.train_bias:
            self.opt.step("b", m.b, gb)


def _randperm(gen: torch.Generator | TorchCpuStream, n: int) -> npt.NDArray[np.int64]:
    if isinstance(gen, TorchCpuStream):
        return gen.randperm(n)
    import torch

    perm: npt.NDArray[np.int64] = torch.randperm(n, generator=gen).numpy()
    return perm


def _refit(model_cfg: ModelConfig, cfg: LocalTrainConfig, m: FastModel, loop: _Loop) -> None:
    """The user-side refit (Singhal et al. 2021) on frozen item rows; its loss is unused."""
    if cfg.refit_steps == 0:
        return
    opt = FastOptimizer(cfg.refit_optimizer, cfg.refit_lr, cfg.weight_decay)
    _Loop(model_cfg, loop.pos, loop.gen, cfg.batch_size, opt, key=loop.key).epochs(
        m, cfg.refit_steps
    )


def _start(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    seed: int,
    key: bytes | None,
    *,
    own_items: bool = True,
    torch_free: bool = False,
) -> tuple[FastModel, _Loop]:
    """The one-user model and the seeded example loop a fit or a refit starts from
    (``torch_free``: torch's draws from :class:`TorchCpuStream`)."""
    m = load_model(model_cfg, global_items, user_state, seed, own_items=own_items)
    pos = np.asarray(train_items, dtype=np.int64)
    gen: torch.Generator | TorchCpuStream
    if torch_free:
        gen = TorchCpuStream(seed)
    else:
        import torch

        gen = torch.Generator().manual_seed(seed)
    opt = FastOptimizer("sgd", 1.0, 0.0)
    return m, _Loop(model_cfg, pos, gen, train_cfg.batch_size, opt, key=key)


@dataclass(frozen=True)
class FastFit:
    """Item arrays (upload order), user state and mean minibatch loss of :func:`fit`."""

    item_arrays: Arrays
    user_state: dict[str, F32]
    train_loss: float


def fit(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    key: bytes | None = None,
) -> FastFit:
    """:func:`fedrec.federated.client.client_fit` for MF, without autograd.

    ``key``: the device key of the keyed negatives (``None``: the public key).
    """
    m, base = _start(model_cfg, train_cfg, global_items, user_state, train_items, seed, key)
    pos, gen = base.pos, base.gen
    if user_state is None or train_cfg.refit_every_round:
        _refit(model_cfg, train_cfg.for_refit(first=user_state is None), m, base)
    mu = train_cfg.proximal_mu
    loop = _Loop(
        model_cfg,
        pos,
        gen,
        train_cfg.batch_size,
        FastOptimizer(train_cfg.optimizer, train_cfg.lr, train_cfg.weight_decay),
        train_items=True,
        train_bias=model_cfg.item_bias,
        mu=mu,
        anchor=(m.q.copy(), m.b.copy()) if mu > 0 else None,
        key=key,
    )
    loss = loop.epochs(m, train_cfg.epochs)
    return FastFit([m.q, m.b], {USER_KEY: m.p.reshape(1, -1).copy()}, loss)


def refit(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    key: bytes | None = None,
    torch_free: bool = False,
) -> F32:
    """``p_u`` ``[1, d]`` after :func:`fedrec.training.local.refit_user` as evaluation runs it.

    ``torch_free``: the same draws without importing torch (:class:`TorchCpuStream`).
    """
    m, base = _start(
        model_cfg, train_cfg, global_items, user_state, train_items, seed, key,
        own_items=False, torch_free=torch_free,
    )  # fmt: skip
    _refit(model_cfg, train_cfg, m, base)
    return m.p.reshape(1, -1).copy()


def refit_state(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    init_seed: int,
) -> dict[str, F32] | None:
    """The device's serving refit without torch: :func:`refit` from ``user_state`` (or
    the fresh user vector of ``init_seed``), public negatives, draws of
    :class:`TorchCpuStream`, as the user state; ``None`` unless :func:`supports`."""
    if not supports(model_cfg, train_cfg):
        return None
    if user_state is None:
        user_state = {USER_KEY: initial_user_vector(model_cfg, init_seed)[None, :]}
    p = refit(
        model_cfg, train_cfg, global_items, user_state, train_items, seed=seed, torch_free=True
    )
    return {USER_KEY: p}


def scores(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    torch_free: bool = False,
) -> F32 | None:
    """``p Q^T + b^T`` ``[n_items]`` after :func:`refit`; ``None`` unless :func:`supports`.

    :meth:`fedrec.models.mf.MatrixFactorization.fast_scores`; ``torch_free`` for serving.
    """
    if not supports(model_cfg, train_cfg):
        return None
    p = refit(
        model_cfg, train_cfg, global_items, user_state, train_items, seed=seed,
        torch_free=torch_free,
    )  # fmt: skip
    q, b = (np.asarray(a, dtype=np.float32) for a in global_items[:2])
    out = p @ q.T  # as the harness's batches of users (simulations.evaluation)
    out += b.T
    row: F32 = out[0]
    return row
