"""What a training round asks of a device, what the device answers, and the private round.

Design rule: **write before send, never refund.** A private round checks the budget
against the spend it *will* make (:func:`fedrec.federated.private.planned_releases`,
public quantities only) before it touches the data, trains with
:func:`fedrec.federated.private.client_fit_private`, and appends every release to the
device's durable ledger before anything is returned for sending
(docs/PRIVACY.md, "Ledgers"). The ML lives in :mod:`fedrec.federated.private`; this
module only wires the ledger around it.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from clients.store import ItemId
from fedrec.errors import BudgetExhaustedError
from fedrec.federated.client import UserState
from fedrec.federated.private import (
    LocalPrivacy,
    client_fit_private,
    planned_releases,
    projected_epsilon,
)
from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.ledger import PrivacyLedger, Spent

OK, BUDGET_EXHAUSTED, NO_DATA = "ok", "budget_exhausted", "no_data"
"""The statuses of :class:`FitReply`."""


@dataclasses.dataclass(frozen=True)
class RoundConfig:
    """What one round asks of the device (the ClientApp builds it from the message).

    Attributes
    ----------
    model, train
        Model and local-training configuration of the run.
    round
        Server round (1-based); a re-run of a round starts from the state before it.
    seed
        Seed of this call's public randomness, e.g. ``derive_seed(run_seed, user, round - 1)``.
    item_ids
        Original item id of each row of the global arrays. ``None``: the catalog the
        device already holds if the size matches, else the identity ``0..n-1``.
    privacy
        Local DP settings, or ``None`` (no privacy).
    """

    model: ModelConfig = dataclasses.field(default_factory=ModelConfig)
    train: LocalTrainConfig = dataclasses.field(default_factory=LocalTrainConfig)
    round: int = 1
    seed: int = 0
    item_ids: Sequence[ItemId] | None = None
    privacy: LocalPrivacy | None = None


@dataclasses.dataclass(frozen=True)
class FitReply:
    """The device's answer to a training round.

    ``status`` is ``"ok"`` (``item_arrays`` set: the only thing to upload),
    ``"budget_exhausted"`` (did not train; the server carries on without it) or
    ``"no_data"`` (no interaction on a catalog item). ``num_examples`` is private;
    ``train_loss`` is NaN under privacy (it describes the data). ``spent`` is the
    ledger's statement after this round (private rounds).
    """

    status: str
    item_arrays: Arrays | None = None
    num_examples: int = 0
    train_loss: float = float("nan")
    spent: Spent | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == OK


@dataclasses.dataclass(frozen=True)
class EvalReply:
    """Per-user metrics and the top-10 (catalog rows and original ids) of an evaluation."""

    metrics: dict[str, float]
    top10: npt.NDArray[np.int64]
    top10_items: list[ItemId]


def fit_private_round(
    ledger: PrivacyLedger,
    config: RoundConfig,
    privacy: LocalPrivacy,
    global_items: Arrays,
    state: UserState | None,
    train_items: npt.NDArray[np.int64],
) -> tuple[FitReply, UserState | None]:
    """Budget check, DP-SGD fit, ledger write; the reply and the state to keep.

    Returns ``(reply, None)`` for a refusal (nothing trained, nothing written). The
    ledger is durable when this returns an ``"ok"`` reply: a crash after it keeps the
    spend.
    """
    planned = planned_releases(
        config.model,
        config.train,
        privacy.noise_multiplier,
        len(train_items),
        first=state is None,
    )
    if privacy.epsilon_budget is not None:
        epsilon = projected_epsilon(ledger.account, planned, privacy.delta)
        if epsilon > privacy.epsilon_budget:
            message = (
                f"round {config.round} would spend epsilon {epsilon:.3f} > budget "
                f"{privacy.epsilon_budget}; did not train"
            )
            return FitReply(BUDGET_EXHAUSTED, spent=ledger.spent(), message=message), None
    model = config.model.at_round(config.round)
    fit = client_fit_private(
        model, config.train, privacy, global_items, state, train_items, seed=config.seed
    )
    try:  # write before send: a crash after this keeps the spend
        for release in fit.releases:
            ledger.reserve(release, round=config.round, budget_epsilon=privacy.epsilon_budget)
    except BudgetExhaustedError as exc:  # only if the plan was wrong; the rest stays spent
        return FitReply(BUDGET_EXHAUSTED, spent=ledger.spent(), message=str(exc)), None
    reply = FitReply(OK, fit.item_arrays, len(train_items), float("nan"), ledger.spent())
    return reply, fit.user_state


__all__ = [
    "BUDGET_EXHAUSTED",
    "NO_DATA",
    "OK",
    "EvalReply",
    "FitReply",
    "LocalPrivacy",
    "RoundConfig",
    "fit_private_round",
]
