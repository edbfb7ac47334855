"""Splits follow the protocol exactly; split files round-trip with original ids."""

from __future__ import annotations

import math
from fractions import Fraction
from pathlib import Path

import numpy as np
import pytest

from fedrec.data import (
    Interactions,
    load_interactions,
    random_split,
    read_split,
    temporal_split,
    validation_split,
    write_split,
)
from fedrec.data.split import holdout_size
from simulations import cli


def protocol_reference(data: Interactions, seed: int, f: float) -> set[tuple[int, int]]:
    """The protocol written out naively: the test pairs it must produce."""
    rng = np.random.default_rng(seed)
    test: set[tuple[int, int]] = set()
    for u in range(data.n_users):
        items: list[int] = []
        for j in range(len(data)):
            if data.user[j] == u and data.item[j] not in items:
                items.append(int(data.item[j]))
        if len(items) < 5:
            continue
        perm = rng.permutation(len(items))
        k = math.ceil(Fraction(str(f)) * len(items))
        test |= {(u, items[p]) for p in perm[:k]}
    return test


def pairs(m) -> set[tuple[int, int]]:  # type: ignore[no-untyped-def]
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


def tiny(users: list[int], items: list[int], stamps: list[int] | None = None) -> Interactions:
    u_ids, u = np.unique(users, return_inverse=True)
    i_ids, i = np.unique(items, return_inverse=True)
    ts = None if stamps is None else np.asarray(stamps, dtype=np.int64)
    return Interactions(u.astype(np.int64), i.astype(np.int64), u_ids, i_ids, timestamp=ts)


def test_random_split_matches_protocol(synthetic_data: Interactions) -> None:
    # Execute
    split = random_split(synthetic_data, seed=7)
    # Assert
    assert pairs(split.test) == protocol_reference(synthetic_data, 7, 0.2)
    assert not pairs(split.train) & pairs(split.test)
    everything = set(zip(synthetic_data.user.tolist(), synthetic_data.item.tolist(), strict=True))
    assert pairs(split.train) | pairs(split.test) == everything


def test_random_split_is_deterministic_and_seeded(synthetic_data: Interactions) -> None:
    a, b = random_split(synthetic_data, seed=1), random_split(synthetic_data, seed=1)
    c = random_split(synthetic_data, seed=2)
    assert pairs(a.test) == pairs(b.test) and pairs(a.test) != pairs(c.test)


def test_small_users_and_repeated_pairs() -> None:
    # Prepare: user 1 has 4 distinct items (one repeated) -> all train; user 2 has 6
    data = tiny([1, 1, 1, 1, 1, 2, 2, 2, 2, 2, 2], [1, 2, 3, 1, 4, 1, 2, 3, 4, 5, 6])
    # Execute
    split = random_split(data, seed=0)
    # Assert
    assert split.test_items(0).size == 0 and split.train_items(0).tolist() == [0, 1, 2, 3]
    assert split.test_items(1).size == math.ceil(0.2 * 6) == 2
    assert 3 not in split.train_rows.tolist()  # the repeat is not a separate train row


def test_holdout_size_uses_exact_decimal() -> None:
    assert holdout_size(15, 0.2) == 3 and holdout_size(10, 0.3) == 3 and holdout_size(1, 0.2) == 1
    assert all(holdout_size(n, 0.2) == math.ceil(n / 5) for n in range(1, 3000))


def test_temporal_split_takes_latest_ties_by_line() -> None:
    # Prepare: the last two lines share the latest timestamp
    data = tiny([1] * 6, [1, 2, 3, 4, 5, 6], [10, 60, 30, 40, 60, 20])
    # Execute
    split = temporal_split(data, test_fraction=0.3)
    # Assert: ceil(0.3 * 6) = 2 -> items 2 and 5 (both at t=60)
    assert split.test_items(0).tolist() == [1, 4]


