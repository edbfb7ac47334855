"""Self-contained runs and model files: a run served without its data, a device loading a model.

Issue: a run could not be served once moved or once its raw data were gone, and a device
could only receive a model inside a round. A run now writes ``model.safetensors`` (no
user data) and ``users.json``; ``fedrec export`` writes the same format for a device.
"""

from __future__ import annotations

import json
import shutil
import stat
from pathlib import Path

import numpy as np
import pytest

from clients import DeviceClient
from fedrec.errors import ConfigError, DataError
from fedrec.modelfile import ExportedModel, load_model, save_model
from simulations.cli import main

N_USERS, N_ITEMS, PER_USER = 40, 60, 12


def write_ml100k_folder(folder: Path, seed: int = 0, n_users: int = N_USERS) -> Path:
    """A tiny MovieLens-100K-format folder (``u.data`` + ``u.item`` with titles)."""
    rng = np.random.default_rng(seed)
    folder.mkdir(parents=True)
    lines = []
    for u in range(1, n_users + 1):
        group = u % 3  # planted taste: each group prefers one third of the catalog
        pool = np.arange(group * 20 + 1, group * 20 + 21)
        items = rng.choice(pool, size=PER_USER, replace=False)
        lines += [f"{u}\t{i}\t5\t{880000000 + k}" for k, i in enumerate(items)]
    (folder / "u.data").write_text("\n".join(lines) + "\n")
    flags = "|".join(["0"] * 19)
    items = [f"{i}|Movie {i} (1995)|01-Jan-1995||http://x|{flags}" for i in range(1, N_ITEMS + 1)]
    (folder / "u.item").write_text("\n".join(items) + "\n", encoding="latin-1")
    return folder


def _json_out(capsys: pytest.CaptureFixture[str], *argv: str) -> object:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    return json.loads(capsys.readouterr().out)


