"""Matrix factorization for implicit feedback, split for federated training.

The score of item ``i`` for user ``u`` is ``p_u . q_i + b_i``. ``p_u`` (``user_emb``)
is user-side and stays on the device; ``Q`` (``item_emb``) and ``b`` (``item_bias``)
are item-side and aggregated, as in FCF (Ammad-ud-din et al. 2019) and Federated
Reconstruction (Singhal et al. 2021). All three are ``nn.Embedding`` so Opacus computes
per-example gradients for them.

Losses (``reduction="mean"``), each plus the per-example L2 penalty
``l2 * (||p_u||^2 + sum_i ||q_i||^2)`` over the rows the example uses (BPR-Opt style,
Rendle et al. 2009). Being part of each example's loss, the penalty only touches rows a
client actually used (untouched rows upload unchanged, unlike optimizer weight decay),
scales with the data like the loss, and is clipped with the example under DP-SGD.

- ``"bce"``: each positive plus ``negatives`` items drawn uniformly from *all* items,
  keyed by the interaction's own item, the device key and the epoch
  (:func:`fedrec.training.negatives.keyed_negatives`), never by its position among
  the user's interactions. A negative that happens to be a positive of the user is
  kept as a negative: filtering it would make the example set depend on the user's
  other interactions, which breaks the per-interaction DP unit.
- ``"bpr"`` (Rendle et al. 2009): one (positive, negative) pair per sampled negative,
  ``-log sigmoid(x_up - x_un)``.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, TrainableRecommender, UserState
from fedrec.training.mf_fast import initial_user_vector as initial_user_vector
from fedrec.training.negatives import keyed_negatives

ITEM_INIT_SCALE = 0.1
"""Item vectors start at ``N(0, (ITEM_INIT_SCALE * init_std)^2)``, user vectors at
``N(0, init_std^2)``. On a large catalog most item rows are never touched in a run (books
shape, 20 rounds of 100 clients: 329k of 340k items get no positive); at the users' scale
their random vectors gave every never-trained user's refit and ranking noise to fit
(validation NDCG@10 0.038 -> 0.044 with the smaller item scale, docs/BENCHMARKS.md, issue 20).
A trained row is moved by the user vectors' gradient, so learning still starts."""


class MatrixFactorization(TrainableRecommender):
    """MF with user vectors ``P``, item vectors ``Q`` and item biases ``b``."""

    kind = "mf"
    PRESET = "fedrec.federated.presets:mf_preset"
    FAST_MODULE = "fedrec.training.mf_fast"  # fast_scores overridden (refit, then p Q^T + b)
    ITEM_SIDE = ("item_emb.weight", "item_bias.weight")
    USER_SIDE = ("user_emb.weight",)
    BIAS_PARAMETERS = ("item_bias.weight",)
    ITEM_BIAS = "item_bias.weight"
    ITEM_VECTORS = "item_emb.weight"  # the Q of p_u . q_i
    USER_VECTOR = "user_emb.weight"
    LOCAL_DP_UNIT = "interaction"  # a positive with its sampled negatives

    def __init__(self, cfg: ModelConfig, n_items: int, n_users: int = 1) -> None:
        super().__init__(n_items, n_users)
        self.cfg = cfg
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        self.item_bias = nn.Embedding(n_items, 1)
        nn.init.normal_(self.user_emb.weight, std=cfg.init_std)
        nn.init.normal_(self.item_emb.weight, std=cfg.init_std * ITEM_INIT_SCALE)
        nn.init.zeros_(self.item_bias.weight)
        self.item_bias.weight.requires_grad_(cfg.item_bias)

    def seed_device_user(self, seed: int) -> None:
        """The device's fresh user vector: :func:`initial_user_vector` (``seed`` only)."""
        with torch.no_grad():
            self.user_emb.weight[0] = torch.from_numpy(initial_user_vector(self.cfg, seed))

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        from fedrec.training.centralized import CENTRAL_TRAIN

        return ModelConfig(kind=cls.kind), CENTRAL_TRAIN

    @classmethod
    def fast_scores(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        global_items: Arrays,
        user_state: UserState | None,
        train_items: npt.NDArray[np.int64],
        *,
        seed: int,
    ) -> torch.Tensor | None:
        """``p Q^T + b^T`` after :func:`fedrec.training.mf_fast.refit` (no autograd)."""
        from fedrec.training import mf_fast

        scores = mf_fast.scores(
            model_cfg, train_cfg, global_items, user_state, train_items, seed=seed
        )
        return None if scores is None else torch.from_numpy(scores)

    def example_units(self, n_interactions: int) -> torch.Tensor:
        """Interaction ``j``'s positive row and its ``negatives`` rows (BCE), or its
        ``negatives`` pairs (BPR), all map to unit ``j`` (the layout of
        :meth:`make_examples`)."""
        base = torch.arange(n_interactions)
        if self.cfg.loss == "bpr":
            return base.repeat_interleave(self.cfg.negatives)
        return torch.cat([base, base.repeat_interleave(self.cfg.negatives)])

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[..., 2]``: logits and penalties for ``users`` ``[b]``, ``items`` ``[b]`` / ``[b, k]``.

        Channel 0 is the logit ``p_u . q_i + b_i``; channel 1 is the example's squared
        norms ``||q_i||^2 + ||p_u||^2 / k`` (so a row of ``k`` items sums to the L2 term
        of the example). Computed from the embedding outputs, so per-example gradients
        (Opacus, :mod:`fedrec.privacy.fast_dp`) include the penalty.
        """
        p, q = self.user_emb(users), self.item_emb(items)
        share = 1.0
        if items.dim() == 2:
            p, share = p.unsqueeze(1), float(items.shape[1])
        logits = (p * q).sum(-1) + self.item_bias(items).squeeze(-1)
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
        """Positives with uniform negatives (BCE) or (positive, negative) pairs (BPR).

        The negatives of interaction ``j`` are a function of ``(users[j], items[j])``,
        ``key`` and the epoch nonce drawn from ``generator`` only
        (:func:`fedrec.training.negatives.keyed_negatives`).
        """
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
        """Mean over examples of the BCE / BPR loss plus ``cfg.l2`` times the penalty."""
        logits, penalty = output[..., 0], output[..., 1]
        if self.cfg.loss == "bpr":
            data = -F.logsigmoid(logits[:, 0] - logits[:, 1]).mean()
            penalty = penalty.sum(-1)
        else:
            data = F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
        if self.cfg.l2 == 0:
            return data
        return data + self.cfg.l2 * penalty.mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``P[users] Q^T + b^T``; ``history`` is unused (MF scores from ``p_u``)."""
        del history
        return self.user_emb(users) @ self.item_emb.weight.T + self.item_bias.weight.T
