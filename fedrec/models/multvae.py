"""Mult-VAE: a variational autoencoder with a multinomial likelihood.

Liang et al., "Variational Autoencoders for Collaborative Filtering" (WWW 2018). The
user's L2-normalized, dropout-corrupted interaction vector is encoded into a Gaussian
``q(z | x) = N(mu, diag(exp(logvar)))``; a sample of ``z`` is decoded into a softmax
over items. The training objective per user is the annealed negative ELBO::

    -sum_i x_i log softmax(f(z))_i  +  beta * KL(q(z | x) || N(0, I))

with ``beta`` raised from 0 to ``beta_max`` by the trainer (KL annealing).

Design rule: every parameter is *item-side* (shared and aggregated); the user's
interactions are the input, so there is no user parameter (``USER_SIDE = ()``). At
evaluation the mean of ``q`` is decoded (no sampling). Only ``nn.Linear`` and
elementwise operations are used (Opacus-compatible); one example is one user's row,
and the reparameterization noise is drawn with the example (from the caller's
generator), so ``forward`` is deterministic.
"""

from __future__ import annotations

from typing import ClassVar

import numpy as np
import numpy.typing as npt
import torch

from fedrec.models.base import LocalUnit
from fedrec.models.cdae import corrupt, linear, multinomial_nll, user_rows, xavier_
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, TrainableRecommender


class MultVAE(TrainableRecommender):
    """Mult-VAE ``n_items -> hidden -> dim -> hidden -> n_items`` (tanh).

    Built as ``MultVAE(cfg, n_items, n_users)``: ``cfg.hidden`` (paper: 600), latent
    ``cfg.dim`` (paper: 200), input dropout ``cfg.dropout`` and KL weight ``cfg.beta``
    (paper: 0.2). :attr:`beta` is a plain attribute a trainer may anneal.

    Upload order starts with ``dec_out.weight`` ``[n_items, hidden]`` (the first item-side
    array's first dimension is the catalogue size). One example is one user's row:
    ``inputs = (corrupted rows [b, n_items], noise [b, dim])``,
    ``target = rows``. ``forward`` returns ``[logits | mu | logvar]`` concatenated on
    dimension 1 (``[b, n_items + 2 dim]``), which :meth:`loss` splits.
    """

    kind: ClassVar[str] = "multvae"
    PRESET: ClassVar[str] = "fedrec.federated.presets:multvae_preset"
    SKIPS_ITEM_INIT: ClassVar[bool] = True
    TWIN_TRAINER: ClassVar[str] = "fedrec.training.autoencoder:train_autoencoder_centralized"
    ITEM_SIDE: ClassVar[tuple[str, ...]] = (
        "dec_out.weight",
        "dec_out.bias",
        "dec_hidden.weight",
        "dec_hidden.bias",
        "enc_out.weight",
        "enc_out.bias",
        "enc_hidden.weight",
        "enc_hidden.bias",
    )
    USER_SIDE: ClassVar[tuple[str, ...]] = ()
    BIAS_PARAMETERS: ClassVar[tuple[str, ...]] = (
        "dec_out.bias",
        "dec_hidden.bias",
        "enc_out.bias",
        "enc_hidden.bias",
    )
    ITEM_BIAS: ClassVar[str | None] = "dec_out.bias"
    ITEM_VECTORS: ClassVar[str] = "dec_out.weight"  # the last decoder layer [n_items, hidden]
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None] = "user"  # one example = the user's row

    def __init__(
        self, cfg: ModelConfig, n_items: int, n_users: int, *, item_init: bool = True
    ) -> None:
        super().__init__(n_items, n_users)
        self.latent = cfg.dim
        self.dropout = cfg.dropout
        self.beta = cfg.beta
        self.enc_hidden = linear(n_items, cfg.hidden)
        self.enc_out = linear(cfg.hidden, 2 * cfg.dim)
        self.dec_hidden = linear(cfg.dim, cfg.hidden)
        self.dec_out = linear(cfg.hidden, n_items)
        if item_init:  # False: the caller overwrites the item side (see build_model)
            xavier_(self.enc_hidden, self.enc_out, self.dec_hidden, self.dec_out)

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        from fedrec.training.autoencoder import PRESETS

        return PRESETS[cls.kind]

    def encode(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Mean and log-variance ``[b, dim]`` of ``q(z | x)``."""
        out = self.enc_out(torch.tanh(self.enc_hidden(x)))
        return out[:, : self.latent], out[:, self.latent :]

    def decode(self, z: torch.Tensor) -> torch.Tensor:
        """Item logits ``[b, n_items]`` of latent codes ``z``."""
        return self.dec_out(torch.tanh(self.dec_hidden(z)))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        """``[logits | mu | logvar]`` with ``z = mu + noise * sigma`` (reparameterization)."""
        mu, logvar = self.encode(x)
        logits = self.decode(mu + noise * torch.exp(0.5 * logvar))
        return torch.cat([logits, mu, logvar], dim=1)

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """One example per user: corrupted row and standard-normal noise from ``generator``."""
        del key  # no keyed choice: one example per user
        _, history = user_rows(users, items, self.n_items)
        x = corrupt(history, self.dropout, generator)
        noise = torch.randn((len(history), self.latent), generator=generator)
        return Examples((x, noise), history)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean over users of the negative ELBO with KL weight :attr:`beta`."""
        logits, mu, logvar = output.split([self.n_items, self.latent, self.latent], dim=1)
        kl = 0.5 * (torch.exp(logvar) + mu * mu - 1.0 - logvar).sum(dim=1)
        return (multinomial_nll(logits, target) + self.beta * kl).mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Logits of every item, decoding the mean of ``q`` (no dropout, no sampling)."""
        del users
        mu, _ = self.encode(corrupt(history, 0.0, None))
        return self.decode(mu)
