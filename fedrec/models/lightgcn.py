"""LightGCN on the device's own subgraph, split for federated training.

LightGCN (He et al., "LightGCN: Simplifying and Powering Graph Convolution Network for
Recommendation", SIGIR 2020) propagates embeddings over the user-item graph with the
symmetric normalization ``1 / sqrt(d_u d_i)`` and no weights or nonlinearities, and
scores with the dot product of the layer-averaged embeddings
``e = sum_k alpha_k e^(k)``, ``alpha_k = 1 / (K + 1)``.

**Federated design: propagation on the device's ego graph.** A device holds one user
``u`` and its items ``N(u)``: the star ``u <-> N(u)``, nothing of other users. On that
graph every item has degree 1, so LightGCN's normalization is ``1 / sqrt(d_u)`` and its
layers are, from ``e_u^(0) = p_u`` (user-side, on the device) and ``e_i^(0) = q_i``
(item-side, aggregated like MF's ``Q``):

- odd user layers ``e_u^(1) = e_u^(3) = ... = m_u = d_u^{-1/2} sum_{i in N(u)} q_i``
  (the user's neighbourhood message, computed from the global ``Q`` and its own items);
- even user layers ``e_u^(2) = sum_i (1 / sqrt(d_u))^2 p_u = p_u``;
- an item outside ``N(u)`` has no neighbour on the device: only its layer 0, ``q_j``.

So for every ``K >= 1`` the user's layer average is a mix of ``p_u`` and ``m_u``; this
module uses ``K = 1``: ``e_u = (p_u + m_u) / 2`` and ``s_uj = e_u . q_j + b_j`` (an item
bias as MF's). The item's own higher layers (``N(u)``'s echo of ``p_u``) are left out
of every score: they exist only for the user's own (train) items, which are never
ranked, so training on them would teach a shortcut that evaluation never sees. For the
same reason a training score leaves the scored item out of the message (FISM, Kabbur,
Ning & Karypis, KDD 2013): ``m_u^{-j} = (sum_{i in N(u)} q_i - [j in N(u)] q_j) /
sqrt(max(1, d_u - [j in N(u)]))``, so a positive is predicted from the user's *other*
items, as a test item is. With ``Q`` tied between the message and the candidate, this
is SVD++'s implicit term (Koren, KDD 2008) with LightGCN's normalization and layer mean.

Higher-order neighbourhoods (other users' embeddings, item-item paths) are not on the
device: they reach it only through the aggregated ``Q``, which every device's update
moves. A DP item-item release (the Gram release of federated EASE) could carry two-hop
item paths, but it is a separate one-shot run capped at 5,000 items whose central mode
trusts the server with each user's item set, and fedrec has no channel that ships it to
training devices; the full-graph LightGCN is measured centrally as a reference
(:func:`fedrec.training.lightgcn.train_full_lightgcn`, ``docs/RESULTS.md``).

Loss: MF's, BCE with ``negatives`` keyed negatives per positive
(:func:`fedrec.training.negatives.keyed_negatives`) or BPR, plus the per-example L2
``l2 (||q_j||^2 + ||p_u||^2 / rows)`` on the candidate row and the user vector.

``--privacy local`` is refused (:attr:`LightGCN.LOCAL_DP_REFUSAL`): one interaction is in
the message of every other example of the user, so the interaction unit is not bounded
by clipping one example.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import LocalUnit
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.training.negatives import keyed_negatives

if TYPE_CHECKING:
    from fedrec.federated.shape import DataShape, ShapedDefaults

LOCAL_DP_REFUSAL = (
    "--model lightgcn has no local-DP mechanism: a user's representation is the message "
    "of all of its items, so removing one interaction changes the loss of every other "
    "example of the user, and DP-SGD's per-example clipping does not bound the "
    "one-interaction unit fedrec's local mode protects"
)


class LightGCN(TrainableRecommender):
    """LightGCN (``K = 1``) on each user's star: ``(p_u + m_u) / 2 . q_j + b_j``.

    The user-item graph the messages run over is set by :meth:`make_examples` (the
    positive pairs it is given: one user's items on a device, every train pair for the
    twin) and held as non-persistent buffers; :meth:`score` reads the graph from its
    ``history`` argument instead.
    """

    kind: ClassVar[str] = "lightgcn"
    PRESET: ClassVar[str] = "fedrec.federated.presets:lightgcn_preset"
    TWIN_TRAINER: ClassVar[str] = "fedrec.training.lightgcn:train_lightgcn_centralized"
    FAST_MODULE: ClassVar[str | None] = "fedrec.training.lightgcn_fast"
    ITEM_SIDE: ClassVar[tuple[str, ...]] = ("item_emb.weight", "item_bias.weight")
    USER_SIDE: ClassVar[tuple[str, ...]] = ("user_emb.weight",)
    BIAS_PARAMETERS: ClassVar[tuple[str, ...]] = ("item_bias.weight",)
    ITEM_BIAS: ClassVar[str | None] = "item_bias.weight"
    ITEM_VECTORS: ClassVar[str] = "item_emb.weight"
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None] = None
    LOCAL_DP_REFUSAL: ClassVar[str | None] = LOCAL_DP_REFUSAL

    graph_indptr: torch.Tensor
    graph_items: torch.Tensor
    graph_keys: torch.Tensor

    def __init__(self, cfg: ModelConfig, n_items: int, n_users: int = 1) -> None:
        super().__init__(n_items, n_users)
        self.cfg = cfg
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std)
        nn.init.zeros_(self.item_bias.weight)
        self.item_bias.weight.requires_grad_(cfg.item_bias)
        empty = torch.zeros(0, dtype=torch.int64)
        self.register_buffer("graph_indptr", torch.zeros(n_users + 1, dtype=torch.int64), False)
        self.register_buffer("graph_items", empty, False)
        self.register_buffer("graph_keys", empty.clone(), False)

    def seed_device_user(self, seed: int) -> None:
        """A device's fresh ``p_u``: MF's (:func:`fedrec.models.mf.initial_user_vector`,
        from ``seed`` alone), which the fast path (MF's loader) starts from too."""
        from fedrec.models.mf import initial_user_vector

        with torch.no_grad():
            self.user_emb.weight[0] = torch.from_numpy(initial_user_vector(self.cfg, seed))

    # -- facts ---------------------------------------------------------------------

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        from fedrec.training.lightgcn import twin_preset

        return twin_preset()

    @classmethod
    def shaped_defaults(cls, shape: DataShape) -> ShapedDefaults | None:
        """Rounds and devices per round for about :data:`~fedrec.federated.shape.PASSES`
        participations of each user (:func:`~fedrec.federated.shape.passes_defaults`)
        when that is more rounds than the preset's; ``None`` (the preset's 150) otherwise.

        Each round is one server Adam step on about 100 users. On ml-1m's validation
        split NDCG@10 still rose from round 151 (0.217) to the shaped 604 (0.243); on
        ml-100k's the shaped 95 rounds were below the preset's 150 (0.2617 against
        0.2630, Recall@20 0.331 against 0.344): more server steps help, fewer do not
        (``docs/RESULTS.md``)."""
        from fedrec.federated.presets import default_rounds
        from fedrec.federated.shape import passes_defaults

        shaped = passes_defaults(shape)
        return shaped if shaped.rounds > default_rounds(cls.kind) else None

    # -- the graph -----------------------------------------------------------------

    def set_graph(self, users: npt.NDArray[np.int64], items: npt.NDArray[np.int64]) -> None:
        """Hold the user-item graph of the positive pairs ``(users[j], items[j])``
        (user slots of this model; duplicates count once)."""
        keys = np.unique(
            np.asarray(users, dtype=np.int64) * self.n_items + np.asarray(items, dtype=np.int64)
        )
        counts = np.bincount(keys // self.n_items, minlength=self.n_users)
        indptr = np.concatenate([[0], np.cumsum(counts)]).astype(np.int64)
        self.graph_indptr = torch.from_numpy(indptr)
        self.graph_items = torch.from_numpy(keys % self.n_items)
        self.graph_keys = torch.from_numpy(keys)

    def _messages(self, slots: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """``(sum_{i in N(u)} q_i [U, d], d_u [U])`` for the user slots ``slots``."""
        starts = self.graph_indptr[slots]
        lengths = self.graph_indptr[slots + 1] - starts
        offsets = torch.cumsum(lengths, 0) - lengths
        within = torch.arange(int(lengths.sum())) - torch.repeat_interleave(offsets, lengths)
        flat = self.graph_items[torch.repeat_interleave(starts, lengths) + within]
        sums = F.embedding_bag(flat, self.item_emb.weight, offsets, mode="sum")
        return sums, lengths.to(sums.dtype)

    def _in_graph(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """Whether each ``(user, item)`` (``items`` ``[b]`` or ``[b, k]``) is an edge."""
        if len(self.graph_keys) == 0:
            return torch.zeros(items.shape, dtype=torch.bool)
        u = users.unsqueeze(1) if items.dim() == 2 else users
        query = u * self.n_items + items
        pos = torch.searchsorted(self.graph_keys, query).clamp(max=len(self.graph_keys) - 1)
        return self.graph_keys[pos] == query

    # -- training and scoring ------------------------------------------------------

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[..., 2]``: logits and penalties for ``users`` ``[b]``, ``items`` ``[b]`` /
        ``[b, k]``; the message leaves the scored item out (module docstring)."""
        slots, inverse = torch.unique(users, return_inverse=True)
        sums, degree = self._messages(slots)
        s, n = sums[inverse], degree[inverse]
        p, q = self.user_emb(users), self.item_emb(items)
        member = self._in_graph(users, items).to(q.dtype)
        share = 1.0
        if items.dim() == 2:
            p, s, n, share = p.unsqueeze(1), s.unsqueeze(1), n.unsqueeze(1), float(items.shape[1])
        message = (s - member.unsqueeze(-1) * q) / torch.sqrt(
            torch.clamp(n - member, min=1.0)
        ).unsqueeze(-1)
        logits = (0.5 * (p + message) * q).sum(-1) + self.item_bias(items).squeeze(-1)
        penalty = (q * q).sum(-1) + (p * p).sum(-1) / share
        return torch.stack([logits, penalty], dim=-1)

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """Hold the graph of these positives (:meth:`set_graph`) and return MF's
        examples: positives with keyed uniform negatives (BCE) or (positive, negative)
        pairs (BPR)."""
        self.set_graph(users, items)
        u = torch.as_tensor(np.asarray(users, dtype=np.int64))
        i = torch.as_tensor(np.asarray(items, dtype=np.int64))
        k = self.cfg.negatives
        drawn = keyed_negatives(generator, key, u.numpy(), i.numpy(), k, self.n_items)
        neg = torch.from_numpy(drawn.reshape(-1))
        if self.cfg.loss == "bpr":
            pairs = torch.stack([i.repeat_interleave(k), neg], dim=1)
            return Examples((u.repeat_interleave(k), pairs), torch.ones(len(pairs)))
        users_all = torch.cat([u, u.repeat_interleave(k)])
        labels = torch.cat([torch.ones(len(i)), torch.zeros(len(neg))])
        return Examples((users_all, torch.cat([i, neg])), labels)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean BCE / BPR loss plus ``cfg.l2`` times the mean penalty (MF's)."""
        logits, penalty = output[..., 0], output[..., 1]
        if self.cfg.loss == "bpr":
            data = -F.logsigmoid(logits[:, 0] - logits[:, 1]).mean()
            penalty = penalty.sum(-1)
        else:
            data = F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
        if self.cfg.l2 == 0:
            return data
        return data + self.cfg.l2 * penalty.mean()

    def user_vectors(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``e_u = (p_u + m_u) / 2`` ``[b, d]``, the message over ``history``'s items."""
        h = (history > 0).to(self.item_emb.weight.dtype)
        degree = torch.clamp(h.sum(1, keepdim=True), min=1.0)
        message = (h @ self.item_emb.weight) / torch.sqrt(degree)
        return 0.5 * (self.user_emb(users) + message)

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``e_u Q^T + b^T`` ``[b, n_items]``; ``history`` (the users' train items) is
        the graph of the message. Train items' scores keep their own ``q_i`` in the
        message (they are excluded from every ranking)."""
        return self.user_vectors(users, history) @ self.item_emb.weight.T + self.item_bias.weight.T
