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

An MF or iALS device opens, records, recommends and explains without importing torch,
Opacus or Flower (:mod:`fedrec.federated.serving`: the serving refit and the item bias
from the held arrays); a round, an evaluation or another model kind imports them.
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import importlib
import json
import time
from collections.abc import Iterable, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from clients.device_round import (
    NO_DATA,
    OK,
    EvalReply,
    FitReply,
    RoundConfig,
    fit_private_round,
)
from clients.serving import HeldGlobal, catalog_rows, measure_recommend_latency, top_k
from clients.store import DeviceStore, ItemId
from fedrec.data.formats import (
    MAX_RATING,
    MAX_TIMESTAMP,
    RATING_FIX,
    TIMESTAMP_FIX,
    value_problem,
)
from fedrec.data.sequences import last_unique, ordered_history
from fedrec.errors import ConfigError, StoreError
from fedrec.federated.seeds import derive_seed
from fedrec.federated.serving import UserState, refit_state
from fedrec.models.config import MODEL_KIND_NAMES, LocalTrainConfig, ModelConfig
from fedrec.models.torch_free import TORCH_FREE, facts, side_shapes
from fedrec.recommend.explain import explain as cite_history
from fedrec.recommend.types import Recommendation
from fedrec.training.negatives import check_key, new_device_key

if TYPE_CHECKING:  # torch, Opacus: imported by a round, an evaluation or a torch-only kind
    from clients.device_eval import EvalReport
    from clients.device_round import LocalPrivacy
    from fedrec.metrics.private import PrivateEvaluation
    from fedrec.models.trainable import TrainableRecommender
    from fedrec.privacy.ledger import PrivacyLedger, Spent

GLOBAL, TRAIN, TRAIN_PREV, SERVE = "global", "train", "train.prev", "serve"
TITLES = "item_titles"
"""Store meta key of the held catalog's titles, ``[[item id, title], ...]`` (model files)."""
DEVICE_KINDS = MODEL_KIND_NAMES
"""Model kinds a device trains and serves (a model file of another kind is refused)."""
NEGATIVE_KEY = "negative_key"
"""Store meta key of the device's secret negative-sampling key (hex)."""
Row = ItemId | tuple[Any, ...]
"""A row of :meth:`DeviceClient.record_many`: an item, or ``(item[, rating[, timestamp]])``."""


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
    value = None if rating is None else _checked(rating, "rating", MAX_RATING, RATING_FIX)
    when = now if stamp is None else _checked(stamp, "timestamp", MAX_TIMESTAMP, TIMESTAMP_FIX)
    return item_id(item), value, when


def _checked(raw: object, name: str, limit: float, fix: str) -> float:
    """``raw`` as a float, refused when not a finite number within ``+-limit``."""
    try:
        number = float(raw)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ConfigError(f"{name} {raw!r} is not a number", where="record", fix=fix) from None
    problem = value_problem(number, name, limit)
    if problem is not None:
        raise ConfigError(problem, where="record", fix=fix)
    return number


def _catalog_hash(ids: Sequence[ItemId]) -> str:
    return hashlib.sha256(json.dumps(list(ids)).encode()).hexdigest()


@functools.lru_cache(maxsize=16)
def _shapes(
    model_cfg: ModelConfig, n_items: int
) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], tuple[tuple[str, tuple[int, ...]], ...]]:
    """Item-side and user-side ``(name, shape)`` of a one-user model (built once; read
    from the copied facts for a torch-free kind)."""
    light = TORCH_FREE.get(model_cfg.kind)
    if light is not None:
        return side_shapes(light, model_cfg, n_items)
    from fedrec.models.base import item_side, user_side
    from fedrec.models.registry import build_model

    model = build_model(model_cfg, n_items, 1, seed=0)
    items = tuple((n, tuple(p.shape)) for n, p in item_side(model).items())
    users = tuple((n, tuple(p.shape)) for n, p in user_side(model).items())
    return items, users


_LAST_CATALOG: tuple[list[ItemId], dict[ItemId, int]] | None = None


