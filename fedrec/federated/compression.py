"""Smaller uploads: unbiased stochastic quantization of a dense item-side update.

Design rule: a device uploads every row of every item-side array (a sparse upload would
name the items its user touched), so on a large catalog the upload is large: 340,000
items x 32 float32 are 44 MB per device per round. Opt-in (``train.upload-bits``), the
device sends instead its update ``new - global`` (the global arrays of the round, which
the server holds too) quantized to ``bits`` bits per value with unbiased stochastic
rounding (QSGD, Alistarh et al., NeurIPS 2017; Suresh et al., ICML 2017): each value
``x`` in ``[lo, hi]`` becomes one of ``2**bits`` levels ``lo + k * step``, rounded up
with probability equal to its distance from the level below, so ``E[decode(x)] = x``
exactly. ``lo`` and ``step`` are per row (``scale="row"``: one pair per item; per array
for one-value-per-item arrays such as biases) or per array (``scale="tensor"``). The
codes of **every** element are sent, packed ``8 // bits`` per byte, with no index: the
upload's layout does not depend on the data.

Privacy: quantization is post-processing. Under local DP it is applied to the
device's already noised update; under central DP the server decodes the upload before
its mechanism clips it to ``S`` and noises the sum, so the sensitivity is still ``S``.
It does not hide which rows changed (without noise, an untouched row is still exactly
zero: ``lo = hi = 0``); only the DP noise does that, as for the float upload.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError

Arrays = list[npt.NDArray[np.float32]]
Wire = list[npt.NDArray[Any]]
BITS = (0, 1, 2, 4, 8)
"""Allowed ``upload-bits``: 0 = float32 (no quantization); codes pack ``8 // bits`` per byte."""
SCALES = ("row", "tensor")
PARTS = 3
"""Wire arrays per item array: packed codes (uint8), ``lo`` and ``step`` (float32)."""


