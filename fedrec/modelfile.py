"""A model file a device can load: one versioned, checksummed safetensors file.

Design rule: **a model file holds the global model and nothing about any user.** It
carries the item-side arrays of the global model, the original item ids of their rows,
the model kind and configuration needed to rebuild the serving model, the cold-start
fallback scores the run's privacy mode allows (:mod:`fedrec.recommend.cold_start`:
raw counts only without privacy), optional public catalog metadata (titles, genres)
and the run's privacy statement. It holds no interaction, no user id and no user-side
parameter. Everything in it is the output of the run's mechanism or public data, so
under a privacy mode it is post-processing of what the run already released.

Format: `safetensors <https://huggingface.co/docs/safetensors>`_ (no pickle: loading
executes nothing). Tensors are ``item.<j>`` (the item-side arrays in upload order),
``fallback`` and ``genres``; the JSON header sits in the safetensors metadata under
``"fedrec"``: ``format``, ``version``, ``kind``, ``model`` and ``train`` (the
configuration dicts), ``item_ids``, ``titles``, ``genre_names``, ``privacy``,
``source`` and ``sha256``, the digest of every tensor's name, dtype, shape and bytes
and of the header itself (without the digest), so a flipped bit anywhere is refused.
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.data.atomic import atomic_write_bytes
from fedrec.errors import DataError
from fedrec.models.config import MODEL_KIND_NAMES

FORMAT = "fedrec-model"
VERSION = 1
METADATA_KEY = "fedrec"
ItemId = int | str
"""An original item id as the data spell it (JSON keeps ints and strings apart)."""
SERVABLE_KINDS = (*MODEL_KIND_NAMES, "ease", "popularity", "itemknn")
"""Kinds a model file may hold: the federated models and the centralized baselines."""


@dataclass(frozen=True)
class ExportedModel:
    """The content of a model file (see the module docstring)."""

    kind: str
    item_ids: list[ItemId]
    arrays: list[npt.NDArray[np.float32]]
    model: dict[str, Any] = field(default_factory=dict)
    train: dict[str, Any] = field(default_factory=dict)
    fallback: npt.NDArray[np.float32] | None = None
    titles: list[str] | None = None
    genres: npt.NDArray[np.bool_] | None = None
    genre_names: list[str] | None = None
    privacy: dict[str, Any] = field(default_factory=dict)
    source: dict[str, Any] = field(default_factory=dict)

    @property
    def n_items(self) -> int:
        return len(self.item_ids)

    def __post_init__(self) -> None:
        problem = None
        if self.kind not in SERVABLE_KINDS:
            problem = f"unknown model kind {self.kind!r} (one of {', '.join(SERVABLE_KINDS)})"
        elif len(set(self.item_ids)) != len(self.item_ids):
            problem = "item ids are not unique"
        elif not self.arrays or any(a.ndim == 0 for a in self.arrays):
            problem = "no arrays, or a scalar array"
        elif self.arrays[0].shape[0] != self.n_items:
            # Only the first is item-indexed in every kind: an autoencoder's encoder is
            # [hidden, n_items], NCF's tower is shared; the model checks every shape on load.
            problem = f"the first array must have one row per item ({self.n_items})"
        elif self.fallback is not None and self.fallback.shape != (self.n_items,):
            problem = f"fallback must have shape ({self.n_items},)"
        elif self.titles is not None and len(self.titles) != self.n_items:
            problem = f"titles must have one entry per item ({self.n_items})"
        elif self.genres is not None and self.genres.shape[0] != self.n_items:
            problem = f"genres must have one row per item ({self.n_items})"
        if problem is not None:
            raise DataError(problem, where="model file content", fix="export it again")

    def title_of(self, row: int) -> str | None:
        """The title of catalog row ``row``, when the catalog has titles."""
        return None if self.titles is None else self.titles[row]


def _tensors(model: ExportedModel) -> dict[str, npt.NDArray[Any]]:
    out: dict[str, npt.NDArray[Any]] = {
        f"item.{j}": np.ascontiguousarray(a, dtype=np.float32) for j, a in enumerate(model.arrays)
    }
    if model.fallback is not None:
        out["fallback"] = np.ascontiguousarray(model.fallback, dtype=np.float32)
    if model.genres is not None:
        out["genres"] = np.ascontiguousarray(model.genres, dtype=np.uint8)
    return out


def _header(model: ExportedModel) -> dict[str, Any]:
    return {
        "format": FORMAT,
        "version": VERSION,
        "kind": model.kind,
        "model": model.model,
        "train": model.train,
        "item_ids": [i if isinstance(i, str) else int(i) for i in model.item_ids],
        "titles": model.titles,
        "genre_names": model.genre_names,
        "privacy": model.privacy,
        "source": model.source,
    }


def _digest(header: dict[str, Any], tensors: dict[str, npt.NDArray[Any]]) -> str:
    h = hashlib.sha256(json.dumps(header, sort_keys=True).encode("utf-8"))
    for name in sorted(tensors):
        a = tensors[name]
        h.update(f"{name}|{a.dtype.str}|{list(a.shape)}|".encode())
        h.update(np.ascontiguousarray(a).tobytes())
    return h.hexdigest()


def save_model(path: str | Path, model: ExportedModel) -> Path:
    """Write ``model`` to ``path`` atomically (mode 0600); return the path."""
    from safetensors.numpy import save

    target = Path(path)
    tensors = _tensors(model)
    header = _header(model)
    header["sha256"] = _digest(header, tensors)
    blob = save(tensors, metadata={METADATA_KEY: json.dumps(header)})
    atomic_write_bytes(target, blob)  # a mkstemp sibling: created 0600
    return target


def load_model(path: str | Path) -> ExportedModel:
    """Read and verify a model file (raises :class:`DataError` on any problem)."""
    from safetensors import SafetensorError
    from safetensors.numpy import load

    source = Path(path)
    fix = "export the model again with `fedrec export RUN_DIR --out MODEL`"
    try:
        blob = source.read_bytes()
    except FileNotFoundError:
        raise DataError("model file not found", where=str(source), fix=fix) from None
    except OSError as err:
        raise DataError(f"cannot read the model file ({err.strerror})", where=str(source)) from err
    try:
        tensors = load(blob)
        meta = _metadata(blob)
        header = json.loads(meta[METADATA_KEY])
    except (SafetensorError, KeyError, ValueError, UnicodeDecodeError) as err:
        raise DataError(f"not a fedrec model file ({err})", where=str(source), fix=fix) from err
    if not isinstance(header, dict) or header.get("format") != FORMAT:
        raise DataError("not a fedrec model file", where=str(source), fix=fix)
    if header.get("version") != VERSION:
        raise DataError(
            f"model file version {header.get('version')!r}; this fedrec reads version {VERSION}",
            where=str(source),
            fix="export it with this fedrec version",
        )
    digest = header.pop("sha256", None)
    if digest != _digest(header, tensors):
        raise DataError(
            "checksum mismatch: the model file is corrupted", where=str(source), fix=fix
        )
    n_arrays = sum(1 for k in tensors if k.startswith("item."))
    genres = tensors.get("genres")
    return ExportedModel(
        kind=str(header["kind"]),
        item_ids=[i if isinstance(i, str) else int(i) for i in header["item_ids"]],
        arrays=[tensors[f"item.{j}"] for j in range(n_arrays)],
        model=dict(header.get("model") or {}),
        train=dict(header.get("train") or {}),
        fallback=tensors.get("fallback"),
        titles=header.get("titles"),
        genres=None if genres is None else genres.astype(bool),
        genre_names=header.get("genre_names"),
        privacy=dict(header.get("privacy") or {}),
        source=dict(header.get("source") or {}),
    )


def _metadata(blob: bytes) -> dict[str, str]:
    """The ``__metadata__`` of a safetensors blob (its 8-byte length + JSON header)."""
    n = int.from_bytes(blob[:8], "little")
    meta = json.loads(blob[8 : 8 + n].decode("utf-8")).get("__metadata__") or {}
    return {str(k): str(v) for k, v in meta.items()}
