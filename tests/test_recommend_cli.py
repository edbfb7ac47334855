"""``fedrec recommend`` and ``fedrec similar`` on a run directory made in process."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.baselines import Popularity
from fedrec.federated.client import client_scores, derive_seed
from fedrec.federated.loop import EVAL_ROUND, run_federated
from fedrec.metrics.beyond import intra_list_diversity
from fedrec.recommend import similar_items
from fedrec.recommend.similar import item_vectors
from server.checkpoint import (
    METRICS_JSON,
    Checkpoint,
    atomic_write_json,
    load_checkpoint,
    save_checkpoint,
)
from server.settings import RunSettings, load_split
from simulations.cli import main
from simulations.run_dir import create_run_dir

DATA = "synthetic:users=30,items=50,dim=4,mean=15,seed=3"
ROUNDS = 2


def make_run_dir(path: Path, **overrides: Any) -> Path:
    """A finished run: config.json, checkpoint and metrics.json."""
    flat: dict[str, Any] = {
        "data": DATA,
        "num-server-rounds": ROUNDS,
        "clients-per-round": 15,
        "run-dir": str(path),
        "train.epochs": 2,
        "train.refit-steps": 3,
    }
    settings = RunSettings.from_run_config({**flat, **overrides})
    create_run_dir(path, settings)
    split = load_split(settings)
    result = run_federated(
        split, settings.model, settings.train, settings.server,
        rounds=ROUNDS, clients_per_round=15, seed=settings.seed,
    )  # fmt: skip
    save_checkpoint(path, Checkpoint(ROUNDS, result.item_arrays, {}))
    metrics = {**result.metrics, "reference": {"popularity": dict(result.metrics)}}
    atomic_write_json(path / METRICS_JSON, metrics)
    return path


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return make_run_dir(tmp_path_factory.mktemp("run") / "run")


def _json(capsys: pytest.CaptureFixture[str], *argv: str) -> Any:
    assert main(list(argv)) == 0
    return json.loads(capsys.readouterr().out)


def test_recommend_ranks_by_the_evaluated_scores_without_train_items(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    settings = RunSettings.from_run_config(
        json.loads((run_dir / "config.json").read_text())["settings"]
    )
    split = load_split(settings)
    user = 4
    ckpt = load_checkpoint(run_dir)
    assert ckpt is not None
    scores = client_scores(
        settings.model, settings.train, ckpt.item_arrays, None, split.train_items(user),
        seed=derive_seed(settings.seed, user, EVAL_ROUND),
    ).numpy()  # fmt: skip
    scores[split.train_items(user)] = -np.inf
    expected = [int(split.data.item_ids[i]) for i in np.argsort(-scores, kind="stable")[:5]]
    # Execute
    rows = _json(capsys, "recommend", str(run_dir), "--user", str(split.data.user_ids[user]),
                 "--k", "5", "--json")  # fmt: skip
    # Assert
    assert [r["item"] for r in rows] == expected
    assert all(not r["fallback"] and "because" not in r for r in rows)
    assert [r["score"] for r in rows] == sorted((r["score"] for r in rows), reverse=True)


def test_recommend_explain_cites_the_users_own_items(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    split = load_split(RunSettings.from_run_config({"data": DATA}))
    history = {int(split.data.item_ids[i]) for i in split.train_items(0)}
    # Execute
    rows = _json(capsys, "recommend", str(run_dir), "--user", "1", "--explain", "--json")
    # Assert
    assert len(rows) == 10
    cited = [c for r in rows for c in r["because"]]
    assert cited and all(c["item"] in history and c["weight"] > 0 for c in cited)


def test_recommend_falls_back_to_popularity_below_min_interactions(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    split = load_split(RunSettings.from_run_config({"data": DATA}))
    counts = Popularity().fit(split.train).score(np.array([0]))[0].numpy().astype(np.float64)
    counts[split.train_items(0)] = -np.inf
    expected = [int(split.data.item_ids[i]) for i in np.argsort(-counts, kind="stable")[:3]]
    # Execute
    rows = _json(capsys, "recommend", str(run_dir), "--user", "1", "--k", "3",
                 "--min-interactions", "1000", "--json")  # fmt: skip
    # Assert
    assert all(r["fallback"] for r in rows)
    assert [r["item"] for r in rows] == expected


def test_recommend_table_output(run_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    # Execute
    code = main(["recommend", str(run_dir), "--user", "2", "--k", "3", "--explain"])
    # Assert
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and out[0].startswith("rank") and len(out) == 4


def test_similar_matches_item_vector_cosine(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    ckpt = load_checkpoint(run_dir)
    assert ckpt is not None
    expected = similar_items(item_vectors("mf", ckpt.item_arrays), 6, k=4)
    # Execute
    rows = _json(capsys, "similar", str(run_dir), "--item", "7", "--k", "4", "--json")
    # Assert
    assert [r["item"] for r in rows] == [j + 1 for j, _ in expected]  # synthetic ids = index + 1
    assert [r["similarity"] for r in rows] == pytest.approx([c for _, c in expected])


@pytest.mark.parametrize(
    ("argv", "message"),
    [
        (["recommend", "{run}", "--items", "99999"], "unknown item id '99999'"),
        (["similar", "{run}", "--item", "99999"], "unknown item id '99999'"),
        (["recommend", "{missing}", "--user", "1"], "run directory not found"),
        (["similar", "{empty}", "--item", "1"], "no checkpoint"),
        (["recommend", "{run}", "--user", "1", "--k", "0"], "--k: must be >= 1"),
        (["recommend", "{run}", "--user", "1", "--diversify", "1.5"], "--diversify: lambda 1.5"),
        (["recommend", "{run}", "--user", "1", "--diversify", "0.5", "--pool", "5"], "--pool:"),
    ],
)
def test_user_errors_say_what_and_where_and_exit_2(
    run_dir: Path,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
    argv: list[str],
    message: str,
) -> None:
    # Prepare
    empty = tmp_path / "empty"
    create_run_dir(empty, RunSettings.from_run_config({"data": DATA}))
    paths = {"run": run_dir, "missing": tmp_path / "nope", "empty": empty}
    # Execute
    code = main([a.format(**paths) for a in argv])
    # Assert
    err = capsys.readouterr().err
    assert code == 2
    assert message in err and "Traceback" not in err


def _diversity(items: list[int], genres: np.ndarray) -> float:
    index = np.array([items]) - 1  # synthetic ids = index + 1
    value = intra_list_diversity(index, genres)
    assert value is not None
    return value


def test_diversify_1_keeps_the_plain_relevance_order(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    argv = ["recommend", str(run_dir), "--user", "4", "--explain", "--json"]
    plain = _json(capsys, *argv)
    # Execute
    reranked = _json(capsys, *argv, "--diversify", "1.0")
    # Assert
    assert reranked == plain


def test_diversify_makes_lists_more_genre_diverse_and_still_explains(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    split = load_split(RunSettings.from_run_config({"data": DATA}))
    genres = split.data.item_genres
    assert genres is not None
    user = 4
    history = {int(split.data.item_ids[i]) for i in split.train_items(user)}
    argv = ["recommend", str(run_dir), "--user", str(user + 1), "--explain", "--json"]
    plain = [r["item"] for r in _json(capsys, *argv)]
    # Execute
    rows = _json(capsys, *argv, "--diversify", "0.3", "--pool", "30")
    # Assert
    items = [r["item"] for r in rows]
    assert len(items) == 10 and items != plain and not history & set(items)
    assert _diversity(items, genres) >= _diversity(plain, genres)
    assert all(set(r) == {"item", "title", "score", "fallback", "because"} for r in rows)
    assert all(c["item"] in history and c["weight"] > 0 for r in rows for c in r["because"])


def test_diversify_table_says_how_it_reranked(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["recommend", str(run_dir), "--user", "2", "--k", "3", "--diversify", "0.5"])
    # Assert
    out = capsys.readouterr().out.splitlines()
    assert code == 0 and len(out) == 5 and "MMR lambda 0.5 over the top 100" in out[-1]
