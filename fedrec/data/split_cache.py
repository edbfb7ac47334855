"""The protocol split of a data set, loaded and split once per process.

One ``fedrec simulate`` asks for the same split from every part of the run that needs
it: the command (checks, shaped defaults), the in-process grid, the server app, the
evaluator, the clients and the model file written at the end. Each of them used to
read the file and split it again (six loads of 3.4 CPU s on the 105k x 340k books
shape, ``docs/BENCHMARKS.md``). :func:`cached_split` hands all of them one
:class:`~fedrec.data.split.Split`, made read-only (its NumPy arrays' ``writeable``
flag is off) so that no caller can change what the others see.

The cache key is everything that decides the split: the data spec, the file's (or
folder's files') absolute path, modification time in nanoseconds, size, inode and device, the
filters, the split method, test fraction, seed and validation fraction. A file
rewritten in place is thus read again. Only the last :data:`MAX_SPLITS` splits are
kept, so a process that walks many data sets (a bench, a tuning sweep) does not grow
without bound. Processes share nothing: each Flower app process of a deployment loads
its own.
"""

from __future__ import annotations

import dataclasses
import os
import stat
import threading
from collections import OrderedDict
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from fedrec.data.interactions import Interactions
from fedrec.data.split import Split

MAX_SPLITS = 2
"""Splits kept per process: a run's protocol split and its validation split."""

_CACHE: OrderedDict[tuple[Any, ...], Split] = OrderedDict()
_LOCK = threading.RLock()


@dataclass(frozen=True)
class SplitSpec:
    """What decides a split: the data (a ``--data`` spec), its filters and the split."""

    data: str
    min_rating: float | None = None
    k_core: int | None = None
    method: str = "random"
    test_fraction: float = 0.2
    seed: int = 0
    validation_fraction: float | None = None

    def normalized(self) -> SplitSpec:
        """The same spec with numbers as ``float`` / ``int`` (``0.2`` and ``"0.2"`` agree)."""
        vf = self.validation_fraction
        return SplitSpec(
            data=str(self.data),
            min_rating=None if self.min_rating is None else float(self.min_rating),
            k_core=None if self.k_core is None else int(self.k_core),
            method=str(self.method),
            test_fraction=float(self.test_fraction),
            seed=int(self.seed),
            validation_fraction=None if vf is None else float(vf),
        )


def cached_split(spec: SplitSpec) -> Split:
    """The split named by ``spec``, read and split at most once while its source is unchanged.

    The returned split is shared with every other caller in the process and read-only:
    copy an array (``split.train.copy()``) before changing it.
    """
    spec = spec.normalized()
    identity = source_identity(spec.data)
    if identity is None:  # missing: resolve_data raises its error, nothing is cached
        return _make(spec)
    key = (spec, identity)
    with _LOCK:  # held while loading: a concurrent caller waits instead of loading again
        found = _CACHE.get(key)
        if found is not None:
            _CACHE.move_to_end(key)
            return found
        if spec.validation_fraction is None:
            split = _make(spec)
        else:
            from fedrec.data.split import validation_split

            protocol = cached_split(dataclasses.replace(spec, validation_fraction=None))
            split = validation_split(
                protocol, seed=spec.seed, test_fraction=spec.validation_fraction
            )
        split = _read_only(split)
        _CACHE[key] = split
        while len(_CACHE) > MAX_SPLITS:
            _CACHE.popitem(last=False)
        return split


def clear_split_cache() -> None:
    """Forget every cached split (tests; a process that wants the memory back)."""
    with _LOCK:
        _CACHE.clear()


def source_identity(data: str) -> tuple[Any, ...] | None:
    """What identifies the data's current content: ``()`` for synthetic data (a pure
    function of its spec), else the absolute path with each file's modification time
    (ns), size, inode and device; ``None`` where nothing exists under that name.
    One ``stat`` for a file (every client message asks: a few microseconds)."""
    from fedrec.data.resolve import KNOWN_DATASETS, default_data_dir, split_spec

    text, _ = split_spec(data)
    if text == "synthetic" or text.startswith("synthetic:"):
        return ()
    path = os.path.abspath(os.path.expanduser(text))
    try:
        try:
            st = os.stat(path)
        except FileNotFoundError:
            if text not in KNOWN_DATASETS:
                return None
            path = os.path.abspath(default_data_dir() / text)
            st = os.stat(path)
        if not stat.S_ISDIR(st.st_mode):
            return (path, _fingerprint(st))
        files = sorted(p for p in Path(path).rglob("*") if p.is_file())
        return (path, *((str(p.relative_to(path)), _fingerprint(p.stat())) for p in files))
    except OSError:
        return None


def _fingerprint(st: os.stat_result) -> tuple[int, int, int, int]:
    return (st.st_mtime_ns, st.st_size, st.st_ino, st.st_dev)


def _make(spec: SplitSpec) -> Split:
    """Read the data and split it (no cache)."""
    from fedrec.data.resolve import resolve_data
    from fedrec.data.split import random_split, temporal_split, validation_split

    data = resolve_data(spec.data, min_rating=spec.min_rating, k_core=spec.k_core)
    if spec.method == "temporal":
        split = temporal_split(data, test_fraction=spec.test_fraction)
    else:
        split = random_split(data, test_fraction=spec.test_fraction, seed=spec.seed)
    if spec.validation_fraction is None:
        return split
    return validation_split(split, seed=spec.seed, test_fraction=spec.validation_fraction)


def _read_only(split: Split) -> Split:
    """``split`` with every NumPy array it holds made read-only (in place; no copy)."""
    for matrix in (split.train, split.test):
        _freeze_csr(matrix)
    _freeze(split.train_rows)
    _freeze_log(split.data)
    return split


def _freeze_csr(matrix: sp.csr_matrix) -> None:
    for array in (matrix.data, matrix.indices, matrix.indptr):
        _freeze(array)


def _freeze_log(data: Interactions) -> None:
    for f in dataclasses.fields(data):
        value = getattr(data, f.name)
        if isinstance(value, np.ndarray):
            _freeze(value)


def _freeze(array: np.ndarray[Any, Any]) -> None:
    array.flags.writeable = False
