"""How much slower a local DP-SGD client step is than a plain one (same model, batch, device).

Design rule: the ratio is measured in one process, on one model and one batch, with
the two sides interleaved (warm-up, then the median of ``repeats``), so machine load
and the device hit both sides alike. A side is one local update of ``steps`` steps
(a device's ``epochs``), reported per step: the plain step is ``zero_grad``, forward,
loss, backward, ``optimizer.step()``; the DP step is
:func:`fedrec.privacy.local_dp.make_dp_step` (per-unit clipping over all parameters,
secret noise on every coordinate, the same optimizer), on the same batch with every
unit sampled, and the update ends with :meth:`DPStep.flush`, which adds the noise an
SGD-trained table still owes (:mod:`fedrec.privacy.lazy_noise`), so deferred noise is
paid inside the timing. The optimizer is the one a private run of the model uses
(:func:`fedrec.federated.presets.federated_preset`; MF: SGD, autoencoders: Adam). The
batch is one device's: an MF user with ``history`` interactions (each a unit of
``1 + negatives`` rows) or an autoencoder user's row (one unit). ``reference=True``
also times Opacus's per-sample-gradient path.

Run ``python -m fedrec.bench.dp_overhead`` for the table over models and catalog sizes.
"""

from __future__ import annotations

import argparse
import copy
import statistics
import time
import warnings
from collections.abc import Callable, Sequence
from dataclasses import replace

import numpy as np
import torch

from fedrec.federated.presets import federated_preset
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, local_dp_kinds
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.privacy.fast_dp import secret_normal
from fedrec.privacy.local_dp import DPStep, interaction_units, make_dp_step
from fedrec.privacy.noise import secure_rng
from fedrec.training.allocator import steady_allocator
from fedrec.training.local import make_optimizer, user_examples

SIZES = (1682, 27000)


def _timer(device: torch.device) -> Callable[[Callable[[], None]], tuple[float, float]]:
    """Time a call: (wall ms, process CPU ms), synchronizing a CUDA device around it."""

    def run(fn: Callable[[], None]) -> tuple[float, float]:
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall, cpu = time.perf_counter(), time.process_time()
        fn()
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        return (time.perf_counter() - wall) * 1e3, (time.process_time() - cpu) * 1e3

    return run


def _batch(
    model: TrainableRecommender, history: int, seed: int, device: torch.device
) -> tuple[Examples, torch.Tensor]:
    """One device user's examples (on ``device``) and the unit of each row."""
    rng = np.random.default_rng(seed)
    items = rng.choice(model.n_items, size=min(history, model.n_items), replace=False)
    ex = user_examples(model, items)(torch.Generator().manual_seed(seed))
    units = interaction_units(model, len(items))
    row_units = torch.arange(len(ex)) if units is None else units
    batch = Examples(tuple(t.to(device) for t in ex.inputs), ex.target.to(device))
    return batch, row_units


def _dp_step(
    model: TrainableRecommender, train: LocalTrainConfig, n_units: int, fast: bool
) -> DPStep:
    return make_dp_step(
        model,
        make_optimizer(list(model.parameters()), train),
        noise_multiplier=1.0,
        max_grad_norm=1.0,
        expected_batch_size=float(n_units),
        rng=secure_rng(),
        fast=fast,
    )