@pytest.fixture(scope="module")
def moved_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished simulate run, moved to another folder after its data were deleted."""
    base = tmp_path_factory.mktemp("export")
    data = write_ml100k_folder(base / "ml-tiny")
    run = base / "run"
    code = main(["simulate", "--data", str(data), "--rounds", "2", "--clients-per-round", "10",
                 "--engine", "inprocess", "--out", str(run)])  # fmt: skip
    assert code == 0
    shutil.rmtree(data)
    moved = base / "elsewhere" / "run"
    moved.parent.mkdir()
    shutil.move(str(run), str(moved))
    return moved


def test_a_finished_run_writes_a_private_model_file_without_user_data(moved_run: Path) -> None:
    # Execute
    model = load_model(moved_run / "model.safetensors")
    # Assert: the catalog and the model, nothing about users
    assert model.kind == "mf" and model.n_items == N_ITEMS
    assert model.titles is not None and model.titles[0].startswith("Movie ")
    assert all(a.shape[0] == N_ITEMS for a in model.arrays)
    assert set(model.privacy) >= {"mode"} and model.privacy["mode"] == "none"
    header = json.dumps({"ids": model.item_ids, "src": model.source, "p": model.privacy})
    assert "user" not in header.lower()
    for name in ("model.safetensors", "users.json"):
        assert stat.S_IMODE((moved_run / name).stat().st_mode) == 0o600


def test_recommend_similar_report_and_export_work_without_the_data(
    moved_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Execute
    recs = _json_out(capsys, "recommend", str(moved_run), "--user", "4", "--explain")
    near = _json_out(capsys, "similar", str(moved_run), "--item", "5", "--k", "3")
    report_code = main(["report", str(moved_run)])
    export_code = main(["export", str(moved_run), "--out", str(tmp_path / "m.fedrec")])
    # Assert
    assert isinstance(recs, list) and len(recs) == 10
    assert isinstance(near, list) and len(near) == 3 and all(r["item"] != 5 for r in near)
    assert report_code == 0 and (moved_run / "report.md").is_file()
    assert export_code == 0 and load_model(tmp_path / "m.fedrec").n_items == N_ITEMS


def test_an_unknown_user_gets_the_cold_start_path_without_raw_counts(
    moved_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    rows = _json_out(capsys, "recommend", str(moved_run), "--user", "no-such-user", "--k", "5")
    # Assert: popularity order, marked, titled, and no count printed as a score
    assert isinstance(rows, list) and len(rows) == 5
    assert all(r["fallback"] and r["score"] is None for r in rows)
    assert all(r["title"] == f"Movie {r['item']} (1995)" for r in rows)


def test_a_new_users_history_gets_personal_recommendations_with_titles(
    moved_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute: a history inside group 1's third of the catalog (items 21-40)
    rows = _json_out(capsys, "recommend", str(moved_run), "--items", "21,22,23,24,25", "--k", "5")
    table_code = main(["recommend", str(moved_run), "--items", "21,22,23,24,25", "--k", "5"])
    table = capsys.readouterr().out
    # Assert
    assert isinstance(rows, list) and len(rows) == 5
    assert all(not r["fallback"] and isinstance(r["score"], float) for r in rows)
    assert not {21, 22, 23, 24, 25} & {r["item"] for r in rows}
    assert table_code == 0 and "title" in table.splitlines()[0] and "Movie " in table


def test_an_unknown_item_in_a_new_users_history_is_a_clear_error(
    moved_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["recommend", str(moved_run), "--items", "21,nope"])
    err = capsys.readouterr().err
    assert code == 2 and "--items" in err and "unknown item id 'nope'" in err


def test_a_device_loads_an_exported_model_and_recommends_with_titles(
    moved_run: Path, tmp_path: Path
) -> None:
    # Prepare
    assert main(["export", str(moved_run), "--out", str(tmp_path / "m.fedrec")]) == 0
    # Execute
    with DeviceClient.open(tmp_path / "device.sqlite") as device:
        device.load_model(tmp_path / "m.fedrec")
        for item in (1, 2, 3, 4):  # items of group 0's third of the catalog
            device.record(item, rating=5.0)
        recs = device.recommend(k=5)
    with DeviceClient.open(tmp_path / "device.sqlite") as reopened:  # titles persist
        again = reopened.recommend(k=5)
    # Assert
    assert len(recs) == 5 and not recs[0].fallback
    assert all(r.title == f"Movie {r.item} (1995)" for r in recs)
    assert [r.title for r in again] == [r.title for r in recs]
    assert not {1, 2, 3, 4} & {r.item for r in recs}


def test_export_refuses_to_overwrite_without_force(moved_run: Path, tmp_path: Path) -> None:
    out = tmp_path / "m.fedrec"
    out.write_text("keep me")
    assert main(["export", str(moved_run), "--out", str(out)]) == 2
    assert out.read_text() == "keep me"


def _tiny_model() -> ExportedModel:
    q = np.arange(12, dtype=np.float32).reshape(4, 3)
    return ExportedModel(kind="popularity", item_ids=["a", "b", 3, "d"], arrays=[q])


def test_a_model_file_round_trips_ids_of_both_types(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.fedrec", _tiny_model())
    back = load_model(path)
    assert back.item_ids == ["a", "b", 3, "d"]
    assert np.array_equal(back.arrays[0], _tiny_model().arrays[0])


@pytest.mark.parametrize("offset", [-1, -20, 200])
def test_a_flipped_byte_anywhere_is_refused(tmp_path: Path, offset: int) -> None:
    # Prepare: flip one byte in the tensor data or in the JSON header
    path = save_model(tmp_path / "m.fedrec", _tiny_model())
    blob = bytearray(path.read_bytes())
    blob[offset] ^= 0x01
    path.write_bytes(bytes(blob))
    # Execute / Assert
    with pytest.raises(DataError, match=r"checksum|not a fedrec model"):
        load_model(path)


@pytest.mark.parametrize(
    "content", [b"", b"not a model", b"PK\x03\x04 zip", b"\x08\x00\x00\x00\x00\x00\x00\x00{}"]
)
def test_foreign_files_are_refused_clearly(tmp_path: Path, content: bytes) -> None:
    path = tmp_path / "m.fedrec"
    path.write_bytes(content)
    with pytest.raises(DataError, match="not a fedrec model file"):
        load_model(path)


def test_a_device_refuses_a_model_kind_it_cannot_serve(tmp_path: Path) -> None:
    path = save_model(tmp_path / "m.fedrec", _tiny_model())
    with DeviceClient.open(tmp_path / "d.sqlite") as device, pytest.raises(ConfigError):
        device.load_model(path)


@pytest.mark.parametrize("model", ["ease", "popularity", "itemknn"])
def test_baseline_runs_save_a_model_that_recommend_report_and_export_serve(
    model: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    run = tmp_path / "b"
    assert main(["baseline", "--data", "synthetic:users=40,items=30,seed=2", "--model", model,
                 "--out", str(run)]) == 0  # fmt: skip
    # Execute
    recs = _json_out(capsys, "recommend", str(run), "--user", "3")
    report = main(["report", str(run)])
    exported = main(["export", str(run), "--out", str(tmp_path / "m.fedrec")])
    # Assert
    assert isinstance(recs, list) and len(recs) == 10
    text = (run / "report.md").read_text()
    assert report == 0 and f"Centralized `{model}`" in text and "federated |" not in text
    assert exported == 0 and load_model(tmp_path / "m.fedrec").kind == model


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (("a", float("nan")), "rating is not a number"),
        (("a", float("inf")), "rating is infinite"),
        (("a", -1e308), "rating is out of range"),
        (("a", 5.0, float("nan")), "timestamp is not a number"),
        (("a", 5.0, 10**20), "timestamp is out of range"),
        (("a", "five"), "rating 'five' is not a number"),
    ],
)
def test_a_device_refuses_bad_ratings_and_timestamps_and_keeps_its_data(
    tmp_path: Path, row: tuple[object, ...], message: str
) -> None:
    with DeviceClient.open(tmp_path / "d.sqlite") as device:
        device.record("kept", rating=4.0)
        with pytest.raises(ConfigError, match=message):
            device.record_many([("b", 3.0), row])
        assert [r.item for r in device.interactions()] == ["kept"]  # all or none
