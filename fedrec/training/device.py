"""Where the heavy tensor work of a command runs: ``--device cpu|cuda``.

Design rule: the device is chosen once per command (:func:`compute_device`) and read
where the work is (:func:`current_device`): the protocol's ranking
(:func:`fedrec.metrics.evaluate_scores`) and EASE's Gram inverse and scoring
(:mod:`fedrec.baselines.ease`), the parts whose cost grows with the catalog. A
simulated device's own training and evaluation stay on the CPU, as on a phone. The
results do not depend on the device beyond floating-point rounding.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import TYPE_CHECKING

from fedrec.errors import ConfigError

if TYPE_CHECKING:  # imported where used: the CLI parser reads DEVICES without torch
    import torch

DEVICES = ("cpu", "cuda")
_current: list[torch.device] = []  # innermost compute_device last; empty: the CPU


def resolve_device(name: str) -> torch.device:
    """``name`` as a torch device; refused when unknown or when CUDA is not available."""
    import torch

    if name not in DEVICES:
        raise ConfigError(
            f"unknown device {name!r}", where="--device", fix=f"use one of {', '.join(DEVICES)}"
        )
    if name == "cuda" and not torch.cuda.is_available():
        build = torch.version.cuda
        why = "this torch has no CUDA support" if build is None else "no CUDA GPU is visible"
        raise ConfigError(
            f"CUDA is not available here ({why}; torch {torch.__version__})",
            where="--device",
            fix="use --device cpu, or run on a machine with an NVIDIA GPU and a CUDA build "
            "of torch",
        )
    return torch.device(name)


def current_device() -> torch.device:
    """The device chosen by the innermost :func:`compute_device` (the CPU outside any)."""
    import torch

    return _current[-1] if _current else torch.device("cpu")


@contextmanager
def compute_device(name: str) -> Iterator[torch.device]:
    """Run the block's ranking and EASE work on ``name`` (checked by :func:`resolve_device`)."""
    device = resolve_device(name)
    _current.append(device)
    try:
        yield device
    finally:
        _current.pop()


__all__ = ["DEVICES", "compute_device", "current_device", "resolve_device"]
