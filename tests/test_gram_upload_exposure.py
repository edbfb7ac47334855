"""What the server sees of federated EASE's uploads: each user's exact item set (issue 14, item 6).

docs/PRIVACY.md and docs/GRAM_EASE.md say that a Gram upload hands the server the
user's item set and its size, in ``none`` and in ``central`` mode, and that only the
release is protected. These tests play that server: they read the uploads the devices
really sent through Flower, and recover every user's items exactly. They fail if the
upload stops revealing them, so the docs must then be changed too.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import numpy.typing as npt
import pytest

from fedrec.federated import gram
from server.gram_app import GramSettings, run_gram_server
from server.settings import load_split
from simulations.inprocess import RecordingGrid

DATA = "synthetic:users=25,items=20,dim=4,mean=6,seed=4"


def read_upload(
    upload: npt.NDArray[np.float32], n_items: int
) -> tuple[npt.NDArray[np.int64], float, npt.NDArray[np.float64]]:
    """The server's reading of one upload: item set, item count, and the whole matrix."""
    matrix = gram.unpack(upload.astype(np.float64), n_items)
    diagonal = np.diag(matrix)
    items = np.flatnonzero(diagonal > 0)
    count = float(len(items))
    return items, count, matrix


@pytest.mark.parametrize("mode", ["none", "central"])
def test_the_server_reads_each_users_exact_item_set_off_one_upload(
    mode: str, tmp_path: Path
) -> None:
    # Prepare: a real one-round run through Flower's messages, uploads recorded
    flat = {"data": DATA, "run-dir": str(tmp_path), "model": "ease", "privacy": mode}
    if mode == "central":
        flat |= {"privacy.target-epsilon": 8.0, "privacy.insecure-noise-seed": 1}
    settings = GramSettings.from_flat(flat)
    split = load_split(settings.base)
    grid = RecordingGrid(split.n_users)
    # Execute
    run_gram_server(grid, settings)
    # Assert: from one upload alone, the user's items, their number and x x^T (scaled)
    assert len(grid.uploads) == split.n_users
    for reply in grid.uploads:
        user = grid.partition[reply.metadata.src_node_id]
        (upload,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
        items, count, matrix = read_upload(upload, split.n_items)
        truth = np.unique(split.train_items(user))
        np.testing.assert_array_equal(items, truth)
        x = np.zeros(split.n_items)
        x[truth] = 1.0
        if mode == "central":  # diagonal x / |x|^2: the count is 1 / any non-zero entry
            assert 1.0 / np.diag(matrix)[truth] == pytest.approx(np.full(len(truth), count))
            np.testing.assert_allclose(matrix, np.outer(x, x) / len(truth), atol=1e-6)
        else:  # x x^T itself: diagonal x, off-diagonal the user's co-occurrences
            np.testing.assert_allclose(matrix, np.outer(x, x), atol=1e-6)
        assert count == len(truth)


def test_the_noise_is_only_on_the_release_not_on_an_upload() -> None:
    # Prepare: two users whose item sets differ by one item
    a = gram.client_contribution([1, 4, 7], 10, normalize=True)
    b = gram.client_contribution([1, 4], 10, normalize=True)
    # Execute: the same user uploads twice
    again = gram.client_contribution([7, 4, 1, 4], 10, normalize=True)
    # Assert: uploads are deterministic functions of the item set (no device noise),
    # and distinct sets give distinct uploads
    np.testing.assert_array_equal(a, again)
    assert not np.array_equal(a, b)
