"""LightGCN's centralized twin and the full-graph LightGCN reference.

- :func:`train_lightgcn_centralized`: the twin of ``--model lightgcn``, the same model
  (:class:`fedrec.models.lightgcn.LightGCN`, propagation on each user's own star) and
  the same loss on all users at once, with Adam on minibatches that hold whole users:
  a user's message ``m_u`` is computed once per step for all of its examples, so an
  epoch costs one pass over the graph's edges instead of one per example.
- :func:`train_full_lightgcn`: LightGCN as He et al. (SIGIR 2020) train it, propagating
  over the *whole* normalized user-item graph ``A_hat = D^{-1/2} A D^{-1/2}`` (a
  ``torch.sparse`` matrix; ``K`` layers, layer mean), on the same BCE loss with the same
  keyed negatives and per-example L2 on the layer-0 rows. Its paths through other users
  are what a device cannot compute; the gap to it measures what the ego-graph design
  gives up (``docs/RESULTS.md``).
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch.nn import functional as F

from fedrec.data.split import Split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import ScoreFn
from fedrec.training.centralized import score_function, train_pairs
from fedrec.training.local import make_optimizer
from fedrec.training.negatives import keyed_negatives

TWIN_EPOCHS = 30
"""Default epochs of the twin (``docs/RESULTS.md``)."""
TWIN_TRAIN = LocalTrainConfig(optimizer="adam", lr=0.005, batch_size=4096)
"""Adam at 0.005 on minibatches of about 4,096 example rows made of whole users (MF's
twin settings)."""


def twin_preset() -> tuple[ModelConfig, LocalTrainConfig]:
    """The twin's model (the federated preset's) and its Adam settings."""
    from fedrec.federated.presets import LIGHTGCN_MODEL

    return LIGHTGCN_MODEL, TWIN_TRAIN


def user_batches(
    example_users: torch.Tensor, n_users: int, batch_rows: int, generator: torch.Generator
) -> list[torch.Tensor]:
    """One epoch of minibatches of example indices, each holding whole users (shuffled),
    about ``batch_rows`` rows each."""
    order = torch.argsort(example_users, stable=True)
    counts = torch.bincount(example_users, minlength=n_users)
    starts = torch.cumsum(counts, 0) - counts
    perm = torch.randperm(n_users, generator=generator)
    n_batches = max(1, round(len(example_users) / batch_rows))
    out = []
    for group in perm.tensor_split(n_batches):
        lengths = counts[group]
        offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
        out.append(order[torch.repeat_interleave(starts[group], lengths) + within])
    return [b for b in out if len(b)]


def train_lightgcn_centralized(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    *,
    seed: int,
    epochs: int | None = None,
) -> ScoreFn:
    """Train :class:`~fedrec.models.lightgcn.LightGCN` on every user of ``split``.

    ``epochs`` default :data:`TWIN_EPOCHS`; ``train_cfg``: optimizer, rate, rows per
    minibatch (whole users). Seeds initialization, negatives and batch order.
    """
    model = build_model(model_cfg, split.n_items, split.n_users, seed=seed)
    users, items = train_pairs(split)
    gen = torch.Generator().manual_seed(seed)
    optimizer = make_optimizer(list(model.parameters()), train_cfg)
    model.train()
    for _ in range(TWIN_EPOCHS if epochs is None else epochs):
        ex = model.make_examples(users, items, generator=gen)
        for idx in user_batches(ex.inputs[0], split.n_users, train_cfg.batch_size, gen):
            batch = ex.take(idx)
            optimizer.zero_grad(set_to_none=True)
            model.loss(model(*batch.inputs), batch.target).backward()
            optimizer.step()
    return score_function(model, split)


def normalized_adjacency(split: Split) -> torch.Tensor:
    """``D^{-1/2} A D^{-1/2}`` of the bipartite train graph, users first, as a sparse
    COO tensor ``[n_users + n_items]^2`` (He et al. 2020, eq. 7)."""
    users, items = train_pairs(split)
    n = split.n_users + split.n_items
    rows = np.concatenate([users, items + split.n_users])
    cols = np.concatenate([items + split.n_users, users])
    degree = np.bincount(rows, minlength=n).astype(np.float64)
    inv = 1.0 / np.sqrt(np.maximum(degree, 1.0))
    values = (inv[rows] * inv[cols]).astype(np.float32)
    index = torch.from_numpy(np.stack([rows, cols]))
    return torch.sparse_coo_tensor(index, torch.from_numpy(values), (n, n)).coalesce()


def train_full_lightgcn(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    split: Split,
    *,
    seed: int,
    epochs: int,
    layers: int = 3,
) -> ScoreFn:
    """Full-graph LightGCN (``layers`` = K, layer mean) on MF's BCE with keyed negatives.

    Embeddings ``N(0, init_std^2)``, dimension ``model_cfg.dim``; each minibatch of
    ``train_cfg.batch_size`` example rows propagates the whole graph once. The penalty
    is ``l2 (||e_u^(0)||^2 + ||e_j^(0)||^2)`` per row (He et al. regularize the layer-0
    embeddings). Not a federated model: a reference point only.
    """
    torch.manual_seed(seed)
    n_users, n_items = split.n_users, split.n_items
    adjacency = normalized_adjacency(split)
    emb = torch.nn.Parameter(torch.randn(n_users + n_items, model_cfg.dim) * model_cfg.init_std)
    optimizer = make_optimizer([emb], train_cfg)
    users, items = train_pairs(split)
    gen = torch.Generator().manual_seed(seed)

    def propagate() -> torch.Tensor:
        layer, total = emb, emb
        for _ in range(layers):
            layer = torch.sparse.mm(adjacency, layer)
            total = total + layer
        return total / (layers + 1)

    k = model_cfg.negatives
    for _ in range(epochs):
        neg = keyed_negatives(gen, None, users, items, k, n_items).reshape(-1)
        u_all = torch.from_numpy(np.concatenate([users, np.repeat(users, k)]))
        i_all = torch.from_numpy(np.concatenate([items, neg]))
        labels = torch.cat([torch.ones(len(items)), torch.zeros(len(neg))])
        for idx in torch.randperm(len(labels), generator=gen).split(train_cfg.batch_size):
            optimizer.zero_grad(set_to_none=True)
            final = propagate()
            u, i = u_all[idx], i_all[idx]
            eu, ei = final[u], final[n_users + i]
            logits = (eu * ei).sum(-1)
            loss = F.binary_cross_entropy_with_logits(logits, labels[idx])
            e0u, e0i = emb[u], emb[n_users + i]
            penalty = ((e0u * e0u).sum(-1) + (e0i * e0i).sum(-1)).mean()
            (loss + model_cfg.l2 * penalty).backward()
            optimizer.step()
    with torch.no_grad():
        final = propagate()
    user_final, item_final = final[:n_users], final[n_users:]

    def score(batch: npt.NDArray[np.int64]) -> torch.Tensor:
        return user_final[torch.as_tensor(np.asarray(batch, dtype=np.int64))] @ item_final.T

    return score
