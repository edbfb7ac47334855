"""The on-device client an app embeds: local data, local model, local recommendations.

Design rule: **the device is the only holder of its user's data.** A
:class:`DeviceClient` keeps the user's interactions, user-side model state, the last
global item parameters and the privacy ledger in one durable SQLite file
(:mod:`clients.store`); only item-side updates leave it (:meth:`DeviceClient.fit_round`).

Two user states are kept (docs/DEVICE.md, "real-time updates"):

- the *training* state feeds uploads and changes only inside :meth:`fit_round`, under
  the round's mechanism (plain, or DP-SGD with the ledger written before the reply);
- the *serving* state is refreshed by a few local steps on every :meth:`record`
  against the frozen global items (Federated Reconstruction's refit, Singhal et al.
  2021), so recommendations react at once. It never feeds an upload, so it needs no
  privacy accounting.

Global item rows are aligned to interactions by *original item id* through the item-id
list that came with them, never by position; an interaction on an item the current
catalog does not contain is stored and used once a catalog contains it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from clients.store import DeviceStore, ItemId
from fedrec.errors import BudgetExhaustedError, ConfigError, StoreError
from fedrec.federated.client import client_evaluate, client_fit, derive_seed
from fedrec.models.base import (
    Arrays,
    get_user_state,
    item_side,
    set_item_arrays,
    set_user_state,
)
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import TrainableRecommender
from fedrec.privacy.ledger import PrivacyLedger, SqliteLedgerStore, Spent, ledger_records
from fedrec.privacy.noise import secure_rng
from fedrec.recommend.similar import item_vectors, unit_rows
from fedrec.recommend.types import Recommendation
from fedrec.training.local import refit_user, user_examples

UserState = dict[str, npt.NDArray[np.float32]]
GLOBAL, TRAIN, TRAIN_PREV, SERVE = "global", "train", "train.prev", "serve"
Row = ItemId | tuple[Any, ...]
"""A row of :meth:`DeviceClient.record_many`: an item, or ``(item[, rating[, timestamp]])``."""


@dataclasses.dataclass(frozen=True)
class LocalPrivacy:
    """Local DP-SGD settings of a round (Abadi et al., CCS 2016), checked at construction.

    Attributes
    ----------
    noise_multiplier, clip_norm
        Noise std over clip bound ``z``, and the per-unit clip bound ``C``.
    epsilon_budget, delta
        The device refuses to train when its epsilon at ``delta`` would exceed the budget.
    accountant
        ``"rdp"`` or ``"prv"`` (must match the ledger's).
    unit
        The protected unit as stated in the ledger.
    """

    noise_multiplier: float
    clip_norm: float
    epsilon_budget: float
    delta: float = 1e-5
    accountant: str = "rdp"
    unit: str = "one interaction"

    def __post_init__(self) -> None:
        from fedrec.privacy.accounting import check_accountant, check_delta

        check_accountant(self.accountant)
        check_delta(self.delta)
        for name in ("noise_multiplier", "clip_norm", "epsilon_budget"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"must be finite and > 0, got {value}", where=f"privacy.{name}")


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

    model: ModelConfig = ModelConfig()
    train: LocalTrainConfig = LocalTrainConfig()
    round: int = 1
    seed: int = 0
    item_ids: Sequence[ItemId] | None = None
    privacy: LocalPrivacy | None = None


@dataclasses.dataclass(frozen=True)
class FitReply:
    """The device's answer to a training round.

    ``status`` is ``"ok"`` (``item_arrays`` set: the only thing to upload),
    ``"budget_exhausted"`` (did not train; the server carries on without it) or
    ``"no_data"`` (no interaction on a catalog item). ``num_examples`` is private.
    """

    status: str
    item_arrays: Arrays | None = None
    num_examples: int = 0
    train_loss: float = float("nan")
    spent: Spent | None = None
    message: str = ""

    @property
    def ok(self) -> bool:
        return self.status == "ok"


@dataclasses.dataclass(frozen=True)
class EvalReply:
    """Per-user metrics and the top-10 (catalog rows and original ids) of an evaluation."""

    metrics: dict[str, float]
    top10: npt.NDArray[np.int64]
    top10_items: list[ItemId]


def item_id(value: object) -> ItemId:
    """Canonical original item id: a Python ``int`` or ``str``."""
    if isinstance(value, bool) or not isinstance(value, int | str | np.integer):
        raise ConfigError(
            f"item id {value!r} is a {type(value).__name__}", where="item", fix="use an int or str"
        )
    return int(value) if isinstance(value, int | np.integer) else value


def _parse_row(row: Row, now: float) -> tuple[ItemId, float | None, float]:
    parts = row if isinstance(row, tuple) else (row,)
    if not 1 <= len(parts) <= 3:
        raise ConfigError(f"row {row!r} has {len(parts)} fields", where="record_many",
                          fix="pass item or (item, rating, timestamp)")
    item, rating, stamp = (*parts, None, None)[:3]
    return (item_id(item), None if rating is None else float(rating),
            now if stamp is None else float(stamp))


def _catalog_hash(ids: Sequence[ItemId]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _bias(kind: str, model: TrainableRecommender, n_items: int) -> npt.NDArray[np.float32]:
    """Popularity signal: the learned item bias (MF ``b``, decoder bias of the AEs)."""
    names = {"mf": "item_bias.weight", "cdae": "decoder.bias", "multvae": "dec_out.bias"}
    param = item_side(model).get(names.get(kind, ""))
    if param is None:
        return np.zeros(n_items, dtype=np.float32)
    return param.detach().numpy().reshape(n_items).astype(np.float32)


@dataclasses.dataclass
class _Global:
    """The held global item parameters, loaded once into a one-user model."""

    model_cfg: ModelConfig
    train_cfg: LocalTrainConfig
    ids: list[ItemId]
    row: dict[ItemId, int]
    arrays: Arrays
    model: TrainableRecommender
    init_state: UserState
    bias: npt.NDArray[np.float32]
    unit_vectors: npt.NDArray[np.float64] | None

    @classmethod
    def build(cls, arrays: Arrays, model_cfg: ModelConfig, train_cfg: LocalTrainConfig,
              ids: list[ItemId], seed: int) -> _Global:
        n_items = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else -1
        if n_items != len(ids):
            raise ConfigError(f"{len(ids)} item ids for global arrays of {n_items} rows",
                              where="item_ids", fix="send one original id per item row")
        model = build_model(model_cfg, n_items, 1, seed=seed)
        try:
            set_item_arrays(model, arrays)
        except ValueError as exc:
            raise ConfigError(str(exc), where="global arrays",
                              fix="send arrays of the model config's shapes") from exc
        model.eval()
        vectors = unit_rows(item_vectors(model_cfg.kind, arrays)) if model_cfg.kind in (
            "mf", "cdae", "multvae") else None
        return cls(model_cfg, train_cfg, ids, {i: r for r, i in enumerate(ids)}, arrays, model,
                   get_user_state(model), _bias(model_cfg.kind, model, n_items), vectors)
