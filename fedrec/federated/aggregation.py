"""Server-side aggregation of item-side arrays, in pure numpy with explicit state.

Design rule: a server optimizer is a small object whose whole state is a flat
``dict[str, np.ndarray]`` (:meth:`ServerOptimizer.state_dict`), so a checkpoint is one
``np.savez`` and a resumed run continues bit-for-bit. Client uploads are averaged with
*uniform* weights by default: weighting by example count (McMahan et al. 2017) is an
opt-in, because the count itself is private and would leak through the weights.

- FedAvg (McMahan et al. 2017): ``x <- x + eta (mean_k x_k - x)``, ``eta = 1``.
- FedProx (Li et al. 2020): FedAvg on the server; the proximal term is client-side.
- FedAdam (Reddi et al., ICLR 2021, Alg. 2): Adam on the pseudo-gradient
  ``Delta = mean_k x_k - x`` without bias correction, as in the paper (:class:`FedAdam`
  says what that does to the early steps), ``tau`` the adaptivity.
- Server learning-rate schedules (:class:`ScheduledOptimizer`): constant, a step
  decay late in the run, or cosine decay over the planned rounds (Loshchilov & Hutter,
  ICLR 2017). A smaller server step at the end averages out the noise of the sampled
  cohorts in a partial-participation run.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError

if TYPE_CHECKING:  # torch: not needed to read STRATEGIES or ServerConfig (the CLI parser)
    from fedrec.models.base import Arrays

STRATEGIES = ("fedavg", "fedprox", "fedadam")
LR_SCHEDULES = ("constant", "step", "cosine")
FEDADAM_LR = 0.1
State = dict[str, npt.NDArray[np.generic]]


@dataclass(frozen=True)
class ServerConfig:
    """Server-side aggregation settings.

    Attributes
    ----------
    strategy
        ``"fedavg"``, ``"fedprox"`` (= FedAvg on the server) or ``"fedadam"``.
    server_lr
        Server learning rate ``eta``; ``None`` = the strategy's default (FedAvg/FedProx
        1.0, i.e. plain averaging; FedAdam :data:`FEDADAM_LR`).
    beta1, beta2, tau
        FedAdam moments and adaptivity (Reddi et al. 2021).
    weighted
        Weight clients by their example count. Leaks the count: off by default.
    lr_schedule
        ``"constant"``; ``"step"``: ``eta`` until round ``decay_at * T``, then
        ``floor * eta``; ``"cosine"``: ``eta * (floor + (1 - floor) (1 + cos(pi t / T)) / 2)``
        at round ``t`` of ``T``.
    lr_floor
        The final fraction of ``eta`` (step and cosine schedules).
    lr_decay_at
        The fraction of the planned rounds after which the step schedule decays.
    """

    strategy: str = "fedadam"
    server_lr: float | None = None
    beta1: float = 0.9
    beta2: float = 0.99
    tau: float = 1e-3
    weighted: bool = False
    lr_schedule: str = "constant"
    lr_floor: float = 0.3
    lr_decay_at: float = 0.7

    def __post_init__(self) -> None:
        for name, known in (("strategy", STRATEGIES), ("lr_schedule", LR_SCHEDULES)):
            if getattr(self, name) not in known:
                raise ConfigError(
                    f"unknown {name.replace('_', ' ')} {getattr(self, name)!r}",
                    where=f"server.{name}",
                    fix=f"use one of {', '.join(known)}",
                )
        for name in ("lr_floor", "lr_decay_at"):
            if not 0.0 <= getattr(self, name) <= 1.0:
                raise ConfigError(
                    f"must be in [0, 1], got {getattr(self, name)}",
                    where=f"server.{name}",
                    fix="give a fraction of the server learning rate / of the rounds",
                )
        for name in ("server_lr", "tau"):
            if (getattr(self, name) or 1.0) <= 0:
                raise ConfigError(f"must be > 0, got {getattr(self, name)}", where=f"server.{name}")
        for name in ("beta1", "beta2"):
            if not 0.0 <= getattr(self, name) < 1.0:
                raise ConfigError(
                    f"must be in [0, 1), got {getattr(self, name)}", where=f"server.{name}"
                )


class ServerOptimizer(Protocol):
    """Turns the global arrays and the clients' uploads into new global arrays."""

    def step(
        self,
        global_items: Arrays,
        client_items: Sequence[Arrays],
        weights: Sequence[float] | None = None,
    ) -> Arrays: ...

    def state_dict(self) -> State: ...

    def load_state_dict(self, state: State) -> None: ...


