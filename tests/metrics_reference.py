"""A slow, obviously-correct pure-Python reference of the evaluation protocol.

Loops and ``sorted`` only, straight from the definitions in ``docs/PROTOCOL.md``;
the tests compare the batched torch evaluator against it. Also builds small
:class:`~fedrec.data.split.Split` objects from pairs.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np
import scipy.sparse as sp

from fedrec.data.interactions import Interactions
from fedrec.data.split import Split

Pairs = Sequence[tuple[int, int]]


def make_split(
    train: Pairs,
    test: Pairs,
    n_users: int,
    n_items: int,
    genres: np.ndarray | None = None,
    user_ids: np.ndarray | None = None,
    item_ids: np.ndarray | None = None,
) -> Split:
    """A Split from (user, item) index pairs; ids default to the indices."""

    def matrix(pairs: Pairs) -> sp.csr_matrix:
        rows = [u for u, _ in pairs]
        cols = [i for _, i in pairs]
        m = sp.csr_matrix(
            (np.ones(len(pairs), dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
        )
        m.sum_duplicates()
        m.data[:] = 1.0
        return m

    everything = list(train) + list(test)
    data = Interactions(
        user=np.array([u for u, _ in everything], dtype=np.int64),
        item=np.array([i for _, i in everything], dtype=np.int64),
        user_ids=np.arange(n_users, dtype=np.int64) if user_ids is None else user_ids,
        item_ids=np.arange(n_items, dtype=np.int64) if item_ids is None else item_ids,
        item_genres=genres,
        source="synthetic(test)",
    )
    return Split(
        train=matrix(train),
        test=matrix(test),
        data=data,
        train_rows=np.arange(len(train), dtype=np.int64),
    )


def list_metrics(ranking: Sequence[int], train: set[int], test: set[int]) -> dict[str, float]:
    """Per-user metrics of one ranked list; a train item in it is not relevant."""
    rel = [item in test and item not in train for item in ranking]
    ideal = sum(1 / math.log2(r + 1) for r in range(1, min(len(test), 10) + 1))
    dcg = sum(1 / math.log2(r + 1) for r in range(1, 11) if r <= len(rel) and rel[r - 1])
    hits10 = sum(rel[:10])
    precision = hits10 / 10
    recall10 = hits10 / min(len(test), 10)
    first = next((r for r in range(1, len(rel) + 1) if rel[r - 1]), None)
    return {
        "ndcg@10": dcg / ideal,
        "recall@20": sum(rel[:20]) / min(len(test), 20),
        "hr@10": 1.0 if hits10 else 0.0,
        "precision@10": precision,
        "f1@10": 0.0 if hits10 == 0 else 2 * precision * recall10 / (precision + recall10),
        "mrr": 0.0 if first is None else 1 / first,
    }


def full_ranking(scores: Sequence[float], train: set[int]) -> list[int]:
    """All non-train items by score descending, lower index first on ties."""
    return sorted((i for i in range(len(scores)) if i not in train), key=lambda i: (-scores[i], i))


def beyond(top_lists: list[list[int]], split: Split) -> dict[str, float | None]:
    """Coverage, novelty, Gini and diversity of top-10 lists, by their definitions."""
    n_items = split.n_items
    train_sets = [set(split.train_items(u).tolist()) for u in range(split.n_users)]
    n_train_users = sum(1 for s in train_sets if s)
    entries = [i for lst in top_lists for i in lst[:10]]
    novelty = 0.0
    if entries:
        owners = [max(sum(1 for s in train_sets if i in s), 1) for i in entries]
        novelty = sum(-math.log2(c / n_train_users) for c in owners) / len(entries)
    exposure = [entries.count(i) for i in range(n_items)]
    total = sum(exposure)
    mad = sum(abs(a - b) for a in exposure for b in exposure)
    return {
        "coverage@10": len(set(entries)) / n_items,
        "novelty@10": novelty,
        "gini@10": mad / (2 * n_items * total) if total else 0.0,
        "diversity@10": _diversity(top_lists, split.data.item_genres),
    }


def _diversity(top_lists: list[list[int]], genres: np.ndarray | None) -> float | None:
    if genres is None:
        return None
    per_list = []
    for lst in top_lists:
        items = lst[:10]
        pairs = [(a, b) for a in items for b in items if a != b]
        if pairs:
            per_list.append(sum(1 - _cosine(genres[a], genres[b]) for a, b in pairs) / len(pairs))
    return sum(per_list) / len(per_list) if per_list else 0.0


def _cosine(a: np.ndarray, b: np.ndarray) -> float:
    na = math.sqrt(sum(float(x) ** 2 for x in a))
    nb = math.sqrt(sum(float(x) ** 2 for x in b))
    if na == 0 or nb == 0:
        return 0.0
    return sum(float(x) * float(y) for x, y in zip(a, b, strict=True)) / (na * nb)


def _average(per_user: list[dict[str, float]], top_lists: list[list[int]], split: Split) -> dict:
    keys = ("ndcg@10", "recall@20", "hr@10", "precision@10", "f1@10", "mrr")
    n = len(per_user)
    out: dict[str, float | int | None] = {
        k: sum(m[k] for m in per_user) / n if n else 0.0 for k in keys
    }
    out.update(beyond(top_lists, split))
    out["users_evaluated"] = n
    return out


def evaluate_scores(scores: np.ndarray, split: Split) -> dict:
    """Full-ranking evaluation of a dense ``[n_users, n_items]`` score matrix."""
    per_user, top_lists = [], []
    for u in split.test_users().tolist():
        train = set(split.train_items(u).tolist())
        ranking = full_ranking(scores[u].tolist(), train)
        per_user.append(list_metrics(ranking, train, set(split.test_items(u).tolist())))
        top_lists.append(ranking[:10])
    return _average(per_user, top_lists, split)


def evaluate_lists(lists: dict[int, list[int]], split: Split) -> dict:
    """Evaluation of given lists: a test user without a list scores 0."""
    per_user, top_lists = [], []
    for u in split.test_users().tolist():
        ranking = list(lists.get(u, []))
        train = set(split.train_items(u).tolist())
        per_user.append(list_metrics(ranking, train, set(split.test_items(u).tolist())))
        top_lists.append(ranking[:10])
    return _average(per_user, top_lists, split)
