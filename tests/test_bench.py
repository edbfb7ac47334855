"""``fedrec bench``: the JSON has every key with sane types (toy sizes, no timing claims)."""

from __future__ import annotations

import json
import platform
from pathlib import Path

import pytest

from simulations.bench import HEADLINE, table
from simulations.cli import main
from simulations.scale import scale_log

KEYS = [key for key, _ in HEADLINE] + ["rss_mb_by_clients", "machine"]


@pytest.fixture(scope="module")
def bench_json(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    out = tmp_path_factory.mktemp("bench") / "bench.json"
    assert main(["bench", "--tiny", "--out", str(out)]) == 0
    result: dict[str, object] = json.loads(out.read_text())
    return result


def test_every_key_present_with_sane_types(bench_json: dict[str, object]) -> None:
    # Prepare / Execute: the module fixture ran `fedrec bench --tiny`
    # Assert
    for key in KEYS:
        assert key in bench_json, key
    for key, _ in HEADLINE:
        value = bench_json[key]
        assert isinstance(value, float) and value > 0, key
    rss = bench_json["rss_mb_by_clients"]
    assert isinstance(rss, dict) and list(rss) == ["20"]
    assert all(isinstance(v, float) and v > 0 for v in rss.values())


def test_machine_record(bench_json: dict[str, object]) -> None:
    machine = bench_json["machine"]
    assert isinstance(machine, dict)
    assert machine["cores"] >= 1 and machine["device"] == "cpu"
    assert set(machine["versions"]) >= {"torch", "flwr", "opacus"}
    # the DP timings ran with freed tensor memory kept in the heap (glibc on Linux)
    expected = "glibc mallopt" if platform.libc_ver()[0] == "glibc" else "default"
    assert str(machine["allocator"]).startswith(expected)
    assert "round" in table(bench_json)  # type: ignore[arg-type]


def test_scale_log_covers_catalog_and_is_seeded(tmp_path: Path) -> None:
    # Prepare / Execute
    a, b = scale_log(50, 300, 10, seed=1), scale_log(50, 300, 10, seed=1)
    # Assert
    assert a.equals(b)
    assert a["item"].nunique() == 300 and a["user"].nunique() == 50
    assert not a.duplicated(["user", "item"]).any()
    assert a.groupby("user").size().min() >= 5


def test_every_twin_train_time_recorded(bench_json: dict[str, object]) -> None:
    # Prepare / Execute: the module fixture ran `fedrec bench --tiny`
    from simulations.bench import TWIN_KINDS

    # Assert: each model's twin trained (wall and CPU seconds), on the plan's data
    for key in ("twin_train_seconds", "twin_train_cpu_seconds"):
        times = bench_json[key]
        assert isinstance(times, dict) and sorted(times) == sorted(TWIN_KINDS), key
        assert all(isinstance(v, float) and v > 0 for v in times.values()), key
    assert bench_json["twin_data"] == "synthetic:users=40,items=30"
