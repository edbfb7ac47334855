"""Quantized uploads (fedrec.federated.compression): unbiased, lossless layout, every row sent."""

from __future__ import annotations

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.errors import ConfigError
from fedrec.federated.compression import UploadCodec, dequantize, pack, quantize, unpack

FINITE = st.floats(-1e3, 1e3, allow_nan=False, width=32)


@settings(max_examples=25, deadline=None)
@given(
    x=arrays(np.float64, (3, 5), elements=FINITE),
    bits=st.sampled_from([1, 2, 4, 8]),
    seed=st.integers(0, 2**32 - 1),
)
def test_stochastic_rounding_is_unbiased(x: np.ndarray, bits: int, seed: int) -> None:
    # Prepare: many independent quantizations of the same rows
    rng = np.random.default_rng(seed)
    draws = 4000
    # Execute: the empirical mean of the decoded values (the rows repeated: one call)
    stacked = np.tile(x, (draws, 1))
    mean = dequantize(*quantize(stacked, bits, rng)).reshape(draws, *x.shape).mean(axis=0)
    # Assert: within 5 standard errors of x (per-value variance <= step^2 / 4), and every
    # decoded value lies on the row's grid inside [min, max] (a float32 grid: 1e-5 slack)
    codes, lo, step = quantize(x, bits, rng)
    bound = 5 * (step.astype(np.float64)[:, None] / 2) / np.sqrt(draws) + 1e-5 * (1 + np.abs(x))
    assert np.all(np.abs(mean - x) <= bound)
    decoded = dequantize(codes, lo, step)
    assert np.all(codes <= (1 << bits) - 1)
    slack = 1e-5 * (1 + np.abs(x).max(axis=1, keepdims=True))
    assert np.all(decoded >= x.min(axis=1, keepdims=True) - slack)
    assert np.all(decoded <= x.max(axis=1, keepdims=True) + slack)


def test_a_biased_rounder_would_be_caught() -> None:
    # Prepare: round-to-nearest instead of stochastic rounding is biased at x = 0.3
    x = np.array([[0.0, 0.3, 1.0]])
    _, lo, step = quantize(x, 1, np.random.default_rng(0))
    nearest = dequantize(np.rint((x - lo[:, None]) / step[:, None]).astype(np.uint8), lo, step)
    # Execute: the stochastic mean over many draws
    rng = np.random.default_rng(1)
    mean = np.mean([dequantize(*quantize(x, 1, rng)) for _ in range(4000)], axis=0)
    # Assert: the check above separates the two (nearest is off by 0.3, stochastic is not)
    assert abs(nearest[0, 1] - 0.3) == pytest.approx(0.3)
    assert abs(mean[0, 1] - 0.3) < 0.03


@settings(max_examples=40, deadline=None)
@given(
    codes=arrays(np.uint8, st.integers(0, 37), elements=st.integers(0, 255)),
    bits=st.sampled_from([1, 2, 4, 8]),
)
def test_pack_unpack_round_trip(codes: np.ndarray, bits: int) -> None:
    codes = codes & np.uint8((1 << bits) - 1)
    packed = pack(codes, bits)
    assert packed.dtype == np.uint8 and packed.size == -(-codes.size * bits // 8)
    np.testing.assert_array_equal(unpack(packed, bits, codes.size), codes)


@pytest.mark.parametrize("scale", ["row", "tensor"])
@pytest.mark.parametrize("bits", [1, 4, 8])
def test_encode_decode_round_trip_on_item_arrays(bits: int, scale: str) -> None:
    # Prepare: item embeddings and biases, the round's global arrays and a trained update
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(50, 8)).astype(np.float32), rng.normal(size=50).astype(np.float32)]
    new = [a + rng.normal(scale=0.1, size=a.shape).astype(np.float32) for a in g]
    codec = UploadCodec(bits, scale)
    # Execute
    wire = codec.encode(new, g, np.random.default_rng(1))
    back = codec.decode(wire, g)
    # Assert: the declared layout, the declared bytes, and each value within one step
    assert [tuple(w.shape) for w in wire] == codec.wire_shapes([(50, 8), (50,)])
    assert sum(w.nbytes for w in wire) == codec.wire_bytes([(50, 8), (50,)])
    for a, b, w_lo, w_step in zip(new, back, wire[1::3], wire[2::3], strict=True):
        assert b.shape == a.shape and b.dtype == np.float32
        assert w_lo.dtype == np.float32 and w_step.dtype == np.float32
        assert np.all(np.abs(b - a).reshape(len(w_step), -1) <= w_step[:, None] + 1e-5)
    assert codec.wire_bytes([(50, 8), (50,)]) < UploadCodec(0).wire_bytes([(50, 8), (50,)])


def test_every_row_is_sent_whatever_rows_the_user_touched() -> None:
    # Prepare: two users' updates touching different rows (the rest exactly unchanged)
    rng = np.random.default_rng(0)
    g = [rng.normal(size=(40, 4)).astype(np.float32)]
    touched_a, touched_b = g[0].copy(), g[0].copy()
    touched_a[[1, 5]] += 0.5
    touched_b[[2, 3, 30, 39]] -= 0.25
    codec = UploadCodec(8, "row")
    # Execute
    wa = codec.encode([touched_a], g, np.random.default_rng(1))
    wb = codec.encode([touched_b], g, np.random.default_rng(1))
    # Assert: the same layout (no index, no row count) whatever the touched set; codes for
    # every element of every row (a sparse upload would carry fewer)
    assert [w.shape for w in wa] == [w.shape for w in wb] == [(160,), (40,), (40,)]
    assert [w.dtype for w in wa] == [w.dtype for w in wb]


def test_bad_codec_settings_are_refused() -> None:
    with pytest.raises(ConfigError, match=r"train.upload-bits.*one of 0, 1, 2, 4, 8"):
        UploadCodec(3)
    with pytest.raises(ConfigError, match=r"train.upload-scale.*row or tensor"):
        UploadCodec(8, "column")