def test_validation_split_is_carved_from_train(synthetic_data: Interactions) -> None:
    split = random_split(synthetic_data, seed=0)
    val = validation_split(split, seed=0)
    assert not pairs(val.test) & pairs(split.test)
    assert pairs(val.train) | pairs(val.test) == pairs(split.train)
    assert not pairs(val.train) & pairs(val.test)


def test_validation_of_a_temporal_split_holds_out_the_latest_train_items() -> None:
    # Prepare: one user, items 0..9 seen at times 9..0 (item 0 last), so the file order
    # and the time order disagree; the temporal test takes the two latest (items 1, 0)
    log = tiny([0] * 10, list(range(10)), list(range(9, -1, -1)))
    split = temporal_split(log)
    # Execute
    val = validation_split(split, seed=0, test_fraction=0.25)
    # Assert: the validation items are the latest of the eight train items (3, 2), not a
    # random pair (a random holdout fails this for every seed but a 1-in-28 draw)
    assert sorted(split.test_items(0).tolist()) == [0, 1]
    assert sorted(val.test_items(0).tolist()) == [2, 3]
    assert sorted(val.train_items(0).tolist()) == [4, 5, 6, 7, 8, 9]
    assert val.method == "temporal-validation"


def test_split_files_round_trip_original_ids(tmp_path: Path) -> None:
    # Prepare
    lines = [f"u{k % 3},0{k}" for k in range(21)]
    src = tmp_path / "log.csv"
    src.write_text("user,item\n" + "\n".join(lines) + "\n")
    data = load_interactions(src)
    split = random_split(data, seed=0)
    # Execute
    write_split(split, tmp_path / "out")
    alone, against = read_split(tmp_path / "out"), read_split(tmp_path / "out", data)
    # Assert
    assert (tmp_path / "out" / "train.csv").read_text().startswith("user,item\nu0,00\n")
    assert np.array_equal(against.train.toarray(), split.train.toarray())
    assert np.array_equal(against.train_rows, split.train_rows)
    assert alone.data.item_ids.dtype == object and "00" in alone.data.item_ids.tolist()
    assert alone.train.nnz == split.train.nnz and alone.test.nnz == split.test.nnz


def test_cli_split_writes_files(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    monkeypatch.setattr(cli, "COMMANDS", ("split",))
    # Execute
    code = cli.main(
        ["split", "--data", "synthetic:users=30,items=20", "--out", str(tmp_path / "s")]
    )
    # Assert
    assert code == 0 and "wrote" in capsys.readouterr().out
    assert (tmp_path / "s" / "test.csv").read_text().splitlines()[0] == "user,item"


def ndcg_at_10(scores: np.ndarray, split) -> float:  # type: ignore[no-untyped-def]
    values = []
    for u in split.test_users():
        s = scores[u].astype(np.float64).copy()
        s[split.train_items(u)] = -np.inf
        top = np.argsort(-s, kind="stable")[:10]
        rel = set(split.test_items(u).tolist())
        dcg = sum(1 / np.log2(r + 2) for r, i in enumerate(top) if i in rel)
        ideal = sum(1 / np.log2(r + 2) for r in range(min(len(rel), 10)))
        values.append(dcg / ideal)
    return float(np.mean(values))


@pytest.mark.realdata
def test_ml100k_reference_numbers(ml100k_dir: Path) -> None:
    # Prepare
    split = random_split(load_interactions(ml100k_dir), seed=0)
    x = split.train.toarray().astype(np.float64)
    # Execute: popularity and EASE (Steck 2019), lambda = 500
    popularity = np.broadcast_to(x.sum(0), x.shape)
    p = np.linalg.inv(x.T @ x + 500 * np.eye(x.shape[1]))
    b = -p / np.diag(p)
    np.fill_diagonal(b, 0.0)
    # Assert
    assert len(split.test_users()) == 943
    assert ndcg_at_10(popularity, split) == pytest.approx(0.2167, abs=0.003)
    assert ndcg_at_10(x @ b, split) == pytest.approx(0.4505, abs=0.002)
