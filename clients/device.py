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
from fedrec.federated.client import client_evaluate, client_fit, derive_seed, load_device_model
from fedrec.models.base import (
    Arrays,
    get_item_arrays,
    get_user_state,
    item_side,
    set_item_arrays,
    set_user_state,
)
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import TrainableRecommender
from fedrec.privacy.accounting import Release, check_accountant, check_delta
from fedrec.privacy.ledger import PrivacyLedger, Spent, SqliteLedgerStore, ledger_records
from fedrec.privacy.local_dp import dp_train, interaction_units
from fedrec.privacy.noise import secure_rng
from fedrec.recommend.explain import explain as cite_history
from fedrec.recommend.similar import item_vectors, unit_rows
from fedrec.recommend.types import Recommendation
from fedrec.training.local import (
    Proximal,
    freeze_except,
    make_optimizer,
    refit_user,
    restore_grad_flags,
    user_examples,
)

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
        raise ConfigError(
            f"row {row!r} has {len(parts)} fields",
            where="record_many",
            fix="pass item or (item, rating, timestamp)",
        )
    item, rating, stamp = (*parts, None, None)[:3]
    return (
        item_id(item),
        None if rating is None else float(rating),
        now if stamp is None else float(stamp),
    )


def _catalog_hash(ids: Sequence[ItemId]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


def _bias(kind: str, model: TrainableRecommender, n_items: int) -> npt.NDArray[np.float32]:
    """Popularity signal: the learned item bias (MF ``b``, decoder bias of the AEs)."""
    names = {"mf": "item_bias.weight", "cdae": "decoder.bias", "multvae": "dec_out.bias"}
    param = item_side(model).get(names.get(kind, ""))
    if param is None:
        return np.zeros(n_items, dtype=np.float32)
    values: npt.NDArray[np.float32] = param.detach().numpy().reshape(n_items).astype(np.float32)
    return values


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
    def build(
        cls,
        arrays: Arrays,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        ids: list[ItemId],
        seed: int,
    ) -> _Global:
        n_items = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else -1
        if n_items != len(ids):
            raise ConfigError(
                f"{len(ids)} item ids for global arrays of {n_items} rows",
                where="item_ids",
                fix="send one original id per item row",
            )
        model = build_model(model_cfg, n_items, 1, seed=seed)
        try:
            set_item_arrays(model, arrays)
        except ValueError as exc:
            raise ConfigError(
                str(exc), where="global arrays", fix="send arrays of the model config's shapes"
            ) from exc
        model.eval()
        vectors = (
            unit_rows(item_vectors(model_cfg.kind, arrays))
            if model_cfg.kind in ("mf", "cdae", "multvae")
            else None
        )
        return cls(
            model_cfg,
            train_cfg,
            ids,
            {i: r for r, i in enumerate(ids)},
            arrays,
            model,
            get_user_state(model),
            _bias(model_cfg.kind, model, n_items),
            vectors,
        )


class DeviceClient:
    """One device's client: durable local store, local training, local recommendations.

    Open with :meth:`open`; one open client per store file (a second open is refused).

    Parameters
    ----------
    store
        The open store.
    seed
        Seeds the serving refresh and model initialization (public randomness only;
        DP noise always comes from :func:`fedrec.privacy.noise.secure_rng`).
    min_interactions
        Below this many distinct catalog items the device recommends by popularity.
    refresh_steps
        Refit epochs of the serving state after each :meth:`record`.
    """

    def __init__(
        self, store: DeviceStore, *, seed: int, min_interactions: int, refresh_steps: int
    ) -> None:
        self._store = store
        user = store.get_meta("user_id")
        self.client_id = "device" if user is None else str(user)
        self.seed = seed
        self.min_interactions = min_interactions
        self.refresh_steps = refresh_steps
        self._items: list[ItemId] = [r.item for r in store.interactions()]
        self._global = self._load_global()
        self._seen = np.zeros(0, dtype=np.int64)
        self._sync()
        self._serve: UserState | None = None
        self._p: npt.NDArray[np.float32] | None = None
        self._cached_scores: npt.NDArray[np.float32] | None = None
        self._set_serve(self._load_state(SERVE), persist=False)

    @classmethod
    def open(
        cls,
        path: str | Path,
        *,
        user_id: str | int | None = None,
        seed: int = 0,
        min_interactions: int = 3,
        refresh_steps: int = 5,
    ) -> DeviceClient:
        """Open (or create) the device store at ``path``.

        Raises
        ------
        StoreError
            Corrupted, foreign, newer or already-open store, or a ``user_id`` that
            differs from the one the store was created for. The file is left untouched.
        """
        store = DeviceStore.open(path)
        try:
            if store.get_meta("created") is None:
                with store.transaction():
                    store.set_meta("user_id", user_id)
                    store.set_meta("created", time.time())
            elif user_id is not None and store.get_meta("user_id") != user_id:
                raise StoreError(
                    f"store belongs to user {store.get_meta('user_id')!r}, not {user_id!r}",
                    where=str(path),
                    fix="open this user's own store file",
                )
            return cls(
                store, seed=seed, min_interactions=min_interactions, refresh_steps=refresh_steps
            )
        except BaseException:
            store.close()
            raise

    def close(self) -> None:
        """Close the store and release its lock."""
        self._store.close()

    def __enter__(self) -> DeviceClient:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    @property
    def path(self) -> Path:
        return self._store.path

    @property
    def store(self) -> DeviceStore:
        """The underlying store (read-only use: integrity checks, inspection)."""
        return self._store

    @property
    def item_ids(self) -> list[ItemId]:
        """Original ids of the held global catalog's rows (empty without a model)."""
        return [] if self._global is None else list(self._global.ids)

    # ---- local data -------------------------------------------------------------
    def record(
        self, item: ItemId, *, rating: float | None = None, timestamp: float | None = None
    ) -> None:
        """Store one interaction durably and refresh the serving state at once."""
        self.record_many([(item, rating, timestamp)])

    def record_many(self, rows: Iterable[Row]) -> int:
        """Store ``rows`` (items or ``(item, rating, timestamp)``) in one transaction.

        Rows are validated first: either all are stored or none. ``timestamp``
        defaults to now. Returns the number of rows stored.
        """
        now = time.time()
        parsed = [_parse_row(r, now) for r in rows]
        if parsed:
            self._store.add_interactions(parsed)
            self._items.extend(p[0] for p in parsed)
            self._sync()
            self._refresh()
        return len(parsed)

    def interactions(self) -> list[Any]:
        """The stored interactions (:class:`clients.store.Interaction`), oldest first."""
        return self._store.interactions()

    def forget(self, item: ItemId) -> int:
        """Delete every interaction with ``item`` and the user states trained on it.

        The privacy ledger is kept and updates already sent stay sent. Returns the
        number of deleted interactions.
        """
        key = item_id(item)
        with self._store.transaction():
            n = self._store.delete_interactions(key)
            if n:
                self._store.delete_slots(TRAIN, TRAIN_PREV, SERVE)
        if n:
            self._store.checkpoint()
            self._items = [i for i in self._items if i != key]
            self._sync()
            self._set_serve(None, persist=False)
            self._refresh()
        return n

    def forget_all(self) -> None:
        """Delete all interactions and user states; the privacy ledger is kept."""
        with self._store.transaction():
            self._store.delete_interactions()
            self._store.delete_slots(TRAIN, TRAIN_PREV, SERVE)
        self._store.checkpoint()
        self._items = []
        self._sync()
        self._set_serve(None, persist=False)

    # ---- recommendations --------------------------------------------------------
    def recommend(
        self, k: int = 10, *, exclude_seen: bool = True, explain: bool = False
    ) -> list[Recommendation]:
        """The top ``k`` catalog items for this user, computed on the device.

        Scores are ``Q p + b`` (MF) or the model's scores, from the held global
        parameters and the serving state. With fewer than ``min_interactions`` known
        items, or no user state yet, items are ranked by their learned bias (trained
        under the same mechanism as the rest, so it reveals nothing extra; never raw
        counts) and marked ``fallback=True``. ``explain`` fills ``because`` with up to
        three of the user's items most similar (item-vector cosine) to each item.
        """
        g = self._global
        if g is None or k <= 0:
            return []
        fallback = self._serve is None or len(self._seen) < self.min_interactions
        scores = g.bias if fallback else self._scores(g)
        rows = _top_k(scores, self._seen if exclude_seen else None, k)
        becauses = self._because(g, rows) if explain else [[] for _ in rows]
        return [
            Recommendation(g.ids[r], float(scores[r]), because, fallback)
            for r, because in zip(rows, becauses, strict=True)
        ]

    # ---- federated rounds -------------------------------------------------------
    def set_global(self, global_arrays: Sequence[npt.NDArray[Any]], config: RoundConfig) -> None:
        """Hold new global item parameters (e.g. a model download) without training."""
        self._receive(global_arrays, config)
        self._refresh()

    def fit_round(self, global_arrays: Sequence[npt.NDArray[Any]], config: RoundConfig) -> FitReply:
        """One local update for the server (what a Flower ``ClientApp`` ``train`` does).

        Holds the global arrays, trains from the training state stored before
        ``config.round`` with :func:`fedrec.federated.client.client_fit` (or DP-SGD under
        ``config.privacy``), writes the ledger durably *before* returning, then keeps
        the new user state (training and serving). Under privacy, a round whose
        spend would exceed the budget is refused (``status="budget_exhausted"``,
        nothing trained, nothing written).
        """
        g = self._receive(global_arrays, config)
        train_items = self._seen.copy()
        if len(train_items) == 0:
            return FitReply("no_data", message="no interaction on an item of this catalog")
        state = self._train_state_before(config.round, private=config.privacy is not None)
        if config.privacy is None:
            fit = client_fit(
                config.model, config.train, g.arrays, state, train_items, seed=config.seed
            )
            self._keep_states(fit.user_state, config.round, private=False)
            return FitReply("ok", fit.item_arrays, fit.num_examples, fit.train_loss)
        return self._fit_private(g, config, config.privacy, state, train_items)

    def _fit_private(
        self,
        g: _Global,
        config: RoundConfig,
        privacy: LocalPrivacy,
        state: UserState | None,
        train_items: npt.NDArray[np.int64],
    ) -> FitReply:
        ledger = self._ledger(privacy)
        first = state is None
        account = ledger.account
        for release in _predict_releases(config, privacy, len(train_items), g.model, first):
            account = account.after(release)
        epsilon = account.epsilon(privacy.delta)
        if epsilon > privacy.epsilon_budget:
            return FitReply(
                "budget_exhausted",
                spent=ledger.spent(),
                message=f"round {config.round} would spend epsilon {epsilon:.3f} > budget "
                f"{privacy.epsilon_budget}; did not train",
            )
        fit_arrays, user_state, releases = _dp_fit(config, privacy, g.arrays, state, train_items)
        try:  # write before send: a crash after this keeps the spend
            for release in releases:
                ledger.reserve(release, round=config.round, budget_epsilon=privacy.epsilon_budget)
        except BudgetExhaustedError as exc:
            return FitReply("budget_exhausted", spent=ledger.spent(), message=str(exc))
        self._keep_states(user_state, config.round, private=True)
        return FitReply("ok", fit_arrays, len(train_items), float("nan"), ledger.spent())

    def evaluate_round(
        self,
        global_arrays: Sequence[npt.NDArray[Any]],
        config: RoundConfig,
        test_items: Iterable[ItemId],
    ) -> EvalReply:
        """Rank the catalog for held-out ``test_items`` (simulation only).

        Uses :func:`fedrec.federated.client.client_evaluate` with the newest training
        state; stored state is not changed. The metrics and top-10 are what a
        simulation sends back; a deployment should not (they describe the user).
        """
        g = self._receive(global_arrays, config)
        wanted = [item_id(i) for i in test_items]
        test = np.array([g.row[i] for i in wanted if i in g.row], dtype=np.int64)
        if len(test) == 0:
            raise ConfigError(
                "no test item is in the catalog",
                where="test_items",
                fix="pass held-out original ids of catalog items",
            )
        metrics, top = client_evaluate(
            config.model,
            config.train,
            g.arrays,
            self._load_state(TRAIN),
            self._seen,
            test,
            seed=config.seed,
        )
        return EvalReply(metrics, top, [g.ids[int(r)] for r in top if r >= 0])

    def privacy_spent(self) -> Spent:
        """The device's privacy statement: epsilon at delta for its unit and accountant.

        Without any private release: epsilon 0, unit and accountant ``"none"``.
        """
        records = ledger_records(self._store.conn, self.client_id)
        if not records:
            return Spent(0.0, 0.0, "none", "none", 0, 0, [])
        last = records[-1]
        ledger = PrivacyLedger(
            SqliteLedgerStore(self._store.conn, self.client_id),
            accountant=str(last["accountant"]),
            delta=float(last["delta"]),
            unit=str(last["unit"]),
        )
        return ledger.spent()

    # ---- internals --------------------------------------------------------------
    def _ledger(self, privacy: LocalPrivacy) -> PrivacyLedger:
        return PrivacyLedger(
            SqliteLedgerStore(self._store.conn, self.client_id),
            accountant=privacy.accountant,
            delta=privacy.delta,
            unit=privacy.unit,
        )

    def _receive(self, arrays: Sequence[npt.NDArray[Any]], config: RoundConfig) -> _Global:
        """Validate, persist and cache new global parameters with their catalog."""
        floats = [np.ascontiguousarray(a, dtype=np.float32) for a in arrays]
        n_items = int(floats[0].shape[0]) if floats and floats[0].ndim else 0
        ids = self._resolve_ids(config, n_items)
        g = _Global.build(floats, config.model, config.train, ids, self.seed)
        info = {
            "model": dataclasses.asdict(config.model),
            "train": dataclasses.asdict(config.train),
            "item_ids": ids,
            "items_hash": _catalog_hash(ids),
        }
        with self._store.transaction():
            self._store.save_slot(
                GLOBAL, list(zip(item_side(g.model), floats, strict=True)), info, round=config.round
            )
            stale = [s for s in (TRAIN, SERVE) if not self._fits(g, self._load_state(s))]
            if stale:  # a new model shape: user states cannot be reused
                self._store.delete_slots(TRAIN, TRAIN_PREV, SERVE)
        self._global = g
        self._sync()
        self._set_serve(self._load_state(SERVE), persist=False)
        return g

    @staticmethod
    def _fits(g: _Global, state: UserState | None) -> bool:
        if state is None:
            return True
        return state.keys() == g.init_state.keys() and all(
            state[k].shape == v.shape for k, v in g.init_state.items()
        )

    def _resolve_ids(self, config: RoundConfig, n_items: int) -> list[ItemId]:
        if config.item_ids is not None:
            ids = [item_id(i) for i in config.item_ids]
            if len(set(ids)) != len(ids):
                raise ConfigError(
                    "item ids are not unique",
                    where="item_ids",
                    fix="send one distinct original id per item row",
                )
            return ids
        held = None if self._global is None else self._global.ids
        if held is not None and len(held) == n_items:
            return list(held)
        if held is None or held == list(range(len(held))):
            return list(range(n_items))
        raise ConfigError(
            f"the catalog changed from {len(held)} to {n_items} items without item ids",
            where="RoundConfig.item_ids",
            fix="send the original id of every row with a changed catalog",
        )

    def _load_global(self) -> _Global | None:
        slot = self._store.load_slot(GLOBAL)
        if slot is None:
            return None
        info = slot.info
        try:
            return _Global.build(
                slot.arrays,
                ModelConfig(**info["model"]),
                LocalTrainConfig(**info["train"]),
                [item_id(i) for i in info["item_ids"]],
                self.seed,
            )
        except (KeyError, TypeError, ConfigError) as exc:
            raise StoreError(
                f"stored global parameters are unusable ({exc})",
                where=str(self.path),
                fix="restore from a backup",
            ) from exc

    def _load_state(self, slot: str) -> UserState | None:
        found = self._store.load_slot(slot)
        return None if found is None else dict(zip(found.names, found.arrays, strict=True))

    def _train_state_before(self, round: int, *, private: bool) -> UserState | None:
        """The newest training state written in a round ``< round`` (re-runs are safe).

        A private round never starts from a state trained without DP (that state
        would feed the upload unaccounted): it reconstructs privately instead.
        """
        for name in (TRAIN, TRAIN_PREV):
            found = self._store.load_slot(name)
            if found is not None and found.round is not None and found.round < round:
                if private and not found.info.get("private", False):
                    return None
                return dict(zip(found.names, found.arrays, strict=True))
        return None

    def _keep_states(self, state: UserState, round: int, *, private: bool) -> None:
        """Store the new training state (keeping the previous round's) and serve it."""
        with self._store.transaction():
            current = self._store.load_slot(TRAIN)
            if current is not None and current.round is not None and current.round < round:
                self._store.copy_slot(TRAIN, TRAIN_PREV)
            info = {"private": private}
            self._store.save_slot(TRAIN, list(state.items()), info, round=round)
            self._set_serve(state)

    def _set_serve(self, state: UserState | None, *, persist: bool = True) -> None:
        if persist and state is not None:
            info = {"interactions": len(self._items)}
            self._store.save_slot(SERVE, list(state.items()), info)
        self._serve = state
        self._cached_scores = None
        vector = None if state is None else state.get("user_emb.weight")
        self._p = None if vector is None else np.ascontiguousarray(vector[0], dtype=np.float32)

    def _sync(self) -> None:
        """Recompute the catalog rows of the user's items (unknown ids are skipped)."""
        g = self._global
        rows = [] if g is None else [g.row[i] for i in self._items if i in g.row]
        self._seen = np.unique(np.asarray(rows, dtype=np.int64))
        self._cached_scores = None

    def _refresh(self) -> None:
        """Refit the serving state on all known items against the frozen global items."""
        g = self._global
        if g is None or len(self._seen) < self.min_interactions:
            return
        start = self._serve if self._serve is not None else self._load_state(TRAIN)
        steps = g.train_cfg.refit_steps if start is None else self.refresh_steps
        set_user_state(g.model, g.init_state if start is None else start)
        cfg = dataclasses.replace(g.train_cfg, refit_steps=steps)
        gen = torch.Generator().manual_seed(derive_seed(self.seed, len(self._items)))
        refit_user(g.model, cfg, user_examples(g.model, self._seen), generator=gen)
        g.model.eval()
        self._set_serve(get_user_state(g.model))

    def _scores(self, g: _Global) -> npt.NDArray[np.float32]:
        if self._p is not None and g.model_cfg.kind == "mf":
            # einsum stays on this thread: a BLAS thread pool's wake-ups dominate the tail
            # latency of a 27k x 32 mat-vec on a busy device
            scores: npt.NDArray[np.float32] = np.einsum("ij,j->i", g.arrays[0], self._p)
            return scores + g.bias
        if self._cached_scores is None:
            set_user_state(g.model, self._serve or {})
            history = torch.zeros(1, len(g.ids))
            history[0, torch.from_numpy(self._seen)] = 1.0
            with torch.no_grad():
                out = g.model.score(torch.zeros(1, dtype=torch.int64), history)[0]
            self._cached_scores = out.numpy().astype(np.float32)
        return self._cached_scores

    def _because(self, g: _Global, rows: list[int]) -> list[list[tuple[ItemId, float]]]:
        """Up to three supporting history items per row (:func:`fedrec.recommend.explain`)."""
        if g.unit_vectors is None or len(self._seen) == 0 or not rows:
            return [[] for _ in rows]
        cited = cite_history(g.unit_vectors, self._seen, rows, top=3)
        return [[(g.ids[j], w) for j, w in per_row] for per_row in cited]


def _top_k(
    scores: npt.NDArray[np.float32], excluded: npt.NDArray[np.int64] | None, k: int
) -> list[int]:
    """Rows of the ``k`` best scores, ties by lower row, skipping ``excluded`` rows."""
    masked = scores
    n_ok = len(scores)
    if excluded is not None and len(excluded):
        masked = scores.copy()
        masked[excluded] = -np.inf
        n_ok -= len(excluded)
    k = min(k, n_ok)
    if k <= 0:
        return []
    part = np.argpartition(-masked, k - 1)[:k]
    cands = np.flatnonzero(masked >= masked[part].min())  # every tie at the cut-off
    order = cands[np.lexsort((cands, -masked[cands]))][:k]
    return [int(r) for r in order]


def _refits(model: TrainableRecommender, train: LocalTrainConfig, first: bool) -> bool:
    """Whether a round reconstructs the user state first (as ``client_fit`` does)."""
    return bool(model.USER_SIDE) and train.refit_steps > 0 and (first or train.refit_every_round)


def _predict_releases(
    config: RoundConfig,
    privacy: LocalPrivacy,
    n_train: int,
    model: TrainableRecommender,
    first: bool,
) -> list[Release]:
    """What :func:`_dp_fit` will spend, known before training (for the budget check).

    Units: one interaction (MF, :func:`fedrec.privacy.local_dp.interaction_units`), or
    the user's whole vector (autoencoders, one unit).
    """
    n_units = n_train if config.model.kind == "mf" else 1
    q = min(1.0, config.train.batch_size / n_units)
    per_epoch = math.ceil(1.0 / q)
    z = privacy.noise_multiplier
    out = []
    if _refits(model, config.train, first):
        out.append(Release(z, q, config.train.refit_steps * per_epoch))
    out.append(Release(z, q, config.train.epochs * per_epoch))
    return out


def _dp_fit(
    config: RoundConfig,
    privacy: LocalPrivacy,
    global_items: Arrays,
    state: UserState | None,
    train_items: npt.NDArray[np.int64],
) -> tuple[Arrays, UserState, list[Release]]:
    """``client_fit`` under local DP-SGD: the reconstruction *and* the update are private.

    Everything the upload depends on is trained by :func:`fedrec.privacy.local_dp.dp_train`
    (docs/PRIVACY.md), so the user-side refit is a release of its own.
    """
    model = load_device_model(config.model, global_items, state, seed=config.seed)
    gen = torch.Generator().manual_seed(config.seed)
    rng = secure_rng()
    examples = user_examples(model, train_items)
    units = interaction_units(model, len(train_items))
    common: dict[str, Any] = {
        "noise_multiplier": privacy.noise_multiplier,
        "max_grad_norm": privacy.clip_norm,
        "batch_size": config.train.batch_size,
        "generator": gen,
        "rng": rng,
        "units": units,
    }
    releases = []
    if _refits(model, config.train, state is None):
        flags = freeze_except(model, model.USER_SIDE)
        try:
            params = [p for n, p in model.named_parameters() if n in model.USER_SIDE]
            opt = make_optimizer(params, config.train, lr=config.train.refit_lr)
            releases.append(
                dp_train(model, examples, epochs=config.train.refit_steps, optimizer=opt, **common)
            )
        finally:
            restore_grad_flags(model, flags)
    mu = config.train.proximal_mu
    proximal = Proximal.around(list(item_side(model).values()), mu) if mu > 0 else None
    opt = make_optimizer(list(model.parameters()), config.train)
    releases.append(
        dp_train(
            model, examples, epochs=config.train.epochs, optimizer=opt, proximal=proximal, **common
        )
    )
    return get_item_arrays(model), get_user_state(model), releases


def measure_recommend_latency(
    n_items: int, calls: int = 1000, *, dim: int = 32, history: int = 50, seed: int = 0
) -> dict[str, float]:
    """Latency of :meth:`DeviceClient.recommend` (k=10, seen items excluded), in ms.

    An MF device (``dim``) with a ``n_items`` catalog and ``history`` interactions, in a
    temporary store; one warm-up call, then ``calls`` timed calls. Also times
    :meth:`DeviceClient.record` (durable write + serving refresh) over 20 calls.
    ``p50_ms``/``p99_ms`` are wall-clock; ``cpu_*`` are this thread's CPU time, which
    excludes preemption by other processes (the wall-clock tail on a busy machine).
    """
    import tempfile

    from fedrec.models.registry import init_item_arrays

    cfg = RoundConfig(model=ModelConfig(kind="mf", dim=dim))
    rng = np.random.default_rng(seed)
    with (
        tempfile.TemporaryDirectory() as tmp,
        DeviceClient.open(Path(tmp) / "device.db", seed=seed) as device,
    ):
        device.set_global(init_item_arrays(cfg.model, n_items, seed=seed), cfg)
        device.record_many(rng.choice(n_items, size=min(history, n_items), replace=False))
        device.recommend(10)
        times, cpu = np.empty(calls), np.empty(calls)
        for i in range(calls):
            start, start_cpu = time.perf_counter(), time.thread_time()
            device.recommend(10)
            times[i] = time.perf_counter() - start
            cpu[i] = time.thread_time() - start_cpu
        record_times = []
        for item in rng.choice(n_items, size=20):
            start = time.perf_counter()
            device.record(int(item))
            record_times.append(time.perf_counter() - start)
    ms = times * 1e3
    return {
        "n_items": float(n_items),
        "calls": float(calls),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "cpu_p50_ms": float(np.percentile(cpu * 1e3, 50)),
        "cpu_p99_ms": float(np.percentile(cpu * 1e3, 99)),
        "record_p50_ms": float(np.median(record_times) * 1e3),
    }
