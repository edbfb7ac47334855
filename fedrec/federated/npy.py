"""``.npy`` bytes (``np.save``/``np.load``, no pickle) without re-parsing a known header.

Design rule: the bytes and the arrays are exactly NumPy's. A simulation moves the same
few array shapes thousands of times (each message's global item arrays, each upload,
each device's stored user state), and for arrays of that size most of ``np.load``'s
time goes to parsing the header's Python literal and most of ``np.save``'s to writing
it. So a header is parsed (or written) by NumPy once, remembered by its exact bytes
(or by dtype and shape), and reused: :func:`load_npy` of any blob equals ``np.load``
of it (a fresh, writable array; bytes NumPy never parsed go to ``np.load``, errors
included), and :func:`save_npy` of a C-contiguous array equals ``np.save`` byte for
byte (anything else goes to ``np.save``).
"""

from __future__ import annotations

import io
import math
from collections.abc import Iterable
from typing import Any, Protocol

import numpy as np
import numpy.typing as npt

NUMPY_STYPE = "numpy.ndarray"
"""Flower's ``SType.NUMPY``: an array serialized with ``np.save``."""
_MAGIC_V1 = b"\x93NUMPY\x01\x00"
_LIMIT = 4096  # remembered headers (a run uses a handful)
_PARSED: dict[bytes, tuple[np.dtype[Any], tuple[int, ...]]] = {}
_WRITTEN: dict[tuple[str, tuple[int, ...]], bytes] = {}


def load_npy(data: bytes) -> npt.NDArray[Any]:
    """``np.load(io.BytesIO(data), allow_pickle=False)``, the header parsed once."""
    header = _header(data)
    parsed = None if header is None else _PARSED.get(header)
    if header is not None and parsed is not None:
        dtype, shape = parsed
        count = math.prod(shape)
        if len(data) == len(header) + count * dtype.itemsize:
            flat = np.frombuffer(data, dtype=dtype, count=count, offset=len(header))
            return flat.reshape(shape).copy()
    array = np.load(io.BytesIO(data), allow_pickle=False)
    if (
        header is not None
        and isinstance(array, np.ndarray)
        and array.dtype.kind in "biuf"
        and array.flags.c_contiguous
        and len(data) == len(header) + array.nbytes
        and len(_PARSED) < _LIMIT
    ):
        _PARSED[header] = (array.dtype, tuple(array.shape))
    return array  # type: ignore[no-any-return]


def save_npy(array: npt.NDArray[Any]) -> bytes:
    """``np.save(buffer, array, allow_pickle=False)``'s bytes, the header written once."""
    key = (array.dtype.str, tuple(array.shape))
    numeric = array.dtype.kind in "biuf" and array.flags.c_contiguous
    header = _WRITTEN.get(key) if numeric else None
    if header is not None:
        return header + array.tobytes()
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    data = buffer.getvalue()
    if numeric and len(_WRITTEN) < _LIMIT:
        head = data[: len(data) - array.nbytes]
        if _header(head) == head:  # a version-1.0 header, as NumPy wrote it
            _WRITTEN[key] = head
    return data


class _Serialized(Protocol):
    """What :func:`record_arrays` reads of a Flower ``Array``."""

    stype: str
    data: bytes

    def numpy(self) -> npt.NDArray[Any]: ...


def record_arrays(arrays: Iterable[_Serialized]) -> list[npt.NDArray[Any]]:
    """The arrays of Flower ``Array`` records (an ``ArrayRecord``'s values, in order):
    ``ArrayRecord.to_numpy_ndarrays()`` with :func:`load_npy`. An array serialized
    otherwise goes to its own ``numpy()``, which refuses it."""
    return [load_npy(a.data) if a.stype == NUMPY_STYPE else a.numpy() for a in arrays]


def _header(data: bytes) -> bytes | None:
    """The version-1.0 ``.npy`` header of ``data`` (magic and length field included)."""
    if len(data) < 10 or not data.startswith(_MAGIC_V1):
        return None
    end = 10 + int.from_bytes(data[8:10], "little")
    return data[:end] if len(data) >= end else None


__all__ = ["NUMPY_STYPE", "load_npy", "record_arrays", "save_npy"]