STREAM_ABOVE_BYTES = 1 << 30
"""Uploads held by :class:`UploadMean` before it switches to a running sum (1 GiB)."""


def mean_arrays(client_items: Sequence[Arrays], weights: Sequence[float] | None = None) -> Arrays:
    """Average uploads array by array (uniform unless ``weights`` are given).

    The same computation as :class:`UploadMean` fed the uploads in this order.
    """
    acc = UploadMean()
    for k, upload in enumerate(client_items):
        acc.add(upload, None if weights is None else float(weights[k]))
    return acc.mean()


def _stacked_mean(client_items: Sequence[Arrays], weights: Sequence[float] | None) -> Arrays:
    w = np.ones(len(client_items)) if weights is None else np.asarray(weights, dtype=np.float64)
    w = w / w.sum()
    return [
        np.tensordot(w, np.stack([c[j] for c in client_items]), axes=1).astype(np.float32)
        for j in range(len(client_items[0]))
    ]


class UploadMean:
    """The (weighted) mean of a cohort's uploads, fed one upload at a time.

    Memory is bounded by design: a cohort of dense item-side uploads (100 x 340k x 33
    float32 is 4.5 GB) is never held at once. Uploads are kept only while they total
    at most ``limit`` bytes; the mean is then exactly the former stacked mean
    (``tensordot`` of the normalised weights with the stacked uploads), so runs whose
    cohort fits (every MovieLens setting) are bit-for-bit unchanged. Past ``limit`` the
    held uploads are folded into one float64 running sum ``sum_k w_k x_k`` (in the
    order given; the caller feeds a fixed order, :mod:`server.strategies` sorts by
    user) and every later upload is added and dropped, so memory is one float64
    accumulator; the mean ``sum / sum_k w_k`` then equals the stacked one to float32
    rounding (not bit for bit).
    """

    def __init__(self, limit: int = STREAM_ABOVE_BYTES) -> None:
        self.limit = limit
        self.held: list[Arrays] = []
        self.weights: list[float | None] = []
        self.total: list[npt.NDArray[np.float64]] | None = None
        self.weight_sum = 0.0
        self.count = 0
        self._bytes = 0
        self._weighted: bool | None = None

    def add(self, upload: Arrays, weight: float | None = None) -> None:
        """Take one client's arrays (``weight``: its count, or ``None`` for uniform)."""
        if self._weighted is None:
            self._weighted = weight is not None
        elif self._weighted != (weight is not None):
            raise ValueError("a mix of weighted and unweighted uploads")
        self.count += 1
        if self.total is None:
            self.held.append(upload)
            self.weights.append(weight)
            self._bytes += sum(int(a.nbytes) for a in upload)
            if self._bytes <= self.limit:
                return
            held, weights = self.held, self.weights
            self.held, self.weights = [], []
            self.total = [np.zeros(a.shape, dtype=np.float64) for a in held[0]]
            for h, w in zip(held, weights, strict=True):
                self._accumulate(h, w)
            return
        self._accumulate(upload, weight)

    def _accumulate(self, upload: Arrays, weight: float | None) -> None:
        assert self.total is not None
        w = 1.0 if weight is None else weight
        for acc, a in zip(self.total, upload, strict=True):
            if w == 1.0:
                acc += a
            else:
                acc += w * np.asarray(a, dtype=np.float64)
        self.weight_sum += w

    def mean(self) -> Arrays:
        """The mean of everything added (a :class:`ValueError` when nothing was)."""
        if not self.count:
            raise ValueError("no upload to average")
        if self.total is None:
            weights = None if not self._weighted else [float(w or 0.0) for w in self.weights]
            return _stacked_mean(self.held, weights)
        return [(acc / self.weight_sum).astype(np.float32) for acc in self.total]


