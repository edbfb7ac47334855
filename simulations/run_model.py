"""Serve a finished (or checkpointed) simulation run: its global model and its split.

Design rule: a run directory is served exactly as its devices would serve it. The
global item arrays come from the server's checkpoint, the split is rebuilt from
``config.json``'s settings (the call the clients make), and a user's scores are those
of :func:`fedrec.federated.client.client_scores` with the user's train items: the
user-side state is reconstructed on the final global items (Federated Reconstruction,
Singhal et al. 2021) with the evaluation seed, as the final evaluation does for a user
the run never sampled. The simulated devices' own stores under ``RUN_DIR/clients/``
are not read (their format belongs to :mod:`clients`). The "most popular" fallback
reads the signal :mod:`fedrec.recommend.cold_start` allows for the run's privacy mode
(raw counts only without privacy).

A one-shot federated-EASE run (``model = "ease"``, :mod:`server.gram_app`) is a
:class:`GramRunModel`: its checkpoint holds ``B`` (and the released diagonal of the
Gram matrix), a user's scores are ``x_u B`` exactly as on the device, explanations are
EASE's exact score decomposition and similar items are rows of ``B``
(:func:`fedrec.federated.gram.explain`, :func:`fedrec.federated.gram.similar_items`).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from functools import cached_property
from pathlib import Path

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data.split import Split
from fedrec.errors import DataError, FedrecError
from fedrec.federated import gram
from fedrec.federated.client import client_scores, derive_seed, load_device_model
from fedrec.federated.loop import EVAL_ROUND
from fedrec.models.base import Arrays, item_side
from fedrec.recommend.cold_start import popularity_source
from fedrec.recommend.explain import explain
from fedrec.recommend.similar import item_vectors, similar_items
from server.checkpoint import load_checkpoint
from server.gram_settings import MODEL_KIND, GramSettings
from server.settings import RunSettings, load_split, read_flat
from simulations.run_dir import resume_settings

FloatArray = npt.NDArray[np.float64]
ScoreFn = Callable[[npt.NDArray[np.int64]], torch.Tensor]
BIAS_PARAMETER = {"mf": "item_bias.weight", "cdae": "decoder.bias", "multvae": "dec_out.bias"}
"""Model kind -> the item-side parameter that acts as learned popularity."""
Citations = list[list[tuple[int, float]]]


def _ids(values: npt.NDArray[np.generic]) -> dict[str, int]:
    return {str(v): i for i, v in enumerate(values.tolist())}


@dataclass(frozen=True)
class RunModel:
    """A run's final global model, split and privacy mode, ready to serve."""

    run_dir: Path
    settings: RunSettings
    split: Split
    item_arrays: Arrays
    round: int

    @property
    def privacy_mode(self) -> str:
        return self.settings.privacy.mode

    @cached_property
    def item_vectors(self) -> FloatArray:
        """``[n_items, d]`` learned item vectors (:func:`fedrec.recommend.item_vectors`)."""
        return item_vectors(self.settings.model.kind, self.item_arrays)

    @cached_property
    def _user_index(self) -> dict[str, int]:
        return _ids(self.split.data.user_ids)

    @cached_property
    def _item_index(self) -> dict[str, int]:
        return _ids(self.split.data.item_ids)

    def user_index(self, user_id: str) -> int:
        """The index of the original user id ``user_id`` (DataError when unknown)."""
        return self._lookup(self._user_index, user_id, "user", "--user")

    def item_index(self, item_id: str) -> int:
        """The index of the original item id ``item_id`` (DataError when unknown)."""
        return self._lookup(self._item_index, item_id, "item", "--item")

    def _lookup(self, table: dict[str, int], key: str, what: str, flag: str) -> int:
        if str(key) not in table:
            sample = ", ".join(list(table)[:3])
            raise DataError(
                f"unknown {what} id {key!r} (the run's data has {len(table)} {what}s)",
                where=f"{flag} (data {self.settings.data})",
                fix=f"pass an original {what} id from the data, e.g. {sample}",
            )
        return table[str(key)]

    def user_scores(self, user: int) -> FloatArray:
        """``[n_items]`` scores of ``user``: user state reconstructed on the final items."""
        scores = client_scores(
            self.settings.model,
            self.settings.train,
            self.item_arrays,
            None,
            self.split.train_items(user),
            seed=derive_seed(self.settings.seed, user, EVAL_ROUND),
        )
        out: FloatArray = scores.double().numpy()
        return out

    def score_fn(self) -> ScoreFn:
        """``score_fn(users) -> [b, n_items]`` from :meth:`user_scores` (for evaluation)."""

        def score(users: npt.NDArray[np.int64]) -> torch.Tensor:
            rows = [torch.from_numpy(self.user_scores(int(u))) for u in users]
            return torch.stack(rows) if rows else torch.zeros(0, self.split.n_items)

        return score

    def explain(self, history: npt.NDArray[np.int64], items: list[int], top: int) -> Citations:
        """ "Because" citations of ``items`` (:func:`fedrec.recommend.explain`)."""
        return explain(self.item_vectors, history, items, top=top)

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        """The ``k`` items most similar to ``item`` (cosine of learned item vectors)."""
        return similar_items(self.item_vectors, item, k=k)

    def item_bias(self) -> FloatArray | None:
        """The learned item biases of the global model (``None`` if the model has none)."""
        model = load_device_model(
            self.settings.model, self.item_arrays, None, seed=self.settings.seed
        )
        param = item_side(model).get(BIAS_PARAMETER.get(self.settings.model.kind, ""))
        return None if param is None else param.detach().double().numpy().reshape(-1)

    def popularity(self) -> FloatArray:
        """Fallback scores allowed by the run's privacy mode (raw counts only in "none")."""
        if self.privacy_mode == "none":
            return popularity_source("none", train=self.split.train)
        return popularity_source(self.privacy_mode, item_bias=self.item_bias())


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

    def user_scores(self, user: int) -> FloatArray:
        """``x_u B``: the sum of ``B``'s rows of the user's train items (float64)."""
        items = np.unique(self.split.train_items(user))
        out: FloatArray = self.weights[items].sum(axis=0, dtype=np.float64)
        return out

    def explain(self, history: npt.NDArray[np.int64], items: list[int], top: int) -> Citations:
        """Exact: ``score_j = sum_{i in history} B_ij``; cite the largest ``B_ij > 0``."""
        return gram.explain(self.weights, history, items, top=top)

    def similar(self, item: int, k: int) -> list[tuple[int, float]]:
        """The largest entries of row ``item`` of ``B`` (its one-item recommendations)."""
        return gram.similar_items(self.weights, item, k=k)

    def item_bias(self) -> FloatArray | None:
        """The released diagonal of ``G`` (DP under central mode), if the run stored it."""
        return self.item_arrays[1].astype(np.float64) if len(self.item_arrays) > 1 else None

    def popularity(self) -> FloatArray:
        """Raw counts without privacy, else the released diagonal of ``G`` (post-processing)."""
        if self.privacy_mode == "none":
            return popularity_source("none", train=self.split.train)
        bias = self.item_bias()
        if bias is None:
            raise DataError(
                "this federated-EASE run's checkpoint holds no released popularity signal",
                where=str(self.run_dir / "checkpoint.npz"),
                fix="rerun it with this version, or pass --min-interactions 0",
            )
        return popularity_source(self.privacy_mode, item_bias=bias)


