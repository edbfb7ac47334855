"""Large catalogs (issue 20): the shaped generator and the memory bounds by design.

Each bound is checked where it would break: the aggregation must hold one upload at a
time yet give the former mean exactly on small cohorts; the harness must not create a
store for a user it only evaluates, with the same metrics; the item-kNN reference that
replaces EASE on large catalogs keeps the dense path's similarities.
"""

from __future__ import annotations

import time
from collections.abc import Iterable, Iterator
from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch
from flwr.app import Message

import fedrec.baselines.itemknn as itemknn
from clients.device_round import RoundConfig
from clients.sim_store import device_path, open_device
from fedrec.baselines import ItemKNN, reference_metrics
from fedrec.data import random_split, resolve_data
from fedrec.data.shapes import SHAPES, Shape, activity, shaped_log
from fedrec.federated.aggregation import UploadMean, mean_arrays
from fedrec.federated.client import derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.metrics import aggregate
from fedrec.models.config import ModelConfig
from fedrec.models.registry import build_model
from fedrec.training import mf_fast
from server.checkpoint import load_checkpoint
from server.settings import load_split
from simulations import evaluation
from simulations.cli import main
from simulations.evaluation import batched_kind, device_evaluator
from simulations.inprocess import InProcessGrid
from tests.test_flower_apps import make_settings, run_in_process


def _uploads(n: int, seed: int = 0) -> list[list[np.ndarray]]:
    rng = np.random.default_rng(seed)
    return [
        [
            (rng.normal(size=(300, 8)) * rng.uniform(0.01, 10)).astype(np.float32),
            rng.normal(size=300).astype(np.float32),
        ]
        for _ in range(n)
    ]


