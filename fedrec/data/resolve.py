"""Turn a ``--data`` value into an interaction log.

A spec is one of: ``"synthetic"`` or ``"synthetic:users=500,items=300,seed=1"`` (keys
``users``, ``items``, ``dim``, ``mean``, ``seed``); an existing file or folder; or a
known MovieLens name (``ml-100k``, ...) looked up as ``$FEDREC_DATA_DIR/<name>``
(default ``~/.fedrec/data/<name>``). Nothing is ever downloaded here.

A file spec may end in ``#user=COL,item=COL,rating=COL,time=COL`` (any subset): the
explicit column names of a generic CSV/Parquet file (:class:`~fedrec.data.generic.Columns`).
The CLI's ``--user-col --item-col --rating-col --time-col`` write that suffix
(:func:`data_spec`), so a run's ``config.json`` records the columns with the path.
"""

from __future__ import annotations

import os
from pathlib import Path

from fedrec.data.filters import k_core_filter, min_rating_filter, resolve_duplicates
from fedrec.data.formats import RawLog
from fedrec.data.generic import Columns
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
    text, columns = split_spec(str(spec))
    if (text == "synthetic" or text.startswith("synthetic:")) and columns.named():
        raise ConfigError(
            "column names apply to CSV/Parquet files, not to synthetic data",
            where=str(spec),
            fix="drop --user-col/--item-col/--rating-col/--time-col",
        )
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
        return load_interactions(
            path, min_rating=min_rating, duplicates=duplicates, k_core=k_core, columns=columns
        )
    raise DataError(
        "no such file, folder or data set",
        where=text,
        fix=f"give a path, 'synthetic', or one of {', '.join(KNOWN_DATASETS)}",
    )


_SPEC_KEYS = {"user": "user", "item": "item", "rating": "rating", "time": "timestamp"}


def data_spec(
    data: str,
    *,
    user: str | None = None,
    item: str | None = None,
    rating: str | None = None,
    time: str | None = None,
) -> str:
    """``data`` with the explicit column names appended (see the module docstring)."""
    text, columns = split_spec(data)
    given = {"user": user, "item": item, "rating": rating, "time": time}
    for key, value in given.items():
        if value is not None and (not value or any(c in value for c in ",=#")):
            flag = "--time-col" if key == "time" else f"--{key}-col"
            raise ConfigError(
                f"bad column name {value!r}",
                where=flag,
                fix="give a non-empty name without ',', '=' or '#'",
            )
    merged = {k: given[k] or getattr(columns, _SPEC_KEYS[k]) for k in _SPEC_KEYS}
    parts = [f"{k}={v}" for k, v in merged.items() if v]
    return text + ("#" + ",".join(parts) if parts else "")


def split_spec(spec: str) -> tuple[str, Columns]:
    """``(data, columns)`` of a spec that may end in ``#user=COL,...``.

    A spec that exists as a path as a whole (a ``#`` in a file name) is taken as is.
    """
    head, sep, tail = spec.rpartition("#")
    if not sep or Path(spec).expanduser().exists():
        return spec, Columns()
    named: dict[str, str] = {}
    for part in tail.split(","):
        key, eq, value = part.partition("=")
        if not eq or key.strip() not in _SPEC_KEYS or not value.strip():
            raise ConfigError(
                f"bad column option {part!r}",
                where=spec,
                fix="use PATH#user=COL,item=COL,rating=COL,time=COL (any of them)",
            )
        named[_SPEC_KEYS[key.strip()]] = value.strip()
    return head, Columns(**named)


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
