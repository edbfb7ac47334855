"""Keep freed tensor memory in the process heap, so training steps stop page-faulting.

Design rule: by default glibc serves each multi-megabyte tensor with a fresh ``mmap``
and unmaps it on free, so every training step page-faults its gradients, noise and
optimizer temporaries anew. For a device model with a large item side that is a large,
machine-dependent share of a step: a Mult-VAE client update on ml-100k took 72 ms of
CPU by default and 40 ms with the heap kept, and a 27,000-item MF step moved by +-50%
from run to run. Raising ``M_MMAP_THRESHOLD`` (to its 32 MiB maximum on 64-bit) and
``M_TRIM_THRESHOLD`` keeps such memory in the heap for reuse. The cost is that up to
``TRIM_THRESHOLD`` of freed memory stays resident. ``fedrec bench`` and ``fedrec
simulate`` apply it; child processes (Ray's workers) get it through :data:`ENV`.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import platform

_M_TRIM_THRESHOLD, _M_MMAP_THRESHOLD = -1, -3  # glibc's mallopt parameter numbers
MMAP_THRESHOLD = 32 * 2**20  # glibc's largest allowed value on 64-bit
TRIM_THRESHOLD = 2**30
ENV = {"MALLOC_MMAP_THRESHOLD_": str(MMAP_THRESHOLD), "MALLOC_TRIM_THRESHOLD_": str(TRIM_THRESHOLD)}
"""The same settings for processes started later (glibc reads them at start-up)."""


def steady_allocator() -> str:
    """Apply the settings to this process (glibc only; they stay in force).

    Returns what was set (recorded in the bench JSON), or why nothing was.
    """
    name = ctypes.util.find_library("c")
    if platform.system() != "Linux" or name is None:
        return "default (not Linux/glibc)"
    try:
        mallopt = ctypes.CDLL(name).mallopt
    except (OSError, AttributeError):
        return "default (no mallopt)"
    ok = mallopt(_M_MMAP_THRESHOLD, MMAP_THRESHOLD) and mallopt(_M_TRIM_THRESHOLD, TRIM_THRESHOLD)
    if not ok:
        return "default (mallopt refused)"
    return f"glibc mallopt M_MMAP_THRESHOLD={MMAP_THRESHOLD} M_TRIM_THRESHOLD={TRIM_THRESHOLD}"
