"""A small synthetic interaction log with planted structure and known ground truth.

Design rule: the data must reward a collaborative model, so that tests can tell a
learning recommender from a popularity baseline. Users and items get Gaussian latent
factors drawn around a few shared cluster centres (the planted signal); items also get
a Zipf-like popularity bias (Zipf's law, as in real catalogues). Each user samples items
without replacement with probability proportional to ``exp(affinity + bias)`` (the
Gumbel-top-k trick, Kool et al., ICML 2019). Item genres are derived from clusters.
"""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from fedrec.data.interactions import Interactions

N_CLUSTERS = 4
_MIN_PER_USER = 5
# Strength of the planted signal against the popularity bias: chosen so that on the
# defaults item-kNN scores about 0.5 NDCG@10 and popularity about 0.3.
_SIGNAL = 5.0
_ZIPF = 0.8
_BLOCK_FLOATS = 4_000_000  # scores per block of users (32 MB of float64)
_START = 1_600_000_000  # Unix seconds of the first synthetic interaction


def synthetic(
    n_users: int = 300,
    n_items: int = 200,
    dim: int = 8,
    mean_interactions: int = 30,
    seed: int = 0,
) -> Interactions:
    """Generate a deterministic synthetic log; ground truth is kept in ``extra``.

    ``extra`` holds ``user_factors`` ``[n_users, dim]``, ``item_factors``
    ``[n_items, dim]``, ``item_popularity`` ``[n_items]``, ``user_cluster`` and
    ``item_cluster``; ``user_factors @ item_factors.T + item_popularity`` are exactly
    the log-weights interactions were sampled with. Original ids are 1-based (index + 1), so
    index/id confusions show up in tests. Every user has at least 5 interactions.
    """
    rng = np.random.default_rng(seed)
    centres = rng.normal(0.0, 1.0, (N_CLUSTERS, dim))
    user_cluster = rng.integers(0, N_CLUSTERS, n_users)
    item_cluster = rng.integers(0, N_CLUSTERS, n_items)
    scale = np.sqrt(_SIGNAL / dim)  # affinities of order _SIGNAL whatever dim is
    user_f = scale * (centres[user_cluster] + rng.normal(0.0, 0.5, (n_users, dim)))
    item_f = scale * (centres[item_cluster] + rng.normal(0.0, 0.5, (n_items, dim)))
    ranks = rng.permutation(n_items) + 1
    popularity = -_ZIPF * np.log(ranks)  # Zipf-like: weight of rank r is r^-_ZIPF
    sizes = np.clip(rng.poisson(mean_interactions, n_users), _MIN_PER_USER, max(n_items // 2, 5))
    sizes = np.minimum(sizes, n_items)
    item, affinity = _sample_items(user_f, item_f, popularity, sizes, rng)
    user = np.repeat(np.arange(n_users), sizes)
    rating = np.clip(np.round(3.0 + (affinity - affinity.mean()) / affinity.std()), 1, 5)
    stamp = _START + np.sort(rng.integers(0, 365 * 86_400, len(user)))
    order = rng.permutation(len(user))  # a log in time order, users interleaved
    return Interactions(
        user=user[order].astype(np.int64),
        item=item[order].astype(np.int64),
        user_ids=np.arange(1, n_users + 1, dtype=np.int64),
        item_ids=np.arange(1, n_items + 1, dtype=np.int64),
        rating=rating[order].astype(np.float64),
        timestamp=stamp.astype(np.int64),
        item_genres=_genres(item_cluster, rng),
        item_titles=tuple(f"Item {k + 1}" for k in range(n_items)),
        genre_names=tuple(f"genre-{c}" for c in range(N_CLUSTERS + 2)),
        source=f"synthetic(users={n_users},items={n_items},dim={dim},"
        f"mean={mean_interactions},seed={seed})",
        extra={
            "user_factors": user_f,
            "item_factors": item_f,
            "item_popularity": popularity,
            "user_cluster": user_cluster,
            "item_cluster": item_cluster,
        },
    )


def _sample_items(
    user_f: npt.NDArray[np.float64],
    item_f: npt.NDArray[np.float64],
    popularity: npt.NDArray[np.float64],
    sizes: npt.NDArray[np.int64],
    rng: np.random.Generator,
) -> tuple[npt.NDArray[np.int64], npt.NDArray[np.float64]]:
    """Each user's ``sizes[u]`` items (Gumbel-top-k) and their log-weights, user by user.

    Users are processed in blocks of about ``_BLOCK_FLOATS`` scores, so memory does not
    grow with ``n_users * n_items`` (100k users x 27k items would need ~22 GB at once);
    the Gumbel draws come from ``rng`` in the same order as one ``[n_users, n_items]``
    draw, so the log is the same whatever the block size.
    """
    n_users, n_items = len(user_f), len(item_f)
    rows = max(1, _BLOCK_FLOATS // max(n_items, 1))
    items: list[npt.NDArray[np.int64]] = []
    weights: list[npt.NDArray[np.float64]] = []
    for start in range(0, n_users, rows):
        logits = user_f[start : start + rows] @ item_f.T + popularity
        noisy = -(logits + rng.gumbel(size=logits.shape))
        size = sizes[start : start + rows]
        k = int(size.max()) if len(size) else 0
        top = np.argpartition(noisy, k - 1, axis=1)[:, :k] if k < n_items else None
        if top is None:
            top = np.broadcast_to(np.arange(n_items), noisy.shape)
        order = np.take_along_axis(top, np.argsort(np.take_along_axis(noisy, top, 1), 1), 1)
        for r, n in enumerate(size):
            items.append(order[r, :n])
            weights.append(logits[r, order[r, :n]])
    return np.concatenate(items).astype(np.int64), np.concatenate(weights)


def _genres(item_cluster: npt.NDArray[np.int64], rng: np.random.Generator) -> npt.NDArray[np.bool_]:
    """Each item has its cluster's genre, and with probability 0.3 one of two extra genres."""
    n = len(item_cluster)
    genres = np.zeros((n, N_CLUSTERS + 2), dtype=np.bool_)
    genres[np.arange(n), item_cluster] = True
    extra = rng.random(n) < 0.3
    genres[np.flatnonzero(extra), N_CLUSTERS + rng.integers(0, 2, int(extra.sum()))] = True
    return genres
