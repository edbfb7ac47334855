"""Quantized uploads (fedrec.federated.compression): unbiased, lossless layout, every row sent."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from hypothesis.extra.numpy import arrays

from fedrec.errors import ConfigError
from fedrec.federated.compression import UploadCodec, dequantize, pack, quantize, unpack
from server.checkpoint import load_checkpoint

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


# ------------------------------------------------------------ in the Flower apps (in-process)


def _run_recording_uploads(
    tmp: Path, monkeypatch: pytest.MonkeyPatch, **overrides: object
) -> tuple[dict[str, float], list[list[np.ndarray]]]:
    import clients.client_app as client_app
    from simulations.run_dir import read_metrics
    from tests.test_flower_apps import make_settings, run_in_process

    sent: list[list[np.ndarray]] = []
    real = getattr(client_app._upload, "__wrapped__", client_app._upload)

    def recording(*args: Any, **kw: Any) -> list[np.ndarray]:
        wire = real(*args, **kw)
        sent.append(wire)
        return wire

    recording.__wrapped__ = real  # type: ignore[attr-defined]
    monkeypatch.setattr(client_app, "_upload", recording)
    run_in_process(make_settings(tmp, **{"num-server-rounds": 2, **overrides}))
    return read_metrics(tmp), sent


def test_quantized_uploads_train_through_the_flower_apps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare / Execute: the same run with float32 and with 8-bit per-row uploads
    plain, plain_sent = _run_recording_uploads(tmp_path / "plain", monkeypatch)
    quant, quant_sent = _run_recording_uploads(
        tmp_path / "q8", monkeypatch, **{"train.upload-bits": 8}
    )
    # Assert: what went on the wire is the quantized layout, 3x+ smaller, for every device
    shapes = [tuple(a.shape) for a in plain_sent[0]]
    codec = UploadCodec(8, "row")
    assert quant_sent and len(quant_sent) == len(plain_sent)
    for wire in quant_sent:
        assert [tuple(w.shape) for w in wire] == codec.wire_shapes(shapes)
        assert wire[0].dtype == np.uint8
        assert sum(w.nbytes for w in wire) == codec.wire_bytes(shapes)
    assert sum(a.nbytes for a in plain_sent[0]) > 3 * codec.wire_bytes(shapes)
    # and the run still learns about as well, on item arrays that differ (quantized)
    a, b = load_checkpoint(tmp_path / "plain"), load_checkpoint(tmp_path / "q8")
    assert a is not None and b is not None
    assert not np.array_equal(a.item_arrays[0], b.item_arrays[0])
    assert abs(quant["ndcg@10"] - plain["ndcg@10"]) < 0.05


@pytest.mark.parametrize(
    "privacy",
    [
        {"privacy": "central", "privacy.noise-multiplier": 0.5, "privacy.clip-norm": 1.0},
        {"privacy": "local", "privacy.noise-multiplier": 1.0, "privacy.clip-norm": 1.0},
    ],
)
def test_quantized_uploads_run_under_dp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, privacy: dict[str, object]
) -> None:
    # Execute: 4-bit per-tensor uploads, DP on (local: the device's noised update is
    # quantized; central: the server decodes, then clips and noises)
    metrics, sent = _run_recording_uploads(
        tmp_path,
        monkeypatch,
        **privacy,
        **{"train.upload-bits": 4, "train.upload-scale": "tensor"},
    )
    # Assert
    assert sent and all(w[0].dtype == np.uint8 and w[1].shape == (1,) for w in sent)
    assert np.isfinite(metrics["ndcg@10"])


def test_central_dp_clips_the_decoded_update(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from fedrec.privacy.central import DPFedAvg

    # Prepare: record what the central mechanism (clip to S, noise the sum) is given
    given: list[list[tuple[tuple[int, ...], str]]] = []
    real = DPFedAvg.aggregate

    def recording(self: DPFedAvg, global_items: Any, client_items: Any, rng: Any) -> Any:
        given.extend([[(a.shape, str(a.dtype)) for a in c] for c in client_items])
        return real(self, global_items, client_items, rng)

    monkeypatch.setattr(DPFedAvg, "aggregate", recording)
    # Execute
    _, sent = _run_recording_uploads(
        tmp_path,
        monkeypatch,
        **{"privacy": "central", "privacy.noise-multiplier": 0.5, "privacy.clip-norm": 1.0},
        **{"train.upload-bits": 8},
    )
    # Assert: the mechanism clips float item arrays (the decoded update), so its
    # sensitivity is S whatever the quantization did; never the wire's codes
    assert sent and given
    shapes = [(s, "float32") for s in ((50, 32), (50, 1))]
    assert all(upload == shapes for upload in given)


@pytest.mark.parametrize(
    ("flags", "where"),
    [
        (["--set", "train.upload-bits=8"], "--set train.upload-bits"),
        (["--track", "tensorboard"], "--track"),
    ],
)
def test_federated_ease_refuses_round_options_it_would_ignore(
    flags: list[str], where: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simulations.cli import main

    # Prepare: federated EASE uploads one Gram matrix in one round
    out = tmp_path / "run"
    argv = ["simulate", "--data", "synthetic:users=30,items=50,seed=3", "--model", "ease"]
    # Execute
    code = main([*argv, *flags, "--out", str(out)])
    # Assert: refused, not silently ignored, and nothing written
    assert code == 2
    assert f"fedrec simulate: error: {where}" in capsys.readouterr().err
    assert not out.exists()
