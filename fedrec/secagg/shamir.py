"""Shamir secret sharing of SecAgg's 32-byte secrets, with pycryptodome's ``Shamir``.

pycryptodome's ``Crypto.Protocol.SecretSharing.Shamir`` shares one 16-byte block in
GF(2^128) (Shamir, CACM 1979), each split with fresh random coefficients. A secret
of ``16 c`` bytes is shared block by block; a share is ``<4-byte little-endian
index><c 16-byte shares>``: the layout of Flower's
:func:`flwr.common.secure_aggregation.crypto.shamir.create_shares`, which wraps the same
primitive. Flower's version first pads the secret (PKCS#7: 32 bytes become three
blocks) and runs the blocks in a new thread pool per call; SecAgg's secrets (X25519
private keys, self-mask seeds) are exactly 32 bytes, so here they are two blocks, in
the calling thread: a third less work in GF(2^128), which dominates the protocol's
Python time (the server rebuilds one secret per device).
"""

from __future__ import annotations

from Crypto.Protocol.SecretSharing import Shamir

BLOCK = 16
INDEX_BYTES = 4


def _blocks(secret: bytes) -> list[bytes]:
    if not secret or len(secret) % BLOCK:
        raise ValueError(f"secrets must be a positive multiple of {BLOCK} bytes")
    return [secret[i : i + BLOCK] for i in range(0, len(secret), BLOCK)]


def split(secret: bytes, threshold: int, count: int) -> list[bytes]:
    """``count`` shares of ``secret``, any ``threshold`` of which rebuild it."""
    per_block = [Shamir.split(threshold, count, block, ssss=False) for block in _blocks(secret)]
    out = []
    for shares in zip(*per_block, strict=True):
        (index,) = {i for i, _ in shares}
        out.append(index.to_bytes(INDEX_BYTES, "little") + b"".join(s for _, s in shares))
    return out


def combine(shares: list[bytes]) -> bytes:
    """The secret of at least ``threshold`` shares made by :func:`split` (a wrong or
    short set of shares yields a wrong secret: callers check what they rebuild)."""
    size = len(shares[0]) if shares else 0
    if size <= INDEX_BYTES or (size - INDEX_BYTES) % BLOCK or any(len(s) != size for s in shares):
        raise ValueError("shares must be equal-length <index><16-byte blocks> records")
    indices = [int.from_bytes(s[:INDEX_BYTES], "little") for s in shares]
    if len(set(indices)) != len(indices):
        raise ValueError("duplicate share indices")
    out = b""
    for start in range(INDEX_BYTES, size, BLOCK):
        block = [(i, s[start : start + BLOCK]) for i, s in zip(indices, shares, strict=True)]
        out += Shamir.combine(block, ssss=False)
    return out


__all__ = ["combine", "split"]
