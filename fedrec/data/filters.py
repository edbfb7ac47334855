"""Filters applied to a raw interaction log before ids are remapped.

Order (each step sees the output of the one before): duplicate user-item pairs are
resolved, then ratings below ``min_rating`` are dropped, then the k-core filter runs.
Every filter keeps rows in source-file order.

Duplicate policy ``"latest"`` (the default): a user-item pair that occurs several times
is kept once, at the position of its FIRST occurrence in the file (so the split
protocol sees it where the user first met the item), carrying the rating and timestamp
of its LATEST occurrence by timestamp (ties: the later line; without timestamps: the
last line), i.e. the user's current opinion. ``"first"`` keeps the first occurrence
as it is; ``"keep"`` keeps every row (splits still count a pair once).
"""

from __future__ import annotations

from dataclasses import replace
from typing import Literal

import numpy as np
import numpy.typing as npt
import pandas as pd

from fedrec.data.formats import RawLog
from fedrec.errors import ConfigError

DuplicatePolicy = Literal["latest", "first", "keep"]
DUPLICATE_POLICIES: tuple[str, ...] = ("latest", "first", "keep")


def take(log: RawLog, rows: npt.NDArray[np.int64]) -> RawLog:
    """The rows ``rows`` of ``log`` (in the given order)."""
    return replace(
        log,
        user=log.user[rows],
        item=log.item[rows],
        rating=None if log.rating is None else log.rating[rows],
        timestamp=None if log.timestamp is None else log.timestamp[rows],
    )


def pair_codes(log: RawLog) -> npt.NDArray[np.int64]:
    """One integer per distinct (user, item) pair."""
    u = pd.factorize(log.user)[0].astype(np.int64)
    i = pd.factorize(log.item)[0].astype(np.int64)
    return u * (int(i.max(initial=-1)) + 1) + i


def resolve_duplicates(log: RawLog, policy: str = "latest") -> RawLog:
    """Resolve repeated user-item pairs by ``policy`` (see module docstring)."""
    if policy not in DUPLICATE_POLICIES:
        raise ConfigError(
            f"unknown duplicate policy {policy!r}",
            where="duplicates",
            fix=f"use one of {', '.join(DUPLICATE_POLICIES)}",
        )
    if policy == "keep" or len(log) == 0:
        return log
    pair = pair_codes(log)
    _, first = np.unique(pair, return_index=True)
    if len(first) == len(pair):
        return log
    first = np.sort(first).astype(np.int64)
    kept = take(log, first)
    if policy == "first":
        return kept
    stamp = np.zeros(len(pair), np.int64) if log.timestamp is None else log.timestamp
    order = np.lexsort((np.arange(len(pair)), stamp, pair))  # by pair, then time, then line
    last_of_pair = order[np.r_[pair[order][1:] != pair[order][:-1], True]]
    latest = last_of_pair[np.searchsorted(pair[last_of_pair], pair[first])]  # sorted by pair
    return replace(
        kept,
        rating=None if log.rating is None else log.rating[latest],
        timestamp=None if log.timestamp is None else log.timestamp[latest],
    )


def min_rating_filter(log: RawLog, min_rating: float | None) -> RawLog:
    """Keep interactions with ``rating >= min_rating`` (no-op when ``None``)."""
    if min_rating is None:
        return log
    if log.rating is None:
        raise ConfigError(
            "--min-rating needs ratings, but the data has none",
            where=log.source,
            fix="drop --min-rating or add a rating column",
        )
    return take(log, np.flatnonzero(log.rating >= min_rating).astype(np.int64))


def k_core_filter(log: RawLog, k: int | None) -> RawLog:
    """Drop users and items with fewer than ``k`` interactions until none is left.

    Iterates to the fixed point, so afterwards every user and every item has at least
    ``k`` interactions (or the log is empty).
    """
    if k is None or k <= 1:
        return log
    keep = np.ones(len(log.user), dtype=bool)
    u = pd.factorize(log.user)[0]
    i = pd.factorize(log.item)[0]
    while True:
        u_count = np.bincount(u[keep], minlength=u.max(initial=-1) + 1)
        i_count = np.bincount(i[keep], minlength=i.max(initial=-1) + 1)
        ok = keep & (u_count[u] >= k) & (i_count[i] >= k)
        if ok.sum() == keep.sum():
            return take(log, np.flatnonzero(keep).astype(np.int64))
        keep = ok
