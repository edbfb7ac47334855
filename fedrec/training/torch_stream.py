"""The draws of torch's CPU generator that MF's refit makes, in NumPy (no torch import).

Design rule: serving an MF model file (``fedrec recommend``) refits the user vector
exactly as evaluation does (:func:`fedrec.training.mf_fast.refit`), and that refit draws
from ``torch.Generator().manual_seed(seed)``: the epoch nonce of the keyed negatives
(``torch.randint(0, 2**62, (2,))``) and the minibatch order (``torch.randperm(n)``).
:class:`TorchCpuStream` makes the same draws from the same stream without importing
torch (about 3.5 s of CPU per process), so a served list equals the evaluated one.

torch's CPU generator is the 32-bit Mersenne Twister MT19937 (Matsumoto & Nishimura
1998) seeded by ``init_genrand`` with the low 32 bits of the seed; NumPy's ``MT19937``
with the same legacy seeding yields the same words (``RandomState``'s seeding).
``random64()`` joins two words, the first one high. ``randint(low, high)`` is
``low + word % (high - low)`` with one word below ``2**32`` and ``random64()`` above;
``randperm(n)`` (``n`` below ``2**32 / 20``) is the forward Fisher-Yates shuffle of
``0..n-1`` that swaps position ``i`` with ``i + word % (n - i)``. ``tests/test_torch_stream.py``
checks every draw against torch over many seeds and sizes.
"""

from __future__ import annotations

from typing import Any, cast

import numpy as np
import numpy.typing as npt

_LOW32 = 0xFFFFFFFF
RANDPERM_MAX = 2**32 // 20
"""torch shuffles with one 32-bit word per swap below this ``n`` (above: not mirrored)."""


class TorchCpuStream:
    """``torch.Generator().manual_seed(seed)``'s ``randint`` and ``randperm`` draws."""

    def __init__(self, seed: int) -> None:
        legacy = np.random.RandomState(seed & _LOW32)
        self._words = np.random.MT19937()
        self._words.state = cast(Any, legacy.get_state(legacy=False))

    def _draw(self, n: int) -> list[int]:
        words: list[int] = self._words.random_raw(n).tolist() if n > 0 else []
        return words

    def randint(self, low: int, high: int, n: int) -> npt.NDArray[np.int64]:
        """``torch.randint(low, high, (n,), generator=...)`` (int64)."""
        span = high - low
        if span <= 0:
            raise ValueError(f"randint needs low < high, got [{low}, {high})")
        if span >= 2**32:
            words = self._draw(2 * n)
            values = [(words[2 * j] << 32 | words[2 * j + 1]) % span for j in range(n)]
        else:
            values = [w % span for w in self._draw(n)]
        return np.array([low + v for v in values], dtype=np.int64)

    def randperm(self, n: int) -> npt.NDArray[np.int64]:
        """``torch.randperm(n, generator=...)`` (int64)."""
        if n >= RANDPERM_MAX:
            raise ValueError(f"randperm of {n} >= {RANDPERM_MAX} items is not mirrored")
        perm = list(range(n))
        for i, word in enumerate(self._draw(n - 1)):
            z = i + word % (n - i)
            perm[i], perm[z] = perm[z], perm[i]
        return np.array(perm, dtype=np.int64)
