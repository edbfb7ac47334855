"""iALS: implicit ALS matrix factorization, split for federated training.

The score of item ``i`` for user ``u`` is ``p_u . q_i``. ``p_u`` (``user_emb``) is
user-side and stays on the device; ``Q`` (``item_emb``) is item-side and aggregated, as
in Federated Collaborative Filtering (Ammad-ud-din et al. 2019). The loss is implicit
ALS (Hu, Koren & Volinsky, ICDM 2008) with the all-unobserved term and the
frequency-scaled regularization of Rendle et al. (RecSys 2022); its maths, the
closed-form user solve and the device's dense item gradient are in
:mod:`fedrec.training.ials`. This module is the autograd reference of that maths (the
federated client and the centralized twin use the closed forms, never SGD on ``p_u``).

One example is one (user, item) positive; a minibatch's loss is the sum over its users
of their share ``f_u`` of the loss (:func:`fedrec.training.ials.user_loss`), which holds
when a batch holds each of its users' examples whole (a device's single batch). The
loss is a sum, not a mean: nothing here is meant for DP-SGD, which ``--privacy local``
refuses for this model (:data:`LOCAL_DP_REFUSAL`).
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import (
    Examples,
    FastUpdate,
    TrainableRecommender,
    UserState,
)
from fedrec.training.ials import gramian, solve_user, user_loss, user_regularization

if TYPE_CHECKING:
    from fedrec.federated.shape import DataShape, ShapedDefaults

LOCAL_DP_REFUSAL = (
    "--model ials has no local-DP mechanism: its user vector is an exact closed-form "
    "solve on the user's items, and its upload (a dense item gradient at that vector) "
    "would need a clipped and noised mechanism with a stated unit, which fedrec does not "
    "implement for it; DP-SGD on the device is not iALS"
)


class IALS(TrainableRecommender):
    """iALS with user vectors ``P`` and item vectors ``Q`` (no biases)."""

    kind = "ials"
    PRESET = "fedrec.federated.presets:ials_preset"
    TWIN_TRAINER = "fedrec.training.ials:train_ials_centralized"
    FAST_MODULE = "fedrec.training.ials"  # own fit (no seed, key) and scores: overridden
    ITEM_SIDE = ("item_emb.weight",)
    USER_SIDE = ("user_emb.weight",)
    ITEM_VECTORS = "item_emb.weight"  # the Q of p_u . q_i
    USER_VECTOR = "user_emb.weight"  # a device serves Q p_u without the model (no torch)
    LOCAL_DP_UNIT = None
    LOCAL_DP_REFUSAL = LOCAL_DP_REFUSAL

    def __init__(self, cfg: ModelConfig, n_items: int, n_users: int = 1) -> None:
        super().__init__(n_items, n_users)
        self.cfg = cfg
        self.user_emb = nn.Embedding(n_users, cfg.dim)
        self.item_emb = nn.Embedding(n_items, cfg.dim)
        std = cfg.init_std / math.sqrt(cfg.dim)  # Rendle et al.'s init scale
        nn.init.normal_(self.user_emb.weight, std=std)
        nn.init.normal_(self.item_emb.weight, std=std)

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        """The federated run's loss settings; ALS solves need no optimizer."""
        from fedrec.federated.presets import IALS_LOCAL, IALS_MODEL

        return IALS_MODEL, IALS_LOCAL

    @classmethod
    def shaped_defaults(cls, shape: DataShape) -> ShapedDefaults | None:
        """Rounds, devices per round and ``alpha0`` from the data's shape
        (:func:`fedrec.federated.shape.ials_shaped_defaults`)."""
        from fedrec.federated.shape import ials_shaped_defaults

        return ials_shaped_defaults(shape)

    @classmethod
    def fast_fit(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        global_items: Arrays,
        user_state: UserState | None,
        train_items: npt.NDArray[np.int64],
        *,
        seed: int,
        key: bytes | None,
    ) -> FastUpdate | None:
        """Closed-form user solve and dense item gradient (:func:`fedrec.training.ials.fit`)."""
        from fedrec.training import ials

        del seed, key  # no random choice
        if not ials.supports(model_cfg, train_cfg):
            return None
        return ials.fit(model_cfg, train_cfg, global_items, user_state, train_items)

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
        """``Q p`` with the closed-form user vector (any ``train_cfg``: it is the refit)."""
        from fedrec.training import ials

        scores = ials.scores(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed)
        return torch.from_numpy(scores)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[b, 2]``: the prediction ``p_u . q_i`` and the example's share of its user's
        terms that are not per item (the Gramian term and both regularizations), so that
        a batch's shares sum to each user's terms once."""
        a0, lam = self.cfg.alpha0, self.cfg.l2
        p, q = self.user_emb(users), self.item_emb(items)
        pred = (p * q).sum(-1)
        slots, inverse, counts = torch.unique(users, return_inverse=True, return_counts=True)
        full = self.item_emb.weight
        pu = self.user_emb(slots)
        unobserved = a0 * ((pu @ full.T) ** 2).sum(-1)
        reg_user = torch.stack(
            [
                user_regularization(int(c), self.n_items, a0, lam) * (v * v).sum()
                for c, v in zip(counts, pu, strict=True)
            ]
        )
        per_user = unobserved + reg_user + lam * a0 * (full * full).sum()
        share = per_user[inverse] / counts[inverse] + lam * (q * q).sum(-1)
        return torch.stack([pred, share], dim=-1)

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """The positives themselves (no negatives: the Gramian term covers every item)."""
        del generator, key
        u = torch.as_tensor(np.asarray(users, dtype=np.int64))
        i = torch.as_tensor(np.asarray(items, dtype=np.int64))
        return Examples((u, i), torch.ones(len(i)))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """``sum_j (pred_j - 1)^2 + share_j``: the sum of the batch users' ``f_u``."""
        return ((output[..., 0] - target) ** 2).sum() + output[..., 1].sum()

    def solve_users(self, examples: Examples) -> float:
        """Set each user slot in ``examples`` to its closed-form vector on the current
        items (:func:`fedrec.training.ials.solve_user`); return the sum of their losses."""
        users, items = (t.numpy() for t in examples.inputs)
        q = self.item_emb.weight.detach().double().numpy()
        gram = gramian(q)
        total = 0.0
        with torch.no_grad():
            for slot in np.unique(users):
                own = items[users == slot]
                p = solve_user(q, own, alpha0=self.cfg.alpha0, lam=self.cfg.l2, gram=gram)
                self.user_emb.weight[int(slot)] = torch.from_numpy(p)
                total += user_loss(p, q, own, alpha0=self.cfg.alpha0, lam=self.cfg.l2)
        return total

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """``P[users] Q^T``; ``history`` is unused."""
        del history
        return self.user_emb(users) @ self.item_emb.weight.T
