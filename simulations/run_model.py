"""Serve a finished (or checkpointed) run: its global model, its users, its split.

Design rule: a run directory is served exactly as its devices would serve it, and it
stands alone. At the end of a run (:func:`save_run_model`) the run writes
``model.safetensors``, the self-contained model file of :mod:`fedrec.modelfile` (item
ids, model kind and configuration, item-side arrays, the privacy mode's fallback
signal, public titles and genres) and ``users.json`` (the original user ids, by the
index the simulated device stores use). Serving then needs neither the raw data nor
the working directory the run was started from: a user's train items are read from
the split when the data are at hand, else from the user's simulated device store
under ``RUN_DIR/clients/`` (the only place that holds them). A user's scores are those
of :func:`fedrec.federated.client.client_scores` with the user's train items: the
user-side state is reconstructed on the final global items (Federated Reconstruction,
Singhal et al. 2021) with the evaluation seed, as the final evaluation does for a user
the run never sampled. The "most popular" fallback is the signal
:mod:`fedrec.recommend.cold_start` allows for the run's privacy mode (raw counts only
without privacy), computed once when the model file is written.

A one-shot federated-EASE run (``model = "ease"``, :mod:`server.gram_app`) is a
:class:`GramRunModel`: its arrays are ``B`` (and the released diagonal of the Gram
matrix), a user's scores are ``x_u B`` exactly as on the device, explanations are
EASE's exact score decomposition and similar items are rows of ``B``
(:func:`fedrec.federated.gram.explain`, :func:`fedrec.federated.gram.similar_items`).
A run without a model file (one written by an older fedrec, or stopped before its
end) is served from its checkpoint and its data, as before.

Serving imports only what the model needs: an MF, iALS, EASE, item-kNN or popularity
model file is served with NumPy alone (:func:`fedrec.federated.serving.user_scores`;
``tests/test_light_serving.py``), so ``fedrec recommend`` costs no torch, Opacus or
SciPy import (docs/BENCHMARKS.md, "Serving without the training stack"). Writing a
model file (:func:`save_run_model`) is part of a run and imports what the run did.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.data.sequences import user_train_items
from fedrec.errors import DataError, FedrecError
from fedrec.federated import gram
from fedrec.federated.seeds import EVAL_ROUND, derive_seed
from fedrec.federated.serving import user_scores
from fedrec.modelfile import ExportedModel, ItemId, load_model, save_model
from fedrec.models.kinds import MODEL_CLASSES
from fedrec.models.torch_free import facts
from fedrec.recommend.explain import explain
from fedrec.recommend.similar import item_vectors, similar_items
from server.checkpoint import CLIENTS_DIR, atomic_write_json, load_checkpoint
from server.gram_settings import MODEL_KIND, GramSettings
from server.settings import RunSettings, load_split, read_flat
from simulations.run_dir import resume_settings

if TYPE_CHECKING:  # serving an MF, iALS or EASE model file imports neither torch nor SciPy
    import torch

    from fedrec.data.split import Split
    from fedrec.models.base import Arrays
    from fedrec.models.config import ModelConfig

FloatArray = npt.NDArray[np.float64]
ScoreFn = Callable[[npt.NDArray[np.int64]], "torch.Tensor"]
Citations = list[list[tuple[int, float]]]
MODEL_FILE = "model.safetensors"
USERS_JSON = "users.json"
PRIVACY_SUMMARY_KEYS = ("mode", "unit", "epsilon", "delta", "accountant")


@dataclass(frozen=True)
class RunModel:
    """A run's final global model (:class:`~fedrec.modelfile.ExportedModel`) and users."""

    run_dir: Path
    settings: RunSettings
    exported: ExportedModel
    round: int
    user_ids: tuple[str, ...]
    data_split: Split | None = None

    @property
    def privacy_mode(self) -> str:
        return self.settings.privacy.mode

    @property
    def item_arrays(self) -> Arrays:
        """The global item-side arrays, upload order."""
        return self.exported.arrays

    @property
    def item_ids(self) -> list[ItemId]:
        """The original id of each catalog row."""
        return self.exported.item_ids

    @property
    def n_items(self) -> int:
        return self.exported.n_items

    @cached_property
    def split(self) -> Split:
        """The run's split, rebuilt from its data (raises :class:`DataError` without them)."""
        if self.data_split is not None:
            return self.data_split
        return _load_split(self.run_dir, self.settings)

    @cached_property
    def item_vectors(self) -> FloatArray:
        """``[n_items, d]`` learned item vectors (:func:`fedrec.recommend.item_vectors`)."""
        return item_vectors(self.settings.model.kind, self.item_arrays)

    @cached_property
    def _user_index(self) -> dict[str, int]:
        return {u: i for i, u in enumerate(self.user_ids)}

    @cached_property
    def _item_index(self) -> dict[str, int]:
        return {str(v): i for i, v in enumerate(self.item_ids)}

    def user_index(self, user_id: str) -> int:
        """The index of the original user id ``user_id`` (DataError when unknown)."""
        return self._lookup(self._user_index, user_id, "user", "--user")

    def item_index(self, item_id: str, *, flag: str = "--item") -> int:
        """The index of the original item id ``item_id`` (DataError naming ``flag``)."""
        return self._lookup(self._item_index, item_id, "item", flag)

    def _lookup(self, table: dict[str, int], key: str, what: str, flag: str) -> int:
        if str(key) not in table:
            sample = ", ".join(list(table)[:3])
            raise DataError(
                f"unknown {what} id {key!r} (the run has {len(table)} {what}s)",
                where=f"{flag} (run {self.run_dir})",
                fix=f"pass an original {what} id from the data, e.g. {sample}",
            )
        return table[str(key)]

    def train_items(self, user: int) -> npt.NDArray[np.int64]:
        """``user``'s train items: from the split, else from its simulated device store
        (in time order for a sequential model: a device records them in that order)."""
        try:
            ordered = _reads_order(self.settings.model.kind)
            return user_train_items(self.split, user, ordered=ordered)
        except DataError as missing:
            return _device_items(self.run_dir, user, missing)

    def knows_user(self, user_id: str) -> bool:
        """Whether ``user_id`` is an original user id of the run."""
        return str(user_id) in self._user_index

    def user_scores(self, user: int) -> FloatArray:
        """``[n_items]`` scores of ``user``: user state reconstructed on the final items."""
        seed = derive_seed(self.settings.seed, user, EVAL_ROUND)
        return self.history_scores(self.train_items(user), seed=seed)

    def history_scores(self, history: npt.NDArray[np.int64], *, seed: int = 0) -> FloatArray:
        """``[n_items]`` scores of a user with ``history`` (catalog rows), e.g. a new user
        (:func:`fedrec.federated.client.client_scores`, without torch where the model allows)."""
        return user_scores(
            self.settings.model, self.settings.train, self.item_arrays, None, history, seed=seed
        )

    def score_fn(self) -> ScoreFn:
        """``score_fn(users) -> [b, n_items]`` from :meth:`user_scores` (for evaluation)."""
        import torch

        def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
            rows = [torch.from_numpy(self.user_scores(int(u))) for u in users]
            return torch.stack(rows) if rows else torch.zeros(0, self.n_items)

        return score

    def explain(self, history: npt.NDArray[np.int64], items: list[int], top: int) -> Citations:
        """ "Because" citations of ``items`` (:func:`fedrec.recommend.explain`)."""
        return explain(self.item_vectors, history, items, top=top)

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` items most similar to ``item`` (cosine of learned item vectors)."""
        return similar_items(self.item_vectors, item, k=k)

    def popularity(self) -> FloatArray:
        """Fallback scores allowed by the run's privacy mode (raw counts only in "none")."""
        if self.exported.fallback is None:
            raise DataError(
                "this run's model holds no popularity signal for the fallback",
                where=str(self.run_dir / MODEL_FILE),
                fix="pass --min-interactions 0",
            )
        return self.exported.fallback.astype(np.float64)


@dataclass(frozen=True)
class GramRunModel(RunModel):
    """A one-shot federated-EASE run: ``item_arrays = [B]`` or ``[B, released diag(G)]``."""

    @property
    def weights(self) -> npt.NDArray[np.float32]:
        """EASE's ``B`` (``I x I``) as sent to the devices."""
        return self.item_arrays[0]

    @cached_property
    def item_vectors(self) -> FloatArray:
        """Rows of ``B`` (each item's one-item recommendation scores), for MMR features."""
        return self.weights.astype(np.float64)

    def history_scores(self, history: npt.NDArray[np.int64], *, seed: int = 0) -> FloatArray:
        """``x_u B``: the sum of ``B``'s rows of the history's items (float64)."""
        del seed
        out: FloatArray = self.weights[np.unique(history)].sum(axis=0, dtype=np.float64)
        return out

    def explain(self, history: npt.NDArray[np.int64], items: list[int], top: int) -> Citations:
        """Exact: ``score_j = sum_{i in history} B_ij``; cite the largest ``B_ij > 0``."""
        return gram.explain(self.weights, history, items, top=top)

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        """The largest entries of row ``item`` of ``B`` (its one-item recommendations)."""
        return gram.similar_items(self.weights, item, k=k)


@dataclass(frozen=True)
class PopularityRunModel(RunModel):
    """A centralized popularity baseline: every user gets the train counts."""

    def history_scores(self, history: npt.NDArray[np.int64], *, seed: int = 0) -> FloatArray:
        del history, seed
        return self.item_arrays[0].astype(np.float64)

    @cached_property
    def item_vectors(self) -> FloatArray:
        """One feature per item, its count: no item space to explain or compare in."""
        return self.item_arrays[0].astype(np.float64).reshape(-1, 1)

    def explain(self, history: npt.NDArray[np.int64], items: list[int], top: int) -> Citations:
        return [[] for _ in items]  # popularity is not explained by the user's items

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        raise DataError(
            "a popularity model has no item space to find similar items in",
            where=str(self.run_dir),
            fix="use a run of mf, cdae, multvae, ease or itemknn",
        )


ITEM_ITEM_KINDS = (MODEL_KIND, "itemknn")
"""Kinds scored ``x_u W`` with an item-item matrix ``W`` (EASE's ``B``, item-kNN's ``S``)."""


def _reads_order(kind: str) -> bool:
    """:func:`fedrec.training.sequential.reads_order` without importing the class of a
    kind served without torch (:func:`fedrec.models.torch_free.facts`)."""
    return kind in MODEL_CLASSES and facts(kind).ORDERED


def fallback_scores(
    mode: str, kind: str, model: ModelConfig, arrays: Arrays, split: Split, seed: int
) -> FloatArray | None:
    """The fallback signal the privacy ``mode`` allows (:mod:`fedrec.recommend.cold_start`).

    Raw counts only in ``"none"``; else the learned item biases (MF ``b``, the
    autoencoders' decoder bias) or, for federated EASE, the released diagonal of the
    Gram matrix; ``None`` when the model has no such signal.
    """
    from fedrec.models.registry import MODEL_KINDS, model_class
    from fedrec.recommend.cold_start import popularity_source

    if mode == "none":
        return popularity_source("none", train=split.train)
    if kind in ITEM_ITEM_KINDS:
        bias = arrays[1].astype(np.float64) if len(arrays) > 1 else None
    else:  # the model class's ITEM_BIAS: the item-side parameter that acts as popularity
        facts = model_class(kind) if kind in MODEL_KINDS else None
        name = None if facts is None else facts.ITEM_BIAS
        index = None if facts is None or name is None else facts.ITEM_SIDE.index(name)
        bias = None
        if index is not None:
            bias = np.asarray(arrays[index], dtype=np.float32).astype(np.float64).reshape(-1)
    return None if bias is None else popularity_source(mode, item_bias=bias)


def export_model(
    *,
    kind: str,
    settings: RunSettings,
    arrays: Arrays,
    split: Split,
    privacy: dict[str, Any],
    source: dict[str, Any],
) -> ExportedModel:
    """The model file content of a run's global ``arrays`` over ``split``'s catalog."""
    import dataclasses

    data = split.data
    fallback = fallback_scores(
        settings.privacy.mode, kind, settings.model, arrays, split, settings.seed
    )
    return ExportedModel(
        kind=kind,
        item_ids=list(data.item_ids.tolist()),
        arrays=[np.asarray(a, dtype=np.float32) for a in arrays],
        model=dataclasses.asdict(settings.model) if kind == settings.model.kind else {},
        train=dataclasses.asdict(settings.train) if kind == settings.model.kind else {},
        fallback=None if fallback is None else fallback.astype(np.float32),
        titles=None if data.item_titles is None else list(data.item_titles),
        genres=data.item_genres,
        genre_names=None if data.genre_names is None else list(data.genre_names),
        privacy=privacy,
        source=source,
    )


def privacy_summary(run_dir: Path, mode: str) -> dict[str, Any]:
    """The run-level statement of ``privacy.json`` (mode, unit, epsilon, delta, accountant)."""
    path = run_dir / "privacy.json"
    summary: dict[str, Any] = {"mode": mode}
    if path.is_file():
        try:
            full = json.loads(path.read_text(encoding="utf-8"))
        except json.JSONDecodeError:
            return summary
        summary.update({k: full[k] for k in PRIVACY_SUMMARY_KEYS if k in full})
    return summary


def save_run_model(run_dir: str | Path) -> Path | None:
    """Write ``model.safetensors`` and ``users.json`` of a run (needs its data once).

    Returns the model file, or ``None`` when the run finished no round (nothing to save).
    """
    path = Path(run_dir)
    if load_checkpoint(path) is None:
        return None
    model = _from_checkpoint(path)
    atomic_write_json(path / USERS_JSON, list(model.user_ids))
    return save_model(path / MODEL_FILE, model.exported)


def finish_run(run_dir: str | Path) -> Path:
    """The end of every run: its self-contained model file, then ``report.md``."""
    from simulations.report import write_report

    save_run_model(run_dir)
    return write_report(Path(run_dir))


def load_run_model(run_dir: str | Path) -> RunModel:
    """Load ``run_dir``'s final model (raises :class:`DataError`).

    Reads ``model.safetensors`` when the run wrote one (no data needed), else the
    checkpoint and the data. A federated-EASE run loads as a :class:`GramRunModel`.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(
            "run directory not found", where=str(path), fix="pass the --out of a fedrec simulate"
        )
    if not (path / MODEL_FILE).is_file() or not (path / USERS_JSON).is_file():
        return _from_checkpoint(path)
    settings, _ = _settings(path)
    exported = load_model(path / MODEL_FILE)
    users = json.loads((path / USERS_JSON).read_text(encoding="utf-8"))
    kind = _model_class(exported.kind)
    return kind(path, settings, exported, int(exported.source.get("round", 0)), tuple(users))


def _model_class(kind: str) -> type[RunModel]:
    if kind in ITEM_ITEM_KINDS:
        return GramRunModel
    return PopularityRunModel if kind == "popularity" else RunModel


def save_baseline_model(
    run_dir: Path, kind: str, arrays: Arrays, split: Split, *, seed: int
) -> Path:
    """Write a centralized baseline's model file and ``users.json`` into ``run_dir``."""
    settings = RunSettings(seed=seed)
    exported = export_model(
        kind=kind,
        settings=settings,
        arrays=arrays,
        split=split,
        privacy={"mode": "none"},
        source={"round": 0, "run": run_dir.name, "trained": "centralized"},
    )
    atomic_write_json(run_dir / USERS_JSON, [str(u) for u in split.data.user_ids.tolist()])
    return save_model(run_dir / MODEL_FILE, exported)


def _baseline_settings(path: Path) -> RunSettings | None:
    """A centralized baseline run's data and split settings (``None``: not a baseline)."""
    try:
        config = json.loads((path / "config.json").read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None
    if not isinstance(config, dict) or config.get("command") != "baseline":
        return None
    return RunSettings(
        data=str(config["data"]),
        min_rating=config.get("min_rating"),
        k_core=config.get("k_core"),
        split=str(config.get("split", "random")),
        test_fraction=float(config.get("test_fraction", 0.2)),
        seed=int(config["seeds"][0]),
        run_dir=str(path),
    )


def _settings(path: Path) -> tuple[RunSettings, bool]:
    baseline = _baseline_settings(path)
    if baseline is not None:
        return baseline, False
    flat = read_flat(path)
    gram_run = flat.get("model") == MODEL_KIND
    return (GramSettings.from_flat(flat).base if gram_run else resume_settings(path)), gram_run


def _from_checkpoint(path: Path) -> RunModel:
    if _baseline_settings(path) is not None:
        raise DataError(
            "this baseline run saved no model file (the trained twins mf, cdae and multvae "
            "keep no device model)",
            where=str(path / MODEL_FILE),
            fix="serve a popularity, ease or itemknn baseline, or a federated run",
        )
    settings, gram_run = _settings(path)
    ckpt = load_checkpoint(path)
    if ckpt is None or ckpt.round < 1:
        raise DataError(
            "run has no checkpoint (no round finished)",
            where=str(path / "checkpoint.npz"),
            fix="let the run finish at least one round (fedrec simulate --resume RUN_DIR)",
        )
    kind_cls = GramRunModel if gram_run else RunModel
    split = _load_split(path, settings)
    if int(ckpt.item_arrays[0].shape[0]) != split.n_items:
        raise DataError(
            f"checkpoint has {ckpt.item_arrays[0].shape[0]} items, the data {split.n_items}",
            where=str(path / "checkpoint.npz"),
            fix="the run's data changed since the run; restore it or start a new run",
        )
    kind = MODEL_KIND if gram_run else settings.model.kind
    exported = export_model(
        kind=kind,
        settings=settings,
        arrays=ckpt.item_arrays,
        split=split,
        privacy=privacy_summary(path, settings.privacy.mode),
        source={"round": ckpt.round, "run": path.name, "trained": "federated"},
    )
    users = tuple(str(u) for u in split.data.user_ids.tolist())
    return kind_cls(path, settings, exported, ckpt.round, users, split)


def _load_split(run_dir: Path, settings: RunSettings) -> Split:
    try:
        return load_split(settings)
    except FedrecError as err:
        raise DataError(
            f"cannot rebuild the run's split ({err})",
            where=f"{run_dir / 'config.json'}: data",
            fix="make the run's data available at the recorded path",
        ) from err


def _device_items(run_dir: Path, user: int, missing: DataError) -> npt.NDArray[np.int64]:
    """``user``'s items from its simulated device store (item ids are catalog rows)."""
    from clients.sim_store import device_path
    from clients.store import DeviceStore

    store_path = device_path(run_dir / CLIENTS_DIR, user)
    if not store_path.is_file():
        raise DataError(
            f"user {user} has no device store in this run, and {missing.what}",
            where=str(store_path),
            fix="make the run's data available at the recorded path",
        )
    store = DeviceStore.open(store_path)
    try:
        return np.array([int(r.item) for r in store.interactions()], dtype=np.int64)
    finally:
        store.close()
