"""Readers for the MovieLens file formats (GroupLens, Harper & Konstan 2015).

Each reader returns a :class:`RawLog`: original ids in source-file order plus item
metadata. Parsing takes the fast path (pandas' C parser) and only when that fails
re-reads the file line by line to say exactly which line is malformed.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.errors import DataError

if TYPE_CHECKING:  # pandas: imported by the readers (a device checking a rating needs none)
    import pandas as pd

_COLUMNS = ("user", "item", "rating", "timestamp")
_KINDS = ("user id", "item id", "rating", "timestamp")
_FIX = "fix or remove that line, or convert the file to a generic user,item CSV"

MAX_RATING = 1e9
"""Largest accepted ``|rating|``: far beyond any rating scale or count; larger is corruption."""
MAX_TIMESTAMP = 2**53
"""Largest accepted ``|timestamp|``: exact in float64 (where device stores keep it); covers
Unix seconds, milliseconds and microseconds, refuses a value that would wrap in int64."""
RATING_FIX = f"give every row a finite rating within +-{MAX_RATING:g}, or drop the column"
TIMESTAMP_FIX = (
    f"use Unix seconds (or milliseconds) or ISO dates; |timestamp| must be at most "
    f"2^53 = {MAX_TIMESTAMP}"
)


def value_problem(value: float, name: str, limit: float) -> str | None:
    """Why ``value`` is not a usable ``name`` (NaN, infinite, beyond ``limit``), or ``None``."""
    if isinstance(value, float) and math.isinf(value):
        return f"{name} is infinite"
    if abs(value) > limit:  # compared exactly, also for an int beyond float's range
        return f"{name} is out of range (|{name}| at most {limit:.4g})"
    if isinstance(value, float) and math.isnan(value):
        return f"{name} is not a number"
    return None


def first_bad_value(values: npt.NDArray[np.float64], limit: float) -> int | None:
    """Index of the first value that is NaN, infinite or beyond ``limit``, or ``None``."""
    bad = np.flatnonzero(~(np.abs(values) <= limit))
    return int(bad[0]) if len(bad) else None


@dataclass(frozen=True)
class ItemMeta:
    """Titles and genre flags by original item id."""

    ids: npt.NDArray[np.generic]
    titles: tuple[str, ...]
    genres: npt.NDArray[np.bool_]
    genre_names: tuple[str, ...]


@dataclass(frozen=True)
class RawLog:
    """Interactions with their original ids, in source-file order."""

    user: npt.NDArray[np.generic]
    item: npt.NDArray[np.generic]
    rating: npt.NDArray[np.float64] | None
    timestamp: npt.NDArray[np.int64] | None
    source: str
    meta: ItemMeta | None = None

    def __len__(self) -> int:
        return len(self.user)


def _bad_line(lines: Sequence[str], sep: str, path: Path, first_line: int = 1) -> DataError:
    """Find the first line of ``lines`` that is not ``int sep int sep number sep int``."""
    for no, line in enumerate(lines, start=first_line):
        if not line.strip():
            continue
        fields = line.rstrip("\r\n").split(sep)
        if len(fields) != 4:
            what = f"malformed line (expected 4 fields separated by {sep!r}, got {len(fields)})"
            return DataError(what, where=f"{path}:{no}", fix=_FIX)
        for kind, value in zip(_KINDS, fields, strict=True):
            try:
                number = float(value) if kind == "rating" else int(value)
            except ValueError:
                what = f"non-numeric {kind} {value.strip()!r} (MovieLens ids are integers)"
                return DataError(what, where=f"{path}:{no}", fix=_FIX)
            problem = _field_problem(kind, number)
            if problem:
                return DataError(f"{problem}: {value.strip()!r}", where=f"{path}:{no}", fix=_FIX)
    return DataError("malformed file", where=str(path), fix=_FIX)


def _field_problem(kind: str, number: float) -> str | None:
    if kind == "rating":
        return value_problem(number, "rating", MAX_RATING)
    if kind == "timestamp":
        return value_problem(number, "timestamp", MAX_TIMESTAMP)
    if not -(2**63) <= number < 2**63:
        return f"{kind} does not fit a 64-bit integer"
    return None


def _parse(raw: bytes, sep: str, path: Path, orig_sep: str, header: bool) -> pd.DataFrame:
    import pandas as pd

    dtypes = {"user": np.int64, "item": np.int64, "rating": np.float64, "timestamp": np.int64}
    try:
        frame = pd.read_csv(
            io.BytesIO(raw),
            sep=sep,
            header=0 if header else None,
            names=list(_COLUMNS),
            dtype=dtypes,
            engine="c",
        )
    except (ValueError, OverflowError) as err:
        raise _diagnose(raw, sep, orig_sep, path, header) from err
    if (
        frame.isna().to_numpy().any()
        or first_bad_value(frame["rating"].to_numpy(np.float64), MAX_RATING) is not None
        or first_bad_value(frame["timestamp"].to_numpy(np.float64), MAX_TIMESTAMP) is not None
    ):
        raise _diagnose(raw, sep, orig_sep, path, header)
    return frame


def _diagnose(raw: bytes, sep: str, orig_sep: str, path: Path, header: bool) -> DataError:
    lines = raw.decode("latin-1").replace(sep, orig_sep).splitlines()
    return _bad_line(lines[int(header) :], orig_sep, path, first_line=1 + int(header))


def _log(frame: pd.DataFrame, path: Path, meta: ItemMeta | None) -> RawLog:
    return RawLog(
        user=frame["user"].to_numpy(np.int64),
        item=frame["item"].to_numpy(np.int64),
        rating=frame["rating"].to_numpy(np.float64),
        timestamp=frame["timestamp"].to_numpy(np.int64),
        source=str(path),
        meta=meta,
    )


def _read_bytes(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as err:
        raise DataError(f"cannot read file ({err.strerror})", where=str(path)) from err


def read_ml100k(folder: Path) -> RawLog:
    """MovieLens 100K: ``u.data`` (tab separated), titles and genres from ``u.item``."""
    path = folder / "u.data"
    frame = _parse(_read_bytes(path), "\t", path, "\t", header=False)
    return _log(frame, path, _ml100k_meta(folder))


def _ml100k_meta(folder: Path) -> ItemMeta | None:
    item_path, genre_path = folder / "u.item", folder / "u.genre"
    if not item_path.is_file():
        return None
    names: tuple[str, ...] = tuple(f"genre{k}" for k in range(19))
    if genre_path.is_file():
        rows = [ln.split("|") for ln in genre_path.read_text("latin-1").splitlines() if ln]
        names = tuple(r[0] for r in sorted(rows, key=lambda r: int(r[1])))
    ids, titles, flags = [], [], []
    for no, line in enumerate(item_path.read_text("latin-1").splitlines(), start=1):
        if not line.strip():
            continue
        fields = line.split("|")
        try:
            ids.append(int(fields[0]))
            flags.append([f == "1" for f in fields[5 : 5 + len(names)]])
        except (ValueError, IndexError) as err:
            raise DataError("malformed movie line", where=f"{item_path}:{no}", fix=_FIX) from err
        titles.append(fields[1])
    genres = np.zeros((len(ids), len(names)), dtype=np.bool_)
    for k, row in enumerate(flags):
        genres[k, : len(row)] = row
    return ItemMeta(np.asarray(ids, dtype=np.int64), tuple(titles), genres, names)


def read_ml_dat(folder: Path) -> RawLog:
    """MovieLens 1M/10M: ``ratings.dat`` (``::`` separated), genres from ``movies.dat``."""
    path = folder / "ratings.dat"
    raw = _read_bytes(path).replace(b"::", b"\t")
    frame = _parse(raw, "\t", path, "::", header=False)
    movies = folder / "movies.dat"
    meta = None
    if movies.is_file():
        rows = [ln.split("::") for ln in movies.read_text("latin-1").splitlines() if ln.strip()]
        meta = _genre_meta(rows, movies)
    return _log(frame, path, meta)


def read_ml_csv(path: Path) -> RawLog:
    """MovieLens latest/20M/25M/32M: ``ratings.csv`` with a header, ``movies.csv`` genres."""
    raw = _read_bytes(path)
    header = raw[: raw.find(b"\n")].decode("latin-1").strip().split(",")
    if header[:2] != ["userId", "movieId"]:
        raise DataError(
            "unexpected header (MovieLens ratings.csv starts with userId,movieId)",
            where=f"{path}:1",
            fix="use a generic CSV with columns user,item instead",
        )
    frame = _parse(raw, ",", path, ",", header=True)
    movies = path.parent / "movies.csv"
    meta = None
    if movies.is_file():
        import pandas as pd

        table = pd.read_csv(movies, dtype=str, keep_default_na=False)
        rows = table[["movieId", "title", "genres"]].to_numpy().tolist()
        meta = _genre_meta(rows, movies)
    return _log(frame, path, meta)


def _genre_meta(rows: list[list[str]], path: Path) -> ItemMeta:
    """Metadata from ``(id, title, "A|B")`` rows; genre names sorted alphabetically."""
    try:
        ids = np.asarray([int(r[0]) for r in rows], dtype=np.int64)
    except (ValueError, IndexError) as err:
        raise DataError("malformed movie line (non-numeric id)", where=str(path), fix=_FIX) from err
    per_item = [
        [g for g in r[2].split("|") if g and g != "(no genres listed)"] if len(r) > 2 else []
        for r in rows
    ]
    names = tuple(sorted({g for gs in per_item for g in gs}))
    col = {g: k for k, g in enumerate(names)}
    genres = np.zeros((len(rows), len(names)), dtype=np.bool_)
    for k, gs in enumerate(per_item):
        genres[k, [col[g] for g in gs]] = True
    return ItemMeta(ids, tuple(r[1] if len(r) > 1 else "" for r in rows), genres, names)
