"""Real-time on the device: the time from ``record()`` to a new top-10 (sequential model).

A sequential model has no user state to refit: a new interaction enters the device's
sequence and the next :meth:`~clients.device.DeviceClient.recommend` re-encodes it
(docs/DEVICE.md, "Real-time updates"). :func:`measure_record_to_top10` times that path
end to end, the durable write of ``record()`` included.
"""

from __future__ import annotations

import tempfile
import time
from pathlib import Path

import numpy as np

from fedrec.models.config import ModelConfig


def measure_record_to_top10(
    n_items: int,
    calls: int = 200,
    *,
    model: ModelConfig | None = None,
    history: int = 50,
    seed: int = 0,
) -> dict[str, float]:
    """Milliseconds from :meth:`DeviceClient.record` to the new :meth:`recommend` (k=10).

    A device holding ``model`` (default: the SASRec preset) over an ``n_items`` catalog
    and ``history`` interactions, in a temporary store; one warm-up call, then ``calls``
    timed ``record(item); recommend(10)`` pairs, each checked to change the top-10 or its
    scores. ``p50_ms``/``p99_ms``: wall clock of the pair; ``top10_*``: the recommend
    part alone (the model's encoding and ranking); ``cpu_*``: this thread's CPU time of
    the pair (excludes preemption by other processes).
    """
    from clients.device import DeviceClient
    from clients.device_round import RoundConfig
    from fedrec.federated.presets import federated_preset
    from fedrec.models.registry import init_item_arrays

    if model is None:
        model, train, _ = federated_preset("sasrec")
    else:
        _, train, _ = federated_preset(model.kind)
    cfg = RoundConfig(model=model, train=train)
    rng = np.random.default_rng(seed)
    items = rng.integers(0, n_items, size=calls + 1)
    with (
        tempfile.TemporaryDirectory() as tmp,
        DeviceClient.open(Path(tmp) / "device.db", seed=seed) as device,
    ):
        device.set_global(init_item_arrays(model, n_items, seed=seed), cfg)
        device.record_many(rng.choice(n_items, size=min(history, n_items), replace=False))
        before = device.recommend(10)
        total, top10, cpu = np.empty(calls), np.empty(calls), np.empty(calls)
        changed = 0
        for i, item in enumerate(items):
            start, start_cpu = time.perf_counter(), time.thread_time()
            device.record(int(item))
            mid = time.perf_counter()
            recs = device.recommend(10)
            end, end_cpu = time.perf_counter(), time.thread_time()
            changed += [(r.item, r.score) for r in recs] != [(r.item, r.score) for r in before]
            before = recs
            if i == 0:
                continue  # warm-up
            total[i - 1], top10[i - 1], cpu[i - 1] = end - start, end - mid, end_cpu - start_cpu
    ms = total * 1e3
    return {
        "n_items": float(n_items),
        "calls": float(calls),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "top10_p50_ms": float(np.percentile(top10 * 1e3, 50)),
        "top10_p99_ms": float(np.percentile(top10 * 1e3, 99)),
        "cpu_p50_ms": float(np.percentile(cpu * 1e3, 50)),
        "cpu_p99_ms": float(np.percentile(cpu * 1e3, 99)),
        "changed_fraction": changed / len(items),
    }
