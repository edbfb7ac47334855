"""Loaders: formats, id rules, file order, duplicate policy and filters."""

from __future__ import annotations

import hashlib
import re
import time
import zipfile
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from fedrec.data import Interactions, load_interactions, resolve_data
from fedrec.data import archives as download_module
from fedrec.data.archives import Archive


def write(path: Path, text: str, encoding: str = "utf-8") -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding=encoding)
    return path


def ml100k_tiny(folder: Path) -> Path:
    write(folder / "u.data", "10\t2\t5\t100\n9\t1\t3\t200\n10\t1\t4\t300\n")
    genres = "\n".join(f"g{k}|{k}" for k in range(19)) + "\n\n"
    write(folder / "u.genre", genres)
    flags = ["|".join("1" if k == j else "0" for k in range(19)) for j in (3, 5)]
    items = f"1|Amélie (2001)|01-Jan-2001||url|{flags[0]}\n2|Two|01-Jan-1995||url|{flags[1]}\n"
    write(folder / "u.item", items, encoding="latin-1")
    return folder


def test_ml100k_format_ids_order_and_genres(tmp_path: Path) -> None:
    # Prepare
    folder = ml100k_tiny(tmp_path / "ml")
    # Execute
    data = load_interactions(folder)
    # Assert
    assert data.user_ids.tolist() == [9, 10] and data.item_ids.tolist() == [1, 2]
    assert data.user.tolist() == [1, 0, 1] and data.item.tolist() == [1, 0, 0]  # file order
    assert data.rating is not None and data.rating.tolist() == [5.0, 3.0, 4.0]
    assert data.item_titles == ("Amélie (2001)", "Two")
    assert data.genre_names is not None and data.genre_names[3] == "g3"
    assert data.item_genres is not None and data.item_genres[:, [3, 5]].tolist() == [
        [True, False],
        [False, True],
    ]


def test_ml_dat_and_csv_formats(tmp_path: Path) -> None:
    # Prepare
    write(tmp_path / "a" / "ratings.dat", "1::20::5::10\n2::10::3.5::11\n")
    write(tmp_path / "a" / "movies.dat", "10::Ten (1990)::Drama\n20::Twenty::Comedy|Drama\n")
    write(tmp_path / "b" / "ratings.csv", "userId,movieId,rating,timestamp\n5,7,4.5,1\n3,7,2,2\n")
    write(
        tmp_path / "b" / "movies.csv", 'movieId,title,genres\n7,"Seven, The",(no genres listed)\n'
    )
    # Execute
    dat, csv = load_interactions(tmp_path / "a"), load_interactions(tmp_path / "b" / "ratings.csv")
    # Assert
    assert dat.genre_names == ("Comedy", "Drama") and dat.item_genres is not None
    assert dat.item_genres.tolist() == [[False, True], [True, True]]
    assert dat.rating is not None and dat.rating.tolist() == [5.0, 3.5]
    assert csv.user_ids.tolist() == [3, 5] and csv.item_titles == ("Seven, The",)


def test_generic_ids_are_kept_exactly(tmp_path: Path) -> None:
    # Prepare: "007" is not a canonical integer, so the item column stays strings
    path = write(tmp_path / "log.csv", "user,item\nbob,007\nann,7\nbob,0345\n")
    # Execute
    data = load_interactions(path)
    # Assert
    assert data.user_ids.tolist() == ["ann", "bob"]
    assert data.item_ids.tolist() == ["007", "0345", "7"]  # string order
    assert data.item_ids.dtype == object and data.rating is None


def test_generic_canonical_ints_sort_numerically(tmp_path: Path) -> None:
    # Prepare
    path = write(
        tmp_path / "log.tsv", "user\titem\trating\ttimestamp\n10\t100\t1\t5\n9\t-3\t2\t6\n"
    )
    # Execute
    data = load_interactions(path)
    # Assert
    assert data.user_ids.dtype == np.int64 and data.user_ids.tolist() == [9, 10]
    assert data.item_ids.tolist() == [-3, 100] and data.user.tolist() == [1, 0]


def test_generic_parquet_and_directory_detection(tmp_path: Path) -> None:
    # Prepare
    frame = pd.DataFrame({"user": ["u1", "u2"], "item": [5, 4], "timestamp": [1, 2]})
    frame.to_parquet(tmp_path / "interactions.parquet")
    # Execute
    data = load_interactions(tmp_path)
    # Assert
    assert data.user_ids.tolist() == ["u1", "u2"] and data.item_ids.tolist() == [4, 5]
    assert data.timestamp is not None and data.timestamp.tolist() == [1, 2]


def test_duplicates_first_position_latest_rating(tmp_path: Path) -> None:
    # Prepare: pair (1, 1) at lines 1 and 3; line 3 is later by timestamp
    text = "user,item,rating,timestamp\n1,1,2,100\n1,2,5,50\n1,1,4,300\n1,1,1,200\n"
    path = write(tmp_path / "d.csv", text)
    # Execute
    latest = load_interactions(path)
    first = load_interactions(path, duplicates="first")
    keep = load_interactions(path, duplicates="keep")
    # Assert
    assert latest.item.tolist() == [0, 1]
    assert latest.rating is not None and latest.rating.tolist() == [4.0, 5.0]
    assert latest.timestamp is not None and latest.timestamp.tolist() == [300, 50]
    assert first.rating is not None and first.rating.tolist() == [2.0, 5.0]
    assert len(keep) == 4


