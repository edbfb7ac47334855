"""Reader for a generic interaction file: CSV/TSV or Parquet with named columns.

Columns: ``user``, ``item`` (required), ``rating``, ``timestamp`` (optional). Ids are
read as strings and kept exactly as given (``"007"`` stays ``"007"``); a column becomes
int64 only when every id in it is a canonical integer (see :mod:`fedrec.data.ids`).
"""

from __future__ import annotations

import gzip
import re
from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.formats import (
    MAX_RATING,
    MAX_TIMESTAMP,
    RATING_FIX,
    TIMESTAMP_FIX,
    RawLog,
    value_problem,
)
from fedrec.data.ids import canonical_ids
from fedrec.errors import DataError

PARQUET_SUFFIXES = (".parquet", ".pq")
TEXT_SUFFIXES = (".csv", ".tsv", ".txt", ".csv.gz", ".tsv.gz")
_FIX = "the file needs a header with columns user,item and optionally rating,timestamp"


def read_generic(path: Path) -> RawLog:
    """Read a generic interaction file (see module docstring)."""
    frame = _read_frame(path)
    missing = [c for c in ("user", "item") if c not in frame.columns]
    if missing:
        raise DataError(
            f"missing column(s) {', '.join(missing)} (found {', '.join(map(str, frame.columns))})",
            where=str(path),
            fix=_FIX,
        )
    user, item = (_id_column(frame[c], c, path) for c in ("user", "item"))
    rating = None
    if "rating" in frame.columns:
        rating = _numeric(frame["rating"], "rating", path, MAX_RATING, RATING_FIX)
    timestamp = _timestamps(frame["timestamp"], path) if "timestamp" in frame.columns else None
    return RawLog(user=user, item=item, rating=rating, timestamp=timestamp, source=str(path))


def _read_frame(path: Path) -> pd.DataFrame:
    name = path.name.lower()
    try:
        if name.endswith(PARQUET_SUFFIXES):
            return pd.read_parquet(path)
        sep = "\t" if ".tsv" in name else ","
        return pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False, engine="c")
    except pd.errors.ParserError as err:
        found = re.search(r"Expected (\d+) fields in line (\d+), saw (\d+)", str(err))
        if found:
            expected, line, got = found.groups()
            what = f"malformed line (expected {expected} fields, got {got})"
            raise DataError(what, where=f"{path}:{line}", fix="fix or remove that line") from err
        raise DataError(f"malformed file ({_one_line(err)})", where=str(path), fix=_FIX) from err
    except UnicodeDecodeError as err:
        raise _not_utf8(path) from err
    except (OSError, ValueError) as err:
        raise DataError(f"cannot read file ({_one_line(err)})", where=str(path), fix=_FIX) from err


def _not_utf8(path: Path) -> DataError:
    """The error for the first line of ``path`` that is not UTF-8 (read line by line)."""
    opener = gzip.open if path.name.lower().endswith(".gz") else open
    with opener(path, "rb") as fh:
        for no, line in enumerate(fh, start=1):
            try:
                line.decode("utf-8")
            except UnicodeDecodeError as err:
                byte = line[err.start : err.start + 1].hex()
                return DataError(
                    f"not UTF-8 text (byte 0x{byte} at column {err.start + 1})",
                    where=f"{path}:{no}",
                    fix="save the file as UTF-8",
                )
    return DataError("not UTF-8 text", where=str(path), fix="save the file as UTF-8")


def _one_line(err: Exception) -> str:
    return " ".join(str(err).split())


def _line(path: Path, row: int) -> str:
    """Where row ``row`` of the frame sits: its line in a text file (after the header)."""
    if path.name.lower().endswith(PARQUET_SUFFIXES):
        return f"{path} (row {row + 1})"
    return f"{path}:{row + 2}"


def _id_column(col: pd.Series, name: str, path: Path) -> npt.NDArray[np.generic]:
    if col.dtype.kind in "iu":
        return col.to_numpy(np.int64)
    if col.dtype.kind == "f":
        raise DataError(
            f"{name} ids are floating-point numbers",
            where=str(path),
            fix="store ids as integers or strings",
        )
    values = col.astype(str)
    empty = np.flatnonzero((values.str.strip() == "").to_numpy() | col.isna().to_numpy())
    if len(empty):
        raise DataError(f"empty {name} id", where=_line(path, int(empty[0])), fix=_FIX)
    return canonical_ids(values.to_numpy(dtype=object))


def _numeric(
    col: pd.Series, name: str, path: Path, limit: float, fix: str
) -> npt.NDArray[np.float64]:
    """``col`` as float64; refuse a value that is not a number, infinite or beyond ``limit``."""
    numbers = pd.to_numeric(col, errors="coerce")
    values = numbers.to_numpy(np.float64)
    bad = np.flatnonzero(~(np.abs(values) <= limit))
    if len(bad):
        row = int(bad[0])
        raw = str(col.iloc[row])
        coerced = pd.isna(numbers.iloc[row]) and raw.strip().lower() not in ("nan", "")
        problem = None if coerced else value_problem(float(values[row]), name, limit)
        raise DataError(
            f"{problem}: {raw!r}" if problem else f"non-numeric {name} {raw!r}",
            where=_line(path, row),
            fix=fix,
        )
    return values


def _timestamps(col: pd.Series, path: Path) -> npt.NDArray[np.int64]:
    """Integer timestamps; ISO date strings and datetime columns become Unix seconds."""
    if col.dtype.kind != "M" and (
        col.dtype.kind in "iuf" or pd.to_numeric(col, errors="coerce").notna().all()
    ):
        return _numeric(col, "timestamp", path, MAX_TIMESTAMP, TIMESTAMP_FIX).astype(np.int64)
    parsed = pd.to_datetime(col, errors="coerce", utc=True)
    bad = np.flatnonzero(parsed.isna().to_numpy())
    if len(bad):
        raise DataError(
            f"timestamp {col.iloc[int(bad[0])]!r} is neither a number nor a date",
            where=_line(path, int(bad[0])),
            fix="use Unix seconds or ISO dates",
        )
    seconds = (parsed - pd.Timestamp(0, tz="UTC")) // pd.Timedelta(seconds=1)
    return np.asarray(seconds.to_numpy(), dtype=np.int64)
