"""Serving on the device: the held global parameters and the top-k of a score vector.

Design rule: recommendations are computed on the device from the held global item
parameters and the *serving* user state; nothing about them leaves the device. The
popularity fallback uses the learned item bias (trained under the same mechanism as
every other item parameter), never raw counts (docs/DEVICE.md, "Recommendations").

The one-user model is built (torch) on first use only: an MF or iALS device reads its
bias and item vectors from the arrays (:mod:`fedrec.federated.serving`) and never
builds it to open, record or recommend.
"""

from __future__ import annotations

import dataclasses
import time
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from clients.store import ItemId
from fedrec.errors import ConfigError
from fedrec.federated.serving import UserState
from fedrec.federated.serving import item_bias as light_item_bias
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.recommend.similar import item_vectors, unit_rows

if TYPE_CHECKING:  # torch: imported when a model is built
    from fedrec.models.base import Arrays
    from fedrec.models.trainable import TrainableRecommender


def item_bias(model: TrainableRecommender, n_items: int) -> npt.NDArray[np.float32]:
    """Popularity signal: the learned item bias (the class's ``ITEM_BIAS``: MF ``b``,
    decoder bias of the AEs); zeros for a model without one."""
    from fedrec.models.base import item_side

    if model.ITEM_BIAS is None:
        return np.zeros(n_items, dtype=np.float32)
    param = item_side(model)[model.ITEM_BIAS]
    values: npt.NDArray[np.float32] = param.detach().numpy().reshape(n_items).astype(np.float32)
    return values


def catalog_rows(arrays: Sequence[npt.NDArray[np.float32]], ids: Sequence[object]) -> int:
    """The number of item rows of ``arrays``, checked against one original id per row."""
    n_items = int(arrays[0].shape[0]) if arrays and arrays[0].ndim else -1
    if n_items != len(ids):
        raise ConfigError(
            f"{len(ids)} item ids for global arrays of {n_items} rows",
            where="item_ids",
            fix="send one original id per item row",
        )
    return n_items


@dataclasses.dataclass
class HeldGlobal:
    """The held global item parameters; the one-user model is built on first use."""

    model_cfg: ModelConfig
    train_cfg: LocalTrainConfig
    ids: list[ItemId]
    row: dict[ItemId, int]
    arrays: Arrays
    seed: int
    bias: npt.NDArray[np.float32]
    unit_vectors: npt.NDArray[np.float64] | None
    _built: tuple[TrainableRecommender, UserState] | None = None

    @classmethod
    def build(
        cls,
        arrays: Arrays,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        ids: list[ItemId],
        seed: int,
    ) -> HeldGlobal:
        n_items = catalog_rows(arrays, ids)
        light_bias = light_item_bias(model_cfg.kind, arrays)  # None: read from the model
        vectors = unit_rows(item_vectors(model_cfg.kind, arrays))
        held = cls(
            model_cfg,
            train_cfg,
            ids,
            {i: r for r, i in enumerate(ids)},
            arrays,
            seed,
            np.zeros(n_items, dtype=np.float32) if light_bias is None else light_bias,
            vectors,
        )
        if light_bias is None:
            held.bias = item_bias(held.model, n_items)
        return held

    @property
    def model(self) -> TrainableRecommender:
        """The one-user model holding the arrays (built, with torch, on first use)."""
        return self._build()[0]

    @property
    def init_state(self) -> UserState:
        """The fresh user state of that model (``build_model(..., seed=seed)``)."""
        return self._build()[1]

    def _build(self) -> tuple[TrainableRecommender, UserState]:
        if self._built is None:
            from fedrec.models.base import get_user_state, set_item_arrays
            from fedrec.models.registry import build_model

            model = build_model(self.model_cfg, len(self.ids), 1, seed=self.seed)
            try:
                set_item_arrays(model, self.arrays)
            except ValueError as exc:
                raise ConfigError(
                    str(exc), where="global arrays", fix="send arrays of the model config's shapes"
                ) from exc
            model.eval()
            self._built = (model, get_user_state(model))
        return self._built


def top_k(
    scores: npt.NDArray[np.float32], excluded: npt.NDArray[np.int64] | None, k: int
) -> list[int]:
    """Rows of the ``k`` best scores, ties by lower row, skipping ``excluded`` rows."""
    masked = scores
    n_ok = len(scores)
    if excluded is not None and len(excluded):
        masked = scores.copy()
        masked[excluded] = -np.inf
        n_ok -= len(excluded)
    k = min(k, n_ok)
    if k <= 0:
        return []
    part = np.argpartition(-masked, k - 1)[:k]
    cands = np.flatnonzero(masked >= masked[part].min())  # every tie at the cut-off
    order = cands[np.lexsort((cands, -masked[cands]))][:k]
    return [int(r) for r in order]


def measure_recommend_latency(
    n_items: int, calls: int = 1000, *, dim: int = 32, history: int = 50, seed: int = 0
) -> dict[str, float]:
    """Latency of :meth:`DeviceClient.recommend` (k=10, seen items excluded), in ms.

    An MF device (``dim``) with a ``n_items`` catalog and ``history`` interactions, in a
    temporary store; one warm-up call, then ``calls`` timed calls. Also times
    :meth:`DeviceClient.record` (durable write + serving refresh) over 20 calls.
    ``p50_ms``/``p99_ms`` are wall-clock; ``cpu_*`` are this thread's CPU time, which
    excludes preemption by other processes (the wall-clock tail on a busy machine).
    """
    import tempfile

    from clients.device import DeviceClient
    from clients.device_round import RoundConfig
    from fedrec.models.registry import init_item_arrays

    cfg = RoundConfig(model=ModelConfig(kind="mf", dim=dim))
    rng = np.random.default_rng(seed)
    with (
        tempfile.TemporaryDirectory() as tmp,
        DeviceClient.open(Path(tmp) / "device.db", seed=seed) as device,
    ):
        device.set_global(init_item_arrays(cfg.model, n_items, seed=seed), cfg)
        device.record_many(rng.choice(n_items, size=min(history, n_items), replace=False))
        device.recommend(10)
        times, cpu = np.empty(calls), np.empty(calls)
        for i in range(calls):
            start, start_cpu = time.perf_counter(), time.thread_time()
            device.recommend(10)
            times[i] = time.perf_counter() - start
            cpu[i] = time.thread_time() - start_cpu
        record_times = []
        for item in rng.choice(n_items, size=20):
            start = time.perf_counter()
            device.record(int(item))
            record_times.append(time.perf_counter() - start)
    ms = times * 1e3
    return {
        "n_items": float(n_items),
        "calls": float(calls),
        "p50_ms": float(np.percentile(ms, 50)),
        "p99_ms": float(np.percentile(ms, 99)),
        "mean_ms": float(ms.mean()),
        "max_ms": float(ms.max()),
        "cpu_p50_ms": float(np.percentile(cpu * 1e3, 50)),
        "cpu_p99_ms": float(np.percentile(cpu * 1e3, 99)),
        "record_p50_ms": float(np.median(record_times) * 1e3),
    }
