"""MF's untrained item rows stay out of a never-trained user's ranking (issue 20).

On a large catalog most item rows are never trained in a run. Their initial vectors
must be small against the user scale, or a fresh user's refit on such rows (and the
ranking that follows) fits noise, and random untrained items outrank the learned head.
"""

from __future__ import annotations

import numpy as np

from fedrec.federated.client import client_scores
from fedrec.models import mf
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays

N_ITEMS, HEAD = 20_000, 40
MODEL = ModelConfig(kind="mf")
TRAIN = LocalTrainConfig()


def test_item_rows_start_smaller_than_user_vectors() -> None:
    # Prepare / Execute
    model = build_model(MODEL, 5_000, 200, seed=0)
    # Assert: items at ITEM_INIT_SCALE * init_std, users at init_std
    item_std = float(model.item_emb.weight.detach().std())
    user_std = float(model.user_emb.weight.detach().std())
    assert abs(item_std - mf.ITEM_INIT_SCALE * MODEL.init_std) < 0.05 * item_std
    assert abs(user_std - MODEL.init_std) < 0.05 * user_std
    assert mf.ITEM_INIT_SCALE <= 0.1


def test_fresh_user_on_untrained_rows_ranks_the_learned_head() -> None:
    # Prepare: a catalog at its initialization except a learned head (item bias 0.2,
    # the mean learned bias of the books shape's 200 most popular items after 20 rounds),
    # and a never-trained user whose train items are all untrained rows
    q, b = init_item_arrays(MODEL, N_ITEMS, seed=0)
    b = b.copy()
    b[:HEAD] = 0.2
    train_items = np.arange(1_000, 1_010, dtype=np.int64)
    # Execute: the evaluation's refit from the fresh vector, then the full ranking
    scores = client_scores(MODEL, TRAIN, [q, b], None, train_items, seed=7).numpy()
    scores[train_items] = -np.inf
    top = np.argsort(-scores, kind="stable")[:10]
    # Assert: the top-10 is the learned head, not untrained rows' noise (with the item
    # rows at the users' scale, 8 of the 10 were untrained rows)
    assert set(top.tolist()) <= set(range(HEAD))
