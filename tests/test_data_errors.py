"""Bad input: one-line errors saying what, where and what to do; nothing half-written."""

from __future__ import annotations

import hashlib
import zipfile
from pathlib import Path

import pytest

from fedrec.data import archives as download_module
from fedrec.data import (
    load_interactions,
    random_split,
    read_split,
    resolve_data,
    synthetic,
    write_split,
)
from fedrec.data.archives import Archive
from fedrec.errors import ConfigError, DataError, OutputError
from simulations import cli


@pytest.fixture
def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]):  # type: ignore[no-untyped-def]
    """Run ``fedrec`` with only this module's commands; return (code, stderr)."""
    monkeypatch.setattr(cli, "COMMANDS", ("split", "download"))

    def run(*argv: str) -> tuple[int, str]:
        code = cli.main(list(argv))
        return code, capsys.readouterr().err

    return run


def assert_one_line(err: str, *needles: str) -> None:
    assert err.count("\n") == 1 and "Traceback" not in err
    for needle in needles:
        assert needle in err


def test_missing_path(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    with pytest.raises(DataError, match="no such file"):
        load_interactions(tmp_path / "nope")
    code, err = run_cli("split", "--data", str(tmp_path / "nope"), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "nope", "no such file")
    assert not (tmp_path / "o").exists()


def test_unknown_format(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "notes.txt.bak").write_text("hello")
    with pytest.raises(DataError, match="unknown data format"):
        load_interactions(tmp_path)
    code, err = run_cli("split", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "unknown data format")


def test_malformed_line_names_file_and_line(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "u.data").write_text("1\t2\t3\t4\n1\t3\t4\n")
    with pytest.raises(DataError, match=r"u\.data:2: malformed line"):
        load_interactions(tmp_path)
    code, err = run_cli("split", "--data", str(tmp_path), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "u.data:2", "expected 4 fields")


def test_non_numeric_id_in_movielens_file(tmp_path: Path) -> None:
    (tmp_path / "ratings.dat").write_text("1::2::3::4\n1::3::4::5\nx7::3::4::5\n")
    with pytest.raises(DataError, match=r"ratings\.dat:3: non-numeric user id 'x7'"):
        load_interactions(tmp_path)


def test_empty_data_set_and_empty_after_filter(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    (tmp_path / "empty.csv").write_text("user,item,rating\n")
    (tmp_path / "low.csv").write_text("user,item,rating\na,b,1\n")
    with pytest.raises(DataError, match="no interactions"):
        load_interactions(tmp_path / "empty.csv")
    with pytest.raises(DataError, match="left after filtering"):
        load_interactions(tmp_path / "low.csv", min_rating=4)
    code, err = run_cli(
        "split",
        "--data",
        str(tmp_path / "low.csv"),
        "--min-rating",
        "4",
        "--out",
        str(tmp_path / "o"),
    )
    assert code == 2
    assert_one_line(err, "left after filtering")


def test_unknown_id_in_split_file(tmp_path: Path) -> None:
    # Prepare: a valid split, then a test line with a user the data does not have
    data = synthetic(n_users=20, n_items=15)
    write_split(random_split(data), tmp_path / "s")
    test_csv = tmp_path / "s" / "test.csv"
    n_lines = len(test_csv.read_text().splitlines())
    with test_csv.open("a") as fh:
        fh.write("999,1\n")
    # Execute / Assert
    with pytest.raises(DataError, match=rf"test\.csv:{n_lines + 1}: unknown user id '999'"):
        read_split(tmp_path / "s", data)


def test_test_fraction_outside_unit_interval(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    data = synthetic(n_users=20, n_items=15)
    for bad in (0.0, 1.0, -0.5, float("nan")):
        with pytest.raises(ConfigError, match="between 0 and 1"):
            random_split(data, test_fraction=bad)
    code, err = run_cli("split", "--test-fraction", "1.5", "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, "--test-fraction")
    assert not (tmp_path / "o").exists()


def test_non_empty_output_dir_is_refused(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    out = tmp_path / "o"
    out.mkdir()
    (out / "keep.txt").write_text("mine")
    code, err = run_cli("split", "--out", str(out))
    assert code == 2
    assert_one_line(err, "not empty")
    assert [p.name for p in out.iterdir()] == ["keep.txt"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["o"]  # no temp dir left


def test_unwritable_output_dir(tmp_path: Path, run_cli) -> None:  # type: ignore[no-untyped-def]
    # Prepare: the parent of --out is a file, so nothing can be created there (even as root)
    blocker = tmp_path / "file"
    blocker.write_text("x")
    data = synthetic(n_users=20, n_items=15)
    # Execute / Assert
    with pytest.raises(OutputError, match="cannot write"):
        write_split(random_split(data), blocker / "o")
    code, err = run_cli("split", "--out", str(blocker / "o"))
    assert code == 2
    assert_one_line(err, "cannot write", "choose a writable location")


def test_malformed_generic_csv_line(tmp_path: Path) -> None:
    (tmp_path / "log.csv").write_text("user,item\na,b\na,b,c\n")
    with pytest.raises(DataError, match=r"log\.csv:3: malformed line \(expected 2 fields, got 3\)"):
        load_interactions(tmp_path / "log.csv")


def test_failure_while_writing_leaves_nothing(tmp_path: Path) -> None:
    from simulations.commands.common import prepare_output_dir

    with pytest.raises(RuntimeError), prepare_output_dir(tmp_path / "o") as tmp:
        (tmp / "half.csv").write_text("x")
        raise RuntimeError("boom")
    assert list(tmp_path.iterdir()) == []


def test_known_name_not_downloaded(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path))
    with pytest.raises(DataError, match="fedrec download ml-1m") as info:
        resolve_data("ml-1m")
    assert "FEDREC_DATA_DIR" in str(info.value)


def test_bad_synthetic_spec() -> None:
    with pytest.raises(ConfigError, match="bad synthetic option 'colour=3'"):
        resolve_data("synthetic:colour=3")


def test_checksum_mismatch_leaves_nothing(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, run_cli
) -> None:  # type: ignore[no-untyped-def]
    # Prepare
    archive = tmp_path / "fake.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-fake/u.data", "1\t1\t5\t1\n")
    wrong = hashlib.sha256(b"something else").hexdigest()
    fake = {"ml-fake": Archive(archive.as_uri(), wrong)}
    monkeypatch.setattr(download_module, "ARCHIVES", fake)
    data_dir = tmp_path / "data"
    # Execute
    with pytest.raises(DataError, match="checksum mismatch"):
        download_module.download("ml-fake", data_dir)
    code, err = run_cli("download", "ml-fake", "--data-dir", str(data_dir))
    # Assert
    assert code == 2
    assert_one_line(err, "checksum mismatch")
    assert list(data_dir.iterdir()) == []


def test_unknown_download_name(run_cli) -> None:  # type: ignore[no-untyped-def]
    code, err = run_cli("download", "ml-7")
    assert code == 2
    assert_one_line(err, "unknown data set 'ml-7'", "ml-100k")


# --- values out of range, non-UTF-8 bytes (issue 15, item 8) ---------------------------

TWENTY_DIGITS = "12345678901234567890"


@pytest.mark.parametrize(
    ("name", "text", "needle"),
    [
        ("log.csv", f"user,item,timestamp\n1,2,4\n1,3,{TWENTY_DIGITS}\n", "timestamp is out of"),
        ("log.csv", "user,item,timestamp\n1,2,4\n1,3,1700000000000000000\n", "timestamp is out"),
        ("log.csv", "user,item,timestamp\n1,2,4\n1,3,1e300\n", "timestamp is out of range"),
        ("log.csv", "user,item,rating\n1,2,4\n1,3,-1e308\n", "rating is out of range"),
        ("log.csv", "user,item,rating\n1,2,4\n1,3,nan\n", "rating is not a number"),
        ("log.csv", "user,item,rating\n1,2,4\n1,3,-inf\n", "rating is infinite"),
        ("log.csv", "user,item,rating\n1,2,4\n1,3,x\n", "non-numeric rating 'x'"),
        ("u.data", f"1\t2\t3\t4\n1\t3\t4\t{TWENTY_DIGITS}\n", "timestamp is out of range"),
        ("u.data", f"1\t2\t3\t4\n{TWENTY_DIGITS}\t3\t4\t5\n", "user id does not fit a 64"),
        ("u.data", "1\t2\t3\t4\n1\t3\t-1e308\t5\n", "rating is out of range"),
        ("u.data", "1\t2\t3\t4\n1\t3\tnan\t5\n", "rating is not a number"),
        ("u.data", "1\t2\t3\t4\n1\t3\tinf\t5\n", "rating is infinite"),
        ("ratings.dat", "1::2::3::4\n1::3::1e308::5\n", "rating is out of range"),
        ("ratings.dat", f"1::2::3::4\n1::3::4::-{TWENTY_DIGITS}\n", "timestamp is out of range"),
        ("ratings.csv", "userId,movieId,rating,timestamp\n1,2,3,4\n1,3,nan,5\n", "rating is not a"),
    ],
)
def test_absurd_ratings_and_timestamps_are_refused_with_their_line(
    tmp_path: Path, name: str, text: str, needle: str
) -> None:
    # Prepare: the bad value is always on the last line (line 3 after a header, else 2)
    (tmp_path / name).write_text(text)
    line = 3 if text.startswith(("user", "userId")) else 2
    # Execute / Assert: refused consistently (never wrapped to -2^63 or kept as -1e308)
    with pytest.raises(DataError, match=rf"{name}:{line}: {needle}") as info:
        load_interactions(tmp_path / name if name.endswith(".csv") else tmp_path)
    assert info.value.fix


def test_limits_keep_real_values(tmp_path: Path) -> None:
    # Prepare: millisecond and microsecond timestamps, negative and large ratings
    (tmp_path / "log.csv").write_text(
        "user,item,rating,timestamp\n1,2,-10,1700000000000\n1,3,250000,1700000000000000\n"
    )
    # Execute
    data = load_interactions(tmp_path / "log.csv")
    # Assert
    assert data.timestamp is not None and data.rating is not None
    assert data.timestamp.tolist() == [1_700_000_000_000, 1_700_000_000_000_000]
    assert data.rating.tolist() == [-10.0, 250_000.0]


def test_parquet_datetime_column_becomes_unix_seconds(tmp_path: Path) -> None:
    # Prepare: a datetime column (nanoseconds inside), one of them timezone-aware
    import pandas as pd

    stamps = pd.to_datetime(["2020-01-01T00:00:00", "2021-01-01T00:00:00"])
    frame = pd.DataFrame({"user": [1, 2], "item": [3, 4], "timestamp": stamps})
    frame.to_parquet(tmp_path / "naive.parquet")
    frame["timestamp"] = stamps.tz_localize("Europe/Paris")
    frame.to_parquet(tmp_path / "aware.parquet")
    # Execute
    naive = load_interactions(tmp_path / "naive.parquet").timestamp
    aware = load_interactions(tmp_path / "aware.parquet").timestamp
    # Assert: seconds, not nanoseconds (which the range check would refuse)
    assert naive is not None and naive.tolist() == [1_577_836_800, 1_609_459_200]
    assert aware is not None and aware.tolist() == [1_577_833_200, 1_609_455_600]


@pytest.mark.parametrize("name", ["log.csv", "log.csv.gz"])
def test_non_utf8_byte_reports_its_line(tmp_path: Path, name: str, run_cli) -> None:  # type: ignore[no-untyped-def]
    # Prepare: an invalid byte on line 4, column 3
    import gzip

    raw = b"user,item\n1,2\n1,3\n2,\xff\n3,4\n"
    (tmp_path / name).write_bytes(gzip.compress(raw) if name.endswith(".gz") else raw)
    # Execute / Assert
    with pytest.raises(DataError, match=rf"{name}:4: not UTF-8 text \(byte 0xff at column 3\)"):
        load_interactions(tmp_path / name)
    code, err = run_cli("split", "--data", str(tmp_path / name), "--out", str(tmp_path / "o"))
    assert code == 2
    assert_one_line(err, f"{name}:4", "save the file as UTF-8")
    assert "position 0" not in err
