"""The item-kNN reference on large catalogs: the fast neighbour computation keeps the
former one's neighbours and values exactly, on sets built to have many ties, and the
row ranking that partitions only the scores above a sampled floor ranks as before."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest
import scipy.sparse as sp
import torch

import fedrec.baselines.itemknn as itemknn
import fedrec.metrics.evaluate as evaluate_module
from fedrec.baselines.base import as_binary_csr


def _former_neighbours(train: sp.csr_matrix, k: int, block_pairs: int) -> sp.csr_matrix:
    """``sparse_cosine_neighbours`` as it was (commit c85ee1b): three-key lexsort per block."""
    x = as_binary_csr(train)
    n_items = x.shape[1]
    counts = np.asarray(x.sum(axis=0), dtype=np.float64).ravel()
    norm = sp.diags((1.0 / np.sqrt(np.maximum(counts, 1.0))).astype(np.float32))
    xn = sp.csr_matrix(x @ norm)
    xt = sp.csr_matrix(xn.T)
    per_user = np.diff(x.indptr).astype(np.int64)
    work = np.asarray(xt.astype(bool).astype(np.int64) @ per_user).ravel()
    parts, start = [], 0
    while start < n_items:
        stop = start + 1 + int(np.searchsorted(np.cumsum(work[start:]), block_pairs))
        stop = min(max(stop, start + 1), n_items)
        rows = sp.csr_matrix(xt[start:stop] @ xn)
        rows.sum_duplicates()
        row = np.repeat(np.arange(rows.shape[0]), np.diff(rows.indptr))
        col, val = rows.indices.astype(np.int64), rows.data
        keep = (col != start + row) & (val != 0)
        row, col, val = row[keep], col[keep], val[keep]
        order = np.lexsort((col, -val, row))
        row, col, val = row[order], col[order], val[order]
        first = np.searchsorted(row, np.arange(rows.shape[0]))
        top = np.arange(len(row)) - first[row] < k
        parts.append(sp.csr_matrix((val[top], (row[top], col[top])), shape=rows.shape))
        start = stop
    return sp.csr_matrix(sp.vstack(parts, format="csr"), dtype=np.float32)


def _tied_log(n_users: int, n_items: int, seed: int) -> sp.csr_matrix:
    """A binary log with heavy-tailed items and many users of one or two items, so
    that many co-occurrence values tie (the case the tie-break decides)."""
    rng = np.random.default_rng(seed)
    sizes = np.minimum(rng.zipf(1.6, n_users), n_items // 2)
    p = 1.0 / np.arange(1, n_items + 1) ** 0.9
    p /= p.sum()
    rows, cols = [], []
    for u, size in enumerate(sizes):
        items = rng.choice(n_items, size=size, replace=False, p=p)
        rows.extend([u] * size)
        cols.extend(items.tolist())
    return sp.csr_matrix(
        (np.ones(len(rows), dtype=np.float32), (rows, cols)), shape=(n_users, n_items)
    )


def _assert_same(a: sp.csr_matrix, b: sp.csr_matrix) -> None:
    a, b = sp.csr_matrix(a), sp.csr_matrix(b)
    a.sort_indices()
    b.sort_indices()
    assert a.shape == b.shape and a.dtype == b.dtype == np.float32
    np.testing.assert_array_equal(a.indptr, b.indptr)
    np.testing.assert_array_equal(a.indices, b.indices)
    np.testing.assert_array_equal(a.data, b.data)  # bit for bit, not approximately


@pytest.mark.parametrize(("k", "block_pairs"), [(1, 500), (5, 3_000), (20, 20_000_000)])
def test_neighbours_equal_the_former_computation_with_ties(k: int, block_pairs: int) -> None:
    # Prepare: 600 users, 400 items, heavy ties among rare items
    train = _tied_log(600, 400, seed=k)
    # Execute
    new = itemknn.sparse_cosine_neighbours(train, k, block_pairs=block_pairs)
    old = _former_neighbours(train, k, block_pairs)
    # Assert: the same neighbours (ties by lower index) and the same float32 values
    _assert_same(new, old)
    assert np.all(np.diff(new.indptr) <= k) and new.diagonal().sum() == 0


def test_rows_of_chosen_items_equal_the_full_matrix_and_give_the_same_scores() -> None:
    # Prepare: the items of a few users
    train = _tied_log(500, 300, seed=7)
    users = np.array([3, 10, 11, 250, 499])
    items: npt.NDArray[np.int64] = np.unique(train[users].indices).astype(np.int64)
    full = itemknn.sparse_cosine_neighbours(train, 10)
    # Execute
    part = itemknn.sparse_cosine_neighbours(train, 10, items=items, block_pairs=700)
    # Assert: those rows equal, every other row empty, the users' scores equal
    others = np.setdiff1d(np.arange(300), items)
    _assert_same(part[items], full[items])
    assert part[others].nnz == 0
    np.testing.assert_array_equal(
        (as_binary_csr(train)[users] @ part).toarray(),
        (as_binary_csr(train)[users] @ full).toarray(),
    )


@pytest.mark.parametrize("group_rows", [None, 1, 7])
def test_packed_key_and_lexsort_fallback_select_the_same_entries(group_rows: int | None) -> None:
    # Prepare: a product block whose values lie outside (0, 2): the fallback's case;
    # small groups of rows stand for the 16,384-row groups of a 340k-item catalog
    rng = np.random.default_rng(0)
    block = sp.random(40, 90, density=0.3, random_state=1, format="csr", dtype=np.float32)
    block.data = rng.integers(1, 4, block.nnz).astype(np.float32) / 8  # many ties
    rows = np.arange(10, 50, dtype=np.int64)
    # Execute
    packed = itemknn._sparse_top_k(block, rows, 6, group_rows=group_rows)
    scaled = sp.csr_matrix(block * np.float32(16))  # values up to 6: the lexsort path
    fallback = itemknn._sparse_top_k(scaled, rows, 6)
    # Assert
    _assert_same(packed * np.float32(16), fallback)


def test_items_outside_the_catalog_are_refused() -> None:
    # Prepare
    train = _tied_log(50, 30, seed=1)
    # Execute / Assert
    with pytest.raises(ValueError, match="items must lie in"):
        itemknn.sparse_cosine_neighbours(train, 5, items=np.array([0, 30]))


@pytest.mark.parametrize("row_sample", [1, 7, 64, 8192])
@pytest.mark.parametrize("kind", ["sparse", "levels", "distinct"])
def test_row_ranking_from_a_sampled_floor_equals_the_torch_batch(
    row_sample: int, kind: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 30 users x 2,000 items; sparse rows (most items tie at 0, the item-kNN
    # case), few levels (counts), or distinct scores; some candidates at -inf
    rng = np.random.default_rng(len(kind) * row_sample)
    n, users = 2000, 30
    if kind == "sparse":
        scores = np.zeros((users, n), dtype=np.float32)
        for r in range(users):
            scores[r, rng.choice(n, int(rng.integers(0, 60)), replace=False)] = rng.integers(1, 4)
    elif kind == "levels":
        scores = rng.integers(0, 4, size=(users, n)).astype(np.float32)
    else:
        scores = rng.standard_normal((users, n)).astype(np.float32)
    scores[::5, ::2] = -np.inf
    train = [
        np.sort(rng.choice(n, int(rng.integers(0, 1990)), replace=False)) for _ in range(users)
    ]
    test = [rng.choice(np.setdiff1d(np.arange(n), t), 3, replace=False) for t in train]
    csr = [
        sp.csr_matrix(
            (
                np.ones(sum(len(r) for r in rows)),
                np.concatenate(rows),
                np.cumsum([0] + [len(r) for r in rows]),
            ),
            shape=(users, n),
        )
        for rows in (train, test)
    ]
    monkeypatch.setattr(evaluate_module, "ROW_SAMPLE", row_sample)
    # Execute
    ours = evaluate_module._rank_rows(scores, csr[0], csr[1])
    theirs = evaluate_module._rank_batch(
        torch.from_numpy(scores), *(torch.from_numpy(m.toarray() > 0) for m in csr)
    )
    # Assert: top lists, hits and first-hit ranks identical, ties by lower index
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


def test_reference_on_a_user_sample_equals_the_full_similarity(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a "large" catalog by lowering both caps; a sample of the test users
    from fedrec.baselines import ItemKNN, evaluate_baseline, reference_metrics
    from fedrec.data import random_split, resolve_data

    split = random_split(resolve_data("synthetic:users=300,items=200,seed=3"), seed=0)
    monkeypatch.setattr(itemknn, "DENSE_ROWS_MAX_ITEMS", 100)
    sample = split.test_users()[::7]
    # Execute: the reference computes only the sample's item rows
    refs = reference_metrics(split, max_ease_items=100, users=sample)
    full = evaluate_baseline(ItemKNN(20), split, users=sample)
    # Assert: every metric equal
    assert refs["itemknn"] == full
    assert refs["itemknn"]["users_evaluated"] == len(sample)


def test_report_names_the_item_knn_reference_and_its_limit(tmp_path: Path) -> None:
    # Prepare: a run's metrics whose references are popularity and item-kNN (large catalog)
    from simulations.report import _accuracy_section

    refs = {"popularity": {"ndcg@10": 0.05}, "itemknn": {"ndcg@10": 0.006}}
    config = {"settings": {"model": "mf", "privacy.mode": "none"}}
    # Execute
    lines = _accuracy_section(tmp_path, config, {"ndcg@10": 0.04}, refs)
    # Assert: both comparisons, and the line that says what item-kNN is and where it falls
    text = "\n".join(lines)
    assert "against popularity: NDCG@10 0.0400 vs 0.0500 (80% of it)" in text
    assert "EASE: skipped" in text and "item-kNN (cosine, 20 neighbours" in text
    assert "rank below popularity" in text
