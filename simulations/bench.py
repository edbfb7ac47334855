"""``fedrec bench``: every performance figure of docs/BENCHMARKS.md, measured in one run.

Design rule: each figure is a ratio against a baseline measured in the same run, on
the same machine and load, wherever a baseline exists (DP step vs plain step, training
round vs Flower no-op round); the absolute figures (evaluation throughput, peak RSS,
recommendation latency) sit beside the machine record and its load average. Peak RSS
of a simulation is read in a child process per client count
(:func:`simulations.scale.measure_rss`), so one run's memory cannot hide another's.

``quick`` keeps every key with fewer repetitions (2 rounds of 10 clients for the RSS
runs, the 100k entry kept). ``tiny`` is for tests only: toy sizes under the same keys.
"""

from __future__ import annotations

import contextlib
import json
import os
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import numpy as np
import torch

from fedrec.bench.dp_overhead import dp_overhead
from fedrec.bench.eval_speed import eval_users_per_s
from fedrec.bench.machine import load_average, machine_info
from fedrec.models.config import ModelConfig
from fedrec.training.allocator import steady_allocator
from server.settings import RunSettings
from simulations.scale import SCALE_ITEMS, ScaleSpec, measure_rss

DP_KINDS = {"mf": "mf", "ae": "cdae", "multvae": "multvae"}
DP_SIZES = (1682, 27000)
RSS_USERS = (1000, 10_000, 100_000)
ML100K = "synthetic:users=943,items=1682,mean=106"  # ml-100k's shape (~106 per user)
CLIENT_THREADS = 1
"""Torch threads of the timed client steps: one, like each client actor in simulation."""


@dataclass(frozen=True)
class BenchPlan:
    """Sizes and repetitions of one bench run (see :func:`plan`)."""

    dp_repeats: int
    dp_quick: bool
    dp_sizes: tuple[int, ...]
    round_data: str
    round_clients: int
    round_repeats: int
    round_engine: str
    eval_shape: tuple[int, int]
    eval_repeats: int
    rss_users: tuple[int, ...]
    rss_items: int
    rss_clients: int
    rss_rounds: int
    rss_eval_users: int
    rec_items: int
    rec_calls: int


def plan(*, quick: bool = False, tiny: bool = False) -> BenchPlan:
    """The full plan, the ``--quick`` one, or the test-only ``tiny`` one."""
    full = BenchPlan(15, False, DP_SIZES, ML100K, 100, 3, "ray", (6040, 3706), 3,
                     RSS_USERS, SCALE_ITEMS, 100, 2, 100, SCALE_ITEMS, 2000)  # fmt: skip
    if tiny:
        return replace(full, dp_repeats=1, dp_quick=True, dp_sizes=(40, 60),
                       round_data="synthetic:users=40,items=30", round_clients=8,
                       round_repeats=1, round_engine="inprocess", eval_shape=(60, 40),
                       eval_repeats=1, rss_users=(20,), rss_items=30, rss_clients=4,
                       rss_eval_users=5, rec_items=50, rec_calls=20)  # fmt: skip
    if quick:
        return replace(full, dp_repeats=5, round_repeats=1, eval_repeats=1, rss_clients=10,
                       rss_eval_users=20, rec_calls=500)  # fmt: skip
    return full


@contextlib.contextmanager
def torch_threads(n: int) -> Iterator[None]:
    """Run the block with ``n`` torch intra-op threads, then restore the previous count."""
    before = torch.get_num_threads()
    torch.set_num_threads(n)
    try:
        yield
    finally:
        torch.set_num_threads(before)


def bench_dp(p: BenchPlan, device: str) -> dict[str, Any]:
    """``dp_overhead_<mf|ae|multvae>_<items>``: DP step / plain step (wall-clock medians).

    Both steps run on :data:`CLIENT_THREADS` torch thread(s), as a client does in a
    simulation (``clients/client_app.py``). With intra-op threads on a busy machine
    every large tensor operation waits for a preempted thread, and the DP step (dense
    noise: about ten passes over all parameters) has more of them than the plain step.
    """
    out: dict[str, Any] = {}
    with torch_threads(CLIENT_THREADS):
        for key, kind in DP_KINDS.items():
            for name, n in zip(DP_SIZES, p.dp_sizes, strict=True):
                r = dp_overhead(kind, n, device=device, repeats=p.dp_repeats, quick=p.dp_quick)
                r["torch_threads"] = float(CLIENT_THREADS)
                out[f"dp_overhead_{key}_{name}"] = r["dp_overhead"]
                out.setdefault("dp_overhead_detail", {})[f"{key}_{name}"] = r
    return out


