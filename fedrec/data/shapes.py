"""Large synthetic logs with the shape of real catalogs, generated in O(interactions).

:func:`fedrec.data.synthetic.synthetic` draws one Gumbel key per user and item, which
is fine for tests but not for 105k users x 340k items (3.6e10 keys). A *shape* here
is the marginal statistics of a real data set: users, items, interactions, a
power-law item popularity (Zipf's law; Clauset, Shalizi & Newman, SIAM Review 2009,
for fitting such tails) and a heavy-tailed (discrete Pareto) user activity between
``min_per_user`` and ``max_per_user`` interactions. A planted cluster structure (each
user and item belongs to one of ``clusters`` communities; a user draws ``affinity`` of
its interactions from its own community) makes a collaborative model beat popularity,
as on real data.

``SHAPES["books"]`` is the shape of the public Book-Crossing ratings (Ziegler et al.,
WWW 2005: about 105k users, 340k books, 1.15M ratings, string ids). The log is
written with string ids (``u000001``, ``i0000001``), so loaders take their string path
as on the real file.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError

if TYPE_CHECKING:  # pandas loads in shaped_log: the CLI parser reads SHAPES without it
    import pandas as pd

_START = 1_600_000_000  # Unix seconds of the first interaction
_PASSES = 6  # rounds of drawing for users still short of distinct items


@dataclass(frozen=True)
class Shape:
    """The marginal statistics of a catalog (see the module docstring)."""

    users: int
    items: int
    interactions: int
    item_zipf: float = 0.9  # popularity of the item of rank r is r^-item_zipf
    user_pareto: float = 1.6  # tail index of the activity: P(size >= s) ~ s^-(alpha - 1)
    min_per_user: int = 1
    max_per_user: int = 10_000
    clusters: int = 16
    affinity: float = 0.8  # fraction of a user's draws from its own community

    def __post_init__(self) -> None:
        if min(self.users, self.items) < 1 or self.interactions < self.users:
            raise ConfigError(
                f"need users, items >= 1 and interactions >= users, got {self}",
                where="Shape",
                fix="give at least one interaction per user",
            )
        if self.interactions > self.users * min(self.items, self.max_per_user):
            raise ConfigError(
                f"{self.interactions} interactions do not fit in {self.users} users",
                where="Shape",
                fix="raise users, items or max_per_user",
            )

    def scaled(self, factor: float) -> Shape:
        """The same shape with ``factor`` times the users, items and interactions."""
        users = max(1, round(self.users * factor))
        return replace(
            self,
            users=users,
            items=max(1, round(self.items * factor)),
            interactions=max(users, round(self.interactions * factor)),
            max_per_user=max(self.min_per_user, min(self.max_per_user, round(
                self.max_per_user * max(factor, 0.0) ** 0.5))),
        )  # fmt: skip


SHAPES: dict[str, Shape] = {
    "books": Shape(users=105_000, items=340_000, interactions=1_150_000),
}


def activity(shape: Shape, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Per-user interaction counts: discrete Pareto, clipped, summing to ``interactions``."""
    alpha = shape.user_pareto
    raw = shape.min_per_user * (1.0 - rng.random(shape.users)) ** (-1.0 / (alpha - 1.0))
    raw = np.minimum(raw, shape.max_per_user)
    cap = min(shape.max_per_user, shape.items)
    sizes = np.full(shape.users, shape.min_per_user, dtype=np.int64)
    extra = shape.interactions - sizes.sum()
    # share the interactions above the minimum in proportion to the Pareto draws
    weight = raw - shape.min_per_user + 1e-9
    for _ in range(20):  # water-filling: what the cap cuts goes to the others
        room = cap - sizes
        if extra <= 0 or not room.any():
            break
        share = weight * (room > 0)
        add = np.minimum(np.floor(extra * share / share.sum()).astype(np.int64), room)
        if add.sum() == 0:
            add[np.argsort(-share)[: int(extra)]] = 1
            add = np.minimum(add, room)
        sizes += add
        extra = shape.interactions - sizes.sum()
    return sizes


