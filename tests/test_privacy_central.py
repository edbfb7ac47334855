"""DP-FedAvg maths: joint clipping, noise on the sum, division by q N."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.privacy.central import (
    AdaptiveClipping,
    adaptive_release,
    central_release,
    clip_update,
    noisy_mean,
    update_norm,
)
from fedrec.privacy.noise import secure_rng


def test_clip_bounds_the_joint_norm() -> None:
    # Prepare: norm of the concatenation is sqrt(9 + 16) = 5
    update = [np.array([3.0, 0.0], np.float32), np.array([[4.0]], np.float32)]
    # Execute
    clipped, norm = clip_update(update, 1.0)
    # Assert
    assert norm == pytest.approx(5.0)
    assert update_norm(clipped) == pytest.approx(1.0, rel=1e-6)
    np.testing.assert_allclose(clipped[0], [0.6, 0.0], rtol=1e-6)


def test_clip_leaves_small_updates_alone() -> None:
    update = [np.array([0.3, 0.4], np.float32)]
    clipped, norm = clip_update(update, 1.0)
    assert norm == pytest.approx(0.5)
    np.testing.assert_array_equal(clipped[0], update[0])


def test_noisy_mean_divides_by_expected_clients() -> None:
    # Prepare: two replies, four expected, almost no noise
    a = [np.array([1.0, 2.0], np.float32)]
    b = [np.array([3.0, -2.0], np.float32)]
    # Execute
    out = noisy_mean([a, b], noise_multiplier=1e-9, clip_norm=10.0, expected_clients=4.0,
                     rng=secure_rng(0))  # fmt: skip
    # Assert
    np.testing.assert_allclose(out[0], [1.0, 0.0], atol=1e-6)


def test_noise_std_on_the_sum_is_z_times_s() -> None:
    shape = (200_000,)
    out = noisy_mean([], noise_multiplier=1.5, clip_norm=2.0, expected_clients=1.0,
                     rng=secure_rng(1), shapes=[shape])  # fmt: skip
    assert np.std(out[0]) == pytest.approx(3.0, rel=0.02)


def test_unclipped_update_is_refused() -> None:
    with pytest.raises(ValueError):
        noisy_mean([[np.array([3.0, 4.0])]], noise_multiplier=1.0, clip_norm=1.0,
                   expected_clients=1.0, rng=secure_rng(0))  # fmt: skip


def test_central_release_is_one_step_per_round() -> None:
    assert central_release(1.2, 0.1).entry() == [1.2, 0.1, 1]


def test_adaptive_clipping_accounts_for_the_count() -> None:
    # Prepare
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, bit_noise_std=5.0)
    # Execute
    z_update = adaptive.update_noise_multiplier(1.0)
    # Assert: the two noisy sums compose to exactly the target multiplier
    assert z_update > 1.0
    assert adaptive_release(z_update, 5.0, 0.1).noise_multiplier == pytest.approx(1.0)


def test_adaptive_clip_shrinks_when_all_unclipped() -> None:
    adaptive = AdaptiveClipping(target_quantile=0.5, learning_rate=0.2, bit_noise_std=1e-9)
    new = adaptive.next_clip_norm(1.0, [True] * 10, expected_clients=10.0, rng=secure_rng(0))
    assert new == pytest.approx(np.exp(-0.2 * 0.5))