def _row_index(ids: list[ItemId]) -> dict[ItemId, int]:
    """``{id: row}`` of the catalog ``ids`` (read only). The last catalog's dict is
    reused when ``ids`` equal it: a simulated device gets the same catalog with every
    message, and building the dict cost more than comparing the lists."""
    global _LAST_CATALOG
    last = _LAST_CATALOG
    if last is not None and last[0] == ids:
        return last[1]
    row = {i: r for r, i in enumerate(ids)}
    _LAST_CATALOG = (list(ids), row)
    return row


class _Global:
    """Held global item parameters; the serving model is built on first use only.

    A round (:meth:`DeviceClient.fit_round`) needs the arrays and the catalog, not a
    model: building one per message cost more than the MF update itself.
    """

    def __init__(
        self,
        arrays: list[npt.NDArray[np.float32]],
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        ids: list[ItemId],
        seed: int,
    ) -> None:
        n_items = catalog_rows(arrays, ids)
        items, users = _shapes(model_cfg, n_items)
        problem = None
        if len(arrays) != len(items):
            problem = f"expected {len(items)} item-side arrays, got {len(arrays)}"
        for (name, shape), a in zip(items, arrays, strict=False):
            if problem is None and tuple(a.shape) != shape:
                problem = f"item-side {name}: shape {a.shape} != model {shape}"
        if problem is not None:
            raise ConfigError(
                problem, where="global arrays", fix="send arrays of the model config's shapes"
            )
        self.arrays, self.model_cfg, self.train_cfg, self.ids = arrays, model_cfg, train_cfg, ids
        self.row = _row_index(ids)
        self.item_names = [n for n, _ in items]
        self.state_shapes = dict(users)
        self._seed = seed
        self._held: HeldGlobal | None = None

    @property
    def held(self) -> HeldGlobal:
        """The serving model and its derived arrays (:class:`clients.serving.HeldGlobal`)."""
        if self._held is None:
            self._held = HeldGlobal.build(
                self.arrays, self.model_cfg, self.train_cfg, self.ids, self._seed
            )
        return self._held

    @property
    def model(self) -> TrainableRecommender:
        return self.held.model

    @property
    def init_state(self) -> UserState:
        return self.held.init_state

    @property
    def bias(self) -> npt.NDArray[np.float32]:
        return self.held.bias

    @property
    def unit_vectors(self) -> npt.NDArray[np.float64] | None:
        return self.held.unit_vectors


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
    keep_global
        Persist the received global parameters (default). A simulated device, which
        receives them with every message, passes ``False``: its store then holds only
        the user's own data, states and ledger (small, for thousands of devices).

    The device's secret key of MF's keyed negatives (:mod:`fedrec.training.negatives`)
    lives in the store's meta ``negative_key`` (see :meth:`open`); it never leaves the
    device. A real device (the default of :meth:`open`, and every deployed SuperNode,
    :mod:`clients.client_app`) has one. A simulated device has none and uses the public
    key, as the reference loop does (docs/PRIVACY.md, "The device key").
    """

    def __init__(
        self,
        store: DeviceStore,
        *,
        seed: int,
        min_interactions: int,
        refresh_steps: int,
        keep_global: bool = True,
    ) -> None:
        self._store = store
        self.keep_global = keep_global
        user = store.get_meta("user_id")
        self.client_id = "device" if user is None else str(user)
        self.seed = seed
        self.min_interactions = min_interactions
        self.refresh_steps = refresh_steps
        key = store.get_meta(NEGATIVE_KEY)
        self.negative_key = None if key is None else check_key(bytes.fromhex(str(key)))
        self._items, self._stamps = store.history()
        self._titles: dict[ItemId, str] = {
            item_id(i): str(t) for i, t in store.get_meta(TITLES) or []
        }
        self._global = self._load_global()
        self._seen = np.zeros(0, dtype=np.int64)
        self._order: npt.NDArray[np.int64] | None = None
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
        keep_global: bool = True,
        durable: bool = True,
        secret_negatives: bool = True,
    ) -> DeviceClient:
        """Open (or create) the device store at ``path`` (see the class for the options).

        ``durable=False`` skips the fsync of each commit (:mod:`clients.store`): only
        for a simulated device that never trains privately. ``secret_negatives``: keep
        a secret key for MF's negatives in the store (drawn from :mod:`secrets` on first
        open); a simulated device passes ``False`` and uses the public key, so its run
        equals the Flower-free reference loop (the DP guarantee holds for any key chosen
        independently of the data).

        The owner check runs before anything is written: a store created for another
        ``user_id`` is refused as it is, and no key is written into it.

        Raises
        ------
        StoreError
            Corrupted, foreign, newer or already-open store, or a ``user_id`` that
            differs from the one the store was created for. The file is left untouched.
        """
        # The owner check comes before any write, an older schema's migration included:
        # another user's store is never changed (DeviceStore.open refuses it).
        store = DeviceStore.open(path, durable=durable, user_id=user_id)
        try:
            if store.get_meta("created") is None:
                with store.transaction():
                    store.set_meta("user_id", user_id)
                    store.set_meta("created", time.time())
            if secret_negatives and store.get_meta(NEGATIVE_KEY) is None:
                store.set_meta(NEGATIVE_KEY, new_device_key().hex())
            return cls(
                store,
                seed=seed,
                min_interactions=min_interactions,
                refresh_steps=refresh_steps,
                keep_global=keep_global,
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
            self._stamps.extend(p[2] for p in parsed)
            self._sync()
            self._refresh()
        return len(parsed)

    @property
    def n_interactions(self) -> int:
        """How many interactions are stored (without reading them)."""
        return len(self._items)

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
            kept = [(i, t) for i, t in zip(self._items, self._stamps, strict=True) if i != key]
            self._items, self._stamps = [i for i, _ in kept], [t for _, t in kept]
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
        self._items, self._stamps = [], []
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
        rows = top_k(scores, self._seen if exclude_seen else None, k)
        becauses = self._because(g, rows) if explain else [[] for _ in rows]
        return [
            Recommendation(
                g.ids[r], float(scores[r]), because, fallback, self._titles.get(g.ids[r])
            )
            for r, because in zip(rows, becauses, strict=True)
        ]

    # ---- federated rounds -------------------------------------------------------
    def set_global(self, global_arrays: Sequence[npt.NDArray[Any]], config: RoundConfig) -> None:
        """Hold new global item parameters (e.g. a model download) without training."""
        self._receive(global_arrays, config)
        self._refresh()

    def load_model(self, path: str | Path) -> None:
        """Hold the global model of a model file (``fedrec export``), without a round.

        The file is verified (format, version, checksum; :func:`fedrec.modelfile.load_model`)
        before anything is stored. Its item ids align the rows with the device's own
        interactions; its titles, where present, label :meth:`recommend`'s items. Raises
        :class:`~fedrec.errors.DataError` for a bad file and
        :class:`~fedrec.errors.ConfigError` for a model kind a device does not serve.
        """
        from fedrec.modelfile import load_model

        model = load_model(path)
        if model.kind not in DEVICE_KINDS:
            raise ConfigError(
                f"a {model.kind} model file cannot be served on a device",
                where=str(path),
                fix=f"export a run of one of {', '.join(DEVICE_KINDS)}",
            )
        config = RoundConfig(
            model=ModelConfig(**model.model),
            train=LocalTrainConfig(**model.train),
            round=max(1, int(model.source.get("round", 1))),
            item_ids=model.item_ids,
        )
        self.set_global(model.arrays, config)
        titles = (
            None if model.titles is None else dict(zip(model.item_ids, model.titles, strict=True))
        )
        self._store.set_meta(TITLES, None if titles is None else list(titles.items()))
        self._titles = titles or {}

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
        train_items = self._history(g).copy()
        if len(train_items) == 0:
            return FitReply(NO_DATA, message="no interaction on an item of this catalog")
        private = config.privacy is not None
        state = self._train_state_before(config.round, private=private)
        if config.privacy is None:
            from fedrec.federated.client import client_fit

            model = config.model.at_round(config.round)
            fit = client_fit(
                model,
                config.train,
                g.arrays,
                state,
                train_items,
                seed=config.seed,
                key=self.negative_key,
            )
            self._keep_states(fit.user_state, config.round, private=False)
            return FitReply(OK, fit.item_arrays, fit.num_examples, fit.train_loss)
        ledger = self._ledger(config.privacy)
        reply, new_state = fit_private_round(
            ledger, config, config.privacy, g.arrays, state, train_items, key=self.negative_key
        )
        if new_state is not None:  # the ledger is already durable
            self._keep_states(new_state, config.round, private=True)
        return reply

    def evaluation_state(self, round: int) -> UserState | None:
        """The user state :meth:`evaluate_round` of ``round`` starts from (read only)."""
        return self._train_state_before(round + 1, private=False)

    def evaluate_round(
        self,
        global_arrays: Sequence[npt.NDArray[Any]],
        config: RoundConfig,
        test_items: Iterable[ItemId],
    ) -> EvalReply:
        """Rank the catalog for held-out ``test_items``; metrics and top-10 stay here.

        Uses :func:`fedrec.federated.client.client_evaluate` with the newest training
        state written in a round ``<= config.round``; stored state is not changed. The
        result describes the user: only the simulation harness, which owns the device,
        reads it (:mod:`simulations.evaluation`). What may leave a deployed device is
        :meth:`report_evaluation`'s answer.
        """
        from fedrec.federated.client import client_evaluate

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
            self._train_state_before(config.round + 1, private=False),
            self._history(g),
            test,
            seed=config.seed,
        )
        return EvalReply(metrics, top, [g.ids[int(r)] for r in top if r >= 0])

    def report_evaluation(
        self,
        global_arrays: Sequence[npt.NDArray[Any]],
        config: RoundConfig,
        test_items: Iterable[ItemId],
        *,
        mode: str,
        mechanism: PrivateEvaluation | None,
    ) -> EvalReport:
        """A deployed device's answer to an evaluation request: never its top-10.

        :meth:`evaluate_round`, then :func:`clients.device_eval.report_metrics`: the
        per-user metrics (mode ``none``), their clipped vector (``central``: the trusted
        server adds the noise), or that vector plus Gaussian noise spent from this
        device's ledger before it is returned (``local``; refused, nothing spent, when
        the release would exceed ``config.privacy.epsilon_budget``).
        """
        from clients.device_eval import report_metrics

        if mode != "none" and mechanism is None:  # refuse before touching the data
            return report_metrics({}, mode=mode, mechanism=None)
        result = self.evaluate_round(global_arrays, config, test_items)
        private = config.privacy
        return report_metrics(
            result.metrics,
            mode=mode,
            mechanism=mechanism,
            ledger=None if private is None else self._ledger(private),
            privacy=private,
            round=config.round,
        )

    def privacy_spent(self) -> Spent:
        """The device's privacy statement: epsilon at delta for its unit and accountant.

        Without any private release: epsilon 0, unit and accountant ``"none"``.
        """
        from fedrec.privacy.ledger import PrivacyLedger, Spent, SqliteLedgerStore, ledger_records

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
        from fedrec.privacy.ledger import PrivacyLedger, SqliteLedgerStore

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
        g = _Global(floats, config.model, config.train, ids, self.seed)
        # the serving state in memory mirrors the stored one (_set_serve writes both)
        stale = not self._fits(g, self._serve) or not self._fits(g, self._load_state(TRAIN))
        if self.keep_global or stale:  # else nothing to write: no empty transaction
            with self._store.transaction():
                if self.keep_global:
                    info = {
                        "model": dataclasses.asdict(config.model),
                        "train": dataclasses.asdict(config.train),
                        "item_ids": ids,
                        "items_hash": _catalog_hash(ids),
                    }
                    named = list(zip(g.item_names, floats, strict=True))
                    self._store.save_slot(GLOBAL, named, info, round=config.round)
                if stale:  # a new model shape: user states cannot be reused
                    self._store.delete_slots(TRAIN, TRAIN_PREV, SERVE)
        self._global = g
        self._sync()
        self._set_serve(None if stale else self._serve, persist=False)
        return g

    @staticmethod
    def _fits(g: _Global, state: UserState | None) -> bool:
        if state is None:
            return True
        return state.keys() == g.state_shapes.keys() and all(
            state[k].shape == v for k, v in g.state_shapes.items()
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
            return _Global(
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
            _, current = self._store.slot_round(TRAIN)
            if current is not None and current < round:
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
        # a dot-product model (the class's USER_VECTOR) is served without the model
        g = self._global
        name = None if g is None else facts(g.model_cfg.kind).USER_VECTOR
        vector = None if state is None or name is None else state.get(name)
        self._p = None if vector is None else np.ascontiguousarray(vector[0], dtype=np.float32)

    def _sync(self) -> None:
        """Recompute the catalog rows of the user's items (unknown ids are skipped)."""
        g = self._global
        rows = [] if g is None else [g.row[i] for i in self._items if i in g.row]
        self._seen = np.unique(np.asarray(rows, dtype=np.int64))
        self._order = None  # the time order: made when a sequential model reads it
        self._cached_scores = None

    def _time_order(self) -> npt.NDArray[np.int64]:
        """The catalog rows in time order (timestamp, then recording order), a repeated
        item at its latest (as of the last :meth:`_sync`)."""
        if self._order is None:
            g = self._global
            pairs = zip(self._items, self._stamps, strict=True)
            timed = [] if g is None else [(t, g.row[i]) for i, t in pairs if i in g.row]
            ordered = [r for _, r in sorted(timed, key=lambda pair: pair[0])]
            self._order = np.asarray(last_unique(ordered), dtype=np.int64)
        return self._order

    def _history(self, g: _Global) -> npt.NDArray[np.int64]:
        """The user's catalog rows: in time order for a sequential model, else sorted."""
        return self._time_order() if facts(g.model_cfg.kind).ORDERED else self._seen

    def _refresh(self) -> None:
        """Refit the serving state on all known items against the frozen global items."""
        g = self._global
        if g is None or len(self._seen) < self.min_interactions:
            return
        if not facts(g.model_cfg.kind).USER_SIDE:  # nothing to refit (a sequential
            # model): the next recommend re-encodes the sequence; the empty state is stored once
            self._set_serve({}, persist=self._serve is None)
            return
        start = self._serve if self._serve is not None else self._load_state(TRAIN)
        steps = g.train_cfg.refit_steps if start is None else self.refresh_steps
        cfg = dataclasses.replace(g.train_cfg, refit_steps=steps)
        seed = derive_seed(self.seed, len(self._items))
        light = refit_state(
            g.model_cfg, cfg, g.arrays, start, self._seen, seed=seed, init_seed=self.seed
        )  # MF, iALS: without torch
        if light is not None:
            self._set_serve(light)
            return
        import torch

        from fedrec.models.base import get_user_state, set_user_state
        from fedrec.training.local import refit_user, user_examples

        set_user_state(g.model, g.init_state if start is None else start)
        gen = torch.Generator().manual_seed(seed)
        refit_user(g.model, cfg, user_examples(g.model, self._seen), generator=gen)
        g.model.eval()
        self._set_serve(get_user_state(g.model))

    def _scores(self, g: _Global) -> npt.NDArray[np.float32]:
        if self._p is not None:  # ITEM_VECTORS @ p_u + ITEM_BIAS (see _set_serve)
            # einsum stays on this thread: a BLAS thread pool's wake-ups dominate the tail
            # latency of a 27k x 32 mat-vec on a busy device
            q = g.arrays[g.item_names.index(facts(g.model_cfg.kind).ITEM_VECTORS)]
            scores: npt.NDArray[np.float32] = np.einsum("ij,j->i", q, self._p)
            return scores + g.bias
        if self._cached_scores is None:
            import torch

            from fedrec.models.base import set_user_state

            set_user_state(g.model, self._serve or {})
            ordered = facts(g.model_cfg.kind).ORDERED  # a sequential model: the order
            history = ordered_history(self._history(g), len(g.ids), ordered=ordered)
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


def __getattr__(name: str) -> Any:
    """``EvalReport`` and ``LocalPrivacy`` (PEP 562): imported on first use (Opacus)."""
    lazy = {"EvalReport": "clients.device_eval", "LocalPrivacy": "fedrec.federated.private"}
    if name in lazy:
        return getattr(importlib.import_module(lazy[name]), name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


__all__ = [
    "DeviceClient",
    "EvalReply",
    "EvalReport",
    "FitReply",
    "LocalPrivacy",
    "RoundConfig",
    "item_id",
    "measure_recommend_latency",
]