def test_min_rating_and_k_core_iterate_to_fixed_point(tmp_path: Path) -> None:
    # Prepare: removing user c drops item z below 2, which then drops user b's z
    rows = ["a,x,5", "a,y,5", "b,x,5", "b,y,5", "b,z,5", "c,z,5", "c,w,1"]
    path = write(tmp_path / "k.csv", "user,item,rating\n" + "\n".join(rows) + "\n")
    # Execute
    rated = load_interactions(path, min_rating=3)
    core = load_interactions(path, k_core=2)
    # Assert
    assert len(rated) == 6 and "w" not in rated.item_ids.tolist()
    assert core.user_ids.tolist() == ["a", "b"] and core.item_ids.tolist() == ["x", "y"]
    assert np.bincount(core.user).min() >= 2 and np.bincount(core.item).min() >= 2


def test_resolve_synthetic_spec_and_known_name(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    ml100k_tiny(tmp_path / "ml-100k")
    monkeypatch.setenv("FEDREC_DATA_DIR", str(tmp_path))
    # Execute
    small = resolve_data("synthetic:users=40,items=30,seed=3")
    named = resolve_data("ml-100k")
    # Assert
    assert small.n_users == 40 and small.n_items == 30
    assert len(named) == 3


@pytest.mark.realdata
def test_ml100k_real(ml100k_dir: Path) -> None:
    data = load_interactions(ml100k_dir)
    assert (len(data), data.n_users, data.n_items) == (100_000, 943, 1682)
    assert data.user_ids[data.user[0]] == 196 and data.item_ids[data.item[0]] == 242
    assert data.item_genres is not None and data.item_genres.shape == (1682, 19)


@pytest.mark.realdata
def test_ml1m_real_loads_fast(ml1m_dir: Path) -> None:
    start = time.perf_counter()
    data = load_interactions(ml1m_dir)
    elapsed = time.perf_counter() - start
    assert (len(data), data.n_users, data.n_items) == (1_000_209, 6040, 3706)
    assert elapsed < 5.0


def test_download_verifies_and_extracts(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: a local archive served through a file:// URL
    archive = tmp_path / "ml-fake.zip"
    with zipfile.ZipFile(archive, "w") as zf:
        zf.writestr("ml-fake/u.data", "1\t1\t5\t1\n2\t1\t4\t2\n")
    digest = hashlib.sha256(archive.read_bytes()).hexdigest()
    monkeypatch.setattr(download_module, "ARCHIVES", {"ml-fake": Archive(archive.as_uri(), digest)})
    data_dir = tmp_path / "data"
    # Execute
    path = download_module.download("ml-fake", data_dir)
    again = download_module.download("ml-fake", data_dir)  # already there: no fetch
    # Assert
    assert path == again == data_dir / "ml-fake"
    assert sorted(p.name for p in data_dir.iterdir()) == ["ml-fake"]
    assert len(load_interactions(path)) == 2


def test_known_archives_have_sha256() -> None:
    assert {"ml-100k", "ml-1m"} <= set(download_module.ARCHIVES)
    for name, archive in download_module.ARCHIVES.items():
        assert archive.url.endswith(f"/{name}.zip") and len(archive.sha256) == 64


# --- your own data: column aliases and explicit columns (issue 18, item 2) --------------

ROWS = [("u1", "i1", 4.0, 100), ("u2", "i1", 3.0, 200), ("u1", "i2", 5.0, 300)]


def own_file(path: Path, header: tuple[str, ...]) -> Path:
    """ROWS under ``header`` (as many columns as it names), as CSV or Parquet."""
    frame = pd.DataFrame([r[: len(header)] for r in ROWS], columns=list(header))
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path)
    else:
        frame.to_csv(path, index=False)
    return path


def assert_rows(data: Interactions, with_rating: bool = True, with_time: bool = True) -> None:
    pairs = [
        (data.user_ids[u], data.item_ids[i]) for u, i in zip(data.user, data.item, strict=True)
    ]
    assert pairs == [(u, i) for u, i, _, _ in ROWS]
    assert (data.rating is not None) == with_rating and (data.timestamp is not None) == with_time
    if data.rating is not None:
        assert data.rating.tolist() == [r for _, _, r, _ in ROWS]
    if data.timestamp is not None:
        assert data.timestamp.tolist() == [t for _, _, _, t in ROWS]


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
@pytest.mark.parametrize(
    "header",
    [
        ("user", "item", "rating", "timestamp"),
        ("user_id", "item_id", "rating", "time"),
        ("userId", "movieId", "rating", "timestamp"),
        ("UserID", "ItemID", "Rating", "Time"),
        ("user_id", "itemId"),
    ],
)
def test_common_header_aliases_are_accepted(
    tmp_path: Path, suffix: str, header: tuple[str, ...]
) -> None:
    # Prepare
    path = own_file(tmp_path / f"mine{suffix}", header)
    # Execute
    data = load_interactions(path)
    # Assert: ids, ratings and timestamps read from the aliased columns
    assert_rows(data, with_rating=len(header) > 2, with_time=len(header) > 3)


@pytest.mark.parametrize("suffix", [".csv", ".parquet"])
def test_explicit_columns_by_spec_and_by_flags(tmp_path: Path, suffix: str) -> None:
    # Prepare: names no alias knows, and an extra column named like an alias
    from simulations.cli import build_parser

    path = own_file(tmp_path / f"log{suffix}", ("who", "what", "stars", "when"))
    spec = f"{path}#user=who,item=what,rating=stars,time=when"
    flags = ["--time-col", "when", "--data", str(path), "--user-col", "who"]
    flags += ["--item-col", "what", "--rating-col", "stars"]
    # Execute
    data = resolve_data(spec)
    args = build_parser().parse_args(["split", *flags, "--out", str(tmp_path / "o")])
    # Assert: the flags fold into the data spec in any order (so config.json records them)
    assert_rows(data)
    assert args.data == spec


def test_explicit_column_wins_over_an_alias(tmp_path: Path) -> None:
    # Prepare: an aliased 'user' column that is not the one wanted
    write(tmp_path / "log.csv", "user,account,item\nx,u1,i1\nx,u2,i1\nx,u1,i2\n")
    # Execute
    data = resolve_data(f"{tmp_path / 'log.csv'}#user=account")
    # Assert
    assert data.user_ids.tolist() == ["u1", "u2"] and len(data) == 3


def test_movielens_ratings_csv_keeps_its_reader_unless_columns_are_named(tmp_path: Path) -> None:
    # Prepare
    folder = tmp_path / "ml-latest-small"
    write(folder / "ratings.csv", "userId,movieId,rating,timestamp\n1,10,4.0,5\n2,10,3.5,6\n")
    write(folder / "movies.csv", "movieId,title,genres\n10,Ten (1990),Drama\n")
    # Execute
    movielens = load_interactions(folder)
    generic = resolve_data(f"{folder / 'ratings.csv'}#user=userId,item=movieId")
    # Assert: titles from movies.csv only with MovieLens's reader; the same rows either way
    assert movielens.item_titles == ("Ten (1990)",) and generic.item_titles is None
    assert movielens.user_ids.tolist() == generic.user_ids.tolist() == [1, 2]


@pytest.mark.parametrize(
    ("header", "spec", "needle"),
    [
        ("who,what\n", "", "missing user and item column (found who, what)"),
        ("user,what\n", "", "missing item column"),
        ("user,user_id,item\n", "", "ambiguous user column: 'user' and 'user_id'"),
        ("user,item,timestamp,time\n", "", "ambiguous timestamp column"),
        ("user,item\n", "#user=uid", "no column 'uid' (given with --user-col"),
        ("a,b\n", "#user=a,item=a", "column 'a' is given for both the user and the item"),
        ("user,item\n", "#colour=red", "bad column option 'colour=red'"),
    ],
)
def test_missing_or_ambiguous_columns_are_refused(
    tmp_path: Path, header: str, spec: str, needle: str
) -> None:
    # Prepare
    from fedrec.errors import FedrecError

    path = write(tmp_path / "log.csv", header + ",".join(["1"] * header.count(",")) + ",2\n")
    # Execute / Assert: one clear error naming the file (or spec) and what to do
    with pytest.raises(FedrecError, match=re.escape(needle)) as info:
        resolve_data(f"{path}{spec}")
    assert "log.csv" in str(info.value) and info.value.fix


def test_columns_are_refused_where_they_cannot_apply(tmp_path: Path) -> None:
    # Prepare
    from fedrec.errors import ConfigError

    write(tmp_path / "ml" / "u.data", "1\t2\t3\t4\n")
    # Execute / Assert: MovieLens files without a header, and synthetic data
    with pytest.raises(ConfigError, match=r"--user-col: u\.data is a MovieLens file"):
        resolve_data(f"{tmp_path / 'ml'}#user=a")
    with pytest.raises(ConfigError, match="not to synthetic data"):
        resolve_data("synthetic#item=b")


def test_cli_split_reads_own_columns_and_errors_name_the_flag(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from simulations.cli import main

    path = own_file(tmp_path / "log.csv", ("who", "what", "stars", "when"))
    base = ["split", "--data", str(path), "--item-col", "what"]
    # Execute
    ok = main([*base, "--user-col", "who", "--out", str(tmp_path / "o")])
    capsys.readouterr()
    bad = main([*base, "--user-col", "whom", "--out", str(tmp_path / "p")])
    err = capsys.readouterr().err
    # Assert
    assert ok == 0 and (tmp_path / "o" / "train.csv").exists()
    assert bad == 2 and err.count("\n") == 1 and "--user-col" in err and "'whom'" in err
    assert not (tmp_path / "p").exists()
