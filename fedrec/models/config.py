"""Frozen, validated configuration of a model and of its local training.

Design rule: configuration flows one way, from the CLI or ``[tool.flwr.app.config]``
into these two frozen dataclasses, and from them into typed arguments. Every value is
checked at construction, so a bad value fails at the boundary with a
:class:`fedrec.errors.ConfigError` naming the field and the fix, never deep inside torch.

Defaults are the tuned MF defaults recorded in ``/work/notes/models_api.md``; the
autoencoder fields are read only by the CDAE / Mult-VAE models.
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass
from typing import TYPE_CHECKING

from fedrec.errors import ConfigError
from fedrec.models.kinds import MODEL_CLASSES

if TYPE_CHECKING:
    from fedrec.federated.compression import UploadCodec

MODEL_KIND_NAMES = tuple(MODEL_CLASSES)
MF_LOSSES = ("bce", "bpr")
LOCAL_OPTIMIZERS = ("sgd", "adam")


def _require(ok: bool, what: str, field: str, fix: str) -> None:
    if not ok:
        raise ConfigError(what, where=field, fix=fix)


def _positive(value: float, field: str) -> None:
    _require(value > 0, f"must be > 0, got {value}", field, "use a positive value")


def _non_negative(value: float, field: str) -> None:
    _require(value >= 0, f"must be >= 0, got {value}", field, "use 0 or a positive value")


@dataclass(frozen=True)
class ModelConfig:
    """What model to build.

    Attributes
    ----------
    kind
        ``"mf"``, ``"cdae"``, ``"multvae"``, ``"ials"`` or ``"ncf"``.
    dim
        Embedding / latent dimension (NCF: of each tower; its MLP is ``2d -> d -> d/2``).
    init_std
        Standard deviation of the normal initialization of embeddings.
    loss
        MF only: ``"bce"`` (pointwise, sampled negatives) or ``"bpr"`` (Rendle et al. 2009).
    negatives
        MF and NCF: negatives per positive, drawn uniformly from *all* items,
        independently of the user's data.
    item_bias
        MF only: learn an item bias ``b_i`` (item-side); when off it stays frozen at 0.
    l2
        MF only: per-example L2 penalty ``l2 * (||p_u||^2 + ||q_i||^2)`` added to each
        example's loss (touches only the rows the example uses; see :mod:`fedrec.models.mf`).
        iALS: the ``lam`` of Rendle et al.'s frequency-scaled regularization
        (:mod:`fedrec.training.ials`).
    alpha0
        iALS only: the weight of the all-unobserved term ``alpha0 sum_i (p_u.q_i)^2``.
    hidden, dropout, beta
        Autoencoders only: hidden width, input dropout (denoising corruption) and the
        KL weight of Mult-VAE (Liang et al. 2018).
    anneal_rounds
        Mult-VAE in federated training: the KL weight rises linearly from 0 to ``beta``
        over this many server rounds (Liang et al.'s KL annealing, counted in rounds;
        see :meth:`at_round`); 0 = ``beta`` from the first round.
    max_len, blocks
        SASRec only: the longest item sequence the encoder reads (the most recent
        items) and its number of self-attention blocks (``dropout`` is its dropout rate).
    """

    kind: str = "mf"
    dim: int = 32
    init_std: float = 0.1
    loss: str = "bce"
    negatives: int = 4
    item_bias: bool = True
    l2: float = 0.01
    alpha0: float = 0.0
    hidden: int = 600
    dropout: float = 0.5
    beta: float = 0.2
    anneal_rounds: int = 0
    max_len: int = 50
    blocks: int = 2

    def __post_init__(self) -> None:
        _require(
            self.kind in MODEL_KIND_NAMES,
            f"unknown model kind {self.kind!r}",
            "model.kind",
            f"use one of {', '.join(MODEL_KIND_NAMES)}",
        )
        _require(self.dim >= 1, f"must be >= 1, got {self.dim}", "model.dim", "use e.g. 32")
        _positive(self.init_std, "model.init_std")
        _require(
            self.loss in MF_LOSSES,
            f"unknown MF loss {self.loss!r}",
            "model.loss",
            f"use one of {', '.join(MF_LOSSES)}",
        )
        _require(
            self.negatives >= 1, f"must be >= 1, got {self.negatives}", "model.negatives", "use 4"
        )
        _non_negative(self.l2, "model.l2")
        _non_negative(self.alpha0, "model.alpha0")
        _require(self.hidden >= 1, f"must be >= 1, got {self.hidden}", "model.hidden", "use 600")
        _require(
            0.0 <= self.dropout < 1.0,
            f"must be in [0, 1), got {self.dropout}",
            "model.dropout",
            "use e.g. 0.5",
        )
        _non_negative(self.beta, "model.beta")
        _require(
            self.anneal_rounds >= 0,
            f"must be >= 0, got {self.anneal_rounds}",
            "model.anneal_rounds",
            "use 0 (off) or a number of rounds",
        )
        _require(
            self.max_len >= 1, f"must be >= 1, got {self.max_len}", "model.max_len", "use e.g. 50"
        )
        _require(self.blocks >= 1, f"must be >= 1, got {self.blocks}", "model.blocks", "use 2")

    def at_round(self, server_round: int) -> ModelConfig:
        """The model a device trains in ``server_round`` (1-based): Mult-VAE's KL weight
        ``beta * min(1, (server_round - 1) / anneal_rounds)``; otherwise ``self``."""
        if self.kind != "multvae" or self.anneal_rounds == 0:
            return self
        weight = min(1.0, max(server_round - 1, 0) / self.anneal_rounds)
        return dataclasses.replace(self, beta=self.beta * weight, anneal_rounds=0)


@dataclass(frozen=True)
class LocalTrainConfig:
    """How a device (or the centralized twin) trains.

    Attributes
    ----------
    epochs
        Local epochs per round (passes over the user's examples, fresh negatives each).
    lr
        Learning rate of the local optimizer (losses are means over a minibatch).
    batch_size
        Examples per minibatch; a user's examples beyond it form further minibatches.
    optimizer
        ``"sgd"`` or ``"adam"``; a fresh optimizer each round (no state kept).
    weight_decay
        L2 weight decay of the local optimizer. It decays *all* rows, untouched ones
        included, so keep it 0 on devices (MF regularizes with ``ModelConfig.l2``).
    proximal_mu
        FedProx (Li et al. 2020) proximal weight on item-side parameters; 0 = off.
    refit_steps
        Federated Reconstruction (Singhal et al. 2021): epochs fitting the user-side
        parameters alone on the current global item parameters, before a user's first
        update, before every update when ``refit_every_round``, and before evaluation.
    refit_lr
        Learning rate of the user-side refit.
    refit_optimizer
        Optimizer of the user-side refit (a fresh one each refit). Adam by default: it
        fits ``p_u`` in few steps at any loss scale, while the item-side update uses
        plain SGD so that the upload is a clean multi-step gradient.
    refit_every_round
        Refit the user-side state on the new global items before each local update,
        not only at first participation.
    warm_refit_steps
        Refit epochs before a *returning* user's update (``refit_every_round``); its
        stored state is already close, so fewer suffice. ``None`` = ``refit_steps``.
        A first participation and every evaluation use ``refit_steps``.
    user_lr
        Learning rate of the user-side parameters in the local update; ``None`` = ``lr``.
        FedSGD (one SGD step of rate 1: the upload is the gradient, which the server's
        Adam scales) needs it: the user vector never passes through the server's
        optimizer, so it takes its own small step.
    upload_bits
        Opt-in smaller uploads: the device sends its update quantized to this many bits
        per value with unbiased stochastic rounding (1, 2, 4 or 8; 0 = float32, the
        default; :mod:`fedrec.federated.compression`, docs/SCALE.md).
    upload_scale
        ``"row"`` (one offset and step per item row) or ``"tensor"`` (one per array).
    """

    epochs: int = 5
    lr: float = 3.0
    batch_size: int = 1024
    optimizer: str = "sgd"
    weight_decay: float = 0.0
    proximal_mu: float = 0.0
    refit_steps: int = 20
    refit_lr: float = 0.1
    refit_every_round: bool = True
    refit_optimizer: str = "adam"
    warm_refit_steps: int | None = None
    user_lr: float | None = None
    upload_bits: int = 0
    upload_scale: str = "row"

    def __post_init__(self) -> None:
        _require(self.epochs >= 1, f"must be >= 1, got {self.epochs}", "train.epochs", "use 1+")
        _positive(self.lr, "train.lr")
        _require(
            self.batch_size >= 1,
            f"must be >= 1, got {self.batch_size}",
            "train.batch_size",
            "use e.g. 1024",
        )
        _require(
            self.optimizer in LOCAL_OPTIMIZERS,
            f"unknown optimizer {self.optimizer!r}",
            "train.optimizer",
            f"use one of {', '.join(LOCAL_OPTIMIZERS)}",
        )
        _non_negative(self.weight_decay, "train.weight_decay")
        _non_negative(self.proximal_mu, "train.proximal_mu")
        _require(
            self.refit_steps >= 0,
            f"must be >= 0, got {self.refit_steps}",
            "train.refit_steps",
            "use 0 (off) or e.g. 20",
        )
        _require(
            self.warm_refit_steps is None or self.warm_refit_steps >= 0,
            f"must be >= 0, got {self.warm_refit_steps}",
            "train.warm_refit_steps",
            "use 0 (off), e.g. 5, or leave it unset (= refit_steps)",
        )
        _positive(self.refit_lr, "train.refit_lr")
        _require(
            self.refit_optimizer in LOCAL_OPTIMIZERS,
            f"unknown optimizer {self.refit_optimizer!r}",
            "train.refit_optimizer",
            f"use one of {', '.join(LOCAL_OPTIMIZERS)}",
        )
        if self.user_lr is not None:
            _positive(self.user_lr, "train.user_lr")
        self.upload_codec()  # refuses unknown bits or scale

    def upload_codec(self) -> UploadCodec:
        """How this config's uploads are encoded (:mod:`fedrec.federated.compression`)."""
        from fedrec.federated.compression import UploadCodec

        return UploadCodec(self.upload_bits, self.upload_scale)

    def refit_epochs(self, *, first: bool) -> int:
        """Epochs of the user-side refit before an update (first participation or not)."""
        if first or self.warm_refit_steps is None:
            return self.refit_steps
        return self.warm_refit_steps

    def for_refit(self, *, first: bool) -> LocalTrainConfig:
        """This config with ``refit_steps`` set to :meth:`refit_epochs`."""
        steps = self.refit_epochs(first=first)
        return self if steps == self.refit_steps else dataclasses.replace(self, refit_steps=steps)