class FedAvg:
    """FedAvg / FedProx server: ``x <- x + eta (mean - x)``; stateless."""

    def __init__(self, server_lr: float = 1.0) -> None:
        self.server_lr = server_lr

    def step(
        self,
        global_items: Arrays,
        client_items: Sequence[Arrays],
        weights: Sequence[float] | None = None,
    ) -> Arrays:
        if not client_items:
            return [g.copy() for g in global_items]
        mean = mean_arrays(client_items, weights)
        return [
            (g + self.server_lr * (m - g)).astype(np.float32)
            for g, m in zip(global_items, mean, strict=True)
        ]

    def state_dict(self) -> State:
        return {}

    def load_state_dict(self, state: State) -> None:
        del state


class FedAdam:
    """Server-side Adam on the pseudo-gradient: FedAdam of Reddi et al., "Adaptive
    Federated Optimization", ICLR 2021, Algorithm 2, as written there.

    ``m <- b1 m + (1 - b1) Delta``, ``v <- b2 v + (1 - b2) Delta**2``,
    ``x <- x + eta m / (sqrt(v) + tau)``, with ``m = v = 0`` at the start and **no bias
    correction** (Algorithm 2 has none; Kingma & Ba's Adam divides ``m`` by
    ``1 - b1**t`` and ``v`` by ``1 - b2**t``). So for a steady pseudo-gradient and
    ``tau -> 0`` the step at round ``t`` is bias-corrected Adam's times
    ``(1 - b1**t) / sqrt(1 - b2**t)``: with the defaults (0.9, 0.99) 1.0 at ``t = 1``,
    at most 2.13 (``t = 13``), 1.26 at ``t = 100``; with ``b2 = 0.999`` (the autoencoder
    and SASRec presets) 3.16 at ``t = 1``, at most 6.57 (``t = 12``), 1.26 at
    ``t = 1000``. The Flower apps and the Flower-free loop both step with this class.
    (Flower 1.42's own ``FedAdam`` scales ``eta`` by
    ``sqrt(1 - b2**(t+1)) / (1 - b1**(t+1))``, a bias correction added in 2024,
    flwrlabs/flower#4362; fedrec's server never runs that step:
    :class:`server.strategies.FedAdamStrategy` aggregates with this class.)
    """

    def __init__(
        self, server_lr: float, *, beta1: float = 0.9, beta2: float = 0.99, tau: float = 1e-3
    ) -> None:
        self.server_lr, self.beta1, self.beta2, self.tau = server_lr, beta1, beta2, tau
        self.m: list[npt.NDArray[np.float32]] = []
        self.v: list[npt.NDArray[np.float32]] = []

    def step(
        self,
        global_items: Arrays,
        client_items: Sequence[Arrays],
        weights: Sequence[float] | None = None,
    ) -> Arrays:
        if not client_items:
            return [g.copy() for g in global_items]
        mean = mean_arrays(client_items, weights)
        if not self.m:
            self.m = [np.zeros_like(g) for g in global_items]
            self.v = [np.zeros_like(g) for g in global_items]
        out: Arrays = []
        for j, (g, avg) in enumerate(zip(global_items, mean, strict=True)):
            if g.dtype == avg.dtype == self.m[j].dtype == self.v[j].dtype == np.float32:
                out.append(self._step_in_place(j, g, avg))
                continue
            delta = avg - g
            self.m[j] = (self.beta1 * self.m[j] + (1 - self.beta1) * delta).astype(np.float32)
            self.v[j] = (self.beta2 * self.v[j] + (1 - self.beta2) * delta**2).astype(np.float32)
            step = self.server_lr * self.m[j] / (np.sqrt(self.v[j]) + self.tau)
            out.append((g + step).astype(np.float32))
        return out

    def _step_in_place(
        self, j: int, g: npt.NDArray[np.float32], avg: npt.NDArray[np.float32]
    ) -> npt.NDArray[np.float32]:
        """The float32 step above with two scratch arrays instead of about fifteen: the
        same operations in the same order, so the same bits. At 340,000 x 64 items every
        temporary is an 87 MB block that glibc maps and the kernel zeroes afresh, which
        was most of a large catalog's system time (docs/BENCHMARKS.md)."""
        m, v = self.m[j], self.v[j]
        delta = np.subtract(avg, g)
        scratch = np.multiply(delta, 1 - self.beta1)
        m *= self.beta1
        m += scratch
        np.square(delta, out=scratch)
        scratch *= 1 - self.beta2
        v *= self.beta2
        v += scratch
        np.multiply(m, self.server_lr, out=delta)
        np.sqrt(v, out=scratch)
        scratch += self.tau
        delta /= scratch
        out: npt.NDArray[np.float32] = np.add(g, delta)
        return out

    def state_dict(self) -> State:
        state: State = {f"m.{j}": m.copy() for j, m in enumerate(self.m)}
        state.update({f"v.{j}": v.copy() for j, v in enumerate(self.v)})
        return state

    def load_state_dict(self, state: State) -> None:
        n = sum(1 for k in state if k.startswith("m."))
        self.m = [np.asarray(state[f"m.{j}"], dtype=np.float32).copy() for j in range(n)]
        self.v = [np.asarray(state[f"v.{j}"], dtype=np.float32).copy() for j in range(n)]


