"""The seeds of a device's draws: one per (run seed, user, round), and the evaluation's.

Light on purpose (NumPy only): serving a model file reconstructs a user with the
evaluation seed and must not import the training stack to compute it.
"""

from __future__ import annotations

import numpy as np

EVAL_ROUND = -1
"""The ``round`` part of the evaluation seed ``derive_seed(seed, user, EVAL_ROUND)``."""


def derive_seed(seed: int, *parts: int) -> int:
    """A 63-bit seed derived from a run seed and e.g. ``(user, round)``."""
    words = [seed, *parts]  # negative parts (e.g. the evaluation round -1) wrap to 64 bits
    state = np.random.SeedSequence([w & 0xFFFFFFFFFFFFFFFF for w in words]).generate_state(2)
    return int(state[0]) << 31 ^ int(state[1])
