"""Collaborative Denoising Auto-Encoder with a multinomial likelihood.

CDAE (Wu et al., "Collaborative Denoising Auto-Encoders for Top-N Recommender
Systems", WSDM 2016) encodes a user's dropout-corrupted binary interaction vector
``y`` with item-indexed weights plus a user-specific input vector ``v_u``::

    h = tanh(W_enc y~ + v_u + b_enc),    logits = W_dec h + b_dec

Design rule: the item-indexed weights and biases are *item-side* (aggregated by the
server); ``v_u`` is the only *user-side* parameter and never leaves the device. On a
device the model has one user slot (``n_users = 1``).

The loss is the multinomial log-likelihood of Mult-DAE (Liang et al., "Variational
Autoencoders for Collaborative Filtering", WWW 2018), ``-sum_i y_i log softmax(logits)_i``
per user, which ranks better than CDAE's logistic loss with sampled negatives on
MovieLens and needs no negative sampling. The input is L2-normalized before the
dropout corruption, as in Mult-DAE. One example is one user's whole row, so a
per-example (Opacus) gradient is a per-user gradient.

Only ``nn.Linear``, ``nn.Embedding`` and elementwise operations are used, so the
module runs under Opacus's ``GradSampleModule``.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

from fedrec.models.base import LocalUnit
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, TrainableRecommender


def corrupt(
    history: torch.Tensor, dropout: float, generator: torch.Generator | None
) -> torch.Tensor:
    """L2-normalize each row, then drop entries with probability ``dropout`` (inverted scaling).

    Parameters
    ----------
    history
        Binary interactions ``[b, n_items]``.
    dropout
        Drop probability in ``[0, 1)``; ``0`` only normalizes.
    generator
        Source of the dropout mask; ``None`` uses torch's global generator.
    """
    x = history / history.norm(dim=1, keepdim=True).clamp_min(1e-12)
    if dropout <= 0.0:
        return x
    keep = torch.full_like(x, 1.0 - dropout)
    mask = torch.bernoulli(keep, generator=generator)
    return x * mask / (1.0 - dropout)


def multinomial_nll(logits: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
    """Per-row multinomial negative log-likelihood ``-sum_i y_i log softmax(logits)_i``."""
    return -(torch.log_softmax(logits, dim=1) * history).sum(dim=1)


def user_rows(
    users: npt.NDArray[np.int64], items: npt.NDArray[np.int64], n_items: int
) -> tuple[torch.Tensor, torch.Tensor]:
    """Group positive pairs into one binary row per user slot.

    Returns the distinct slots (ascending, int64 ``[b]``) and their rows ``[b, n_items]``
    (a repeated pair counts once).
    """
    slots, row = np.unique(np.asarray(users, dtype=np.int64), return_inverse=True)
    history = torch.zeros((len(slots), n_items))
    index = (torch.as_tensor(row, dtype=torch.int64), torch.as_tensor(items, dtype=torch.int64))
    history[index] = 1.0
    return torch.as_tensor(slots), history


def linear(n_in: int, n_out: int) -> nn.Linear:
    """An ``nn.Linear`` without torch's default initialization (a device builds many models)."""
    layer: nn.Linear = nn.utils.skip_init(nn.Linear, n_in, n_out)
    return layer


def xavier_(*layers: nn.Linear) -> None:
    """Xavier-uniform weights and zero biases (torch's global RNG, seeded by ``build_model``)."""
    for lin in layers:
        nn.init.xavier_uniform_(lin.weight)
        nn.init.zeros_(lin.bias)


class CDAE(TrainableRecommender):
    """CDAE with a user input vector, trained with the Mult-DAE likelihood.

    Built as ``CDAE(cfg, n_items, n_users)``: hidden size ``cfg.dim``, input dropout
    ``cfg.dropout``. Weights are Xavier-uniform, biases zero and ``v_u`` zero, so a new
    user starts as the plain Mult-DAE encoding of their row.

    Upload order starts with ``decoder.weight`` ``[n_items, dim]`` (the first item-side
    array's first dimension is the catalogue size). One example is one user's row:
    ``inputs = (slots [b], corrupted rows [b, n_items])``,
    ``target = rows``; ``forward`` returns item logits.
    """

    kind: ClassVar[str] = "cdae"
    PRESET: ClassVar[str] = "fedrec.federated.presets:cdae_preset"
    SKIPS_ITEM_INIT: ClassVar[bool] = True
    TWIN_TRAINER: ClassVar[str] = "fedrec.training.autoencoder:train_autoencoder_centralized"
    ITEM_SIDE: ClassVar[tuple[str, ...]] = (
        "decoder.weight",
        "decoder.bias",
        "encoder.weight",
        "encoder.bias",
    )
    USER_SIDE: ClassVar[tuple[str, ...]] = ("user_input.weight",)
    BIAS_PARAMETERS: ClassVar[tuple[str, ...]] = ("decoder.bias", "encoder.bias")
    ITEM_BIAS: ClassVar[str | None] = "decoder.bias"
    ITEM_VECTORS: ClassVar[str] = "decoder.weight"  # W_dec [n_items, dim]: row i is item i
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None] = "user"  # one example = the user's row

    def __init__(
        self, cfg: ModelConfig, n_items: int, n_users: int, *, item_init: bool = True
    ) -> None:
        super().__init__(n_items, n_users)
        self.dropout = cfg.dropout
        self.encoder = linear(n_items, cfg.dim)
        self.user_input = nn.Embedding(n_users, cfg.dim)
        self.decoder = linear(cfg.dim, n_items)
        if item_init:  # False: the caller overwrites the item side (see build_model)
            xavier_(self.encoder, self.decoder)
        nn.init.zeros_(self.user_input.weight)

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        from fedrec.training.autoencoder import PRESETS

        return PRESETS[cls.kind]

    def forward(self, users: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
        """Item logits ``[b, n_items]`` for an (already corrupted) input ``x``."""
        h = torch.tanh(self.encoder(x) + self.user_input(users))
        return self.decoder(h)

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """One example per user slot, with a fresh dropout corruption from ``generator``."""
        del key  # no keyed choice: one example per user
        slots, history = user_rows(users, items, self.n_items)
        return Examples((slots, corrupt(history, self.dropout, generator)), history)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over users of the multinomial negative log-likelihood."""
        return multinomial_nll(output, target).mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Logits of every item from the uncorrupted history (no dropout)."""
        return self(users, corrupt(history, 0.0, None))
