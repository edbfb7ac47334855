"""Split files: ``train.csv`` and ``test.csv`` with header ``user,item`` and ORIGINAL ids.

``fedrec split --validation`` also writes ``valid.csv``, carved from the train items
(:func:`fedrec.data.split.validation_split`); then ``train.csv``, ``valid.csv`` and
``test.csv`` are disjoint, and :func:`read_split` counts ``valid.csv`` as train (the
protocol's train set is their union).

Design rule: the files alone define the split, so ``fedrec evaluate`` can score any
recommender against them. Rows are written in source-file order; a directory is
written atomically (see :mod:`fedrec.data.atomic`).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.atomic import atomic_output_dir
from fedrec.data.formats import RawLog
from fedrec.data.ids import canonical_ids, id_lookup, to_original_ids
from fedrec.data.interactions import Interactions
from fedrec.data.loaders import build_interactions
from fedrec.data.split import Split, _matrix, first_occurrences
from fedrec.errors import DataError

FILES = ("train.csv", "test.csv")
VALID_FILE = "valid.csv"


def test_rows(split: Split) -> npt.NDArray[np.int64]:
    """Rows of ``split.data`` (first occurrences, file order) whose pair is a test pair."""
    data, rows = split.data, first_occurrences(split.data)
    test = split.test.tocoo()
    codes = test.row.astype(np.int64) * max(data.n_items, 1) + test.col
    pair = data.user[rows] * max(data.n_items, 1) + data.item[rows]
    return rows[np.isin(pair, codes)]


def _frame(data: Interactions, rows: npt.NDArray[np.int64]) -> pd.DataFrame:
    users, items = to_original_ids(data, data.user[rows], data.item[rows])
    return pd.DataFrame({"user": users, "item": items})


def write_split(split: Split, directory: str | Path, validation: Split | None = None) -> Path:
    """Write ``train.csv`` and ``test.csv`` into a new (or empty) ``directory``.

    With ``validation`` (``validation_split(split)``), ``train.csv`` holds its reduced
    train set and ``valid.csv`` its held-out items: three disjoint files.
    """
    with atomic_output_dir(directory) as tmp:
        if validation is None:
            _frame(split.data, split.train_rows).to_csv(tmp / "train.csv", index=False)
        else:
            _frame(split.data, validation.train_rows).to_csv(tmp / "train.csv", index=False)
            _frame(split.data, test_rows(validation)).to_csv(tmp / VALID_FILE, index=False)
        _frame(split.data, test_rows(split)).to_csv(tmp / "test.csv", index=False)
    return Path(directory)


def _read(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError(
            "split file not found", where=str(path), fix="create it with `fedrec split --out DIR`"
        )
    try:
        frame = pd.read_csv(path, dtype=str, keep_default_na=False, engine="c")
    except (pd.errors.ParserError, ValueError, OSError) as err:
        raise DataError(f"malformed split file ({err})", where=str(path)) from err
    if not {"user", "item"} <= set(frame.columns):
        raise DataError("header must be user,item", where=f"{path}:1")
    for col in ("user", "item"):
        empty = np.flatnonzero((frame[col].str.strip() == "").to_numpy())
        if len(empty):
            raise DataError(f"empty {col} id", where=f"{path}:{int(empty[0]) + 2}")
    return frame[["user", "item"]]


def read_split(directory: str | Path, data: Interactions | None = None) -> Split:
    """Read a split written by :func:`write_split` (or by hand).

    Without ``data`` the interaction log is the union of both files (train rows first).
    With ``data``, every id must exist in it, and every pair must be one of its
    interactions; anything else is a :class:`DataError` naming file and line.
    """
    folder = Path(directory).expanduser()
    train, test = (_read(folder / name) for name in FILES)
    valid = _read(folder / VALID_FILE) if (folder / VALID_FILE).is_file() else train.iloc[:0]
    if data is None:
        train = pd.concat([train, valid], ignore_index=True)  # valid.csv is train here
        both = pd.concat([train, test], ignore_index=True)
        log = RawLog(
            user=canonical_ids(both["user"].to_numpy(dtype=object)),
            item=canonical_ids(both["item"].to_numpy(dtype=object)),
            rating=None,
            timestamp=None,
            source=str(folder),
        )
        data = build_interactions(log)
        rows = np.arange(len(both), dtype=np.int64)
        train_rows, test_rows_ = rows[: len(train)], rows[len(train) :]
    else:
        train_rows = _rows_in(data, train, folder / FILES[0])
        if len(valid):
            valid_rows = _rows_in(data, valid, folder / VALID_FILE)
            train_rows = np.concatenate([train_rows, valid_rows])
        test_rows_ = _rows_in(data, test, folder / FILES[1])
    _check_disjoint(data, train_rows, test_rows_, folder)
    total = max(len(train_rows) + len(test_rows_), 1)
    return Split(
        train=_matrix(data, train_rows),
        test=_matrix(data, test_rows_),
        data=data,
        train_rows=np.unique(train_rows),
        method="file",
        seed=0,
        test_fraction=len(test_rows_) / total,
    )


def _indices(
    ids: npt.NDArray[np.generic], values: pd.Series, what: str, path: Path, source: str
) -> npt.NDArray[np.int64]:
    pos = id_lookup(ids).get_indexer(pd.Index(values.to_numpy(dtype=object)))
    bad = np.flatnonzero(pos < 0)
    if len(bad):
        raise DataError(
            f"unknown {what} id {values.iloc[int(bad[0])]!r} (not in the data set {source})",
            where=f"{path}:{int(bad[0]) + 2}",
            fix="evaluate against the same data set (and filters) the split was made from",
        )
    return pos.astype(np.int64)


def _rows_in(data: Interactions, frame: pd.DataFrame, path: Path) -> npt.NDArray[np.int64]:
    """Row of ``data`` (first occurrence) of every ``user,item`` line of ``frame``."""
    users = _indices(data.user_ids, frame["user"], "user", path, data.source)
    items = _indices(data.item_ids, frame["item"], "item", path, data.source)
    first = first_occurrences(data)
    width = max(data.n_items, 1)
    lookup = pd.Index(data.user[first] * width + data.item[first])
    pos = lookup.get_indexer(pd.Index(users * width + items))
    bad = np.flatnonzero(pos < 0)
    if len(bad):
        k = int(bad[0])
        raise DataError(
            f"user {frame['user'].iloc[k]!r} has no interaction with item "
            f"{frame['item'].iloc[k]!r} in {data.source}",
            where=f"{path}:{k + 2}",
            fix="evaluate against the same data set (and filters) the split was made from",
        )
    return np.asarray(first[pos], dtype=np.int64)


def _check_disjoint(
    data: Interactions, train: npt.NDArray[np.int64], test: npt.NDArray[np.int64], folder: Path
) -> None:
    width = max(data.n_items, 1)
    both = np.intersect1d(
        data.user[train] * width + data.item[train], data.user[test] * width + data.item[test]
    )
    if len(both):
        u, i = to_original_ids(data, [both[0] // width], [both[0] % width])
        raise DataError(
            f"pair user {u[0]!r}, item {i[0]!r} is in both train.csv and test.csv",
            where=str(folder),
            fix="a test item must not be in the user's train set; remove it from one file",
        )