def bench_round(p: BenchPlan, device: str, workdir: Path) -> dict[str, Any]:
    """``round_vs_noop``: a training round / a Flower no-op round, same cohort and payload."""
    del device  # clients train on the CPU in simulation
    settings = RunSettings(
        data=p.round_data,
        model=ModelConfig(kind="mf"),
        clients_per_round=p.round_clients,
        run_dir=str(workdir / "round"),
    )
    if p.round_engine == "ray":
        from simulations.simulation import time_noop_vs_train

        r = time_noop_vs_train(settings, repeats=p.round_repeats)
    else:
        r = noop_vs_train_inprocess(settings, repeats=p.round_repeats)
    return {
        "round_vs_noop": r["train_seconds"] / r["noop_seconds"],
        "round_vs_noop_detail": {**r, "engine": p.round_engine, "data": p.round_data},
    }


def noop_vs_train_inprocess(settings: RunSettings, *, repeats: int = 1) -> dict[str, float]:
    """:func:`simulations.simulation.time_noop_vs_train` on the in-process grid (no Ray)."""
    from flwr.app import ArrayRecord

    from fedrec.models.registry import init_item_arrays
    from server.sampling import discover_users, train_cohort
    from server.settings import load_split
    from simulations.inprocess import InProcessGrid
    from simulations.simulation import _timed_round, absolute

    settings = absolute(settings)
    split = load_split(settings)
    grid = InProcessGrid(split.n_users, seed=settings.seed)
    user_nodes = discover_users(grid, split.n_users, timeout=settings.round_timeout)
    eligible = np.flatnonzero(np.diff(split.train.indptr) > 0).astype(np.int64)
    cohort = train_cohort(eligible, settings.clients_per_round, 1, settings.seed)
    nodes = [user_nodes[int(u)] for u in cohort]
    arrays = ArrayRecord(init_item_arrays(settings.model, split.n_items, seed=settings.seed))
    times: dict[str, list[float]] = {"noop": [], "train": []}
    for i, kind in enumerate(["train"] + ["noop", "train"] * repeats):
        t = _timed_round(grid, nodes, arrays, settings, noop=kind == "noop", rnd=i + 1)
        if i:
            times[kind].append(t)
    noop, train = statistics.median(times["noop"]), statistics.median(times["train"])
    return {"noop_seconds": noop, "train_seconds": train, "ratio": noop / train,
            "clients": float(len(nodes))}  # fmt: skip


def bench_eval(p: BenchPlan, device: str) -> dict[str, Any]:
    """``eval_users_per_s``: full-ranking evaluation throughput on MF scores."""
    users, items = p.eval_shape
    r = eval_users_per_s(users, items, repeats=p.eval_repeats, device=device)
    return {"eval_users_per_s": r["users_per_s"], "eval_detail": r}


def bench_rss(p: BenchPlan, workdir: Path) -> dict[str, Any]:
    """``rss_mb_by_clients``: peak RSS of a child-process simulation per user count."""
    by, detail = {}, {}
    for users in p.rss_users:
        spec = ScaleSpec(users=users, items=p.rss_items, clients_per_round=p.rss_clients,
                         rounds=p.rss_rounds, eval_users=p.rss_eval_users)  # fmt: skip
        r = measure_rss(spec, workdir / f"rss-{users}")
        # the child's own VmHWM: Linux carries ru_maxrss across fork+exec, so the
        # wait4 figure is at least the parent's RSS at fork time
        by[str(users)] = round(float(r["peak_rss_mb"]), 1)
        detail[str(users)] = r
    return {"rss_mb_by_clients": by, "rss_detail": detail}


LARGE_SHAPE = "books"
"""The large-catalog entry's shape (:data:`fedrec.data.shapes.SHAPES`): 340k items."""


def large_spec(*, tiny: bool = False) -> ScaleSpec:
    """The large-catalog run: 105k users x 340k items (Book-Crossing's shape), MF with
    ``fedrec simulate``'s defaults for ``--rounds 2 --clients-per-round 100`` (MF, as
    those flags select), 100 users evaluated after round 1 and every test user (11,348)
    after the last (``tiny``, tests only: the same shape at 1%: 1,050 users x 3,400
    items)."""
    if tiny:
        return ScaleSpec(users=1050, clients_per_round=10, rounds=2, eval_users=20,
                         shape=LARGE_SHAPE)  # fmt: skip
    return ScaleSpec(users=105_000, clients_per_round=100, rounds=2, eval_users=100,
                     shape=LARGE_SHAPE)  # fmt: skip


