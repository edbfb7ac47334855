"""Evaluation in batches (issue 20): the NumPy row ranking equals the torch batch ranking.

:func:`fedrec.metrics.evaluate._rank_rows` (the CPU path of ``evaluate_scores`` and
``evaluate_user``) must give the torch path's top lists, hits and first-hit ranks,
ties by lower index included, and the known answers of a hand-made case.
"""

from __future__ import annotations

import numpy as np
import pytest
import scipy.sparse as sp
import torch

import fedrec.metrics.evaluate as evaluate_module
from fedrec.data import random_split, resolve_data
from fedrec.metrics.evaluate import _rank_batch, _rank_rows, evaluate_scores, evaluate_user


def _masks(rows: list[np.ndarray], n: int) -> tuple[sp.csr_matrix, torch.Tensor]:
    indptr = np.cumsum([0] + [len(r) for r in rows])
    indices = np.concatenate(rows) if rows else np.zeros(0, dtype=np.int64)
    csr = sp.csr_matrix((np.ones(len(indices)), indices, indptr), shape=(len(rows), n))
    return csr, torch.from_numpy(csr.toarray() > 0)


@pytest.mark.parametrize("n_items", [5, 20, 21, 300])
@pytest.mark.parametrize("levels", [3, 1000])  # few levels: many ties at every cut
def test_numpy_rows_rank_as_the_torch_batch(n_items: int, levels: int) -> None:
    # Prepare: 40 users, integer scores (exact ties), random train and test items
    rng = np.random.default_rng(n_items * levels)
    scores = rng.integers(0, levels, size=(40, n_items)).astype(np.float32)
    scores[::4, ::3] = -np.inf  # candidates at -inf tie with the masked train items
    train, test = [], []
    for _ in range(40):
        items = rng.permutation(n_items)
        n_train = int(rng.integers(0, n_items))  # up to all but one item
        train.append(np.sort(items[:n_train]))
        test.append(np.sort(items[n_train : n_train + int(rng.integers(1, 4))]))
    train_csr, train_mask = _masks(train, n_items)
    test_csr, test_mask = _masks(test, n_items)
    # Execute
    ours = _rank_rows(scores, train_csr, test_csr)
    theirs = _rank_batch(torch.from_numpy(scores), train_mask, test_mask)
    # Assert: hits, top-10 lists and ranks identical
    for a, b in zip(ours, theirs, strict=True):
        np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize("rows", [True, False], ids=["numpy-rows", "torch-batch"])
def test_known_answer_with_ties_and_train_items(
    rows: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 6 items; item 1 is a train item; items 2 and 4 tie with test item 4
    monkeypatch.setattr(evaluate_module, "ROW_RANKING_MIN_ITEMS", 1 if rows else 10**9)
    scores = torch.tensor([0.1, 9.0, 0.5, 0.7, 0.5, 0.2])
    # Execute
    metrics, top = evaluate_user(scores, np.array([1]), np.array([4]))
    # Assert: ranking 3 (0.7), 2 (0.5, lower index), 4, 5, 0: the test item is third
    assert top.tolist() == [3, 2, 4, 5, 0, -1, -1, -1, -1, -1]
    assert metrics["mrr"] == pytest.approx(1 / 3)
    assert metrics["hr@10"] == 1.0
    assert metrics["ndcg@10"] == pytest.approx(1 / np.log2(4))


def test_evaluate_scores_same_metrics_on_cpu_rows_and_torch_batch(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a popularity-like scorer with many ties on a small split
    split = random_split(resolve_data("synthetic:users=120,items=90,seed=4"), seed=0)
    counts = torch.from_numpy(np.asarray(split.train.sum(axis=0)).ravel() // 3).float()

    def score(users: np.ndarray) -> torch.Tensor:
        return counts.repeat(len(users), 1)

    def torch_path(
        scores: np.ndarray, train: sp.csr_matrix, test: sp.csr_matrix
    ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        masks = [torch.from_numpy(m.toarray() > 0) for m in (train, test)]
        return _rank_batch(torch.from_numpy(scores), masks[0], masks[1])

    monkeypatch.setattr(evaluate_module, "ROW_RANKING_MIN_ITEMS", 1)  # the rows at 90 items
    # Execute: the NumPy rows, then the torch batch in their place
    rows = evaluate_scores(score, split, batch_size=16)
    monkeypatch.setattr(evaluate_module, "_rank_rows", torch_path)
    batch = evaluate_scores(score, split, batch_size=16)
    # Assert
    assert rows["users_evaluated"] == len(split.test_users())
    assert rows == batch