def load_run_model(run_dir: str | Path) -> RunModel:
    """Load ``run_dir``'s final checkpoint and split (raises :class:`DataError`).

    A federated-EASE run (``model = "ease"``) loads as a :class:`GramRunModel`.
    """
    path = Path(run_dir)
    if not path.is_dir():
        raise DataError(
            "run directory not found", where=str(path), fix="pass the --out of a fedrec simulate"
        )
    flat = read_flat(path)
    gram_run = flat.get("model") == MODEL_KIND
    settings = GramSettings.from_flat(flat).base if gram_run else resume_settings(path)
    ckpt = load_checkpoint(path)
    if ckpt is None or ckpt.round < 1:
        raise DataError(
            "run has no checkpoint (no round finished)",
            where=str(path / "checkpoint.npz"),
            fix="let the run finish at least one round (fedrec simulate --resume RUN_DIR)",
        )
    split = _load_split(path, settings)
    if int(ckpt.item_arrays[0].shape[0]) != split.n_items:
        raise DataError(
            f"checkpoint has {ckpt.item_arrays[0].shape[0]} items, the data {split.n_items}",
            where=str(path / "checkpoint.npz"),
            fix="the run's data changed since the run; restore it or start a new run",
        )
    kind = GramRunModel if gram_run else RunModel
    return kind(path, settings, split, ckpt.item_arrays, ckpt.round)


def _load_split(path: Path, settings: RunSettings) -> Split:
    try:
        return load_split(settings)
    except FedrecError as err:
        raise DataError(
            f"cannot rebuild the run's split ({err})",
            where=f"{path / 'config.json'}: data",
            fix="make the run's data available at the recorded path",
        ) from err
