"""``.npy`` bytes with remembered headers (fedrec.federated.npy) equal NumPy's, byte for
byte and array for array, on the first (learning) and every later call; and the faster
paths of the apps and the device store that use them change nothing they return."""

from __future__ import annotations

import io
from pathlib import Path

import numpy as np
import pytest
from flwr.app import ArrayRecord

from fedrec.federated.npy import load_npy, record_arrays, save_npy

ARRAYS = {
    "float32 matrix": np.arange(12, dtype=np.float32).reshape(3, 4) / 7,
    "float32 vector": np.linspace(-1, 1, 5, dtype=np.float32),
    "one row": np.ones((1, 6), dtype=np.float32),
    "int64": np.arange(6, dtype=np.int64).reshape(2, 3),
    "uint8": np.arange(9, dtype=np.uint8),
    "bool": np.array([True, False, True]),
    "big-endian": np.arange(4, dtype=">f8"),
    "0-d": np.array(3.5),
    "empty": np.zeros((0, 4), dtype=np.float32),
    "fortran order": np.asfortranarray(np.arange(6, dtype=np.float64).reshape(2, 3)),
    "strided view": np.arange(20, dtype=np.float32).reshape(4, 5)[:, ::2],
}


def _np_save(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


@pytest.mark.parametrize("name", sorted(ARRAYS))
def test_save_and_load_equal_numpy_on_every_call(name: str) -> None:
    # Prepare
    array = ARRAYS[name]
    expected = _np_save(array)
    # Execute: the first call learns the header, the later ones reuse it
    saved = [save_npy(array) for _ in range(3)]
    loaded = [load_npy(expected) for _ in range(3)]
    # Assert
    assert all(data == expected for data in saved)
    reference = np.load(io.BytesIO(expected), allow_pickle=False)
    for out in loaded:
        assert out.dtype == reference.dtype and out.shape == reference.shape
        np.testing.assert_array_equal(out, reference)
        assert out.flags.writeable and out.flags.c_contiguous == reference.flags.c_contiguous


def test_a_known_header_never_decides_for_other_bytes() -> None:
    # Prepare: a header learned for (2, 3) float32, then blobs that differ from it
    known = _np_save(np.zeros((2, 3), dtype=np.float32))
    load_npy(known)
    other_shape = _np_save(np.arange(6, dtype=np.float32).reshape(3, 2))
    other_dtype = _np_save(np.arange(6, dtype=np.int32).reshape(2, 3))
    # Execute / Assert: each is read as NumPy reads it
    assert load_npy(other_shape).shape == (3, 2)
    assert load_npy(other_dtype).dtype == np.int32
    with pytest.raises(ValueError):  # truncated data after a known header: NumPy's error
        load_npy(known[:-4])
    longer = load_npy(known + b"\x00" * 8)  # trailing bytes: ignored, as np.load does
    np.testing.assert_array_equal(longer, np.zeros((2, 3), dtype=np.float32))


def test_loaded_arrays_are_independent_copies() -> None:
    # Prepare
    data = _np_save(np.ones(4, dtype=np.float32))
    first = load_npy(data)
    load_npy(data)
    # Execute
    first[0] = 9.0
    # Assert: the bytes and a later load are untouched
    assert load_npy(data)[0] == 1.0


def test_pickled_bytes_are_refused_as_numpy_refuses_them() -> None:
    # Prepare: an object array is only readable with pickle
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    # Execute / Assert
    with pytest.raises(ValueError, match="allow_pickle"):
        load_npy(buffer.getvalue())


def test_record_arrays_equal_flowers_own_conversion() -> None:
    # Prepare
    arrays = [ARRAYS["float32 matrix"], ARRAYS["float32 vector"], ARRAYS["fortran order"]]
    record = ArrayRecord(arrays)
    # Execute
    ours = [record_arrays(record.values()) for _ in range(2)]
    flowers = record.to_numpy_ndarrays()
    # Assert
    for out in ours:
        for a, b in zip(out, flowers, strict=True):
            assert a.dtype == b.dtype and a.shape == b.shape
            np.testing.assert_array_equal(a, b)


def test_client_reply_record_equals_flowers_record() -> None:
    # Prepare
    from clients.client_app import _array_record

    arrays = [ARRAYS["float32 matrix"], ARRAYS["float32 vector"], ARRAYS["strided view"]]
    # Execute
    ours = _array_record(arrays)
    flowers = ArrayRecord(arrays)
    # Assert: the same keys and, per array, the same dtype, shape, stype and bytes
    assert list(ours) == list(flowers)
    for key in flowers:
        a, b = ours[key], flowers[key]
        assert (a.dtype, tuple(a.shape), a.stype, a.data) == (
            b.dtype,
            tuple(b.shape),
            b.stype,
            b.data,
        )


def test_simulated_store_needs_no_shared_memory_file_and_reopens_durable(tmp_path: Path) -> None:
    # Prepare
    from clients.store import DeviceStore

    fast, safe = tmp_path / "fast.sqlite", tmp_path / "safe.sqlite"
    # Execute: a simulated (non-durable) store and a durable one, each written while open
    with DeviceStore.open(fast, durable=False) as store:
        store.add_interactions([(3, None, 1.0), ("x", 4.0, 2.0)])
        fast_files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("fast"))
    with DeviceStore.open(safe, durable=True) as store:
        store.add_interactions([(3, None, 1.0)])
        safe_files = sorted(p.name for p in tmp_path.iterdir() if p.name.startswith("safe"))
    # Assert: exclusive locking keeps WAL without a -shm index; the durable store has one
    assert fast_files == ["fast.sqlite", "fast.sqlite-wal"]
    assert safe_files == ["safe.sqlite", "safe.sqlite-shm", "safe.sqlite-wal"]
    with DeviceStore.open(fast, durable=True) as again:  # then opened as a durable store
        rows = again.interactions()
        assert again.history() == ([r.item for r in rows], [r.timestamp for r in rows])
        assert again.history() == ([3, "x"], [1.0, 2.0])