def shaped_log(shape: Shape, seed: int = 0) -> pd.DataFrame:
    """A log of ``shape``: columns ``user, item`` (string ids), ``rating``, ``timestamp``.

    Every item is used at least once (the catalog has exactly ``shape.items`` items)
    and every user has its :func:`activity` count of distinct items (the last few may
    be uniform draws when a heavy user exhausts its community's popular items). Rows
    are in time order, users interleaved. Deterministic in ``seed``.
    """
    import pandas as pd

    rng = np.random.default_rng(seed)
    n_users, n_items = shape.users, shape.items
    ranks = rng.permutation(n_items) + 1
    pop = ranks.astype(np.float64) ** -shape.item_zipf
    item_cluster = rng.integers(0, shape.clusters, n_items)
    user_cluster = rng.integers(0, shape.clusters, n_users)
    sizes = activity(shape, rng)
    # each community's items by popularity, and the catalog's, as inverse CDFs
    by_cluster = [np.flatnonzero(item_cluster == c) for c in range(shape.clusters)]
    cdfs = [np.cumsum(pop[members]) / pop[members].sum() for members in by_cluster]
    global_cdf = np.cumsum(pop) / pop.sum()
    # the catalog must be covered: item i's one guaranteed user is a member of its community
    cover_user = _cover_users(item_cluster, user_cluster, sizes, rng)
    pairs = np.unique(cover_user * n_items + np.arange(n_items, dtype=np.int64))
    for _ in range(_PASSES):
        need = np.maximum(sizes - np.bincount(pairs // n_items, minlength=n_users), 0)
        if not need.any():
            break
        user = np.repeat(np.arange(n_users, dtype=np.int64), 2 * need)
        item = np.empty(len(user), dtype=np.int64)
        own = rng.random(len(user)) < shape.affinity
        u = rng.random(len(user))
        for c, members in enumerate(by_cluster):
            sel = own & (user_cluster[user] == c)
            if members.size:
                pick = np.minimum(np.searchsorted(cdfs[c], u[sel]), members.size - 1)
                item[sel] = members[pick]
            else:
                own[sel] = False
        item[~own] = np.minimum(np.searchsorted(global_cdf, u[~own]), n_items - 1)
        pairs = _add_upto(pairs, user * n_items + item, need, n_items, rng)
    for _ in range(_PASSES):  # heavy users past their community's head: uniform items
        need = np.maximum(sizes - np.bincount(pairs // n_items, minlength=n_users), 0)
        if not need.any():
            break
        user = np.repeat(np.arange(n_users, dtype=np.int64), 2 * need)
        pairs = _add_upto(pairs, user * n_items + rng.integers(0, n_items, len(user)), need,
                          n_items, rng)  # fmt: skip
    user, item = pairs // n_items, pairs % n_items
    order = rng.permutation(len(user))
    return pd.DataFrame(
        {
            "user": _ids("u", user[order], n_users),
            "item": _ids("i", item[order], n_items),
            "rating": rng.integers(1, 11, len(user)).astype(np.float64),
            "timestamp": _START + np.arange(len(user), dtype=np.int64) * 60,
        }
    )


def _cover_users(
    item_cluster: npt.NDArray[np.int64],
    user_cluster: npt.NDArray[np.int64],
    sizes: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """For each item, one user of its community, drawn in proportion to activity."""
    out = rng.integers(0, len(sizes), len(item_cluster))
    for c in np.unique(item_cluster):
        members = np.flatnonzero(user_cluster == c)
        if not members.size:
            continue
        items = np.flatnonzero(item_cluster == c)
        cdf = np.cumsum(sizes[members].astype(np.float64))
        pick = np.searchsorted(cdf, rng.random(items.size) * cdf[-1], side="right")
        out[items] = members[np.minimum(pick, members.size - 1)]
    return out


def _add_upto(
    pairs: npt.NDArray[np.int64],
    drawn: npt.NDArray[np.int64],
    need: npt.NDArray[np.int64],
    n_items: int,
    rng: np.random.Generator,
) -> npt.NDArray[np.int64]:
    """``pairs`` plus, per user ``u``, at most ``need[u]`` new distinct ``drawn`` pairs."""
    fresh = np.setdiff1d(drawn, pairs)  # distinct, sorted, not yet held
    fresh = fresh[rng.permutation(len(fresh))]
    fresh = fresh[np.argsort(fresh // n_items, kind="stable")]  # by user, random within
    user = fresh // n_items
    starts = np.searchsorted(user, np.arange(len(need)))
    rank = np.arange(len(fresh)) - starts[user]
    return np.union1d(pairs, fresh[rank < need[user]])


def _ids(prefix: str, index: npt.NDArray[np.int64], n: int) -> npt.NDArray[np.object_]:
    width = len(str(n))
    names = np.array([f"{prefix}{k + 1:0{width}d}" for k in range(n)], dtype=object)
    return names[index]


__all__ = ["SHAPES", "Shape", "activity", "shaped_log"]
