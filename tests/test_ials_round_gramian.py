"""iALS's per-round Gramian reuse (fedrec.training.ials.round_gramian): a speed-up that
must return exactly what recomputing returns, and never a stale Gramian."""

from __future__ import annotations

import numpy as np

from fedrec.federated.presets import IALS_LOCAL, IALS_MODEL
from fedrec.training import ials


def test_round_gramian_is_exact_and_follows_every_change_of_q() -> None:
    # Prepare: two item tables that differ in a single entry
    rng = np.random.default_rng(0)
    q = rng.normal(size=(50, 8))
    q2 = q.copy()
    q2[17, 3] += 1e-9

    # Execute: first call computes, second reuses (and its caller writes into it), the
    # third reuses again, the fourth must recompute
    first, again = ials.round_gramian(q), ials.round_gramian(q)
    again[0, 0] = 123.0
    third, changed = ials.round_gramian(q), ials.round_gramian(q2)

    # Assert
    np.testing.assert_array_equal(first, ials.gramian(q))
    np.testing.assert_array_equal(third, ials.gramian(q))
    np.testing.assert_array_equal(ials.round_gramian(q2), ials.gramian(q2))
    np.testing.assert_array_equal(changed, ials.gramian(q2))
    assert not np.array_equal(changed, first)


def test_a_devices_fit_is_unchanged_by_the_reuse() -> None:
    # Prepare: two devices of one round against the same items, then a new round's items
    rng = np.random.default_rng(1)
    q = (rng.normal(size=(40, IALS_MODEL.dim)) * 0.1).astype(np.float32)
    q_next = q * np.float32(0.5)
    a, b = np.array([1, 5, 9]), np.array([2, 3])

    # Execute: b's and the next round's fit come after a cached Gramian
    fits = [
        ials.fit(IALS_MODEL, IALS_LOCAL, [x], None, s) for x, s in ((q, a), (q, b), (q_next, a))
    ]

    # Assert: the same user vectors as solving with a freshly computed Gramian
    for fit, (x, s) in zip(fits, ((q, a), (q, b), (q_next, a)), strict=True):
        x64 = np.asarray(x, dtype=np.float64)
        p = ials.solve_user(
            x64, s, alpha0=IALS_MODEL.alpha0, lam=IALS_MODEL.l2, gram=ials.gramian(x64)
        )
        np.testing.assert_array_equal(fit.user_state[ials.USER_KEY][0], p.astype(np.float32))
