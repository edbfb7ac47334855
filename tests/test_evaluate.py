"""The batched evaluator against the slow reference, and the ``fedrec evaluate`` CLI."""

from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import pytest
import torch

import fedrec.data
from fedrec.data.split import Split
from fedrec.metrics import METRIC_KEYS, evaluate_lists, evaluate_scores, evaluate_user
from simulations import cli
from simulations.cli import main
from tests import metrics_reference as ref
from tests.metrics_reference import make_split

N_USERS, N_ITEMS = 50, 80


def random_split(rng: np.random.Generator, genres: bool = True) -> Split:
    train, test = [], []
    for u in range(N_USERS):
        n_train = 75 if u == 0 else int(rng.integers(0, 30))  # user 0: only 5 candidates
        n_test = 0 if u in (1, 2) else int(rng.integers(1, 15))  # users 1, 2: no test item
        items = rng.permutation(N_ITEMS)
        train += [(u, int(i)) for i in items[:n_train]]
        test += [(u, int(i)) for i in items[n_train : n_train + n_test]]
    g = rng.random((N_ITEMS, 4)) < 0.4 if genres else None
    if g is not None:
        g[3] = False  # an item without any genre
    return make_split(train, test, N_USERS, N_ITEMS, genres=g)


def tied_scores(rng: np.random.Generator) -> np.ndarray:
    scores = rng.integers(0, 4, size=(N_USERS, N_ITEMS)).astype(np.float32)  # many ties
    scores[5, :] = 0.0  # one user with every score tied
    scores[6, ::3] = -np.inf  # candidates at -inf tie with masked train items
    return scores


def assert_same(actual: dict, expected: dict) -> None:
    assert set(actual) == set(METRIC_KEYS)
    for key in METRIC_KEYS:
        if expected[key] is None:
            assert actual[key] is None, key
        else:
            assert actual[key] == pytest.approx(expected[key], abs=1e-6), key


@pytest.mark.parametrize("seed", [0, 1, 2])
@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_evaluate_scores_matches_reference(seed: int, dtype: torch.dtype) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    split = random_split(rng)
    scores = tied_scores(rng)
    table = torch.as_tensor(scores, dtype=dtype)
    # Execute
    got = evaluate_scores(lambda users: table[torch.as_tensor(users)], split, batch_size=7)
    # Assert
    assert_same(got, ref.evaluate_scores(scores, split))
    assert got["users_evaluated"] == N_USERS - 2


def test_evaluate_scores_without_genres_reports_null_diversity() -> None:
    rng = np.random.default_rng(3)
    split = random_split(rng, genres=False)
    table = torch.as_tensor(rng.random((N_USERS, N_ITEMS)))
    got = evaluate_scores(lambda users: table[torch.as_tensor(users)], split)
    assert got["diversity@10"] is None
    assert_same(got, ref.evaluate_scores(table.numpy(), split))


def test_evaluate_scores_subset_of_users() -> None:
    rng = np.random.default_rng(4)
    split = random_split(rng)
    table = torch.as_tensor(rng.random((N_USERS, N_ITEMS)))
    got = evaluate_scores(lambda u: table[torch.as_tensor(u)], split, users=np.array([1, 7, 9]))
    assert got["users_evaluated"] == 2  # user 1 has no test item


def test_evaluate_scores_rejects_wrong_shape_and_nan() -> None:
    split = random_split(np.random.default_rng(5))
    with pytest.raises(ValueError, match="shape"):
        evaluate_scores(lambda u: torch.zeros(len(u), N_ITEMS + 1), split)
    with pytest.raises(ValueError, match="NaN"):
        evaluate_scores(lambda u: torch.full((len(u), N_ITEMS), float("nan")), split)


@pytest.mark.parametrize("seed", [0, 1])
def test_evaluate_user_equals_evaluate_scores(seed: int) -> None:
    # Prepare
    rng = np.random.default_rng(seed)
    split = random_split(rng)
    table = torch.as_tensor(tied_scores(rng))
    for user in split.test_users().tolist():
        one = make_split(
            [(0, int(i)) for i in split.train_items(user)],
            [(0, int(i)) for i in split.test_items(user)],
            1,
            N_ITEMS,
            genres=split.data.item_genres,
        )
        # Execute
        central = evaluate_scores(lambda u, user=user: table[[user]], one)
        local, top = evaluate_user(table[user], split.train_items(user), split.test_items(user))
        # Assert
        for key, value in local.items():
            assert value == central[key], (user, key)
        expected = ref.full_ranking(table[user].tolist(), set(split.train_items(user).tolist()))
        assert top[top >= 0].tolist() == expected[:10]


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_evaluate_lists_matches_reference(seed: int) -> None:
    # Prepare: lists of any length, train items kept, some users without a list
    rng = np.random.default_rng(seed)
    split = random_split(rng)
    lists = {
        u: rng.permutation(N_ITEMS)[: int(rng.integers(1, 40))] for u in range(N_USERS) if u % 7
    }
    # Execute
    got = evaluate_lists(lists, split)
    # Assert
    assert_same(got, ref.evaluate_lists({u: v.tolist() for u, v in lists.items()}, split))


