"""Reader for a generic interaction file: CSV/TSV or Parquet with named columns.

Columns: the user and item ids (required), a rating and a timestamp (optional). Each is
found by its name or a common alias (:data:`ALIASES`; case, ``_``, ``-`` and spaces
ignored, so ``user_id``, ``userId`` and ``UserID`` all name the user), or named
explicitly (:class:`Columns`, the CLI's ``--user-col --item-col --rating-col
--time-col``). A column that two names could claim, or a named column the file lacks,
is refused. Ids are read as strings and kept exactly as given (``"007"`` stays
``"007"``); a column becomes int64 only when every id in it is a canonical integer
(see :mod:`fedrec.data.ids`).
"""

from __future__ import annotations

import gzip
import re
from dataclasses import dataclass, fields
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
_FIX = (
    "the file needs a header naming the user and item columns (user,item or an alias such "
    "as user_id,item_id or userId,movieId), or name them with --user-col and --item-col"
)

ALIASES: dict[str, tuple[str, ...]] = {
    "user": ("user", "user_id", "userId"),
    "item": ("item", "item_id", "itemId", "movieId", "movie_id"),
    "rating": ("rating",),
    "timestamp": ("timestamp", "time"),
}
"""Column names recognised for each role (compared case-insensitively, ignoring ``_ -``)."""
FLAGS = {"user": "--user-col", "item": "--item-col", "rating": "--rating-col"}
FLAGS["timestamp"] = "--time-col"


@dataclass(frozen=True)
class Columns:
    """Explicit column names of a generic file; ``None``: found by :data:`ALIASES`."""

    user: str | None = None
    item: str | None = None
    rating: str | None = None
    timestamp: str | None = None

    def named(self) -> dict[str, str]:
        """The roles given explicitly, by role."""
        return {f.name: getattr(self, f.name) for f in fields(self) if getattr(self, f.name)}


def read_generic(path: Path, columns: Columns | None = None) -> RawLog:
    """Read a generic interaction file (see module docstring)."""
    frame = _read_frame(path)
    chosen = select_columns([str(c) for c in frame.columns], columns or Columns(), path)
    frame.columns = [str(c) for c in frame.columns]
    user, item = (_id_column(frame[chosen[r]], r, path) for r in ("user", "item"))
    rating = None
    if "rating" in chosen:
        rating = _numeric(frame[chosen["rating"]], "rating", path, MAX_RATING, RATING_FIX)
    timestamp = _timestamps(frame[chosen["timestamp"]], path) if "timestamp" in chosen else None
    return RawLog(user=user, item=item, rating=rating, timestamp=timestamp, source=str(path))


def _normal(name: str) -> str:
    return re.sub(r"[\s_-]", "", name).lower()


def select_columns(header: list[str], columns: Columns, path: Path) -> dict[str, str]:
    """The file column of each role found in ``header`` (user and item required).

    Explicit names must be in the header as given; the other roles take the one
    column whose name is an alias of the role (none: the role is absent; several:
    refused as ambiguous). One column never serves two roles.
    """
    found = ", ".join(header) or "none"
    named = columns.named()
    chosen: dict[str, str] = {}
    for role, name in named.items():
        if name not in header:
            raise DataError(
                f"no column {name!r} (given with {FLAGS[role]}; found {found})",
                where=str(path),
                fix=f"pass {FLAGS[role]} the exact name of a column in the header",
            )
        chosen[role] = name
    taken = set(chosen.values())
    for role, aliases in ALIASES.items():
        if role in chosen:
            continue
        wanted = {_normal(a) for a in aliases}
        hits = [c for c in header if _normal(c) in wanted and c not in taken]
        if len(hits) > 1:
            raise DataError(
                f"ambiguous {role} column: {' and '.join(map(repr, hits))} could both be it",
                where=str(path),
                fix=f"name the one to use with {FLAGS[role]}",
            )
        if hits:
            chosen[role] = hits[0]
            taken.add(hits[0])
    missing = [r for r in ("user", "item") if r not in chosen]
    if missing:
        raise DataError(
            f"missing {' and '.join(missing)} column (found {found})",
            where=str(path),
            fix=_FIX,
        )
    doubled = [c for c in set(chosen.values()) if list(chosen.values()).count(c) > 1]
    if doubled:
        roles = [r for r, c in chosen.items() if c == doubled[0]]
        raise DataError(
            f"column {doubled[0]!r} is given for both the {roles[0]} and the {roles[1]}",
            where=str(path),
            fix="name a different column for each role",
        )
    return chosen


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
