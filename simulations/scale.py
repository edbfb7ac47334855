"""The scale run: a federated simulation with up to 100k simulated devices, and its peak RSS.

Design rule: memory must grow with the clients *per round*, not with the clients in
total. What a run keeps per user is on disk or made on demand: each device's state is
its own SQLite store under ``<run>/clients/``, created when the user is first sampled;
the in-process grid (:class:`simulations.inprocess.InProcessGrid`) keeps only node ids
and makes a node's ``Context`` on its first message; the final evaluation asks a
seeded sample of ``eval_users`` users (``final-eval-all = false``), not all 100k; the
server's EASE reference is skipped above 10,000 items (popularity only).

The run uses the in-process engine (the same ``ServerApp`` logic and ``ClientApp``,
without Ray): Flower's Ray simulation registers one virtual node per user and the
server's node discovery sends one ``query`` message per node (~5 ms each there, ~8
minutes for 100k nodes), which is what this module avoids; the in-process grid still
sends the 100k discovery queries, through the ``ClientApp``.

The data are a light synthetic log (:func:`scale_log`), written once as Parquet in the
run directory, because :func:`fedrec.data.synthetic.synthetic` draws one Gumbel key per
user and item (2.7e9 draws for 100k x 27k). Peak RSS is measured per run in a child
process (:func:`measure_rss`: ``os.wait4`` rusage of that child alone).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterable, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
from flwr.app import Message

from simulations.inprocess import InProcessGrid

SCALE_ITEMS = 27_000
_CLUSTERS = 4
_ZIPF = 0.8


@dataclass(frozen=True)
class ScaleSpec:
    """One scale run: ``users`` devices, ``items`` catalog, ``rounds`` of ``clients_per_round``."""

    users: int
    items: int = SCALE_ITEMS
    clients_per_round: int = 100
    rounds: int = 2
    eval_users: int = 100
    mean_interactions: int = 30
    dim: int = 32
    seed: int = 0
    shape: str = ""
    """A :data:`fedrec.data.shapes.SHAPES` name: that catalog's shape scaled to ``users``
    (``items`` is then the shape's), trained with ``fedrec simulate``'s MF defaults and
    evaluated at the end on every test user, as ``fedrec simulate`` does;
    ``""``: :func:`scale_log` with ``items`` and the plain settings of the 27k entry."""


def scale_log(users: int, items: int, mean: int, seed: int) -> pd.DataFrame:
    """A synthetic log in O(interactions): Zipf popularity within a few item clusters.

    Each user belongs to one of ``_CLUSTERS`` clusters and draws about ``mean``
    distinct items, four in five from its cluster's items and the rest from the
    whole catalog, each by Zipf-like popularity (inverse CDF, then duplicates
    dropped); every item is also given to one user (item ``i`` to user ``i mod users``) so
    the catalog has all ``items``. Columns ``user, item, rating, timestamp`` (1-based ids).
    """
    rng = np.random.default_rng(seed)
    pop = np.arange(1, items + 1, dtype=np.float64) ** -_ZIPF
    item_cluster = rng.integers(0, _CLUSTERS, items)
    cdfs = []
    for c in range(_CLUSTERS):
        w = pop * np.where(item_cluster == c, 4.0, 0.25)
        cdfs.append(np.cumsum(w) / w.sum())
    sizes = np.clip(rng.poisson(mean, users), 5, items // 2)
    user_cluster = rng.integers(0, _CLUSTERS, users)
    user = np.repeat(np.arange(users, dtype=np.int64), sizes * 2)  # draw 2x, keep distinct
    u = rng.random(len(user))
    item = np.empty(len(user), dtype=np.int64)
    for c in range(_CLUSTERS):
        sel = user_cluster[user] == c
        item[sel] = np.minimum(np.searchsorted(cdfs[c], u[sel]), items - 1)
    pair = np.sort(user * items + item)  # by user, then item
    pair = pair[np.concatenate(([True], np.diff(pair) != 0))]  # distinct pairs
    user, item = pair // items, pair % items
    starts = np.searchsorted(user, np.arange(users))
    rank = np.arange(len(pair)) - starts[user]  # position within the user
    keep = rank < sizes[user]
    # every item once more, item i to user i mod users, so the catalog is all ``items``
    cover = np.arange(items, dtype=np.int64)
    pair = np.unique(np.concatenate([pair[keep], (cover % users) * items + cover]))
    user, item = pair // items, pair % items
    order = rng.permutation(len(user))
    return pd.DataFrame(
        {
            "user": user[order] + 1,
            "item": item[order] + 1,
            "rating": rng.integers(1, 6, len(user)).astype(np.float64),
            "timestamp": 1_600_000_000 + np.arange(len(user), dtype=np.int64),
        }
    )


class TimedGrid(InProcessGrid):
    """The in-process grid, recording seconds and messages per message type."""

    def __init__(self, n_nodes: int, seed: int = 0) -> None:
        super().__init__(n_nodes, seed)
        self.seconds: dict[str, float] = {}
        self.messages: dict[str, int] = {}

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        batch = list(messages)
        kind = batch[0].metadata.message_type if batch else "none"
        start = time.perf_counter()
        out = super().send_and_receive(batch, timeout=timeout)
        self.seconds[kind] = self.seconds.get(kind, 0.0) + time.perf_counter() - start
        self.messages[kind] = self.messages.get(kind, 0) + len(batch)
        return out


def peak_rss_mb() -> float:
    """This process's peak resident set size so far (``VmHWM``), in MB."""
    for line in Path("/proc/self/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    import resource

    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def run_scale(spec: ScaleSpec, out: Path) -> dict[str, Any]:
    """Run ``spec`` in process under ``out`` and return timings, metrics and peak RSS."""
    from fedrec.models.config import ModelConfig
    from server.checkpoint import load_checkpoint
    from server.server_app import run_server
    from server.settings import RunSettings
    from simulations.evaluation import device_evaluator
    from simulations.run_dir import create_run_dir

    out.mkdir(parents=True, exist_ok=True)
    t0 = time.perf_counter()
    data = out / "data.parquet"
    if spec.shape:
        from fedrec.data.shapes import SHAPES, shaped_log

        shape = SHAPES[spec.shape]
        shaped_log(shape.scaled(spec.users / shape.users), spec.seed).to_parquet(data)
    else:
        scale_log(spec.users, spec.items, spec.mean_interactions, spec.seed).to_parquet(data)
    t_data = time.perf_counter()
    if spec.shape:  # `fedrec simulate`'s defaults (the MF preset)
        # the last evaluation covers every test user, as `fedrec simulate`'s
        settings = RunSettings.from_run_config({
            "data": str(data.resolve()), "model": "mf", "model.dim": spec.dim,
            "num-server-rounds": spec.rounds, "clients-per-round": spec.clients_per_round,
            "seed": spec.seed, "eval-clients": spec.eval_users, "final-eval-all": True,
            "run-dir": str((out / "run").resolve()),
        })  # fmt: skip
    else:
        settings = RunSettings(
            data=str(data.resolve()),
            model=ModelConfig(kind="mf", dim=spec.dim),
            rounds=spec.rounds,
            clients_per_round=spec.clients_per_round,
            seed=spec.seed,
            eval_clients=spec.eval_users,
            final_eval_all=False,
            run_dir=str((out / "run").resolve()),
        )
    create_run_dir(Path(settings.run_dir), settings)
    grid = TimedGrid(spec.users, seed=spec.seed)
    rounds: list[float] = []
    evals: list[float] = []
    last_round = [time.perf_counter(), time.process_time()]

    def on_round(rec: dict[str, Any]) -> None:
        rounds.append(float(rec["seconds"]))
        if rec.get("eval_seconds") is not None:
            evals.append(float(rec["eval_seconds"]))
        last_round[:] = [time.perf_counter(), time.process_time()]

    metrics = run_server(grid, settings, on_round, evaluator=device_evaluator(settings))
    # after the last round's record: the references (popularity, EASE or item-kNN) and
    # metrics.json; the last round's evaluation is inside the round
    after_rounds = [time.perf_counter() - last_round[0], time.process_time() - last_round[1]]
    store_files = list((Path(settings.run_dir) / "clients").glob("*/*.sqlite*"))
    stores = sum(1 for f in store_files if f.suffix == ".sqlite")
    ckpt = load_checkpoint(Path(settings.run_dir))
    arrays = [] if ckpt is None else ckpt.item_arrays
    upload = sum(int(a.nbytes) for a in arrays)  # dense item-side arrays, both ways
    return {
        "spec": asdict(spec),
        "engine": "inprocess",
        "peak_rss_mb": peak_rss_mb(),
        "seconds_total": time.perf_counter() - t0,
        "seconds_data": t_data - t0,
        "seconds_by_message_type": grid.seconds,
        "messages_by_type": grid.messages,
        "round_seconds": rounds,
        "seconds_per_round": float(np.mean(rounds)) if rounds else None,
        "eval_seconds": evals,
        "eval_users": spec.eval_users,
        "reference_seconds": after_rounds[0],
        "reference_cpu_seconds": after_rounds[1],
        "cpu_seconds_total": time.process_time(),
        "bytes_per_device_per_round": {"download": upload, "upload": upload},
        "item_array_shapes": [list(a.shape) for a in arrays],
        "device_stores": stores,
        "device_store_bytes": sum(f.stat().st_size for f in store_files),
        "contexts_kept": len(grid.contexts),
        "users_evaluated": metrics.get("users_evaluated"),
        "ndcg@10": metrics.get("ndcg@10"),
        "reference": {k: v.get("ndcg@10") for k, v in metrics.get("reference", {}).items()},
    }


def measure_rss(spec: ScaleSpec, out: Path, *, timeout: float = 1800.0) -> dict[str, Any]:
    """Run ``spec`` in a child process; its report plus the child's own peak RSS.

    ``peak_rss_mb`` is the child's own ``VmHWM`` (the figure to use);
    ``peak_rss_mb_rusage`` is ``ru_maxrss`` from ``os.wait4`` on that child, which Linux
    carries across fork+exec, so it is never below the parent's RSS at fork time.
    """
    out.mkdir(parents=True, exist_ok=True)
    args = [sys.executable, "-m", "simulations.scale", "--out", str(out)]
    for key, value in asdict(spec).items():
        args += [f"--{key.replace('_', '-')}", str(value)]
    root = str(Path(__file__).resolve().parents[1])
    env = {
        **os.environ,
        "PYTHONPATH": os.pathsep.join(filter(None, [root, os.environ.get("PYTHONPATH")])),
    }
    log = out / "scale.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(args, stdout=fh, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + timeout
        while True:
            pid, status, usage = os.wait4(proc.pid, os.WNOHANG)
            if pid:
                break
            if time.monotonic() > deadline:
                proc.kill()
                pid, status, usage = os.wait4(proc.pid, 0)
                break
            time.sleep(0.2)
    proc.returncode = os.waitstatus_to_exitcode(status)
    text = log.read_text()
    if proc.returncode != 0:
        raise RuntimeError(
            f"scale run {spec.users} users failed ({proc.returncode}):\n{text[-2000:]}"
        )
    report: dict[str, Any] = json.loads(text.strip().splitlines()[-1])
    report["peak_rss_mb_rusage"] = usage.ru_maxrss / 1024
    return report


def main(argv: Sequence[str] | None = None) -> None:
    """``python -m simulations.scale --users N --out DIR``: one scale run, JSON on stdout."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--out", type=Path, required=True)
    defaults = ScaleSpec(users=0)
    for key, value in asdict(defaults).items():
        parser.add_argument(f"--{key.replace('_', '-')}", type=type(value), default=value)
    args = parser.parse_args(argv)
    spec = ScaleSpec(**{k: getattr(args, k) for k in asdict(defaults)})
    os.environ.setdefault("FLWR_TELEMETRY_ENABLED", "0")
    import logging

    logging.getLogger("flwr").setLevel(logging.ERROR)
    print(json.dumps(run_scale(spec, args.out)), flush=True)


if __name__ == "__main__":
    main()
