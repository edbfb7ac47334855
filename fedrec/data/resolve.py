"""Turn a ``--data`` value into an interaction log.

A spec is one of: ``"synthetic"`` or ``"synthetic:users=500,items=300,seed=1"`` (keys
``users``, ``items``, ``dim``, ``mean``, ``seed``); an existing file or folder; or a
known MovieLens name (``ml-100k``, ...) looked up as ``$FEDREC_DATA_DIR/<name>``
(default ``~/.fedrec/data/<name>``). Nothing is ever downloaded here.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedrec.data.filters import k_core_filter, min_rating_filter, resolve_duplicates
from fedrec.data.formats import RawLog
from fedrec.data.interactions import Interactions
from fedrec.data.loaders import build_interactions, load_interactions
from fedrec.data.synthetic import synthetic
from fedrec.errors import ConfigError, DataError

KNOWN_DATASETS = (
    "ml-100k",
    "ml-1m",
    "ml-10m",
    "ml-20m",
    "ml-25m",
    "ml-32m",
    "ml-latest-small",
    "ml-latest",
)
_SYNTHETIC_KEYS = {
    "users": "n_users",
    "items": "n_items",
    "dim": "dim",
    "mean": "mean_interactions",
    "seed": "seed",
}


def default_data_dir() -> Path:
    """``$FEDREC_DATA_DIR``, or ``~/.fedrec/data`` when it is unset."""
    return Path(os.environ.get("FEDREC_DATA_DIR") or "~/.fedrec/data").expanduser()


def resolve_data(
    spec: str | Path,
    *,
    data_dir: Path | None = None,
    min_rating: float | None = None,
    duplicates: str = "latest",
    k_core: int | None = None,
) -> Interactions:
    """Load the data set named by ``spec`` (see the module docstring)."""
    text = str(spec)
    if text == "synthetic" or text.startswith("synthetic:"):
        data = synthetic(**_synthetic_options(text))
        if min_rating is None and (k_core or 0) <= 1:
            return data
        return _refilter(data, min_rating, k_core)
    path = Path(text).expanduser()
    if not path.exists() and text in KNOWN_DATASETS:
        folder = (data_dir or default_data_dir()) / text
        if not folder.exists():
            raise DataError(
                f"data set {text} is not downloaded",
                where=str(folder),
                fix=f"run `fedrec download {text}` or set FEDREC_DATA_DIR to the folder "
                f"that holds {text}/",
            )
        path = folder
    if path.exists():
        return load_interactions(path, min_rating=min_rating, duplicates=duplicates, k_core=k_core)
    raise DataError(
        "no such file, folder or data set",
        where=text,
        fix=f"give a path, 'synthetic', or one of {', '.join(KNOWN_DATASETS)}",
    )


def _synthetic_options(text: str) -> dict[str, int]:
    options: dict[str, int] = {}
    body = text.partition(":")[2]
    for part in filter(None, (p.strip() for p in body.split(","))):
        key, _, value = part.partition("=")
        if key not in _SYNTHETIC_KEYS or not value.strip().lstrip("-").isdigit():
            raise ConfigError(
                f"bad synthetic option {part!r}",
                where=text,
                fix=f"use key=integer with keys {', '.join(_SYNTHETIC_KEYS)}",
            )
        options[_SYNTHETIC_KEYS[key]] = int(value)
    return options


def _refilter(data: Interactions, min_rating: float | None, k_core: int | None) -> Interactions:
    """Apply the loader's filters to an in-memory log (ids are re-derived)."""
    log = RawLog(
        user=data.user_ids[data.user],
        item=data.item_ids[data.item],
        rating=data.rating,
        timestamp=data.timestamp,
        source=data.source,
    )
    log = k_core_filter(min_rating_filter(resolve_duplicates(log), min_rating), k_core)
    if len(log) == 0:
        raise DataError(
            "no interactions left after filtering",
            where=data.source,
            fix="lower --min-rating / --k-core",
        )
    return build_interactions(log)
