"""One read of the data per process: ``load_split`` (server and clients) share one split.

A ``fedrec simulate`` asks for its split from the command, the in-process grid, the
server app, the evaluator, the clients and the model file; each used to read and split
the data again (six reads). These tests count the reads underneath the cache
(``fedrec.data.resolve``'s loaders), so they fail if any caller reads the data again.
"""

from __future__ import annotations

import os
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

import fedrec.data.resolve as resolve
from fedrec.data import synthetic
from server.settings import RunSettings, load_split
from simulations.cli import main


def _write_log(path: Path, n_users: int, seed: int = 0) -> Path:
    data = synthetic(n_users=n_users, n_items=30, dim=4, mean_interactions=12, seed=seed)
    users, items = data.user_ids[data.user], data.item_ids[data.item]
    rows = [f"{u},{i},5,{t}" for t, (u, i) in enumerate(zip(users, items, strict=True))]
    path.write_text("user,item,rating,timestamp\n" + "\n".join(rows) + "\n", encoding="utf-8")
    return path


def _count(monkeypatch: pytest.MonkeyPatch, name: str) -> list[Any]:
    """Count the calls of ``fedrec.data.resolve.<name>`` (a file load or a synthetic draw)."""
    calls: list[Any] = []
    real: Callable[..., Any] = getattr(resolve, name)

    def counting(*args: Any, **kwargs: Any) -> Any:
        calls.append(args)
        return real(*args, **kwargs)

    monkeypatch.setattr(resolve, name, counting)
    return calls


@pytest.mark.parametrize("kind", ["file", "synthetic"])
def test_an_in_process_simulate_reads_its_data_once(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a data set no earlier test has loaded in this process
    if kind == "file":
        data, reads = (
            str(_write_log(tmp_path / "log.csv", 40)),
            _count(monkeypatch, "load_interactions"),
        )
    else:
        data = "synthetic:users=40,items=30,seed=8123"
        reads = _count(monkeypatch, "synthetic")
    # Execute
    code = main(
        [
            "simulate", "--data", data, "--engine", "inprocess", "--rounds", "1",
            "--clients-per-round", "5", "--eval-clients", "5", "--out", str(tmp_path / "run"),
        ]
    )  # fmt: skip
    # Assert: the command, grid, server, evaluator, clients and model file: one read
    assert code == 0
    assert (tmp_path / "run" / "metrics.json").is_file()
    assert len(reads) == 1


def test_a_changed_file_is_read_again_and_an_unchanged_one_is_not(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    path = _write_log(tmp_path / "log.csv", 30)
    reads = _count(monkeypatch, "load_interactions")
    first = load_split(RunSettings(data=str(path)))
    again = load_split(RunSettings(data=str(path)))
    # Execute: new content, and a modification time that differs
    _write_log(path, 35, seed=1)
    stat = path.stat()
    os.utime(path, ns=(stat.st_atime_ns, stat.st_mtime_ns + 2_000_000_000))
    changed = load_split(RunSettings(data=str(path)))
    # Assert
    assert again is first
    assert len(reads) == 2
    assert (first.n_users, changed.n_users) == (30, 35)


def test_settings_that_change_the_split_get_their_own_split(tmp_path: Path) -> None:
    # Prepare
    path = str(_write_log(tmp_path / "log.csv", 30))
    # Execute
    seed0 = load_split(RunSettings(data=path))
    seed1 = load_split(RunSettings(data=path, seed=1))
    temporal = load_split(RunSettings(data=path, split="temporal"))
    # Assert: the same split as before the cache (another seed draws other holdouts)
    assert seed1 is not seed0 and temporal is not seed0
    assert (seed0.test != seed1.test).nnz > 0
    assert seed1.seed == 1 and temporal.method == "temporal"


def test_the_cache_keeps_only_the_last_splits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    from fedrec.data.split_cache import MAX_SPLITS

    paths = [str(_write_log(tmp_path / f"log{k}.csv", 20 + k)) for k in range(MAX_SPLITS + 1)]
    reads = _count(monkeypatch, "load_interactions")
    # Execute: one more data set than the cache holds, then the first again
    for path in paths:
        load_split(RunSettings(data=path))
    load_split(RunSettings(data=paths[-1]))  # still held
    load_split(RunSettings(data=paths[0]))  # evicted: read again
    # Assert
    assert len(reads) == MAX_SPLITS + 2


def test_a_shared_split_cannot_be_changed_in_place(tmp_path: Path) -> None:
    # Prepare
    split = load_split(RunSettings(data=str(_write_log(tmp_path / "log.csv", 20))))
    # Execute / Assert: every array another caller would see is read-only
    for array in (split.train.data, split.test.indices, split.train_rows, split.data.user):
        with pytest.raises(ValueError, match="read-only"):
            array[0] = array[1]
    copy = split.train.copy()
    copy.data[0] = 7.0  # a copy is the caller's own
    assert split.train.data[0] == 1.0


def test_clients_and_server_of_one_process_share_one_split(tmp_path: Path) -> None:
    from clients.client_config import load_split as client_split

    settings = RunSettings(data=str(_write_log(tmp_path / "log.csv", 20)), validation_fraction=0.2)
    assert client_split(settings.client_config()) is load_split(settings)  # type: ignore[arg-type]


def test_a_folder_is_identified_by_every_file_in_it(tmp_path: Path) -> None:
    # Prepare: a MovieLens-like folder (the loader reads one of its files)
    from fedrec.data.split_cache import source_identity

    folder = tmp_path / "ml-x"
    (folder / "sub").mkdir(parents=True)
    (folder / "ratings.dat").write_text("1::2::5::0\n", encoding="utf-8")
    (folder / "sub" / "movies.dat").write_text("2::A::Drama\n", encoding="utf-8")
    before = source_identity(str(folder))
    # Execute: one file in a subfolder changes
    (folder / "sub" / "movies.dat").write_text("2::B, a longer title::Drama\n", encoding="utf-8")
    after = source_identity(str(folder))
    # Assert
    assert before is not None and after is not None and before != after
    assert source_identity(str(folder)) == after
    assert source_identity(str(tmp_path / "missing.csv")) is None
    assert source_identity("synthetic:users=5") == ()