class ScheduledOptimizer:
    """A server optimizer whose learning rate follows ``cfg.lr_schedule`` over ``rounds``.

    The number of steps taken is part of the state (key ``"lr.step"``), so a resumed
    run continues the schedule exactly.
    """

    def __init__(self, inner: FedAvg | FedAdam, cfg: ServerConfig, rounds: int) -> None:
        self.inner, self.cfg, self.rounds = inner, cfg, max(int(rounds), 1)
        self.base_lr = inner.server_lr
        self.t = 0

    def lr_factor(self, t: int) -> float:
        """The multiplier of the base server learning rate at step ``t`` (0-based)."""
        floor, progress = self.cfg.lr_floor, min(t / self.rounds, 1.0)
        if self.cfg.lr_schedule == "constant":
            return 1.0
        if self.cfg.lr_schedule == "step":
            return 1.0 if t + 1 < self.cfg.lr_decay_at * self.rounds else floor
        return floor + (1.0 - floor) * 0.5 * (1.0 + math.cos(math.pi * progress))

    def step(
        self,
        global_items: Arrays,
        client_items: Sequence[Arrays],
        weights: Sequence[float] | None = None,
    ) -> Arrays:
        self.inner.server_lr = self.base_lr * self.lr_factor(self.t)
        self.t += 1
        return self.inner.step(global_items, client_items, weights)

    def state_dict(self) -> State:
        return {**self.inner.state_dict(), "lr.step": np.array(self.t, dtype=np.int64)}

    def load_state_dict(self, state: State) -> None:
        self.t = int(state["lr.step"]) if "lr.step" in state else 0
        self.inner.load_state_dict({k: v for k, v in state.items() if k != "lr.step"})


def build_server_optimizer(cfg: ServerConfig, rounds: int = 1) -> ServerOptimizer:
    """The server optimizer named by ``cfg.strategy``, scheduled over ``rounds``."""
    inner: FedAvg | FedAdam
    if cfg.strategy == "fedadam":
        lr = FEDADAM_LR if cfg.server_lr is None else cfg.server_lr
        inner = FedAdam(lr, beta1=cfg.beta1, beta2=cfg.beta2, tau=cfg.tau)
    else:
        inner = FedAvg(1.0 if cfg.server_lr is None else cfg.server_lr)
    return ScheduledOptimizer(inner, cfg, rounds)


def sample_clients(
    n_clients: int, expected_per_round: int, round: int, seed: int
) -> npt.NDArray[np.int64]:
    """Poisson sampling: each client joins independently with rate ``q = K / N``.

    The generator is derived from ``(seed, round)``, so a resumed run draws the same
    cohorts. Poisson sampling is what the privacy amplification of the sampled
    Gaussian mechanism assumes. Returns the sorted indices of the sampled clients.
    """
    q = min(1.0, expected_per_round / max(n_clients, 1))
    rng = np.random.default_rng(np.random.SeedSequence([seed, round, 0x5A3F]))
    return np.flatnonzero(rng.random(n_clients) < q).astype(np.int64)
