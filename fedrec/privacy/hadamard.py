"""Hadamard matrices of order ``m 2^k`` and their fast transform (the DP rotation's).

The randomized Hadamard rotation of distributed DP (Kairouz, Liu & Steinke, ICML 2021)
needs an orthogonal matrix whose entries all have absolute value ``1 / sqrt(D)``: then
each rotated coordinate of ``x`` is a Rademacher sum with weights ``|x_j| / sqrt(D)``,
and Hoeffding's inequality flattens it to about ``|x| sqrt(2 ln(D) / D)`` whatever the
input. Any Hadamard matrix ``H`` (entries +-1, ``H H^T = D I``) gives one, scaled by
``1 / sqrt(D)``; the paper uses Sylvester's (``D`` a power of two). A Kronecker
product of Hadamard matrices is Hadamard, so ``H_m (x) H_{2^k}`` with a small Paley
matrix ``H_m`` (Paley, 1933; ``m`` = 12, 20, 28, 36, 44, 60) allows ``D = m 2^k``: far
less zero padding than the next power of two (ml-100k: 1,415,403 coordinates pad to
1,441,792 = 44 x 2^15 instead of 2,097,152). Applied as ``H_m X H_{2^k}`` on ``x``
reshaped to ``m`` rows: ``k`` butterfly passes (fast Walsh-Hadamard transform) and one
``m x m`` product.
"""

from __future__ import annotations

from functools import cache, lru_cache

import numpy as np
import numpy.typing as npt

F64 = npt.NDArray[np.float64]
MAX_FACTOR = 64
"""Largest Paley factor ``m`` offered (the ``m x m`` product costs ``m`` flops a coordinate)."""


def _legendre(q: int) -> npt.NDArray[np.int64]:
    """The quadratic character modulo the prime ``q``: 0, then +1 / -1 per residue."""
    chi = -np.ones(q, dtype=np.int64)
    chi[0] = 0
    chi[[(a * a) % q for a in range(1, q)]] = 1
    return chi


def _power_of_two(n: int) -> bool:
    return n > 0 and n & (n - 1) == 0


def _is_prime(q: int) -> bool:
    return q > 1 and all(q % d for d in range(2, int(q**0.5) + 1))


def _paley(m: int) -> npt.NDArray[np.int64] | None:
    """A Hadamard matrix of order ``m`` by Paley's construction I (``m = q + 1``, ``q``
    prime ``= 3 mod 4``) or II (``m = 2 (q + 1)``, ``q`` prime ``= 1 mod 4``); ``None``
    if neither applies."""
    q = m - 1
    if _is_prime(q) and q % 4 == 3:  # construction I: I + [[0, 1^T], [-1, Q]]
        chi = _legendre(q)
        jac = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
        s = np.zeros((m, m), dtype=np.int64)
        s[0, 1:], s[1:, 0], s[1:, 1:] = 1, -1, jac
        return s + np.eye(m, dtype=np.int64)
    q = m // 2 - 1
    if m % 2 == 0 and _is_prime(q) and q % 4 == 1:  # construction II (conference matrix)
        chi = _legendre(q)
        conf = np.zeros((q + 1, q + 1), dtype=np.int64)
        conf[0, 1:], conf[1:, 0] = 1, 1
        conf[1:, 1:] = chi[(np.arange(q)[None, :] - np.arange(q)[:, None]) % q]
        one = np.array([[1, 1], [1, -1]], dtype=np.int64)
        zero = np.array([[1, -1], [-1, -1]], dtype=np.int64)
        return np.kron(conf, one) + np.kron((conf == 0).astype(np.int64), zero)
    return None


@cache
def factor_matrix(m: int) -> F64:
    """The Hadamard matrix ``H_m`` of the odd-part factor (``[[1]]`` for ``m = 1``),
    checked: ``H_m H_m^T = m I``."""
    h = np.ones((1, 1), dtype=np.int64) if m == 1 else _paley(m)
    if h is None or not np.array_equal(h @ h.T, m * np.eye(m, dtype=np.int64)):
        raise ValueError(f"no Hadamard matrix of order {m} is built here")
    out = h.astype(np.float64)
    out.flags.writeable = False
    return out


@lru_cache(maxsize=1)
def factors() -> tuple[int, ...]:
    """``m`` values offered: 1 and the Paley orders up to :data:`MAX_FACTOR` that are not
    ``2^j`` times a smaller one."""
    out = [1]
    for m in range(4, MAX_FACTOR + 1, 4):
        if _paley(m) is not None and not any(m % f == 0 and _power_of_two(m // f) for f in out):
            out.append(m)
    return tuple(out)


def hadamard_length(dim: int) -> int:
    """The smallest ``D = m 2^k >= dim`` with a Hadamard matrix here."""
    best = 1 << max(0, (dim - 1).bit_length())
    for m in factors()[1:]:
        blocks = -(-dim // m)
        best = min(best, m * (1 << max(0, (blocks - 1).bit_length())))
    return best


def split_length(length: int) -> tuple[int, int]:
    """``(m, 2^k)`` with ``m`` in :func:`factors` and ``m 2^k = length``."""
    for m in factors():
        block = length // m
        if length % m == 0 and _power_of_two(block):
            return m, block
    raise ValueError(f"{length} is not m 2^k for a Hadamard factor m in {factors()}")


def _butterflies(x: F64, block: int) -> None:
    """Unnormalized Walsh-Hadamard transform of every consecutive ``block`` of ``x``,
    in place (one scratch buffer of half the length)."""
    scratch = np.empty(x.size // 2, dtype=x.dtype)
    h = 1
    while h < block:
        view = x.reshape(-1, 2, h)
        first, second = view[:, 0, :], view[:, 1, :]
        diff = scratch.reshape(-1, h)
        np.subtract(first, second, out=diff)
        np.add(first, second, out=first)
        np.copyto(second, diff)
        h *= 2


def transform(x: F64, *, transpose: bool = False) -> F64:
    """``H x`` (or ``H^T x``) for ``H = H_m (x) H_{2^k}`` of order ``x.size``, unnormalized;
    overwrites and returns ``x`` (or a new array when ``m > 1``)."""
    m, block = split_length(x.size)
    _butterflies(x, block)
    if m == 1:
        return x
    h = factor_matrix(m)
    rows: F64 = (h.T if transpose else h) @ x.reshape(m, block)
    return rows.reshape(-1)


__all__ = ["factor_matrix", "factors", "hadamard_length", "split_length", "transform"]
