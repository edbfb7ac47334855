"""Hand-written local update of one LightGCN device: the autograd path's result, faster.

Design rule: as :mod:`fedrec.training.mf_fast` for MF, :func:`fit` and :func:`scores`
are a numerical twin of :func:`fedrec.federated.client.client_fit` and
:func:`fedrec.federated.client.client_scores` on
:class:`fedrec.models.lightgcn.LightGCN`: the same ``torch.Generator`` calls in the same
order (keyed negatives' epoch nonce, then ``randperm`` minibatches, per epoch; the fresh
user vector from the model's initialization stream, which is MF's), so the results
agree to float rounding (``tests/test_lightgcn.py``). The examples are MF's.

Gradients of one minibatch of ``B`` rows (candidate ``j``, ``a = [j in N(u)]``,
``S = sum_{i in N(u)} q_i``, ``n = sqrt(max(1, d_u - a))``, ``m = (S - a q_j) / n``,
``x = (p + m) . q_j / 2 + b_j``), with ``g = dL/dx`` as MF's (BCE or BPR):

- ``dL/dp = sum_r g_r q_j / 2 + 2 l2 p``;
- ``dL/dq_j += g_r ((p + m_r) / 2 - a_r q_j / (2 n_r)) + 2 l2 q_j / B`` (the candidate);
- ``dL/dq_i += sum_r g_r q_j / (2 n_r)`` for every ``i in N(u)`` (the message);
- ``dL/db_j += g_r``.

Item gradients are dense (``torch.optim`` semantics for SGD, Adam, weight decay and
FedProx are then exact).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.training.mf_fast import (
    USER_KEY,
    FastExamples,
    FastModel,
    FastOptimizer,
    fast_examples,
    load_model,
    sigmoid,
    softplus,
)

F32 = npt.NDArray[np.float32]


def supports(model_cfg: ModelConfig, train_cfg: LocalTrainConfig) -> bool:
    """Whether :func:`fit` reproduces the autograd path (one optimizer for all
    parameters: no separate user-side rate)."""
    del model_cfg
    return train_cfg.user_lr is None


@dataclass(frozen=True)
class FastFit:
    """Item arrays (upload order), user state and mean minibatch loss of :func:`fit`."""

    item_arrays: Arrays
    user_state: dict[str, F32]
    train_loss: float


@dataclass
class _Graph:
    items: npt.NDArray[np.int64]  # the user's distinct items N(u)
    member: npt.NDArray[np.bool_]  # [n_items] membership in N(u)


def _graph(train_items: npt.NDArray[np.int64], n_items: int) -> _Graph:
    items = np.unique(np.asarray(train_items, dtype=np.int64))
    member = np.zeros(n_items, dtype=bool)
    member[items] = True
    return _Graph(items, member)


def _step(
    cfg: ModelConfig,
    m: FastModel,
    graph: _Graph,
    ex: FastExamples,
    *,
    items: bool,
    s: F32 | None = None,
) -> tuple[float, F32, F32 | None, F32 | None]:
    """``(loss, dL/dp, dL/dQ, dL/db)`` of one minibatch (``items=False``: ``dL/dp`` only);
    ``s``: ``sum_{i in N(u)} q_i`` when the caller holds it (a refit: ``Q`` is frozen)."""
    rows = ex.items.reshape(-1)
    q = m.q[rows]
    a = graph.member[rows].astype(np.float32)
    if s is None:
        s = m.q[graph.items].sum(0)
    n = np.sqrt(np.maximum(np.float32(len(graph.items)) - a, np.float32(1)))
    message = (s[None, :] - a[:, None] * q) / n[:, None]
    half = np.float32(0.5)
    e = half * (m.p[None, :] + message)
    x = (e * q).sum(1) + m.b[rows, 0]
    count = np.float32(len(ex.labels))
    if cfg.loss == "bpr":  # rows interleave (positive, negative) per example
        d = x[0::2] - x[1::2]
        gd = -sigmoid(-d) / count
        gx = np.stack([gd, -gd], axis=1).reshape(-1)
    else:
        gx = (sigmoid(x) - ex.labels) / count
    l2 = np.float32(cfg.l2)
    gp = half * (gx @ q)
    if cfg.l2 != 0:
        gp += np.float32(2) * l2 * m.p
    if not items:
        return float("nan"), gp, None, None
    gq_rows = gx[:, None] * (e - half * (a / n)[:, None] * q)
    if cfg.l2 != 0:
        gq_rows += (np.float32(2) * l2 / count) * q
    gq = torch.zeros(m.q.shape).index_add_(0, torch.from_numpy(rows), torch.from_numpy(gq_rows))
    gq[torch.from_numpy(graph.items)] += torch.from_numpy(half * ((gx / n) @ q))
    gb = torch.zeros(m.b.shape).index_add_(
        0, torch.from_numpy(rows), torch.from_numpy(gx).unsqueeze(1)
    )
    if cfg.loss == "bpr":
        data = float(np.mean(softplus(-d)))
    else:
        data = float(np.mean(softplus(x) - x * ex.labels))
    if cfg.l2 != 0:
        data += float(l2) * (float(np.vdot(q, q)) / float(count) + float(m.p @ m.p))
    return data, gp, gq.numpy(), gb.numpy()


@dataclass
class _Loop:
    cfg: ModelConfig
    graph: _Graph
    pos: torch.Tensor
    gen: torch.Generator
    key: bytes | None
    batch_size: int

    def epochs(
        self,
        m: FastModel,
        n: int,
        opt: FastOptimizer,
        *,
        items: bool,
        train_bias: bool = True,
        proximal: tuple[float, F32, F32] | None = None,
    ) -> float:
        """``n`` epochs of minibatch steps (:func:`fedrec.training.local.train_epochs`)."""
        total, steps = 0.0, 0
        s = None if items else m.q[self.graph.items].sum(0)  # Q is frozen: its sum too
        for _ in range(n):
            ex = fast_examples(self.cfg, self.pos, m.q.shape[0], self.gen, self.key)
            perm = torch.randperm(len(ex.labels), generator=self.gen).numpy()
            for start in range(0, len(perm), self.batch_size):
                i = perm[start : start + self.batch_size]
                batch = FastExamples(ex.items[i], ex.labels[i])
                loss, gp, gq, gb = _step(self.cfg, m, self.graph, batch, items=items, s=s)
                opt.step("p", m.p, gp)
                if gq is not None and gb is not None:
                    if proximal is not None:
                        mu, q0, b0 = proximal
                        gq += np.float32(mu) * (m.q - q0)
                        gb += np.float32(mu) * (m.b - b0)
                    opt.step("q", m.q, gq)
                    if train_bias:
                        opt.step("b", m.b, gb)
                total += float(np.float32(loss))
                steps += 1
        return total / max(steps, 1)


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
) -> tuple[FastModel, _Loop]:
    m = load_model(model_cfg, global_items, user_state, seed, own_items=own_items)
    pos = torch.as_tensor(np.asarray(train_items, dtype=np.int64))
    graph = _graph(pos.numpy(), m.q.shape[0])
    gen = torch.Generator().manual_seed(seed)
    return m, _Loop(model_cfg, graph, pos, gen, key, train_cfg.batch_size)


def _refit(cfg: LocalTrainConfig, m: FastModel, loop: _Loop, steps: int) -> None:
    if steps == 0:
        return
    opt = FastOptimizer(cfg.refit_optimizer, cfg.refit_lr, cfg.weight_decay)
    loop.epochs(m, steps, opt, items=False)


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
    """:func:`fedrec.federated.client.client_fit` for LightGCN, without autograd."""
    m, loop = _start(model_cfg, train_cfg, global_items, user_state, train_items, seed, key)
    if user_state is None or train_cfg.refit_every_round:
        _refit(train_cfg, m, loop, train_cfg.refit_epochs(first=user_state is None))
    mu = train_cfg.proximal_mu
    proximal = (mu, m.q.copy(), m.b.copy()) if mu > 0 else None
    opt = FastOptimizer(train_cfg.optimizer, train_cfg.lr, train_cfg.weight_decay)
    loss = loop.epochs(
        m, train_cfg.epochs, opt, items=True, train_bias=model_cfg.item_bias, proximal=proximal
    )
    return FastFit([m.q, m.b], {USER_KEY: m.p.reshape(1, -1).copy()}, loss)


def user_vector(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
) -> F32:
    """``e_u = (p_u + m_u) / 2`` ``[d]`` as :func:`scores` ranks with: ``p_u`` refitted
    for ``train_cfg.refit_steps`` epochs, ``m_u`` over ``train_items``' distinct items.

    The simulation harness stacks these for a batch of users and scores them with one
    ``E Q^T + b`` (:mod:`simulations.evaluation`)."""
    m, loop = _start(
        model_cfg, train_cfg, global_items, user_state, train_items, seed, None, own_items=False
    )  # a refit never writes q or b: no copies of them
    _refit(train_cfg, m, loop, train_cfg.refit_steps)
    d = max(len(loop.graph.items), 1)
    e: F32 = np.float32(0.5) * (m.p + m.q[loop.graph.items].sum(0) / np.float32(np.sqrt(d)))
    return e


def scores(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: dict[str, F32] | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
) -> torch.Tensor:
    """Scores ``[n_items]`` as :func:`fedrec.federated.client.client_scores` computes
    them: refit ``p_u`` for ``train_cfg.refit_steps`` epochs, then ``e_u Q^T + b``
    (:func:`user_vector`)."""
    e = user_vector(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed)
    q = np.asarray(global_items[0], dtype=np.float32)
    b = np.asarray(global_items[1], dtype=np.float32).reshape(-1)
    return torch.from_numpy(q @ e + b)