def bench_large(workdir: Path, *, tiny: bool = False) -> dict[str, Any]:
    """``large_catalog``: peak RSS, seconds per round and per evaluation, bytes per device.

    One child process (:func:`simulations.scale.measure_rss`) runs :func:`large_spec`;
    the evaluation figure is the harness's final evaluation of every test user, in
    batches (``eval_seconds``, wall, for ``eval_users`` users;
    ``eval_seconds_per_user`` = seconds / users); ``reference_seconds`` (wall) and
    ``reference_cpu_seconds``: after the last round, the references and metrics.json.
    """
    spec = large_spec(tiny=tiny)
    r = measure_rss(spec, workdir / "large", timeout=3600.0)
    evals = r.get("eval_seconds") or []
    last_eval = float(evals[-1]) if evals else None
    evaluated = int(r.get("users_evaluated") or 0)
    entry = {
        "users": spec.users,
        "items": r.get("item_array_shapes", [[0]])[0][0],
        "peak_rss_mb": round(float(r["peak_rss_mb"]), 1),
        "seconds_per_round": r.get("seconds_per_round"),
        "eval_seconds": last_eval,
        "eval_users": evaluated,
        "eval_seconds_per_user": None
        if last_eval is None or not evaluated
        else last_eval / evaluated,
        "bytes_per_device_per_round": r.get("bytes_per_device_per_round"),
        "device_stores": r.get("device_stores"),
        "device_store_bytes": r.get("device_store_bytes"),
        "ndcg@10": r.get("ndcg@10"),
        "reference_ndcg@10": r.get("reference"),
        "reference_seconds": r.get("reference_seconds"),
        "reference_cpu_seconds": r.get("reference_cpu_seconds"),
    }
    return {"large_catalog": entry, "large_catalog_detail": r}


def bench_recommend(p: BenchPlan) -> dict[str, Any]:
    """``recommend_p99_ms_27000``: on-device ``DeviceClient.recommend`` p99 latency."""
    from clients.serving import measure_recommend_latency

    r = measure_recommend_latency(p.rec_items, calls=p.rec_calls)
    return {"recommend_p99_ms_27000": r["p99_ms"], "recommend_detail": r}


def bench_record_top10(p: BenchPlan) -> dict[str, Any]:
    """``record_to_top10_p99_ms_3706``: a SASRec device's ``record()`` to its new top-10
    (the durable write included) at ml-1m's catalog (:mod:`clients.realtime`)."""
    from clients.realtime import measure_record_to_top10

    with torch_threads(CLIENT_THREADS):
        r = measure_record_to_top10(p.eval_shape[1], calls=min(p.rec_calls, 500))
    return {"record_to_top10_p99_ms_3706": r["p99_ms"], "record_to_top10_detail": r}


TWIN_KINDS = ("mf", "cdae", "multvae", "ials", "ncf")
"""The models whose centralized twin :func:`bench_twins` times."""


def bench_twins(p: BenchPlan) -> dict[str, Any]:
    """``twin_train_seconds``: each model's centralized twin (``fedrec baseline --model
    KIND``'s training, :func:`fedrec.training.centralized.train_centralized` with its
    preset) trained on ``p.round_data`` (ml-100k's shape), wall and CPU seconds of the
    training alone, evaluation excluded (issue 17 item 5: under 60 s each)."""
    from fedrec.data.resolve import resolve_data
    from fedrec.data.split import random_split
    from fedrec.training.centralized import central_preset, train_centralized

    split = random_split(resolve_data(p.round_data), seed=0)
    wall: dict[str, float] = {}
    cpu: dict[str, float] = {}
    for kind in TWIN_KINDS:
        model, train = central_preset(kind)
        start, start_cpu = time.perf_counter(), time.process_time()
        train_centralized(model, train, split, seed=0)
        wall[kind] = round(time.perf_counter() - start, 2)
        cpu[kind] = round(time.process_time() - start_cpu, 2)
    return {"twin_train_seconds": wall, "twin_train_cpu_seconds": cpu, "twin_data": p.round_data}


