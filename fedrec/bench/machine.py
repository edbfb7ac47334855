"""What a benchmark ran on: CPU, cores, memory, load, library versions and device.

Design rule: every benchmark figure is only meaningful beside the machine and the load
it was measured under, so :func:`machine_info` is recorded in every bench JSON. It
reads ``/proc`` where present (Linux) and falls back to :mod:`platform` elsewhere;
library versions come from the installed distributions' metadata, so nothing here
imports Flower.
"""

from __future__ import annotations

import os
import platform
from importlib import metadata
from pathlib import Path

import torch

PACKAGES = ("torch", "flwr", "opacus", "numpy", "scipy")


def _proc_field(path: str, key: str) -> str | None:
    """The value after ``key:`` in a ``/proc`` text file, or ``None``."""
    try:
        for line in Path(path).read_text().splitlines():
            name, sep, value = line.partition(":")
            if sep and name.strip() == key:
                return value.strip()
    except OSError:
        return None
    return None


def cpu_model() -> str:
    """The CPU's model name (``/proc/cpuinfo``), else :func:`platform.processor`."""
    return _proc_field("/proc/cpuinfo", "model name") or platform.processor() or "unknown"


def memory_gib() -> float | None:
    """Total memory in GiB (``/proc/meminfo``), or ``None`` where unknown."""
    total = _proc_field("/proc/meminfo", "MemTotal")
    return None if total is None else round(int(total.split()[0]) / 2**20, 1)


def load_average() -> list[float]:
    """The 1, 5 and 15 minute load averages (empty where the OS has none)."""
    try:
        return [round(x, 2) for x in os.getloadavg()]
    except OSError:
        return []


def versions(packages: tuple[str, ...] = PACKAGES) -> dict[str, str]:
    """Installed version of each package (``"absent"`` when not installed)."""
    out: dict[str, str] = {}
    for name in packages:
        try:
            out[name] = metadata.version(name)
        except metadata.PackageNotFoundError:
            out[name] = "absent"
    return out


def device_name(device: str) -> str:
    """A readable name of the torch device a benchmark used."""
    if device.startswith("cuda") and torch.cuda.is_available():
        return f"{device} ({torch.cuda.get_device_name(torch.device(device))})"
    return device


def machine_info(device: str = "cpu") -> dict[str, object]:
    """The machine record of a bench JSON.

    Returns
    -------
    dict
        ``cpu``, ``cores`` (logical), ``memory_gib``, ``load_average`` (1/5/15 min at
        the time of the call), ``python``, ``platform``, ``versions`` and ``device``.
    """
    return {
        "cpu": cpu_model(),
        "cores": os.cpu_count() or 0,
        "memory_gib": memory_gib(),
        "load_average": load_average(),
        "python": platform.python_version(),
        "platform": platform.platform(),
        "versions": versions(),
        "torch_threads": torch.get_num_threads(),
        "device": device_name(device),
    }
