"""One compute thread for many tiny models.

A simulation trains and scores thousands of small per-device models in one process. Both
torch's intra-op pool and the BLAS that NumPy links (OpenBLAS/MKL, through OpenMP or their
own threads) then spend more time starting and spinning threads than they save: on the
2-core development box, ``Q^T Q`` at 340,000 x 32 items took 1.5-2.9 CPU s with OpenBLAS's
default threads and 0.02 s with one, and a dense-cut iALS run 114 CPU s against 8 s
(docs/BENCHMARKS.md). A real device runs one model, so one thread is also what it does.

The native pools are limited with ``threadpoolctl`` (the library scikit-learn uses for this),
so the limit reaches whichever BLAS is loaded, without environment variables that must be
set before NumPy is imported.
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager

import torch
from threadpoolctl import threadpool_limits


@contextmanager
def single_threaded() -> Iterator[None]:
    """Run the block with torch's and the native BLAS/OpenMP pools at one thread each.

    Both limits are restored on exit, also when the block raises.
    """
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        with threadpool_limits(limits=1):
            yield
    finally:
        torch.set_num_threads(threads)


def limit_process_to_one_thread() -> None:
    """Set both limits for the rest of the process (a ClientApp's worker: many tiny models)."""
    torch.set_num_threads(1)
    threadpool_limits(limits=1)


def keep_process_at_one_thread(first: bool) -> None:
    """:func:`limit_process_to_one_thread` on a worker's first message (``first``) and again
    whenever torch's pool is no longer at one thread: a :func:`single_threaded` block that
    ran in the same process restores the threads it found on exit, and a worker that then
    trained with several threads would sum in a different order (results differing by
    float rounding from the same run's reference)."""
    if first or torch.get_num_threads() != 1:
        limit_process_to_one_thread()