def run_bench(
    out: Path,
    *,
    quick: bool = False,
    device: str = "cpu",
    tiny: bool = False,
    large: bool = False,
    workdir: Path | None = None,
    log: Callable[[str], None] = print,
) -> dict[str, Any]:
    """Measure every figure, write ``out`` (JSON, atomically) and return it.

    ``large`` adds the large-catalog entry (:func:`bench_large`; minutes, so opt-in).
    """
    p = plan(quick=quick, tiny=tiny)
    machine = {**machine_info(device), "allocator": steady_allocator()}
    result: dict[str, Any] = {"quick": quick, "tiny": tiny, "large": large, "machine": machine}
    with tempfile.TemporaryDirectory(prefix="fedrec-bench-", dir=workdir) as tmp:
        steps: list[tuple[str, Callable[[], dict[str, Any]]]] = [
            ("dp overhead", lambda: bench_dp(p, device)),
            ("round vs no-op", lambda: bench_round(p, device, Path(tmp))),
            ("evaluation", lambda: bench_eval(p, device)),
            ("peak RSS", lambda: bench_rss(p, Path(tmp))),
            ("recommend", lambda: bench_recommend(p)),
            ("record to top-10", lambda: bench_record_top10(p)),
            ("centralized twins", lambda: bench_twins(p)),
        ]
        if large:
            steps.append(("large catalog", lambda: bench_large(Path(tmp), tiny=tiny)))
        seconds: dict[str, float] = {}
        for name, step in steps:
            log(f"bench: {name} ...")
            start = time.perf_counter()
            result.update(step())
            seconds[name] = round(time.perf_counter() - start, 1)
    result["seconds"] = seconds
    result["load_average_end"] = load_average()
    _atomic_json(out, result)
    return result


def _atomic_json(path: Path, payload: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    with os.fdopen(fd, "w") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")
    os.replace(tmp, path)


HEADLINE = (
    ("dp_overhead_mf_1682", "<= 2.0"),
    ("dp_overhead_mf_27000", "<= 2.0"),
    ("dp_overhead_ae_1682", "<= 3.0"),
    ("dp_overhead_ae_27000", "<= 3.0"),
    ("dp_overhead_multvae_1682", ""),
    ("dp_overhead_multvae_27000", ""),
    ("round_vs_noop", "<= 1.5"),
    ("eval_users_per_s", ""),
    ("recommend_p99_ms_27000", "< 5"),
    ("record_to_top10_p99_ms_3706", "< 10"),
)


def table(result: dict[str, Any]) -> str:
    """The short text table ``fedrec bench`` prints."""
    lines = [f"{'figure':28s} {'value':>12s}  target"]
    for key, target in HEADLINE:
        lines.append(f"{key:28s} {float(result[key]):12.3f}  {target}")
    for users, mb in result["rss_mb_by_clients"].items():
        lines.append(f"{'rss_mb_by_clients[' + users + ']':28s} {mb:12.1f}  < 8192 (100000)")
    big = result.get("large_catalog")
    if big:
        down = (big.get("bytes_per_device_per_round") or {}).get("upload", 0) / 1e6
        lines.append(f"{'large_catalog peak_rss_mb':28s} {big['peak_rss_mb']:12.1f}  < 8192")
        lines.append(f"{'large_catalog s/round':28s} {float(big['seconds_per_round']):12.2f}")
        lines.append(f"{'large_catalog eval s (all)':28s} {float(big['eval_seconds'] or 0):12.1f}"
                     f"  < 120 ({big['eval_users']} test users)")  # fmt: skip
        lines.append(f"{'large_catalog eval s/user':28s} "
                     f"{float(big['eval_seconds_per_user'] or 0):12.4f}")  # fmt: skip
        lines.append(f"{'large_catalog MB/device/round':28s} {down:12.1f}  (each way)")
        lines.append(f"{'large_catalog reference s':28s} "
                     f"{float(big.get('reference_seconds') or 0):12.1f}"
                     f"  ({float(big.get('reference_cpu_seconds') or 0):.1f} CPU s)")  # fmt: skip
    m = result["machine"]
    lines.append(f"machine: {m['cpu']}, {m['cores']} cores, {m['memory_gib']} GiB, "
                 f"device {m['device']}, load {m['load_average']} -> "
                 f"{result['load_average_end']}")  # fmt: skip
    return "\n".join(lines)