@dataclass(frozen=True)
class UploadCodec:
    """How an upload is encoded: ``bits`` per value (0: float32) and ``scale`` granularity."""

    bits: int = 0
    scale: str = "row"

    def __post_init__(self) -> None:
        if self.bits not in BITS:
            raise ConfigError(
                f"must be one of {', '.join(map(str, BITS))}, got {self.bits!r}",
                where="train.upload-bits",
                fix="use 8 (4x smaller than float32) or 0 (no quantization)",
            )
        if self.scale not in SCALES:
            raise ConfigError(
                f"must be row or tensor, got {self.scale!r}",
                where="train.upload-scale",
                fix="use row (one lo/step per item) or tensor (one per array)",
            )

    @property
    def enabled(self) -> bool:
        return self.bits > 0

    def _rows(self, shape: tuple[int, ...]) -> int:
        """Scale pairs of an array: one per row (item) with ``scale="row"``, one per array
        otherwise and for arrays of one value per item (biases: a pair would cost 8x)."""
        per_row = self.scale == "row" and len(shape) >= 2 and int(np.prod(shape[1:])) > 1
        return shape[0] if per_row else 1

    def wire_shapes(self, shapes: Sequence[tuple[int, ...]]) -> list[tuple[int, ...]]:
        """The shapes of the wire arrays for item arrays of ``shapes``."""
        if not self.enabled:
            return [tuple(s) for s in shapes]
        out: list[tuple[int, ...]] = []
        for shape in shapes:
            size, rows = int(np.prod(shape)), self._rows(tuple(shape))
            out += [(-(-size * self.bits // 8),), (rows,), (rows,)]
        return out

    def wire_bytes(self, shapes: Sequence[tuple[int, ...]]) -> int:
        """Bytes of an upload of item arrays of ``shapes`` (array payloads only)."""
        if not self.enabled:
            return sum(4 * int(np.prod(s)) for s in shapes)
        sizes = [int(np.prod(s)) for s in self.wire_shapes(shapes)]
        return sum(n if i % PARTS == 0 else 4 * n for i, n in enumerate(sizes))

    def check_wire(self, wire: Wire) -> str:
        """Why ``wire`` (of the declared shapes) is not a valid upload ('' when it is)."""
        if not self.enabled:
            return ""
        for k in range(0, len(wire), PARTS):
            codes, lo, step = wire[k : k + PARTS]
            if codes.dtype != np.uint8 or lo.dtype != np.float32 or step.dtype != np.float32:
                return "a quantized upload must hold uint8 codes and float32 lo/step"
            if not (np.all(np.isfinite(lo)) and np.all(np.isfinite(step)) and np.all(step >= 0)):
                return "a quantized upload's lo/step must be finite (step >= 0)"
        return ""

    def encode(self, new: Arrays, reference: Arrays, rng: np.random.Generator) -> Wire:
        """The wire arrays of ``new``: its update from ``reference``, quantized (unbiased)."""
        if not self.enabled:
            return [np.asarray(a, dtype=np.float32) for a in new]
        wire: Wire = []
        for a, g in zip(new, reference, strict=True):
            delta = (np.asarray(a, np.float64) - np.asarray(g, np.float64)).reshape(
                self._rows(a.shape), -1
            )
            codes, lo, step = quantize(delta, self.bits, rng)
            wire += [pack(codes, self.bits), lo, step]
        return wire

    def decode(self, wire: Wire, reference: Arrays) -> Arrays:
        """The item arrays a wire upload stands for: ``reference`` plus the decoded update."""
        if not self.enabled:
            return [np.asarray(a, dtype=np.float32) for a in wire]
        if len(wire) != PARTS * len(reference):
            raise ValueError(f"{len(wire)} wire arrays for {len(reference)} item arrays")
        out: Arrays = []
        for k, g in enumerate(reference):
            packed, lo, step = wire[PARTS * k : PARTS * k + PARTS]
            rows = self._rows(g.shape)
            codes = unpack(np.asarray(packed, np.uint8), self.bits, g.size).reshape(rows, -1)
            delta = dequantize(codes, np.asarray(lo), np.asarray(step))
            out.append((g.astype(np.float64) + delta.reshape(g.shape)).astype(np.float32))
        return out


def quantize(
    x: npt.NDArray[np.float64], bits: int, rng: np.random.Generator
) -> tuple[npt.NDArray[np.uint8], npt.NDArray[np.float32], npt.NDArray[np.float32]]:
    """Stochastic ``bits``-bit codes of each row of ``x`` (2-D), with its ``lo`` and ``step``.

    ``decode = lo + code * step`` is unbiased: ``E[decode] = x`` for every element, with
    variance at most ``step**2 / 4``. ``lo`` and ``step`` are float32 (what is sent);
    the rounding uses exactly those values, so the float32 grid is what is unbiased.
    """
    levels = (1 << bits) - 1
    lo = x.min(axis=1).astype(np.float32)
    step = ((x.max(axis=1) - lo) / levels).astype(np.float32)
    lo64, step64 = lo.astype(np.float64)[:, None], step.astype(np.float64)[:, None]
    safe = np.where(step64 > 0, step64, 1.0)
    position = np.where(step64 > 0, (x - lo64) / safe, 0.0)
    codes = np.floor(position + rng.random(x.shape))
    return np.clip(codes, 0, levels).astype(np.uint8), lo, step


def dequantize(
    codes: npt.NDArray[np.uint8], lo: npt.NDArray[np.float32], step: npt.NDArray[np.float32]
) -> npt.NDArray[np.float64]:
    """``lo + codes * step`` row by row (the inverse of :func:`quantize` in expectation)."""
    return (
        lo.astype(np.float64)[:, None] + codes.astype(np.float64) * step.astype(np.float64)[:, None]
    )


def pack(codes: npt.NDArray[np.uint8], bits: int) -> npt.NDArray[np.uint8]:
    """``codes`` (each < ``2**bits``) flattened, ``8 // bits`` to a byte (little end first)."""
    flat = codes.reshape(-1)
    per = 8 // bits
    padded = np.zeros(-(-flat.size // per) * per, dtype=np.uint8)
    padded[: flat.size] = flat
    lanes = padded.reshape(-1, per).astype(np.uint16)
    shifts = np.arange(per, dtype=np.uint16) * bits
    packed: npt.NDArray[np.uint8] = np.bitwise_or.reduce(lanes << shifts, axis=1).astype(np.uint8)
    return packed


def unpack(packed: npt.NDArray[np.uint8], bits: int, size: int) -> npt.NDArray[np.uint8]:
    """The first ``size`` codes of :func:`pack`'s output."""
    per = 8 // bits
    shifts = np.arange(per, dtype=np.uint8) * bits
    mask = np.uint8((1 << bits) - 1)
    codes = (packed.reshape(-1, 1) >> shifts) & mask
    return codes.reshape(-1)[:size].astype(np.uint8)


__all__ = ["BITS", "SCALES", "UploadCodec", "dequantize", "pack", "quantize", "unpack"]
