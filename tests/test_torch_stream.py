"""TorchCpuStream draws exactly what torch's CPU generator draws (MF's refit without torch)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from fedrec.training.torch_stream import RANDPERM_MAX, TorchCpuStream

SEEDS = [0, 1, 42, 2**31 - 1, 2**32 + 7, 2**62 + 12345, 2**63 - 1]


@pytest.mark.parametrize("seed", SEEDS)
def test_interleaved_randint_and_randperm_match_torch_word_for_word(seed: int) -> None:
    # Prepare: the refit's order of calls (nonce, then a shuffle, per epoch), sizes
    # that include the edge cases 0, 1 and 2 and a draw below 2**32 (one word each)
    gen, twin = torch.Generator().manual_seed(seed), TorchCpuStream(seed)
    sizes = [0, 1, 2, 3, 17, 500, 4_096, 20_000]
    for n in sizes:
        # Execute
        nonce = torch.randint(0, 2**62, (2,), generator=gen).numpy()
        twin_nonce = twin.randint(0, 2**62, 2)
        perm = torch.randperm(n, generator=gen).numpy()
        twin_perm = twin.randperm(n)
        small = torch.randint(5, 1_000, (3,), generator=gen).numpy()
        twin_small = twin.randint(5, 1_000, 3)
        # Assert
        np.testing.assert_array_equal(twin_nonce, nonce)
        np.testing.assert_array_equal(twin_perm, perm)
        np.testing.assert_array_equal(twin_small, small)
        assert twin_perm.dtype == np.int64


def test_streams_of_different_seeds_differ_and_bad_ranges_are_refused() -> None:
    # Prepare / Execute
    a, b = TorchCpuStream(1).randperm(100), TorchCpuStream(2).randperm(100)
    # Assert
    assert not np.array_equal(a, b)
    assert sorted(a.tolist()) == list(range(100))
    with pytest.raises(ValueError, match="low < high"):
        TorchCpuStream(0).randint(3, 3, 1)
    with pytest.raises(ValueError, match="not mirrored"):
        TorchCpuStream(0).randperm(RANDPERM_MAX)
