"""A device's round under local DP: DP-SGD fit, its spend known in advance, the run's z.

Design rule: everything a private upload depends on is trained by
:func:`fedrec.privacy.local_dp.dp_train` (Abadi et al., CCS 2016; Opacus clipping and
accounting) and recorded as a :class:`~fedrec.privacy.accounting.Release`: the
user-side reconstruction of Federated Reconstruction (Singhal et al. 2021), clipped
over the user-side parameters, and the local update, clipped over **all** trainable
parameters with Gaussian noise on every coordinate (every item row, dense). What a
round will spend is a function of public quantities only (the settings and the
device's number of privacy units), so a device can check its budget *before* it
touches its data (:func:`planned_releases`), and the run's noise multiplier is
calibrated once, for every client alike (:func:`local_noise_multiplier`, called only
by :func:`fedrec.privacy.central_setup.resolve_privacy` on the server side).

One private round, the same for a device (:mod:`clients.device_round`) and the
Flower-free loop (:mod:`fedrec.federated.loop`): :func:`private_round` plans the spend,
checks it against the budget with :meth:`~fedrec.privacy.ledger.PrivacyLedger.would_exceed`,
fits, and reserves every release in the ledger before anything is returned for sending.

Batches: with ``n`` units and batch size ``B``, an epoch is ``k = ceil(n / B)`` steps
and the device samples at ``q = ceil(n / k) / n`` (:func:`dp_batch_size`), i.e. about
``1 / k`` with ``k`` steps, never the costly ``q`` just below 1 with 2 steps per epoch.
The run's ``z`` is calibrated for full batches (``q = 1``, ``k = 1``), the most
expensive case in practice; the device's ledger check enforces the budget exactly.
The training loss is never reported: it is a function of the user's data.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.errors import BudgetExhaustedError, ConfigError
from fedrec.federated.client import UserState, derive_seed, load_device_model
from fedrec.models.base import Arrays, get_item_arrays, get_user_state, item_side
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import model_class, refuse_local_dp
from fedrec.models.trainable import TrainableRecommender
from fedrec.privacy.accounting import (
    PrivacyAccount,
    Release,
    calibrate_noise,
    check_accountant,
    check_delta,
)
from fedrec.privacy.config import PrivacyConfig
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.local_dp import dp_train, interaction_units
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.record import BUDGET_EXHAUSTED, TRAINED
from fedrec.privacy.report import local_unit
from fedrec.training.local import (
    Proximal,
    freeze_except,
    make_optimizer,
    restore_grad_flags,
    update_optimizer,
    user_examples,
)

BIAS_PARAM = "item_bias.weight"
"""The MF item-bias table, weighted by ``bias_scale`` inside the per-unit clip."""


@dataclass(frozen=True)
class LocalPrivacy:
    """Local DP-SGD settings of a round, checked at construction.

    Attributes
    ----------
    noise_multiplier, clip_norm
        Noise std over clip bound ``z``, and the per-unit clip bound ``C``.
    epsilon_budget
        The device refuses a round whose spend would take its epsilon (at ``delta``)
        above this; ``None``: no budget.
    delta, accountant, unit
        The ledger's delta, Opacus accountant (``"rdp"``/``"prv"``) and protected unit.
    bias_scale
        Weight of the MF item biases inside the clipped vector (``< 1``: the biases
        take less of the clip budget and get ``1 / bias_scale`` times more noise).
    insecure_noise_seed
        TESTS ONLY: reproducible noise; voids the guarantee.
    """

    noise_multiplier: float
    clip_norm: float
    epsilon_budget: float | None = None
    delta: float = 1e-5
    accountant: str = "rdp"
    unit: str = "one interaction"
    bias_scale: float = 1.0
    insecure_noise_seed: int | None = None

    def __post_init__(self) -> None:
        check_accountant(self.accountant)
        check_delta(self.delta)
        for name in ("noise_multiplier", "clip_norm", "epsilon_budget", "bias_scale"):
            value = getattr(self, name)
            if value is not None and not (math.isfinite(value) and value > 0):
                raise ConfigError(f"must be finite and > 0, got {value}", where=f"privacy.{name}")

    @classmethod
    def from_config(
        cls, privacy: PrivacyConfig, model: ModelConfig, *, noise_multiplier: float
    ) -> LocalPrivacy:
        """The device's settings from a run's resolved :class:`PrivacyConfig`."""
        if privacy.delta is None:
            raise ConfigError("delta is not resolved", where="privacy.delta", fix="set --delta")
        return cls(
            noise_multiplier=noise_multiplier,
            clip_norm=privacy.clip_norm,
            epsilon_budget=privacy.target_epsilon,
            delta=privacy.delta,
            accountant=privacy.accountant,
            unit=local_unit(model.kind),
            bias_scale=privacy.bias_scale,
            insecure_noise_seed=privacy.insecure_noise_seed,
        )

    def rng(self, seed: int) -> np.random.Generator:
        """The secret generator of one call (seeded only under ``insecure_noise_seed``)."""
        if self.insecure_noise_seed is None:
            return secure_rng()
        return secure_rng(derive_seed(self.insecure_noise_seed, seed))


@dataclass(frozen=True)
class PrivateFit:
    """The outcome of :func:`client_fit_private` (no loss: it would describe the data)."""

    item_arrays: Arrays
    user_state: UserState
    releases: list[Release]


def privacy_units(model: ModelConfig | TrainableRecommender, n_train: int) -> int:
    """Units of a device: one per interaction (MF), the whole vector (autoencoders)."""
    return n_train if model_class(model.kind).LOCAL_DP_UNIT == "interaction" else 1


def dp_batch_size(n_units: int, batch_size: int) -> int:
    """``ceil(n / k)`` for ``k = ceil(n / B)`` steps per epoch (see the module docstring)."""
    return math.ceil(n_units / math.ceil(n_units / batch_size))


def reconstructs(model: ModelConfig, train: LocalTrainConfig, *, first: bool) -> bool:
    """Whether the round refits the user state first (as :func:`client_fit` does)."""
    every = first or train.refit_every_round
    return bool(model_class(model.kind).USER_SIDE) and train.refit_epochs(first=first) > 0 and every


def planned_releases(
    model: ModelConfig, train: LocalTrainConfig, z: float, n_train: int, *, first: bool
) -> list[Release]:
    """What :func:`client_fit_private` will spend, known before training."""
    n = privacy_units(model, n_train)
    q = min(1.0, dp_batch_size(n, train.batch_size) / n)
    per_epoch = math.ceil(1.0 / q)
    out = []
    if reconstructs(model, train, first=first):
        out.append(Release(z, q, train.refit_epochs(first=first) * per_epoch))
    if train.epochs > 0:
        out.append(Release(z, q, train.epochs * per_epoch))
    return out


def projected_epsilon(account: PrivacyAccount, releases: list[Release], delta: float) -> float:
    """Epsilon of ``account`` after ``releases`` (for the budget check)."""
    for release in releases:
        account = account.after(release)
    return account.epsilon(delta)


def client_fit_private(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    privacy: LocalPrivacy,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    key: bytes | None = None,
) -> PrivateFit:
    """:func:`~fedrec.federated.client.client_fit` under local DP-SGD.

    The reconstruction (first participation, or every round with
    ``refit_every_round``) is a release of its own, clipped over the user-side
    parameters; the update clips over all parameters. FedProx's proximal term
    (Li et al. 2020) is added to the privatized gradient. ``seed`` drives the public
    randomness (user init, the epoch nonces of the negatives); ``key`` is the device's
    secret key of MF's keyed negatives (:mod:`fedrec.training.negatives`; ``None``: a
    public key); the noise and sampling come from :meth:`LocalPrivacy.rng`. The
    releases equal :func:`planned_releases` (tested).
    """
    refuse_local_dp(model_cfg.kind, "local")  # a model without a local-DP unit never trains here
    model = load_device_model(model_cfg, global_items, user_state, seed=seed)
    run = _DPRun(model, train_items, privacy, train_cfg.batch_size, seed, key)
    releases = []
    if reconstructs(model_cfg, train_cfg, first=user_state is None):
        flags = freeze_except(model, model.USER_SIDE)
        try:
            params = [p for name, p in model.named_parameters() if name in model.USER_SIDE]
            opt = make_optimizer(params, train_cfg, lr=train_cfg.refit_lr)
            epochs = train_cfg.refit_epochs(first=user_state is None)
            releases.append(run.train(opt, epochs))
        finally:
            restore_grad_flags(model, flags)
    if train_cfg.epochs > 0:
        mu = train_cfg.proximal_mu
        proximal = Proximal.around(list(item_side(model).values()), mu) if mu > 0 else None
        weights = {BIAS_PARAM: privacy.bias_scale} if _weights_bias(model, privacy) else None
        opt = update_optimizer(model, train_cfg, item_lr=train_cfg.lr * run.item_lr_scale)
        releases.append(run.train(opt, train_cfg.epochs, proximal=proximal, clip_weights=weights))
    return PrivateFit(get_item_arrays(model), get_user_state(model), releases)


@dataclass(frozen=True)
class PrivateRound:
    """The outcome of :func:`private_round`.

    ``status`` is ``"trained"`` (``fit`` set; its releases are already in the ledger)
    or ``"budget_exhausted"`` (nothing trained, nothing spent by this round).
    ``message`` is for the device's own log only: it names epsilon values, which
    depend on the device's size, and is never sent.
    """

    status: str
    fit: PrivateFit | None = None
    message: str = ""


def private_round(
    ledger: PrivacyLedger,
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    privacy: LocalPrivacy,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    round: int,
    seed: int,
    key: bytes | None = None,
) -> PrivateRound:
    """One local-DP round: plan, budget check, fit, reserve (write before send).

    ``model_cfg`` is the round's configuration (``ModelConfig.at_round``). The spend is
    planned from public quantities (:func:`planned_releases`) and checked with
    ``ledger.would_exceed`` *before* the data is touched; a round over the budget is
    refused. Otherwise the device fits (:func:`client_fit_private`) and appends every
    release to ``ledger`` (durable for a device's store) before returning: a crash
    after this keeps the spend, and a redo of the round pays again.
    """
    planned = planned_releases(
        model_cfg, train_cfg, privacy.noise_multiplier, len(train_items), first=user_state is None
    )
    budget = privacy.epsilon_budget
    if budget is not None and ledger.would_exceed(budget, privacy.delta, planned):
        epsilon = projected_epsilon(ledger.account, planned, privacy.delta)
        message = f"round {round} would spend epsilon {epsilon:.3f} > budget {budget}"
        return PrivateRound(BUDGET_EXHAUSTED, message=message + "; did not train")
    fit = client_fit_private(
        model_cfg, train_cfg, privacy, global_items, user_state, train_items, seed=seed, key=key
    )
    try:  # write before send: a crash after this keeps the spend
        for release in fit.releases:
            ledger.reserve(release, round=round, budget_epsilon=budget)
    except BudgetExhaustedError as exc:  # only if the plan was wrong; the rest stays spent
        return PrivateRound(BUDGET_EXHAUSTED, message=str(exc))
    return PrivateRound(TRAINED, fit)


class _DPRun:
    """The DP-SGD phases of one round, sharing the public and the secret generators."""

    def __init__(
        self,
        model: TrainableRecommender,
        train_items: npt.NDArray[np.int64],
        privacy: LocalPrivacy,
        batch_size: int,
        seed: int,
        key: bytes | None,
    ) -> None:
        self.model, self.privacy = model, privacy
        # MF negatives keyed per interaction (the device key, if any): one unit each
        self.examples = user_examples(model, train_items, key=key)
        self.units = interaction_units(model, len(train_items))
        n = privacy_units(model, len(train_items))
        self.batch_size = dp_batch_size(n, batch_size)
        q = min(1.0, self.batch_size / n)
        # MF: the item step is the noisy SUM over the sampled units / B (public), not / q n
        self.item_lr_scale = q * n / batch_size if model.LOCAL_DP_UNIT == "interaction" else 1.0
        self.generator = torch.Generator().manual_seed(seed)
        self.rng = privacy.rng(seed)

    def train(
        self,
        optimizer: torch.optim.Optimizer,
        epochs: int,
        *,
        proximal: Proximal | None = None,
        clip_weights: dict[str, float] | None = None,
    ) -> Release:
        return dp_train(
            self.model,
            self.examples,
            noise_multiplier=self.privacy.noise_multiplier,
            max_grad_norm=self.privacy.clip_norm,
            batch_size=self.batch_size,
            epochs=epochs,
            optimizer=optimizer,
            generator=self.generator,
            rng=self.rng,
            units=self.units,
            proximal=proximal,
            clip_weights=clip_weights,
        )


def _weights_bias(model: torch.nn.Module, privacy: LocalPrivacy) -> bool:
    return privacy.bias_scale != 1.0 and BIAS_PARAM in dict(model.named_parameters())


def planned_steps(
    model: ModelConfig, train: LocalTrainConfig, *, rounds: int, client_sample_rate: float
) -> int:
    """Full-batch steps of the planned participation ``R = ceil(rounds * q_c)``."""
    planned = max(1, math.ceil(rounds * client_sample_rate - 1e-9))
    steps = planned * train.epochs
    if reconstructs(model, train, first=True):
        steps += train.refit_epochs(first=True)
    if train.refit_every_round and reconstructs(model, train, first=False):
        steps += train.refit_epochs(first=False) * (planned - 1)
    return steps


def local_noise_multiplier(
    privacy: PrivacyConfig,
    model: ModelConfig,
    train: LocalTrainConfig,
    *,
    rounds: int,
    client_sample_rate: float,
) -> float:
    """The run's ``z``: given, or calibrated with Opacus for the planned participation.

    A client joins about ``R = ceil(rounds * q_c)`` rounds (``q_c`` = clients per
    round / clients). ``z`` is the smallest noise multiplier for which ``R`` rounds of
    full-batch DP-SGD (:func:`planned_steps` steps at ``q = 1``) stay within
    ``target_epsilon`` at ``delta`` (:func:`fedrec.privacy.accounting.calibrate_noise`).
    Every client gets the same ``z``; a client sampled more often than planned stops
    at its budget (its ledger check).
    """
    if privacy.noise_multiplier is not None:
        return privacy.noise_multiplier
    if privacy.target_epsilon is None or privacy.delta is None:
        raise ConfigError(
            "cannot calibrate local noise without a target epsilon and a delta",
            where="privacy",
            fix="give --target-epsilon (and resolve delta) or --noise-multiplier",
        )
    steps = planned_steps(model, train, rounds=rounds, client_sample_rate=client_sample_rate)
    return calibrate_noise(
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        sample_rate=1.0,
        steps=max(1, steps),
        accountant=privacy.accountant,
    )
