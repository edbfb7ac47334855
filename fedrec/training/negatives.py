"""Keyed negative sampling: each interaction's negatives are a function of that interaction.

Design rule: under local DP the MF privacy unit is one interaction, a positive row and
its ``k`` negative rows (:func:`fedrec.privacy.local_dp.interaction_units`). Removing
one interaction must remove exactly one unit and leave every other unit unchanged, so
the negatives of an interaction may depend on nothing of the user's data but its own
item: not on its position among the user's interactions (one ``randint(n * k)`` handed
out by position shifts every later unit's negatives when an earlier one is removed),
not on the number of interactions, and not on the user's other items (rejecting a
sampled negative because it is a positive couples units again, so it is never done).

The draw (:func:`keyed_negatives`): per epoch, two 62-bit words of the call's public
generator (seeded from the run seed, the user and the round) form the epoch nonce;
one keyed BLAKE2b (RFC 7693; a PRF under its key) of that nonce under the device key
gives a 64-bit stream offset ``s``; negative ``j`` of the interaction with item ``i``
(user slot ``u``) is SplitMix64 (Steele, Lea & Flood, OOPSLA 2014) at position
``(u * n_items + i) * k + j`` of the stream starting at ``s``, reduced to
``[0, n_items)`` by Lemire's multiply-shift (bias below ``n_items / 2**64``). SplitMix64
is a counter-based generator that passes BigCrush; all of it is numpy ``uint64``
arithmetic over every unit at once (one hash per epoch, not per unit). The generator
draws two words per epoch whatever the data, so the nonces of a call's epochs do not
depend on the data either.

The device key (:func:`new_device_key`, 32 bytes from :mod:`secrets`) stays on the
device. The DP guarantee does not rest on its secrecy, only on the key and the nonce
being chosen independently of the user's data: the negatives of a unit are then a
fixed function of that unit's item, for any key. The secret key makes the negatives
unpredictable to the server (defence in depth, SplitMix64 is not a cryptographic PRF)
and different between devices holding the same item. Without a device key
(``key=None``: the Flower-free reference loop, simulated devices, centralized
training, tests) a public key is used: the nonce alone, derived from the public run
seed, then decides the negatives.
"""

from __future__ import annotations

import hashlib
import secrets
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.training.torch_stream import TorchCpuStream

if TYPE_CHECKING:
    import torch

KEY_BYTES = 32
"""Length of a device key (BLAKE2b accepts keys of up to 64 bytes)."""

PUBLIC_KEY = b"fedrec public negatives"
"""The key of calls without a device key (not secret)."""

_GAMMA = np.uint64(0x9E3779B97F4A7C15)  # SplitMix64's Weyl increment
_MIX1, _MIX2 = np.uint64(0xBF58476D1CE4E5B9), np.uint64(0x94D049BB133111EB)
_LOW32 = np.uint64(0xFFFFFFFF)
_NONCE_HIGH = 2**62

U64 = npt.NDArray[np.uint64]


def new_device_key() -> bytes:
    """A fresh secret device key from the OS CSPRNG (:func:`secrets.token_bytes`)."""
    return secrets.token_bytes(KEY_BYTES)


def check_key(key: bytes) -> bytes:
    """``key`` if it is a usable device key, else ``ValueError``."""
    if not isinstance(key, bytes) or not 16 <= len(key) <= 64:
        raise ValueError(f"a device key is 16 to 64 bytes, got {type(key).__name__}")
    return key


def epoch_offset(generator: torch.Generator | TorchCpuStream, key: bytes | None) -> int:
    """The epoch's 64-bit SplitMix64 stream offset: ``BLAKE2b_key(nonce)``.

    Draws the epoch nonce, two words of ``generator``, always the same amount (a
    :class:`~fedrec.training.torch_stream.TorchCpuStream` draws torch's words).
    """
    if isinstance(generator, TorchCpuStream):
        nonce = generator.randint(0, _NONCE_HIGH, 2)
    else:
        import torch

        nonce = torch.randint(0, _NONCE_HIGH, (2,), generator=generator).numpy()
    digest = hashlib.blake2b(
        nonce.astype("<i8").tobytes(),
        key=PUBLIC_KEY if key is None else check_key(key),
        digest_size=8,
        person=b"fedrec-negs",
    ).digest()
    return int.from_bytes(digest, "little")


def splitmix64(offset: int, positions: U64) -> U64:
    """SplitMix64's output at ``positions`` of the stream starting at ``offset``."""
    with np.errstate(over="ignore"):
        z = np.uint64(offset) + _GAMMA * (positions + np.uint64(1))
        z = (z ^ (z >> np.uint64(30))) * _MIX1
        z = (z ^ (z >> np.uint64(27))) * _MIX2
    out: U64 = z ^ (z >> np.uint64(31))
    return out


def below(words: U64, n: int) -> npt.NDArray[np.int64]:
    """``floor(words * n / 2**64)``: uniform 64-bit words to ``[0, n)`` (Lemire 2019).

    Exact in ``uint64`` for ``n < 2**32`` (the product is split in 32-bit halves).
    """
    if not 0 < n < 2**32:
        raise ValueError(f"need 0 < n < 2**32 items, got {n}")
    m = np.uint64(n)
    with np.errstate(over="ignore"):
        high = (words >> np.uint64(32)) * m + (((words & _LOW32) * m) >> np.uint64(32))
    return (high >> np.uint64(32)).astype(np.int64)


def keyed_negatives(
    generator: torch.Generator | TorchCpuStream,
    key: bytes | None,
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    k: int,
    n_items: int,
) -> npt.NDArray[np.int64]:
    """One epoch's negatives ``[len(items), k]``: row ``r`` depends only on ``users[r]``,
    ``items[r]``, the key and the epoch nonce (see the module docstring).

    Parameters
    ----------
    generator
        The call's public generator; two words are drawn (the epoch nonce).
    key
        The device key, or ``None`` for the public key.
    users, items
        User slot (``0`` on a device) and item of each interaction.
    k
        Negatives per interaction.
    n_items
        Negatives are drawn uniformly from ``0..n_items-1``, the user's positives
        included.
    """
    offset = epoch_offset(generator, key)
    u = np.asarray(users, dtype=np.int64).astype(np.uint64)
    i = np.asarray(items, dtype=np.int64).astype(np.uint64)
    base = (u * np.uint64(n_items) + i) * np.uint64(k)
    positions = base[:, None] + np.arange(k, dtype=np.uint64)[None, :]
    return below(splitmix64(offset, positions), n_items)
