"""SASRec: a self-attentive next-item model over the user's own sequence, on the device.

SASRec (Kang & McAuley, "Self-Attentive Sequential Recommendation", ICDM 2018): the
user's last ``L = cfg.max_len`` items, each embedded by the shared item table ``E``
plus a learned position embedding, pass through ``cfg.blocks`` causal self-attention
blocks (one head, a position-wise two-layer feed-forward net, residual connections,
layer norm); the output ``h_t`` at the last position scores every item by ``h_t . e_i``.
Blocks are pre-norm (``x + Attn(LN(x))``, ``x + FFN(LN(x))``, a final LN), the stable
variant of the paper's block.

Loss: full softmax cross-entropy of the next item at every position, over the whole
catalog (Klenitskiy & Vasilev, "Turning Dross Into Gold Loss: is BERT4Rec really better
than SASRec?", RecSys 2023: SASRec trained with full cross-entropy instead of the
paper's one-negative BCE beats BERT4Rec and converges in far fewer epochs). One
*example* is one window of at most ``L`` consecutive next-item predictions of one user:
a user's train sequence ``s_1..s_n`` gives the targets ``s_2..s_n``, cut into windows of
``L`` from the most recent backwards, each left-padded. The loss is the mean over the
minibatch's predicted positions.

Federated split (the on-device sequential design of the issue: the device holds its
own ordered interactions): **every parameter is item-side / shared**, the item table,
the position table and the encoder; there is no user-side parameter. What makes a
recommendation personal is the device's own sequence, which never leaves it. So
nothing user-specific needs to persist except that sequence, and a new interaction
changes the next recommendation at once, without training: the device re-encodes its
sequence (``record()`` -> a new top-10, :mod:`clients.device`).

Histories: the model reads the order of a user's items, so callers pass train items
*in time order* (:func:`fedrec.data.sequences.user_train_items`) and a history row
whose values carry the order (:func:`fedrec.data.sequences.ordered_history`; a binary
row falls back to item-index order).

Dropout draws its masks from a generator seeded by :meth:`make_examples`' generator,
so a device's update is a pure function of its seed, as for the other models.

``--privacy local`` is refused (:data:`LOCAL_DP_REFUSAL`); ``central`` (user-level
DP-FedAvg on the clipped uploads) applies unchanged.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.data.sequences import sequence_from_history
from fedrec.models.base import LocalUnit
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, TrainableRecommender

if TYPE_CHECKING:
    from fedrec.federated.shape import DataShape, ShapedDefaults

LOCAL_DP_REFUSAL = (
    "--model sasrec has no audited local-DP mechanism: one example is a window of a "
    "user's sequence and a user has several, so DP-SGD's per-example clipping would not "
    "bound one user's (or one interaction's, which enters up to two windows' inputs and "
    "targets) contribution without a grouping that fedrec does not implement or audit "
    "for this model; no local guarantee is claimed"
)
IGNORE = -100
"""Target of a padded position (ignored by the loss)."""


def _layer_norm(x: torch.Tensor, weight: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    return F.layer_norm(x, (x.shape[-1],), weight, bias, eps=1e-6)


class SASRec(TrainableRecommender):
    """SASRec with stacked block parameters (one tensor per role, ``[blocks, ...]``).

    Upload order starts with ``item_emb.weight`` ``[n_items, dim]``. ``forward(seq)``
    takes left-padded windows ``[b, L]`` (pad = ``n_items``) and returns the hidden
    states ``[b, L, dim]``; :meth:`loss` scores them against the whole item table.
    """

    kind: ClassVar[str] = "sasrec"
    PRESET: ClassVar[str] = "fedrec.federated.presets:sasrec_preset"
    SKIPS_ITEM_INIT: ClassVar[bool] = True
    TWIN_TRAINER: ClassVar[str] = "fedrec.training.sequential:train_sequential_twin"
    ORDERED: ClassVar[bool] = True
    """Reads the order of the user's items (callers pass them in time order)."""
    ITEM_SIDE: ClassVar[tuple[str, ...]] = (
        "item_emb.weight",
        "pos_emb.weight",
        "ln1_w",
        "ln1_b",
        "qkv_w",
        "qkv_b",
        "out_w",
        "out_b",
        "ln2_w",
        "ln2_b",
        "ff1_w",
        "ff1_b",
        "ff2_w",
        "ff2_b",
        "final_w",
        "final_b",
    )
    USER_SIDE: ClassVar[tuple[str, ...]] = ()
    ITEM_VECTORS: ClassVar[str] = "item_emb.weight"
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None] = None
    LOCAL_DP_REFUSAL: ClassVar[str | None] = LOCAL_DP_REFUSAL

    def __init__(
        self, cfg: ModelConfig, n_items: int, n_users: int = 1, *, item_init: bool = True
    ) -> None:
        super().__init__(n_items, n_users)
        self.cfg = cfg
        d, blocks, length = cfg.dim, cfg.blocks, cfg.max_len
        self.item_emb = nn.Embedding(n_items, d, _weight=torch.empty(n_items, d))
        self.pos_emb = nn.Embedding(length, d, _weight=torch.empty(length, d))
        if item_init:  # every parameter is item-side: a device loading them skips this
            nn.init.normal_(self.item_emb.weight, std=cfg.init_std)
            nn.init.normal_(self.pos_emb.weight, std=cfg.init_std)

        def stacked(*shape: int, fill: float | None = None) -> nn.Parameter:
            t = torch.empty(blocks, *shape)
            if not item_init:
                return nn.Parameter(t)
            if fill is not None:
                nn.init.constant_(t, fill)
            else:
                for b in range(blocks):
                    nn.init.xavier_uniform_(t[b])
            return nn.Parameter(t)

        self.ln1_w, self.ln1_b = stacked(d, fill=1.0), stacked(d, fill=0.0)
        self.qkv_w, self.qkv_b = stacked(3 * d, d), stacked(3 * d, fill=0.0)
        self.out_w, self.out_b = stacked(d, d), stacked(d, fill=0.0)
        self.ln2_w, self.ln2_b = stacked(d, fill=1.0), stacked(d, fill=0.0)
        self.ff1_w, self.ff1_b = stacked(d, d), stacked(d, fill=0.0)
        self.ff2_w, self.ff2_b = stacked(d, d), stacked(d, fill=0.0)
        self.final_w = nn.Parameter(torch.ones(d))
        self.final_b = nn.Parameter(torch.zeros(d))
        self._noise: torch.Generator | None = None

    # ---- facts ------------------------------------------------------------------
    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        """The federated model; Adam on minibatches of windows (Kang & McAuley's)."""
        from fedrec.federated.presets import SASREC_MODEL
        from fedrec.training.sequential import SASREC_CENTRAL_TRAIN

        return SASREC_MODEL, SASREC_CENTRAL_TRAIN

    @classmethod
    def shaped_defaults(cls, shape: DataShape) -> ShapedDefaults | None:
        """Rounds and devices per round from the number of users
        (:func:`fedrec.federated.shape.sasrec_shaped_defaults`): about 10 passes over the
        users at 33 devices a round, at least the preset's 600 rounds. At equal passes
        the federated run tracks its twin's epochs (ml-1m temporal split: 98.9% after 6.6
        passes); the preset's 600 rounds are 3.3 passes on ml-1m, the shaped 1,831 give
        0.2548 NDCG@10 there, 93.9% of the 20-epoch twin (``docs/RESULTS.md``)."""
        from fedrec.federated.shape import sasrec_shaped_defaults

        return sasrec_shaped_defaults(shape)

    # ---- encoder ----------------------------------------------------------------
    def _dropout(self, x: torch.Tensor) -> torch.Tensor:
        p = self.cfg.dropout
        if not self.training or p == 0.0:
            return x
        keep = torch.rand(x.shape, generator=self._noise) >= p
        return x * keep / (1.0 - p)

    def forward(self, seq: torch.Tensor) -> torch.Tensor:
        """Hidden states ``[b, L, dim]`` of left-padded windows ``seq`` ``[b, L]``."""
        mask = (seq < self.n_items).unsqueeze(-1).to(self.item_emb.weight.dtype)
        length = seq.shape[1]
        pos = self.pos_emb.weight[self.cfg.max_len - length :]
        x = F.embedding(seq.clamp(max=self.n_items - 1), self.item_emb.weight)
        x = self._dropout((x + pos) * mask) * mask
        d = self.cfg.dim
        for b in range(self.cfg.blocks):
            h = _layer_norm(x, self.ln1_w[b], self.ln1_b[b])
            q, k, v = F.linear(h, self.qkv_w[b], self.qkv_b[b]).split(d, dim=-1)
            att = F.scaled_dot_product_attention(
                q.unsqueeze(1), k.unsqueeze(1), v.unsqueeze(1), is_causal=True
            ).squeeze(1)
            x = x + self._dropout(F.linear(att, self.out_w[b], self.out_b[b]))
            h = _layer_norm(x, self.ln2_w[b], self.ln2_b[b])
            h = self._dropout(F.relu(F.linear(h, self.ff1_w[b], self.ff1_b[b])))
            x = (x + self._dropout(F.linear(h, self.ff2_w[b], self.ff2_b[b]))) * mask
        return _layer_norm(x, self.final_w, self.final_b)

    # ---- training ---------------------------------------------------------------
    def windows(self, sequence: npt.NDArray[np.int64]) -> tuple[list[list[int]], list[list[int]]]:
        """Inputs and targets of one user's sequence, windows of ``max_len`` (newest first)."""
        seq = [int(i) for i in sequence]
        inputs: list[list[int]] = []
        targets: list[list[int]] = []
        end = len(seq) - 1
        while end >= 1:
            start = max(1, end - self.cfg.max_len + 1)
            inputs.append(seq[start - 1 : end])
            targets.append(seq[start : end + 1])
            end = start - 1
        return inputs, targets

    def pad(self, rows: list[list[int]], value: int) -> torch.Tensor:
        """Left-pad ``rows`` to ``max_len`` with ``value``: ``[len(rows), max_len]``."""
        length = self.cfg.max_len
        out = torch.full((len(rows), length), value, dtype=torch.int64)
        for r, row in enumerate(rows):
            tail = row[-length:]
            if tail:
                out[r, length - len(tail) :] = torch.as_tensor(tail, dtype=torch.int64)
        return out

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """Windows of next-item predictions from each user's items *in the given order*
        (pass them in time order). ``key`` is unused (no negatives are sampled)."""
        del key
        seed = int(torch.randint(0, 2**62, (1,), generator=generator))
        self._noise = torch.Generator().manual_seed(seed)
        u = np.asarray(users, dtype=np.int64)
        i = np.asarray(items, dtype=np.int64)
        order = np.argsort(u, kind="stable")
        u, i = u[order], i[order]
        starts = np.flatnonzero(np.r_[True, u[1:] != u[:-1]]) if len(u) else np.zeros(0, int)
        ends = np.r_[starts[1:], len(u)].astype(np.int64)
        inputs: list[list[int]] = []
        targets: list[list[int]] = []
        for a, b in zip(starts, ends, strict=True):
            ins, outs = self.windows(i[a:b])
            inputs.extend(ins)
            targets.extend(outs)
        return Examples((self.pad(inputs, self.n_items),), self.pad(targets, IGNORE))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean full-catalog cross-entropy of the next item over the predicted positions."""
        valid = target != IGNORE
        if not bool(valid.any()):
            return output.sum() * 0.0
        logits = output[valid] @ self.item_emb.weight.T
        return F.cross_entropy(logits, target[valid])

    # ---- scoring ----------------------------------------------------------------
    def encode_last(self, sequences: list[torch.Tensor]) -> torch.Tensor:
        """``[b, dim]``: the encoder's output after each sequence's last item."""
        rows = [[int(i) for i in s[-self.cfg.max_len :]] for s in sequences]
        length = max(1, max((len(r) for r in rows), default=1))
        seq = self.pad(rows, self.n_items)[:, self.cfg.max_len - length :]
        return self.forward(seq)[:, -1]

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Scores ``[b, n_items]`` from each history row's items in value order (the
        newest last; :func:`fedrec.data.sequences.ordered_history`); ``users`` unused.

        A row without items scores from the position table alone (a learned
        popularity-like prior)."""
        del users
        sequences = [sequence_from_history(row) for row in history]
        return self.encode_last(sequences) @ self.item_emb.weight.T