def dp_overhead(
    model_kind: str,
    n_items: int,
    *,
    device: str = "cpu",
    repeats: int = 15,
    quick: bool = False,
    history: int = 100,
    optimizer: str | None = None,
    steps: int = 5,
    reference: bool = False,
    seed: int = 0,
) -> dict[str, float]:
    """Median DP client step time / median plain step time, and the parts.

    Parameters
    ----------
    model_kind
        A kind with local DP (:func:`fedrec.models.registry.local_dp_kinds`).
    n_items
        Catalog size.
    device
        Torch device, e.g. ``"cuda"`` when available.
    repeats, quick
        Timed repetitions of each step after warm-up; ``quick`` uses 3 and a history
        of at most 20 (for tests).
    history
        The device user's interactions.
    optimizer
        Local optimizer kind, ``"sgd"`` or ``"adam"``; ``None``: a private run's
        (:func:`fedrec.federated.presets.federated_preset`).
    steps
        Steps per timed local update (both sides; the DP side then flushes).
    reference
        Also time Opacus's per-sample-gradient path (slow and memory-hungry for MF
        with a large catalog: it builds ``[rows, items, dim]``).

    Returns
    -------
    dict
        Median wall times per step ``plain_ms``, ``dp_ms``, ``noise_ms`` (drawing one
        step's dense noise alone) and ``dp_overhead = dp_ms / plain_ms``; the same on
        process CPU time (``*_cpu_ms``, ``dp_overhead_cpu``: steadier on a loaded
        machine); ``params``, ``rows``, ``units``, ``n_items``; with ``reference``:
        ``reference_ms`` and ``reference_overhead``.
    """
    repeats, history = (3, min(history, 20)) if quick else (repeats, history)
    dev = torch.device(device)
    model = build_model(ModelConfig(kind=model_kind), n_items, 1, seed=seed).to(dev)
    preset = federated_preset(model_kind, privacy="local")[1]
    train = replace(preset, optimizer=optimizer or preset.optimizer)
    batch, units = _batch(model, history, seed, dev)
    n_units = int(units.max()) + 1
    plain_opt = make_optimizer(list(model.parameters()), train)

    def plain() -> None:
        for _ in range(steps):
            plain_opt.zero_grad(set_to_none=True)
            model.loss(model(*batch.inputs), batch.target).backward()
            plain_opt.step()

    fast = _dp_step(model, train, n_units, fast=True)

    def dp() -> None:
        for _ in range(steps):
            fast(batch, units)
        fast.flush()

    sides: dict[str, Callable[[], None]] = {"plain": plain, "dp": dp}
    # a copy: Opacus's hooks on the model would also fire in the other two steps
    ref = _dp_step(copy.deepcopy(model), train, n_units, fast=False) if reference else None
    if ref is not None:

        def opacus_side() -> None:
            for _ in range(steps):
                _quiet(ref, batch, units)

        sides["reference"] = opacus_side
    n_params = sum(p.numel() for p in model.parameters())
    noise_rng = secure_rng()

    def noise() -> None:
        for _ in range(steps):
            secret_normal(n_params, 1.0, noise_rng, device=dev)

    sides["noise"] = noise
    try:
        times = _interleaved(sides, repeats, _timer(dev))
    finally:
        fast.close()
        if ref is not None:
            ref.close()
    out = {f"{k}_ms": statistics.median(t[0] for t in v) / steps for k, v in times.items()}
    out |= {f"{k}_cpu_ms": statistics.median(t[1] for t in v) / steps
            for k, v in times.items()}  # fmt: skip
    out["dp_overhead"] = out["dp_ms"] / out["plain_ms"]
    out["dp_overhead_cpu"] = out["dp_cpu_ms"] / out["plain_cpu_ms"]
    out["n_items"] = float(n_items)
    out |= {"params": float(n_params), "rows": float(len(batch)), "units": float(n_units),
            "steps": float(steps), "sgd": float(train.optimizer == "sgd")}  # fmt: skip
    if ref is not None:
        out["reference_overhead"] = out["reference_ms"] / out["plain_ms"]
    return out


def _quiet(step: DPStep, batch: Examples, units: torch.Tensor) -> None:
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Full backward hook is firing")
        step(batch, units)


def _interleaved(
    steps: dict[str, Callable[[], None]],
    repeats: int,
    timer: Callable[[Callable[[], None]], tuple[float, float]],
) -> dict[str, list[tuple[float, float]]]:
    """One warm-up call of each step, then ``repeats`` rounds timing each in turn."""
    for fn in steps.values():
        fn()
    times: dict[str, list[tuple[float, float]]] = {k: [] for k in steps}
    for _ in range(repeats):
        for name, fn in steps.items():
            times[name].append(timer(fn))
    return times


def main(argv: Sequence[str] | None = None) -> None:
    """Print ``dp_overhead`` for every model kind and catalog size."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=15)
    parser.add_argument("--optimizer", default=None, choices=("adam", "sgd"))
    parser.add_argument("--kinds", nargs="+", default=list(local_dp_kinds()))
    parser.add_argument("--sizes", nargs="+", type=int, default=list(SIZES))
    parser.add_argument("--reference", action="store_true")
    parser.add_argument("--quick", action="store_true")
    args = parser.parse_args(argv)
    print(f"allocator: {steady_allocator()}")
    print("kind     items  plain_ms    dp_ms  noise_ms  overhead  cpu_overhead  ref_overhead")
    for kind in args.kinds:
        for n in args.sizes:
            r = dp_overhead(kind, n, device=args.device, repeats=args.repeats, quick=args.quick,
                            optimizer=args.optimizer, reference=args.reference)  # fmt: skip
            ref = f"{r['reference_overhead']:12.2f}" if "reference_overhead" in r else ""
            times = f"{r['plain_ms']:9.2f} {r['dp_ms']:8.2f} {r['noise_ms']:9.2f}"
            ratios = f"{r['dp_overhead']:9.2f} {r['dp_overhead_cpu']:13.2f} {ref}"
            print(f"{kind:8s} {n:6d} {times} {ratios}", flush=True)


if __name__ == "__main__":
    main()