def _stacked(uploads: list[list[np.ndarray]], weights: list[float] | None) -> list[np.ndarray]:
    """The mean as it was computed before (all uploads stacked)."""
    w = np.ones(len(uploads)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return [
        np.tensordot(w, np.stack([u[j] for u in uploads]), axes=1).astype(np.float32)
        for j in range(len(uploads[0]))
    ]


# ---- the shaped generator -------------------------------------------------------------


def test_books_shape_at_one_percent_has_the_shape() -> None:
    # Prepare
    shape = SHAPES["books"].scaled(0.01)
    # Execute
    log = shaped_log(shape, seed=0)
    again = shaped_log(shape, seed=0)
    # Assert
    assert log.equals(again)  # seeded
    assert log["user"].nunique() == shape.users == 1050
    assert log["item"].nunique() == shape.items == 3400  # the whole catalog is used
    assert not log.duplicated(["user", "item"]).any()
    assert abs(len(log) - shape.interactions) <= 0.01 * shape.interactions
    per_user = log.groupby("user").size()
    assert per_user.min() >= 1 and per_user.median() <= 2  # most users have one or two
    assert per_user.max() >= 50 * per_user.median()  # a heavy tail
    per_item = log.groupby("item").size().sort_values(ascending=False).to_numpy()
    assert per_item[0] >= 20 * np.median(per_item)  # power-law popularity
    assert str(log["user"].iloc[0]).startswith("u")  # string ids, as the real file


def test_activity_sums_to_the_interactions_within_bounds() -> None:
    # Prepare
    shape = Shape(users=2000, items=500, interactions=30_000, max_per_user=400)
    # Execute
    sizes = activity(shape, np.random.default_rng(1))
    # Assert
    assert sizes.sum() == 30_000
    assert sizes.min() >= 1 and sizes.max() <= 400


def test_generate_command_writes_a_file_once(tmp_path: Path) -> None:
    # Prepare
    out = tmp_path / "books.parquet"
    # Execute
    first = main(["generate", "--scale", "0.005", "--out", str(out)])
    second = main(["generate", "--scale", "0.005", "--out", str(out)])
    wrong = main(["generate", "--scale", "0.005", "--out", str(tmp_path / "b.csv")])
    # Assert
    assert first == 0 and out.is_file()
    assert second == 2 and wrong == 2  # refused: exists / not Parquet
    data = resolve_data(str(out))
    assert data.n_items == SHAPES["books"].scaled(0.005).items


# ---- streaming aggregation ----------------------------------------------------------


@pytest.mark.parametrize("weights", [None, [1.0, 3.0, 2.0, 7.0, 1.0, 5.0, 2.0]])
def test_upload_mean_is_the_stacked_mean_below_its_limit(weights: list[float] | None) -> None:
    # Prepare
    uploads = _uploads(7)
    # Execute
    ours = mean_arrays(uploads, weights)
    # Assert: bit for bit what every run so far computed
    for a, b in zip(ours, _stacked(uploads, weights), strict=True):
        np.testing.assert_array_equal(a, b)


def test_upload_mean_streams_past_its_limit_and_stays_close() -> None:
    # Prepare
    uploads = _uploads(40, seed=2)
    one = sum(a.nbytes for a in uploads[0])
    mean = UploadMean(limit=3 * one)
    # Execute
    for u in uploads:
        mean.add(u)
    # Assert: one float64 accumulator, nothing held, equal to float32 rounding
    assert mean.held == [] and mean.total is not None and mean.count == 40
    for a, b in zip(mean.mean(), _stacked(uploads, None), strict=True):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def test_upload_mean_refuses_a_mix_of_weighted_and_uniform() -> None:
    mean = UploadMean()
    mean.add(_uploads(1)[0], 2.0)
    with pytest.raises(ValueError, match="mix"):
        mean.add(_uploads(1)[0], None)


class CountingGrid(InProcessGrid):
    """Records how many train replies were produced when each upload was averaged."""

    def __init__(self, n_nodes: int, seed: int = 0) -> None:
        super().__init__(n_nodes, seed)
        self.produced = 0

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        replies = super().send_and_receive(messages, timeout=timeout)

        def counted() -> Iterator[Message]:
            for reply in replies:
                self.produced += 1
                yield reply

        return counted()


def test_aggregation_holds_one_upload_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a limit of 0 bytes streams every upload into the accumulator
    settings = make_settings(tmp_path, **{"num-server-rounds": 2, "strategy": "fedavg"})
    grid = CountingGrid(load_split(settings).n_users)
    seen: dict[int, list[int]] = {}  # accumulator -> replies produced at each add
    real_add = UploadMean.add

    def add(self: UploadMean, upload: list[np.ndarray], weight: float | None = None) -> None:
        seen.setdefault(id(self), []).append(grid.produced)
        real_add(self, upload, weight)

    monkeypatch.setattr(UploadMean, "add", add)
    monkeypatch.setattr(UploadMean.__init__, "__defaults__", (0,))
    # Execute
    from server.server_app import run_server
    from simulations.run_dir import create_run_dir

    create_run_dir(tmp_path, settings)
    run_server(grid, settings, evaluator=device_evaluator(settings))
    # Assert: the k-th upload was averaged right after the k-th reply was produced
    # (the optimizer's own mean of the one averaged upload is left out)
    rounds = [produced for produced in seen.values() if len(produced) > 1]
    assert len(rounds) == 2
    for produced in rounds:
        assert produced == list(range(produced[0], produced[0] + len(produced)))


# ---- evaluation without stores for the users it only evaluates ---------------------


@pytest.mark.parametrize("kind", ["mf", "ials", "lightgcn", "cdae"])
def test_harness_scores_unsampled_users_without_stores_and_equal_metrics(
    tmp_path: Path, kind: str
) -> None:
    # Prepare: 2 rounds of 5 clients out of 30: most test users never trained; MF,
    # iALS and LightGCN are scored in batches of users (BATCH_USERS lowered: several)
    settings = make_settings(
        tmp_path, model=kind, **{"num-server-rounds": 2, "clients-per-round": 5}
    )
    assert batched_kind(settings) == (kind != "cdae")
    run_in_process(settings)
    split = load_split(settings)
    items = load_checkpoint(tmp_path).item_arrays  # type: ignore[union-attr]
    store_dir = str(settings.client_config()["store-dir"])
    trained = {u for u in split.test_users() if device_path(store_dir, int(u)).exists()}
    # Execute
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(evaluation, "BATCH_USERS", 4)
        ours = device_evaluator(settings)(items, settings.rounds, True)
    per_user, tops = [], []
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:  # what the harness did before: open (create) every test user's device
        for user in sorted(int(u) for u in split.test_users()):
            config = RoundConfig(model=settings.model, train=settings.train,
                                 round=settings.rounds,
                                 seed=derive_seed(settings.seed, user, EVAL_ROUND))  # fmt: skip
            with open_device(store_dir, user, split.train_items(user), seed=settings.seed,
                             durable=False) as device:  # fmt: skip
                result = device.evaluate_round(items, config, split.test_items(user).tolist())
            per_user.append(result.metrics)
            tops.append(np.asarray(result.top10, dtype=np.int64))
    finally:
        torch.set_num_threads(threads)
    before = aggregate(per_user, tops, split)
    # Assert
    assert 0 < len(trained) < len(split.test_users())
    assert ours is not None and ours["users_evaluated"] == len(split.test_users())
    for key, value in before.items():
        if value is not None:
            assert ours[key] == pytest.approx(value, abs=1e-12), key


# ---- the user vector's initial draw -------------------------------------------------


def test_initial_user_vector_does_not_depend_on_the_catalog() -> None:
    # Prepare
    cfg = ModelConfig(kind="mf", dim=32)
    # Execute
    built = [
        build_model(cfg, n, 1, seed=11).user_emb.weight.detach().numpy()[0]  # type: ignore[operator]
        for n in (1, 17, 20_001)
    ]
    fast = mf_fast.initial_user_vector(cfg, seed=11)
    # Assert: the same vector at every catalog size, in both paths, seeded
    for vector in built:
        np.testing.assert_array_equal(vector, fast)
    np.testing.assert_array_equal(fast, mf_fast.initial_user_vector(cfg, seed=11))
    assert not np.array_equal(fast, mf_fast.initial_user_vector(cfg, seed=12))
    assert fast.dtype == np.float32 and fast.shape == (32,)
    assert 0.5 * cfg.init_std < float(np.std(fast)) < 2 * cfg.init_std


def test_initial_user_vector_costs_the_same_at_any_catalog_size() -> None:
    # Prepare: the old stream drew 2 x 340,000 x 32 normals first; the new one none
    cfg = ModelConfig(kind="mf", dim=32)
    start = time.process_time()
    # Execute
    for seed in range(200):
        mf_fast.initial_user_vector(cfg, seed=seed)
    per_user = (time.process_time() - start) / 200
    # Assert: far below the 35 ms per user of the item-table replay at 340k items
    assert per_user < 0.002


# ---- the scalable reference ----------------------------------------------------------


def test_sparse_item_knn_keeps_the_dense_similarities() -> None:
    # Prepare
    split = random_split(resolve_data("synthetic:users=300,items=200,seed=2"), seed=0)
    # Execute
    dense = itemknn.cosine_neighbours(split.train, 10)
    sparse = itemknn.sparse_cosine_neighbours(split.train, 10, block_pairs=2_000)
    # Assert: the same k largest values per row (which tied item is kept may differ)
    assert sparse.shape == dense.shape
    for row in range(dense.shape[0]):
        a = np.sort(dense[row].data)[::-1]
        b = np.sort(sparse[row].data)[::-1]
        np.testing.assert_allclose(a, b, rtol=1e-6)
    assert np.all(np.diff(sparse.indptr) <= 10)
    assert sp.csr_matrix(sparse).diagonal().sum() == 0


def test_large_catalog_reference_is_item_knn_instead_of_ease(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # Prepare: a "large" catalog by lowering both caps
    split = random_split(resolve_data("synthetic:users=200,items=150,seed=1"), seed=0)
    monkeypatch.setattr(itemknn, "DENSE_ROWS_MAX_ITEMS", 100)
    # Execute
    refs = reference_metrics(split, max_ease_items=100)
    knn = ItemKNN(20).fit(split.train)
    # Assert
    assert set(refs) == {"popularity", "itemknn"}
    assert knn.similarity is not None and np.all(np.diff(knn.similarity.indptr) <= 20)
    assert refs["itemknn"]["ndcg@10"] > refs["popularity"]["ndcg@10"]  # type: ignore[operator]


@pytest.mark.slow
def test_bench_large_entry_reports_every_figure(tmp_path: Path) -> None:
    # Prepare / Execute: the large-catalog entry on the same shape at 1% (a child process)
    from simulations.bench import bench_large

    entry = bench_large(tmp_path, tiny=True)["large_catalog"]
    # Assert
    assert entry["items"] == 3400 and entry["users"] == 1050
    assert 0 < entry["peak_rss_mb"] < 8192
    assert entry["seconds_per_round"] > 0 and entry["eval_seconds_per_user"] > 0
    # the last evaluation is of every test user (more than the 20 sampled), in batches
    assert entry["eval_users"] > 20 and entry["eval_seconds"] > 0
    assert entry["reference_cpu_seconds"] > 0 and entry["reference_seconds"] > 0
    assert entry["bytes_per_device_per_round"]["upload"] == 3400 * 33 * 4  # MF d=32 + bias
    assert entry["device_stores"] <= 2 * 10 * 2  # trained users only, not the evaluated
