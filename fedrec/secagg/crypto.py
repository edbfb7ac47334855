"""The cryptographic primitives of SecAgg+, all from the ``cryptography`` package.

Nothing here is home-made: X25519 key agreement (RFC 7748), HKDF-SHA256 (RFC 5869) to
derive 256-bit keys from a shared secret, AES-256-GCM for the encrypted share
messages, and AES-256 in counter mode as the pseudo-random generator that expands a
32-byte seed into a mask over ``Z_{2^bits}`` (Bell et al., CCS 2020, use a PRG keyed
by the agreed secret the same way). The mask is read as little-endian 32- or 64-bit
words and reduced modulo ``2^bits`` by masking the low bits: as ``2^bits`` divides
``2^32`` (``2^64``), every residue is exactly uniform, with no modulo bias.
"""

from __future__ import annotations

import os
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey, X25519PublicKey
from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

Ring = npt.NDArray[np.unsignedinteger[Any]]
"""Residues of ``Z_{2^bits}`` in :func:`ring_dtype` words."""
SEED_BYTES = 32
"""Length of self-mask seeds and derived keys (256 bits)."""
NONCE_BYTES = 12
MAX_BITS = 62
"""Largest ring ``Z_{2^bits}``: sums of ``uint64`` words of up to 62 bits cannot overflow."""


class DecryptionError(ValueError):
    """A share message failed authentication (tampered, or not meant for this node)."""


def new_private_key() -> X25519PrivateKey:
    """A fresh X25519 private key (OS entropy)."""
    return X25519PrivateKey.generate()


def private_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of a private key (what Shamir shares)."""
    return key.private_bytes(
        serialization.Encoding.Raw, serialization.PrivateFormat.Raw, serialization.NoEncryption()
    )


def private_from_bytes(raw: bytes) -> X25519PrivateKey:
    """The private key of 32 raw bytes."""
    return X25519PrivateKey.from_private_bytes(raw)


def public_bytes(key: X25519PrivateKey) -> bytes:
    """The 32 raw bytes of the key's public key (what a node advertises)."""
    return key.public_key().public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)


def agree(private: bytes, peer_public: bytes, info: bytes) -> bytes:
    """A 32-byte key shared by two nodes: HKDF-SHA256 of their X25519 secret.

    ``info`` separates uses (``b"enc"`` for share encryption, ``b"mask"`` for pairwise
    masks) and binds the round, so no key serves two purposes.
    """
    shared = private_from_bytes(private).exchange(X25519PublicKey.from_public_bytes(peer_public))
    hkdf = HKDF(algorithm=hashes.SHA256(), length=SEED_BYTES, salt=None, info=info)
    return hkdf.derive(shared)


def new_seed() -> bytes:
    """A fresh 32-byte seed from the OS CSPRNG (the self mask's)."""
    return os.urandom(SEED_BYTES)


def encrypt(key: bytes, plaintext: bytes, associated: bytes) -> bytes:
    """AES-256-GCM: ``nonce || ciphertext || tag``; ``associated`` is authenticated."""
    nonce = os.urandom(NONCE_BYTES)
    return nonce + AESGCM(key).encrypt(nonce, plaintext, associated)


def decrypt(key: bytes, message: bytes, associated: bytes) -> bytes:
    """Undo :func:`encrypt`; :class:`DecryptionError` if authentication fails."""
    try:
        return AESGCM(key).decrypt(message[:NONCE_BYTES], message[NONCE_BYTES:], associated)
    except InvalidTag as exc:
        raise DecryptionError("share message failed authentication") from exc


def check_bits(bits: int) -> None:
    """Refuse a ring outside ``Z_{2^1} .. Z_{2^62}``."""
    if not 1 <= bits <= MAX_BITS:
        raise ValueError(f"ring bits must lie in [1, {MAX_BITS}], got {bits}")


def ring_dtype(bits: int) -> type[np.unsignedinteger[Any]]:
    """``uint32`` words for rings up to ``2^32``, else ``uint64``: their wrap-around
    arithmetic (mod ``2^32`` / ``2^64``) reduces exactly to ``Z_{2^bits}``."""
    check_bits(bits)
    return np.uint32 if bits <= 32 else np.uint64


@lru_cache(maxsize=2)
def _zeros(nbytes: int) -> bytes:
    """A reusable all-zero plaintext: CTR encryption of zeros is the keystream."""
    return bytes(nbytes)


def mask_words(seed: bytes, length: int, bits: int, out: Ring | None = None) -> Ring:
    """The AES-256-CTR keystream keyed by ``seed`` as ``length`` little-endian ring words,
    **not** reduced: their residues mod ``2^bits`` are :func:`expand_mask`'s. Sums and
    differences of raw words reduce to the same residues (``2^bits`` divides the word
    modulus), so a caller adding many masks reduces once. Written into ``out`` (the
    words of :func:`ring_dtype`, C-contiguous) when given.
    """
    check_bits(bits)
    if len(seed) != SEED_BYTES:
        raise ValueError(f"mask seeds are {SEED_BYTES} bytes, got {len(seed)}")
    dtype = np.dtype(ring_dtype(bits)).newbyteorder("<")
    if out is None:
        out = np.empty(length, dtype=dtype)
    elif out.shape != (length,) or out.dtype != dtype or not out.flags.c_contiguous:
        raise ValueError(f"out must be {length} contiguous words of {dtype}")
    stream = Cipher(algorithms.AES(seed), modes.CTR(bytes(16))).encryptor()
    stream.update_into(_zeros(out.nbytes), memoryview(out).cast("B"))  # type: ignore[arg-type]
    stream.finalize()
    return out


def expand_mask(seed: bytes, length: int, bits: int) -> Ring:
    """``length`` uniform residues of ``Z_{2^bits}`` from AES-256-CTR keyed by ``seed``.

    Each call starts the counter at zero: one seed, one mask (seeds are never reused).
    """
    words = mask_words(seed, length, bits)
    out: Ring = (words & words.dtype.type((1 << bits) - 1)).astype(ring_dtype(bits), copy=False)
    return out


__all__ = [
    "MAX_BITS",
    "SEED_BYTES",
    "DecryptionError",
    "agree",
    "check_bits",
    "decrypt",
    "encrypt",
    "expand_mask",
    "mask_words",
    "new_private_key",
    "new_seed",
    "private_bytes",
    "private_from_bytes",
    "public_bytes",
    "ring_dtype",
]