def test_evaluate_lists_rejects_bad_items() -> None:
    split = random_split(np.random.default_rng(0))
    with pytest.raises(ValueError, match="outside"):
        evaluate_lists({3: np.array([N_ITEMS])}, split)
    with pytest.raises(ValueError, match="repeats"):
        evaluate_lists({3: np.array([1, 1])}, split)


def test_evaluate_scores_is_quick_on_ml100k_sized_data() -> None:
    # Not a timing assertion: a sanity run at ml-100k scale (943 users x 1,682 items).
    rng = np.random.default_rng(0)
    n_users, n_items = 943, 1682
    pairs = [(u, int(i)) for u in range(n_users) for i in rng.choice(n_items, 100, replace=False)]
    split = make_split(pairs[::5], [p for j, p in enumerate(pairs) if j % 5 == 1], n_users, n_items)
    table = torch.rand(n_users, n_items, generator=torch.Generator().manual_seed(0))
    start = time.perf_counter()
    got = evaluate_scores(lambda u: table[torch.as_tensor(u)], split)
    print(f"943x1682 evaluate_scores: {time.perf_counter() - start:.3f} s")
    assert got["users_evaluated"] == n_users


# ---- fedrec evaluate ---------------------------------------------------------


@pytest.fixture
def split_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """A split directory whose reader is stubbed: the CLI is tested on its own."""
    split = make_split(
        train=[(0, 0), (0, 1), (1, 2)],
        test=[(0, 2), (0, 3), (1, 0)],
        n_users=2,
        n_items=4,
        user_ids=np.array([10, 20]),
        item_ids=np.array([100, 200, 300, 400]),
    )
    monkeypatch.setattr(fedrec.data, "read_split", lambda d, data=None: split)
    monkeypatch.setattr(cli, "COMMANDS", ("evaluate",))  # independent of other commands
    return tmp_path


def write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def test_cli_evaluate_prints_one_json_object(
    split_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: user 10 gets [400 (hit), 100 (train), 300 (hit)]; user 20 has no list
    recs = write(split_dir / "recs.csv", "user,item,rank\n10,300,3\n10,400,1\n10,100,2\n")
    # Execute
    code = main(["evaluate", "--split", str(split_dir), "--recs", str(recs)])
    # Assert
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert list(out) == list(METRIC_KEYS)
    expected_ndcg = (1 + 1 / np.log2(4)) / (1 + 1 / np.log2(3)) / 2
    assert out["ndcg@10"] == pytest.approx(expected_ndcg)
    assert out["mrr"] == pytest.approx(0.5)
    assert out["users_evaluated"] == 2


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("user,item,rank\n10,300,1\n99,300,1\n", "recs.csv:3"),
        ("user,item,rank\n10,999,1\n", "recs.csv:2"),
        ("user,item\n10,300\n", "rank"),
        ("user,item,rank\n10,300,first\n", "recs.csv:2"),
        ("user,item,rank\n10,300,1\n10,400,1\n", "recs.csv:3"),
    ],
)
def test_cli_evaluate_errors_exit_2(
    split_dir: Path, capsys: pytest.CaptureFixture[str], text: str, message: str
) -> None:
    recs = write(split_dir / "recs.csv", text)
    code = main(["evaluate", "--split", str(split_dir), "--recs", str(recs)])
    err = capsys.readouterr().err
    assert code == 2
    assert message in err
    assert "Traceback" not in err


def test_cli_evaluate_reads_a_real_split_directory(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the split reader of fedrec.data, not a stub
    monkeypatch.setattr(cli, "COMMANDS", ("evaluate",))
    write(tmp_path / "train.csv", "user,item\na,100\na,200\nb,300\n")
    write(tmp_path / "test.csv", "user,item\na,300\na,400\nb,100\n")
    recs = write(tmp_path / "recs.csv", "user,item,rank\na,400,1\nb,100,1\n")
    # Execute
    code = main(["evaluate", "--split", str(tmp_path), "--recs", str(recs)])
    # Assert
    out = json.loads(capsys.readouterr().out)
    assert code == 0
    assert out["hr@10"] == 1.0 and out["mrr"] == 1.0
    assert out["coverage@10"] == pytest.approx(2 / 4)
    assert out["diversity@10"] is None


@pytest.fixture
def ml100k() -> Path:
    path = Path(__file__).resolve().parents[2] / "shared" / "data" / "ml-100k"
    if not path.exists():
        pytest.skip("ml-100k not in ../shared/data")
    return path


@pytest.mark.realdata
def test_popularity_on_ml100k_matches_the_published_reference(ml100k: Path) -> None:
    # DESIGN.md: popularity reaches 0.217 NDCG@10 on ml-100k, seed 0.
    from fedrec.data import random_split, resolve_data

    split = random_split(resolve_data(ml100k), seed=0)
    popularity = torch.as_tensor(np.asarray(split.train.sum(axis=0)).ravel())
    got = evaluate_scores(lambda u: popularity.expand(len(u), -1), split)
    assert got["ndcg@10"] == pytest.approx(0.217, abs=5e-4)
    assert got["users_evaluated"] == 943
    assert got["diversity@10"] is not None
