"""One compute thread for many tiny models (fedrec.training.threads)."""

from __future__ import annotations

import numpy as np
import pytest
import torch
from threadpoolctl import threadpool_info

from fedrec.training.threads import single_threaded


def _native_threads() -> list[int]:
    return [int(pool["num_threads"]) for pool in threadpool_info()]


def test_single_threaded_limits_torch_and_blas_and_restores() -> None:
    # Prepare: NumPy's BLAS must be loaded for threadpoolctl to see it
    np.ones((4, 4)) @ np.ones((4, 4))
    torch_before, native_before = torch.get_num_threads(), _native_threads()
    assert native_before, "no native thread pool found (NumPy without a BLAS?)"

    # Execute
    with single_threaded():
        torch_inside, native_inside = torch.get_num_threads(), _native_threads()

    # Assert
    assert torch_inside == 1
    assert native_inside == [1] * len(native_before)
    assert torch.get_num_threads() == torch_before
    assert _native_threads() == native_before


def test_single_threaded_restores_after_an_error() -> None:
    # Prepare
    torch_before, native_before = torch.get_num_threads(), _native_threads()

    # Execute
    with pytest.raises(RuntimeError), single_threaded():
        raise RuntimeError("boom")

    # Assert
    assert torch.get_num_threads() == torch_before
    assert _native_threads() == native_before
