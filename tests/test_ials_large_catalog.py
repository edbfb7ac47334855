"""iALS on a large, sparse catalog (issue 20): the shaped ``alpha0`` keeps the factors growing.

With ``nu = 1`` each user's regularization ``lam (s + alpha0 n)`` grows with the catalog;
past the point where the data's leading eigenvalue cannot beat it, ``Q = 0`` is stable
and federated iALS ranks at random (the books shape: NDCG@10 0.00003 against
popularity's 0.0527). :func:`fedrec.federated.shape.ials_alpha0` caps ``alpha0`` there.
"""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from fedrec.federated.presets import federated_preset
from fedrec.federated.shape import (
    IALS_ALPHA0_RANGE,
    IALS_MIN_GROWTH,
    DataShape,
    ials_alpha0,
    ials_growth,
    leading_eigenvalue,
)
from fedrec.metrics.evaluate import evaluate_scores
from fedrec.training.threads import single_threaded
from server.settings import RunSettings, load_split
from simulations.ials_rounds import evaluate, run_rounds

SPARSE_CATALOG = "synthetic:users=400,items=20000,mean=6"
"""400 users, about 5 train items each, 20,000 items: the books shape's sparsity, small."""


def test_leading_eigenvalue_is_sigma1_squared_of_the_binary_matrix() -> None:
    # Prepare: a random sparse matrix with non-unit values (the rule reads the 0/1 pattern)
    rng = np.random.default_rng(0)
    x = sp.random(60, 90, density=0.05, random_state=rng, format="csr") * 3.0
    ones = x.copy()
    ones.data[:] = 1.0

    # Execute
    value = leading_eigenvalue(x)

    # Assert
    assert value == pytest.approx(np.linalg.svd(ones.toarray(), compute_uv=False)[0] ** 2, 1e-6)
    assert leading_eigenvalue(sp.csr_matrix((3, 4))) == 0.0


@pytest.mark.parametrize(
    ("shape", "alpha0"),
    [
        (DataShape(943, 1682, 79_619, 18_796.7), 0.759),  # ml-100k, test split's train
        (DataShape(6040, 3706, 797_758, 162_643.5), 0.3),  # ml-1m
        (DataShape(5000, 10_000, 124_436, 4085.1), 0.33),  # synthetic, 10,000 items (val.)
        (DataShape(605, 3624, 243_660, 62_746.9), 0.948),  # ml-1m's dense cut (val.)
        (DataShape(6040, 3465, 124_999, 4118.9), 0.3),  # ml-1m's sparse cut (val.)
    ],
)
def test_the_cap_leaves_every_measured_set_alone(shape: DataShape, alpha0: float) -> None:
    # Execute / Assert: the users' rule, as before the cap, and the growth above the bound
    assert ials_alpha0(shape) == alpha0
    assert ials_alpha0(dataclasses.replace(shape, leading_eigenvalue=None)) == alpha0
    growth = ials_growth(shape, alpha0)
    assert growth is not None and growth > IALS_MIN_GROWTH


def test_the_books_shape_gets_an_alpha0_its_factors_can_grow_with() -> None:
    # Prepare: the books shape's test-split train (sigma_1^2 measured on it)
    books = DataShape(105_000, 340_000, 942_104, 13_832.9)

    # Execute
    alpha0 = ials_alpha0(books)

    # Assert: below the users' rule's floor, with the growth at the bound (3 digits)
    assert alpha0 < IALS_ALPHA0_RANGE[0]
    assert ials_growth(books, alpha0) == pytest.approx(IALS_MIN_GROWTH, rel=1e-2)
    growth_at_floor = ials_growth(books, IALS_ALPHA0_RANGE[0])
    assert growth_at_floor is not None and growth_at_floor < 0.01 * IALS_ALPHA0_RANGE[0]


def test_on_a_sparse_large_catalog_the_users_alpha0_collapses_and_the_capped_one_learns() -> None:
    # Prepare: 30 rounds of about 50 of the 400 users; popularity on the same test users
    split = load_split(RunSettings(data=SPARSE_CATALOG))
    shape = DataShape.of_train(split.train)
    model, train, server = federated_preset("ials")
    by_users = dataclasses.replace(shape, leading_eigenvalue=None)
    counts = torch.from_numpy(np.asarray(split.train.sum(axis=0), dtype=np.float32).ravel())
    popularity = evaluate_scores(lambda u: counts.expand(len(u), -1), split)["ndcg@10"]
    ndcg = {}

    # Execute (one BLAS thread: threads cost more than they save at this size)
    with single_threaded():
        for name, alpha0 in (("users", ials_alpha0(by_users)), ("capped", ials_alpha0(shape))):
            cfg = dataclasses.replace(model, alpha0=alpha0)
            items = run_rounds(
                split, cfg, train, server, rounds=30, clients_per_round=50, fast=True
            )
            ndcg[name] = evaluate(split, items, cfg)["ndcg@10"]

    # Assert: the users' rule (alpha0 1.17) ranks at random, the cap (0.039) beats popularity
    assert ials_alpha0(shape) < 0.1 < ials_alpha0(by_users)
    assert ndcg["users"] < 0.1 * popularity
    assert ndcg["capped"] > popularity
