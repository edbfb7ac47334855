"""Load an interaction log from a path: detect the format, filter, remap ids.

Recognised inputs (a directory is recognised by the first file found, in this order):

============================  =========================================================
``u.data``                    MovieLens 100K (genres from ``u.item`` / ``u.genre``)
``ratings.dat``               MovieLens 1M / 10M (genres from ``movies.dat``)
``ratings.csv`` (``userId``)  MovieLens latest / 20M / 25M / 32M (``movies.csv``)
``interactions.csv|parquet``  generic file, columns user, item[, rating, timestamp]
any other ``.csv``/``.parquet`` file given directly: generic
============================  =========================================================

Generic files find their columns by name or alias, or by explicit names
(:class:`~fedrec.data.generic.Columns`); with explicit names a ``ratings.csv`` is read
as a generic file too. MovieLens's ``u.data`` and ``ratings.dat`` have no header: their
columns are fixed, so explicit names are refused for them.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import numpy as np
import pandas as pd

from fedrec.data.filters import k_core_filter, min_rating_filter, resolve_duplicates
from fedrec.data.formats import RawLog, read_ml100k, read_ml_csv, read_ml_dat
from fedrec.data.generic import FLAGS, PARQUET_SUFFIXES, TEXT_SUFFIXES, Columns, read_generic
from fedrec.data.ids import encode_ids
from fedrec.data.interactions import Interactions
from fedrec.errors import ConfigError, DataError

_DIRECTORY_FILES = ("u.data", "ratings.dat", "ratings.csv", "interactions.csv")


def load_interactions(
    path: str | Path,
    *,
    min_rating: float | None = None,
    duplicates: str = "latest",
    k_core: int | None = None,
    columns: Columns | None = None,
) -> Interactions:
    """Load interactions from a MovieLens folder/file or a generic CSV/Parquet file.

    Parameters
    ----------
    path
        A directory (format detected from its files) or a file.
    min_rating
        Keep only interactions with ``rating >= min_rating``.
    duplicates
        Policy for repeated user-item pairs: ``"latest"`` (default), ``"first"``,
        ``"keep"``; see :mod:`fedrec.data.filters`.
    k_core
        Iteratively drop users and items with fewer than ``k_core`` interactions.
    columns
        Explicit column names of a generic CSV/Parquet file (default: by alias).
    """
    p = Path(path).expanduser()
    if not p.exists():
        raise DataError(
            "no such file or directory", where=str(p), fix="check the path passed as --data"
        )
    log = _reader(p, columns or Columns())(p)
    log = resolve_duplicates(log, duplicates)
    log = k_core_filter(min_rating_filter(log, min_rating), k_core)
    if len(log) == 0:
        filtered = min_rating is not None or (k_core or 0) > 1
        raise DataError(
            "no interactions" + (" left after filtering" if filtered else ""),
            where=str(p),
            fix="lower --min-rating / --k-core" if filtered else "check the file's contents",
        )
    return build_interactions(log)


def _reader(p: Path, columns: Columns) -> Callable[[Path], RawLog]:
    if p.is_dir():
        for name in _DIRECTORY_FILES:
            if (p / name).is_file():
                return _file_reader(p / name, p, columns)
        if (p / "interactions.parquet").is_file():
            return lambda _: read_generic(p / "interactions.parquet", columns)
        raise DataError(
            "unknown data format (no u.data, ratings.dat, ratings.csv or interactions.csv here)",
            where=str(p),
            fix="point --data at a MovieLens folder or a CSV/Parquet file with user,item columns",
        )
    return _file_reader(p, p, columns)


def _file_reader(f: Path, given: Path, columns: Columns) -> Callable[[Path], RawLog]:
    name = f.name.lower()
    if name in ("u.data", "ratings.dat") and columns.named():
        raise ConfigError(
            f"{name} is a MovieLens file with fixed columns (no header)",
            where=", ".join(_flags(columns)),
            fix="drop the column options, or convert the file to a CSV with a header",
        )
    if name == "u.data":
        return lambda _: read_ml100k(f.parent)
    if name == "ratings.dat":
        return lambda _: read_ml_dat(f.parent)
    if name == "ratings.csv" and not columns.named() and _header(f).startswith("userId,movieId"):
        return lambda _: read_ml_csv(f)
    if name.endswith(PARQUET_SUFFIXES + TEXT_SUFFIXES):
        return lambda _: read_generic(f, columns)
    raise DataError(
        "unknown data format",
        where=str(given),
        fix="use a MovieLens folder, or a .csv/.tsv/.parquet file with user,item columns",
    )


def _flags(columns: Columns) -> list[str]:
    return [FLAGS[role] for role in columns.named()]


def _header(f: Path) -> str:
    with f.open("rb") as fh:
        return fh.readline().decode("latin-1").strip()


def build_interactions(log: RawLog) -> Interactions:
    """Remap the ids of ``log`` to contiguous indices and attach item metadata."""
    user, user_ids = encode_ids(log.user)
    item, item_ids = encode_ids(log.item)
    genres = titles = names = None
    if log.meta is not None:
        pos = pd.Index(log.meta.ids).get_indexer(item_ids)
        found = pos >= 0
        g = np.zeros((len(item_ids), len(log.meta.genre_names)), dtype=np.bool_)
        g[found] = log.meta.genres[pos[found]]
        genres, names = g, log.meta.genre_names
        titles = tuple(log.meta.titles[k] if k >= 0 else "" for k in pos)
    return Interactions(
        user=user,
        item=item,
        user_ids=user_ids,
        item_ids=item_ids,
        rating=log.rating,
        timestamp=log.timestamp,
        item_genres=genres,
        item_titles=titles,
        genre_names=names,
        source=log.source,
    )
