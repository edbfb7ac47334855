"""Full-ranking evaluation of a scorer or of given lists, batched in torch.

Protocol (``docs/PROTOCOL.md``; Krichene & Rendle, KDD 2020): every user with at least
one test item ranks *all* items except their train items (no sampled negatives).
Ties in score are broken by the lower item index first, so a ranking is a
deterministic function of the scores. Per-user metrics come from
:func:`fedrec.metrics.ranking.metrics_from_hits` and are averaged uniformly over
users; the beyond-accuracy metrics (:mod:`fedrec.metrics.beyond`) come from the
top-10 lists of the same users. MRR uses the rank of the first test item in the full
ranking (no cut-off): one plus the number of candidates that beat it.

The batch size adapts so that ``batch * n_items`` stays under ``MAX_BATCH_FLOATS``
scores; :func:`evaluate_user` runs the very same code on one user, so a device
evaluating itself reports exactly what central evaluation would. On the CPU and a
catalog of :data:`ROW_RANKING_MIN_ITEMS` or more the ranking runs in NumPy row by row
(:func:`_rank_rows`: no dense masks, a partition for the top list); otherwise in torch
over the batch (:func:`_rank_batch`); both give the same lists and ranks (tested).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.data.split import Split
from fedrec.metrics.beyond import coverage, gini, intra_list_diversity, novelty
from fedrec.metrics.ranking import LIST_LENGTH, USER_METRIC_KEYS, metrics_from_hits
from fedrec.training.device import current_device

MAX_BATCH_FLOATS = 50_000_000
ROW_RANKING_MIN_ITEMS = 10_000
"""From this catalog size the CPU ranks row by row in NumPy (:func:`_rank_rows`); below
it the torch batch is faster (one thread, load ~8: 4,500 vs 1,300 users/s at 3,706
items; 160 vs 550 users/s at 27,000 items). Both give the same results (tested)."""
ROW_SAMPLE = 8192
"""Scores :func:`_row_top` samples from a row to bound its top list from below."""
TOP_K = 10
METRIC_KEYS = (
    *USER_METRIC_KEYS,
    "coverage@10",
    "novelty@10",
    "gini@10",
    "diversity@10",
    "users_evaluated",
)

Metrics = dict[str, float | int | None]
Catalog = Split | tuple[sp.csr_matrix, int, npt.NDArray[np.bool_] | None]
ScoreFn = Callable[[npt.NDArray[np.int64]], torch.Tensor]


def _dense_rows(
    matrix: sp.csr_matrix, users: npt.NDArray[np.int64], device: torch.device
) -> torch.Tensor:
    sub = sp.csr_matrix(matrix[users])
    sub.eliminate_zeros()
    rows = np.repeat(np.arange(len(users), dtype=np.int64), np.diff(sub.indptr))
    mask = torch.zeros((len(users), matrix.shape[1]), dtype=torch.bool, device=device)
    cols = torch.from_numpy(sub.indices.astype(np.int64)).to(device)
    mask[torch.from_numpy(rows).to(device), cols] = True
    return mask


def _select_ties(
    masked: torch.Tensor, candidate: torch.Tensor, threshold: torch.Tensor, k: int
) -> torch.Tensor:
    """The top-``k`` set with ties at ``threshold`` resolved by lower index (``n`` pads)."""
    n = masked.shape[1]
    index = torch.arange(n, device=masked.device, dtype=torch.int32)
    above = candidate & (masked > threshold)
    at = candidate & (masked == threshold)
    key = torch.where(above, 2 * n, torch.where(at, n - index, 0))
    key_values, chosen = key.topk(k, dim=1)
    return chosen.masked_fill(key_values == 0, n)


def _top_k(masked: torch.Tensor, candidate: torch.Tensor, k: int) -> torch.Tensor:
    """Top ``k`` candidates by (score desc, index asc); ``-1`` pads short rows."""
    n = masked.shape[1]
    k = min(k, n)
    values, chosen = masked.topk(k, dim=1)
    threshold = values[:, -1:]
    # topk picks arbitrarily among ties at the k-th value, and at -inf maybe train items.
    redo = ((masked >= threshold).count_nonzero(dim=1) > k) | (threshold[:, 0] == -torch.inf)
    if bool(redo.any()):
        chosen[redo] = _select_ties(masked[redo], candidate[redo], threshold[redo], k)
    chosen = chosen.sort(dim=1).values
    chosen_scores = masked.gather(1, chosen.clamp(max=n - 1)).masked_fill(chosen == n, -torch.inf)
    top = chosen.gather(1, chosen_scores.argsort(dim=1, descending=True, stable=True))
    return top.masked_fill(top == n, -1)


def _ties_before(
    masked: torch.Tensor, candidate: torch.Tensor, relevant: torch.Tensor, best: torch.Tensor
) -> torch.Tensor:
    """Candidates scoring exactly ``best`` with a lower index than the best test item."""
    n = masked.shape[1]
    index = torch.arange(n, device=masked.device)
    at = masked == best
    best_index = torch.where(relevant & at, index, n).amin(dim=1, keepdim=True)
    return (candidate & at & (index < best_index)).sum(dim=1)


def _first_hit_rank(
    masked: torch.Tensor, candidate: torch.Tensor, test: torch.Tensor
) -> torch.Tensor:
    """1-based full-ranking rank of each row's best test item (0 when it has none)."""
    relevant = test & candidate
    has_relevant = relevant.any(dim=1)
    best = masked.masked_fill(~relevant, -torch.inf).amax(dim=1, keepdim=True)
    rank = 1 + (masked > best).count_nonzero(dim=1)
    tied = has_relevant & ((masked == best).count_nonzero(dim=1) > 1)
    if bool(tied.any()):
        rank[tied] += _ties_before(masked[tied], candidate[tied], relevant[tied], best[tied])
    return torch.where(has_relevant, rank, 0)


