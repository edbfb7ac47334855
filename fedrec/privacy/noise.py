"""Sources of secret randomness for DP noise and DP sampling.

Design rule: **noise is secret**. A DP guarantee holds only if the adversary cannot
predict the Gaussian noise, nor (for amplification by sampling) which units were
sampled. Every other random choice in fedrec is seeded from the run seed so that a run
is reproducible from ``config.json``; the noise and the privacy sampling are the
exception: they are seeded from OS entropy (:mod:`secrets`), never from the run seed,
because ``config.json`` is not a secret. A run with DP noise is therefore not bit-for-bit
reproducible, by design. Tests may pass ``insecure_seed`` to get reproducible noise;
such a run has no DP guarantee and the caller must say so.

Why :func:`secure_rng` is the source the mechanisms use: PyTorch's CPU generator is a
Mersenne Twister whose seed is truncated to 32 bits (seeds ``s`` and ``s + 2**32`` give
the same stream), so an adversary could enumerate all 2**32 seeds and subtract the
noise. NumPy's PCG64DXSM seeded with 128 bits of OS entropy has no such shortcut. Neither
is a cryptographic generator, and neither defends against the floating-point attack on
the Gaussian mechanism (Mironov, CCS 2012); see docs/PRIVACY.md.
"""

from __future__ import annotations

import secrets

import numpy as np
import torch

_SEED_BITS = 128


def secure_rng(insecure_seed: int | None = None) -> np.random.Generator:
    """A NumPy generator seeded with 128 bits of OS entropy (or a test seed).

    Parameters
    ----------
    insecure_seed
        Test-only: a fixed seed gives reproducible noise and voids the DP guarantee.
        Never pass the run seed.
    """
    seed = secrets.randbits(_SEED_BITS) if insecure_seed is None else insecure_seed
    return np.random.Generator(np.random.PCG64DXSM(seed))


def secure_generator(insecure_seed: int | None = None) -> torch.Generator:
    """A CPU ``torch.Generator`` seeded from OS entropy (or a test seed).

    Note that torch's CPU generator keeps only 32 bits of its seed; prefer
    :func:`secure_rng` for DP noise and sampling (fedrec's mechanisms do).

    Parameters
    ----------
    insecure_seed
        Test-only reproducible seed; voids the DP guarantee. Never the run seed.
    """
    seed = secrets.randbits(63) if insecure_seed is None else insecure_seed
    return torch.Generator().manual_seed(seed)


def gaussian(
    shape: tuple[int, ...], std: float, rng: np.random.Generator
) -> np.ndarray[tuple[int, ...], np.dtype[np.float64]]:
    """Gaussian noise ``N(0, std**2)`` of ``shape`` (float64), from a secret ``rng``."""
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    return rng.normal(0.0, std, size=shape)


def poisson_mask(
    n: int, rate: float, rng: np.random.Generator
) -> np.ndarray[tuple[int], np.dtype[np.bool_]]:
    """Poisson sampling: each of ``n`` units independently with probability ``rate``.

    Amplification by sampling (the ``sample_rate`` of every :class:`Release`) assumes
    exactly this, with ``rng`` secret from the adversary.
    """
    if not 0.0 < rate <= 1.0:
        raise ValueError(f"sampling rate must be in (0, 1], got {rate}")
    return rng.random(n) < rate
