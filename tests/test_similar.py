"""Similar items and item vectors: planted neighbours, and one contract over model kinds."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.models.base import get_item_arrays, item_side
from fedrec.models.config import ModelConfig
from fedrec.models.registry import MODEL_KINDS, build_model, model_class
from fedrec.recommend import item_vectors, similar_items


def test_similar_items_ranks_planted_neighbours_and_excludes_the_item() -> None:
    # Prepare: item 1 points like item 0 (scaled), item 2 at 45 degrees, item 3 opposite.
    vectors = np.array([[1.0, 0.0], [3.0, 0.0], [1.0, 1.0], [-1.0, 0.0], [0.0, 0.0]])

    # Execute
    result = similar_items(vectors, 0, k=10)

    # Assert: cosine order, self excluded, zero vector has cosine 0, opposite last.
    assert [j for j, _ in result] == [1, 2, 4, 3]
    np.testing.assert_allclose([w for _, w in result], [1.0, np.sqrt(0.5), 0.0, -1.0])


def test_similar_items_breaks_ties_by_lower_index_and_truncates() -> None:
    vectors = np.array([[1.0, 0.0], [0.0, 1.0], [0.0, 2.0], [0.0, 3.0]])

    result = similar_items(vectors, 0, k=2)

    assert result == [(1, 0.0), (2, 0.0)]


def test_similar_items_rejects_an_unknown_item() -> None:
    with pytest.raises(ValueError, match="item indices"):
        similar_items(np.eye(3), 3)


@pytest.fixture(params=MODEL_KINDS)
def kind(request: pytest.FixtureRequest) -> str:
    return str(request.param)


def test_item_vectors_picks_the_named_item_matrix_of_every_kind(kind: str) -> None:
    # Prepare: a real model's item-side arrays in upload order.
    cfg = ModelConfig(kind=kind, dim=8, hidden=16)
    model = build_model(cfg, n_items=30, n_users=2, seed=0)
    arrays = get_item_arrays(model)

    # Execute
    vectors = item_vectors(kind, arrays)

    # Assert: rows are items, and the matrix is exactly the named parameter.
    expected = item_side(model)[model_class(kind).ITEM_VECTORS].detach().numpy()
    assert vectors.shape[0] == 30
    np.testing.assert_array_equal(vectors, expected.astype(np.float64))


def test_item_vectors_rejects_unknown_kind_and_wrong_array_count() -> None:
    with pytest.raises(ConfigError, match=r"model\.kind"):
        item_vectors("svd", [np.zeros((3, 2), dtype=np.float32)])
    with pytest.raises(ConfigError, match="item-side arrays"):
        item_vectors("mf", [np.zeros((3, 2), dtype=np.float32)])
