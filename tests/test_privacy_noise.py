"""Noise is secret: OS-seeded unless a test seed is given."""

from __future__ import annotations

import numpy as np
import torch

from fedrec.privacy.noise import poisson_mask, secure_generator, secure_rng


def test_secure_rng_is_not_reproducible() -> None:
    assert not np.array_equal(secure_rng().normal(size=8), secure_rng().normal(size=8))


def test_insecure_seed_is_reproducible() -> None:
    assert np.array_equal(secure_rng(3).normal(size=8), secure_rng(3).normal(size=8))
    a = torch.randn(8, generator=secure_generator(3))
    assert torch.equal(a, torch.randn(8, generator=secure_generator(3)))


def test_secure_generator_is_not_reproducible() -> None:
    a = torch.randn(8, generator=secure_generator())
    assert not torch.equal(a, torch.randn(8, generator=secure_generator()))


def test_torch_cpu_seed_keeps_32_bits() -> None:
    # Why the mechanisms draw noise from secure_rng (128-bit seed), not torch.
    a = torch.randn(4, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a, torch.randn(4, generator=torch.Generator().manual_seed(5 + 2**32)))


def test_poisson_mask_rate() -> None:
    mask = poisson_mask(100_000, 0.1, secure_rng(0))
    assert abs(mask.mean() - 0.1) < 0.005
