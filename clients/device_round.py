"""What a training round asks of a device, what the device answers, and the private round.

Design rule: **write before send, never refund.** The private round is
:func:`fedrec.federated.private.private_round` (plan, budget check with
``PrivacyLedger.would_exceed``, fit, reserve), the very function the Flower-free loop
calls; here it runs over the device's durable ledger, so every release is on disk
before anything is returned for sending (docs/PRIVACY.md, "Ledgers").
"""

from __future__ import annotations

import dataclasses
import importlib
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clients.store import ItemId
from fedrec.models.config import LocalTrainConfig, ModelConfig

if TYPE_CHECKING:  # torch and Opacus: imported by a private round, not by a recommending app
    from fedrec.federated.private import LocalPrivacy
    from fedrec.federated.serving import UserState
    from fedrec.models.base import Arrays
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
    ledger's statement after this round (private rounds). ``num_examples``, ``spent``
    and ``message`` stay on the device: a local-DP reply carries only the status
    (:class:`fedrec.privacy.record.PrivacyRecord`) and the arrays.
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
    *,
    key: bytes | None = None,
) -> tuple[FitReply, UserState | None]:
    """The device's private round (:func:`fedrec.federated.private.private_round`).

    Returns ``(reply, None)`` for a refusal (nothing trained, nothing written). The
    ledger is durable when this returns an ``"ok"`` reply: a crash after it keeps the
    spend. ``key``: the device's secret key of MF's negatives (``None``: public).
    """
    from fedrec.federated.private import private_round

    outcome = private_round(
        ledger,
        config.model.at_round(config.round),
        config.train,
        privacy,
        global_items,
        state,
        train_items,
        round=config.round,
        seed=config.seed,
        key=key,
    )
    if outcome.fit is None:
        return FitReply(BUDGET_EXHAUSTED, spent=ledger.spent(), message=outcome.message), None
    fit = outcome.fit
    reply = FitReply(OK, fit.item_arrays, len(train_items), float("nan"), ledger.spent())
    return reply, fit.user_state


def __getattr__(name: str) -> Any:
    """``LocalPrivacy`` (PEP 562): imported on first use, with torch and Opacus."""
    if name == "LocalPrivacy":
        return importlib.import_module("fedrec.federated.private").LocalPrivacy
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


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