def _rank_batch(
    scores: torch.Tensor, train: torch.Tensor, test: torch.Tensor
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """Hits ``[b, 20]``, top-10 lists ``[b, 10]`` and first-hit ranks ``[b]``."""
    if scores.dtype not in (torch.float32, torch.float64):
        scores = scores.float()
    if bool(torch.isnan(scores).any()):
        raise ValueError("scores contain NaN; the model diverged or score_fn is wrong")
    candidate = ~train
    masked = scores.masked_fill(train, -torch.inf)
    top = _top_k(masked, candidate, LIST_LENGTH)
    hits = test.gather(1, top.clamp(min=0)) & (top >= 0)
    rank = _first_hit_rank(masked, candidate, test)
    top10 = top[:, :TOP_K]
    if top10.shape[1] < TOP_K:
        top10 = torch.nn.functional.pad(top10, (0, TOP_K - top10.shape[1]), value=-1)
    return hits.cpu().numpy(), top10.cpu().numpy(), rank.cpu().numpy().astype(np.int64)


def _row_top(
    row: npt.NDArray[np.floating], train: npt.NDArray[np.int64], k: int
) -> npt.NDArray[np.int64]:
    """:func:`_top_k` of one masked row (train items at ``-inf``), without padding.

    The ``k``-th largest score of a strided sample of the row (:data:`ROW_SAMPLE`
    scores) is reached by at least ``k`` items, so the top ``k`` lie at or above it
    and only those few are partitioned. NumPy's ``argpartition`` near the top of a row
    whose scores mostly tie (an item-kNN row: most items at 0; popularity counts) took
    15-75 ms per 340,000-item row, against about 1 ms for distinct scores.
    """
    n = row.size
    if k >= n:
        chosen = np.setdiff1d(np.arange(n, dtype=np.int64), train)
        return chosen[np.lexsort((chosen, -row[chosen]))].astype(np.int64)
    sample = row[:: max(1, n // max(ROW_SAMPLE, k))]
    floor = -np.partition(-sample, k - 1)[k - 1]  # >= k sampled scores reach it
    above = np.flatnonzero(row > floor)  # never a train item (those are at -inf)
    if above.size >= k:  # the top k lie among them: partition those only
        sub = row[above]
        part = np.argpartition(-sub, k - 1)
        threshold = sub[part[k - 1]]
        if above.size > k and sub[part[k:]].max() == threshold:  # a tie across the cut
            chosen = np.concatenate([above[sub > threshold], above[sub == threshold]])[:k]
        else:
            chosen = above[part[:k]]
    else:  # every item above the floor, then those at it by lower index
        at = np.flatnonzero(row == floor)
        if floor == -np.inf:
            at = at[~np.isin(at, train)]
        chosen = np.concatenate([above, at[: k - above.size]])
    return chosen[np.lexsort((chosen, -row[chosen]))].astype(np.int64)


def _rank_rows(
    scores: npt.NDArray[np.floating], train: sp.csr_matrix, test: sp.csr_matrix
) -> tuple[npt.NDArray[np.bool_], npt.NDArray[np.int64], npt.NDArray[np.int64]]:
    """:func:`_rank_batch` on the CPU in NumPy, one row at a time (same results).

    ``train``/``test``: the batch's rows of the split (sparse). Touches each score a
    few times (a partition, one comparison per count) and never builds a dense mask:
    on one CPU thread it is about 20x faster than the torch path on a 340,000-item
    catalog (torch's boolean reductions and ``masked_fill`` dominated).
    """
    if scores.dtype not in (np.float32, np.float64):
        scores = scores.astype(np.float32)
    if bool(np.isnan(scores).any()):
        raise ValueError("scores contain NaN; the model diverged or score_fn is wrong")
    b, n = scores.shape
    k = min(LIST_LENGTH, n)
    hits = np.zeros((b, k), dtype=bool)
    top10 = np.full((b, TOP_K), -1, dtype=np.int64)
    rank = np.zeros(b, dtype=np.int64)
    for r in range(b):
        tr = train.indices[train.indptr[r] : train.indptr[r + 1]].astype(np.int64)
        te = test.indices[test.indptr[r] : test.indptr[r + 1]].astype(np.int64)
        tr = tr[train.data[train.indptr[r] : train.indptr[r + 1]] != 0]
        te = te[test.data[test.indptr[r] : test.indptr[r + 1]] != 0]
        row = scores[r].copy()
        row[tr] = -np.inf
        top = _row_top(row, tr, k)
        hits[r, : top.size] = np.isin(top, te)
        m = min(top.size, TOP_K)
        top10[r, :m] = top[:m]
        relevant = np.setdiff1d(te, tr)
        if relevant.size == 0:
            continue
        best = row[relevant].max()
        rank[r] = 1 + np.count_nonzero(row > best)
        if np.count_nonzero(row == best) > 1:
            first = relevant[row[relevant] == best].min()
            before = np.count_nonzero(row[:first] == best)
            if best == -np.inf:  # the train items at -inf are no candidates
                before -= np.count_nonzero(np.unique(tr) < first)
            rank[r] += before
    return hits, top10, rank


def _ranks_by_row(device: torch.device, n_items: int) -> bool:
    """Whether to rank with :func:`_rank_rows` (the CPU, a large catalog) over the batch."""
    return device.type == "cpu" and n_items >= ROW_RANKING_MIN_ITEMS


def _row_counts(matrix: sp.csr_matrix) -> npt.NDArray[np.int64]:
    binary = sp.csr_matrix(matrix, copy=True)
    binary.eliminate_zeros()
    counts: npt.NDArray[np.int64] = np.diff(binary.indptr).astype(np.int64)
    return counts


def _summarise(
    per_user: Mapping[str, npt.NDArray[np.float64]],
    top_lists: npt.NDArray[np.int64],
    catalog: Catalog,
) -> Metrics:
    train, n_items, genres = (
        (catalog.train, catalog.n_items, catalog.data.item_genres)
        if isinstance(catalog, Split)
        else catalog
    )
    n_users = len(top_lists)
    out: Metrics = {
        key: float(np.mean(per_user[key])) if n_users else 0.0 for key in USER_METRIC_KEYS
    }
    out["coverage@10"] = coverage(top_lists, n_items)
    out["novelty@10"] = novelty(top_lists, train)
    out["gini@10"] = gini(top_lists, n_items)
    out["diversity@10"] = intra_list_diversity(top_lists, genres)
    out["users_evaluated"] = int(n_users)
    return out


def _pad_lists(
    lists: Sequence[npt.NDArray[np.int64]] | npt.NDArray[np.int64],
) -> npt.NDArray[np.int64]:
    padded = np.full((len(lists), TOP_K), -1, dtype=np.int64)
    for row, items in enumerate(lists):
        items = np.asarray(items, dtype=np.int64)[:TOP_K]
        padded[row, : items.size] = items
    return padded


def aggregate(
    per_user: Sequence[Mapping[str, float]],
    top_lists: Sequence[npt.NDArray[np.int64]] | npt.NDArray[np.int64],
    catalog: Catalog,
) -> Metrics:
    """Average per-user metrics uniformly and add the beyond-accuracy metrics.

    Parameters
    ----------
    per_user
        One dict of :data:`USER_METRIC_KEYS` per evaluated user (e.g. from
        :func:`evaluate_user` on each device).
    top_lists
        The same users' top lists, in the same order; only the first 10 entries are
        used, ``-1`` or a shorter list pads.
    catalog
        The split, or ``(train matrix, n_items, item_genres or None)``.
    """
    if len(per_user) != len(top_lists):
        raise ValueError(f"{len(per_user)} metric dicts but {len(top_lists)} top lists")
    arrays = {
        key: np.array([m[key] for m in per_user], dtype=np.float64) for key in USER_METRIC_KEYS
    }
    return _summarise(arrays, _pad_lists(top_lists), catalog)


def _batch_rows(batch_size: int, n_items: int) -> int:
    return max(1, min(batch_size, MAX_BATCH_FLOATS // max(n_items, 1)))


def evaluate_scores(
    score_fn: ScoreFn,
    split: Split,
    *,
    users: npt.NDArray[np.int64] | None = None,
    batch_size: int = 1024,
    device: str | torch.device | None = None,
) -> Metrics:
    """Evaluate a scorer by full ranking on ``split`` (all :data:`METRIC_KEYS`).

    Parameters
    ----------
    score_fn
        ``score_fn(user_indices) -> Tensor [len(user_indices), n_items]``, higher is
        better. Train items are masked out here; the scorer need not do it.
    split
        The train/test split; metrics average over its users with a test item.
    users
        Evaluate only these users (those without a test item are skipped).
    batch_size
        Users per call of ``score_fn``; lowered so that a batch holds at most
        ``MAX_BATCH_FLOATS`` scores.
    device
        Where the masking and ranking run; ``None``: the command's ``--device``
        (:func:`fedrec.training.device.current_device`, the CPU by default).
    """
    n_items = split.n_items
    n_test = _row_counts(split.test)
    chosen = split.test_users() if users is None else np.asarray(users, dtype=np.int64)
    if chosen.size and (chosen.min() < 0 or chosen.max() >= split.n_users):
        raise ValueError(f"user indices must lie in [0, {split.n_users})")
    chosen = chosen[n_test[chosen] > 0]
    dev = current_device() if device is None else torch.device(device)
    rows = _batch_rows(batch_size, n_items)
    hits, tops, ranks = [], [], []
    for start in range(0, len(chosen), rows):
        batch = chosen[start : start + rows]
        scores = torch.as_tensor(score_fn(batch)).to(dev)
        if tuple(scores.shape) != (len(batch), n_items):
            raise ValueError(
                f"score_fn returned shape {tuple(scores.shape)}, expected ({len(batch)}, {n_items})"
            )
        if _ranks_by_row(dev, n_items):
            batch_hits, batch_top, batch_rank = _rank_rows(
                scores.numpy(), sp.csr_matrix(split.train[batch]), sp.csr_matrix(split.test[batch])
            )
        else:
            train = _dense_rows(split.train, batch, dev)
            test = _dense_rows(split.test, batch, dev)
            batch_hits, batch_top, batch_rank = _rank_batch(scores, train, test)
        hits.append(batch_hits)
        tops.append(batch_top)
        ranks.append(batch_rank)
    if not hits:
        return _summarise({}, np.zeros((0, TOP_K), dtype=np.int64), split)
    per_user = metrics_from_hits(np.concatenate(hits), n_test[chosen], np.concatenate(ranks))
    return _summarise(per_user, np.concatenate(tops), split)


def evaluate_user(
    scores: torch.Tensor,
    train_items: npt.NDArray[np.int64],
    test_items: npt.NDArray[np.int64],
) -> tuple[dict[str, float], npt.NDArray[np.int64]]:
    """Evaluate one user on the device holding their scores.

    Same ranking and maths as :func:`evaluate_scores` for that user.

    Parameters
    ----------
    scores
        ``[n_items]`` scores of every item, higher is better.
    train_items, test_items
        The user's train items (excluded from the ranking) and test items (>= 1).

    Returns
    -------
    tuple
        The per-user metrics (:data:`USER_METRIC_KEYS`) and the top-10 list (``-1``
        pads), to be passed on to :func:`aggregate`.
    """
    test_idx = np.unique(np.asarray(test_items, dtype=np.int64))
    if test_idx.size == 0:
        raise ValueError("evaluate_user needs at least one test item")
    n_items = int(scores.shape[-1])
    if _ranks_by_row(scores.device, n_items):
        rows = [np.asarray(train_items, dtype=np.int64), test_idx]
        train, test = (
            sp.csr_matrix((np.ones(r.size), r, [0, r.size]), shape=(1, n_items)) for r in rows
        )
        hits, top, rank = _rank_rows(scores.reshape(1, n_items).numpy(), train, test)
        per_user = metrics_from_hits(hits, np.array([test_idx.size]), rank)
        return {key: float(value[0]) for key, value in per_user.items()}, top[0]
    masks = torch.zeros((2, n_items), dtype=torch.bool, device=scores.device)
    masks[0, torch.as_tensor(np.asarray(train_items, dtype=np.int64), device=scores.device)] = True
    masks[1, torch.as_tensor(test_idx, device=scores.device)] = True
    hits, top, rank = _rank_batch(scores.reshape(1, n_items), masks[:1], masks[1:])
    per_user = metrics_from_hits(hits, np.array([test_idx.size]), rank)
    return {key: float(value[0]) for key, value in per_user.items()}, top[0]


def _list_hits(
    items: npt.NDArray[np.int64], train: npt.NDArray[np.int64], test: npt.NDArray[np.int64]
) -> tuple[npt.NDArray[np.bool_], int]:
    relevant = np.isin(items, test) & ~np.isin(items, train)
    first = int(np.argmax(relevant)) + 1 if relevant.any() else 0
    row = np.zeros(LIST_LENGTH, dtype=bool)
    row[: min(items.size, LIST_LENGTH)] = relevant[:LIST_LENGTH]
    return row, first


def evaluate_lists(lists: Mapping[int, npt.NDArray[np.int64]], split: Split) -> Metrics:
    """Evaluate given ranked lists (user index -> item indices, best first).

    Lists may have any length; the @k metrics read their first k entries as given
    and MRR looks within the list. A train item in a list is kept and counts as not
    relevant. A test user without a list scores 0; lists of users without a test
    item are ignored.
    """
    users = split.test_users()
    hits = np.zeros((len(users), LIST_LENGTH), dtype=bool)
    ranks = np.zeros(len(users), dtype=np.int64)
    tops = np.full((len(users), TOP_K), -1, dtype=np.int64)
    for row, user in enumerate(users):
        items = np.asarray(lists.get(int(user), np.zeros(0)), dtype=np.int64)
        if items.size and (items.min() < 0 or items.max() >= split.n_items):
            raise ValueError(f"list of user {user} has item indices outside [0, {split.n_items})")
        if np.unique(items).size != items.size:
            raise ValueError(f"list of user {user} repeats an item")
        hits[row], ranks[row] = _list_hits(items, split.train_items(user), split.test_items(user))
        tops[row, : min(items.size, TOP_K)] = items[:TOP_K]
    per_user = metrics_from_hits(hits, _row_counts(split.test)[users], ranks)
    return _summarise(per_user, tops, split)
