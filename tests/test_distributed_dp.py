"""Distributed DP (fedrec.privacy.distributed): the Skellam bound, calibration, wrap-around."""

from __future__ import annotations

import math

import numpy as np
import pytest
from opacus.accountants.analysis import rdp as opacus_rdp
from scipy import linalg

from fedrec.errors import ConfigError
from fedrec.privacy import distributed as dd
from fedrec.privacy import hadamard
from fedrec.privacy.noise import secure_rng


def test_skellam_rdp_is_the_papers_formula_at_a_hand_computed_point() -> None:
    # Prepare: alpha 2, l2 = l1 = 1, mu = 1:
    # 2 / 2 + min((3 + 6) / 4, 3 / 2) = 1 + 1.5
    # Execute / Assert
    assert dd.skellam_rdp(2, 1.0, 1.0, 1.0) == pytest.approx(2.5)
    # large mu: the quadratic term wins the min: 3/(2 mu) > (3 l2^2 + 6 l1)/(4 mu^2)
    assert dd.skellam_rdp(2, 1.0, 1.0, 100.0) == pytest.approx(2 / 200 + 9 / 40000)
    with pytest.raises(ValueError, match="integer order"):
        dd.skellam_rdp(2.5, 1.0, 1.0, 1.0)  # type: ignore[arg-type]


def test_skellam_epsilon_tends_to_the_gaussian_mechanisms_from_above() -> None:
    # Prepare: integer sensitivities large, so the discretization term is negligible
    l2, z, delta = 2000.0, 0.6, 1e-4
    l1 = l2 * l2
    mu = (z * l2) ** 2
    orders = list(dd.ORDERS)
    gaussian = [a / (2 * z**2) for a in orders]
    # Execute
    eps_skellam, _ = dd.skellam_epsilon(l2, l1, mu, delta)
    eps_gauss, _ = opacus_rdp.get_privacy_spent(orders=orders, rdp=gaussian, delta=delta)
    # Assert: Agarwal et al.: Skellam matches the Gaussian as mu grows, never below it
    assert eps_gauss <= eps_skellam <= eps_gauss * 1.001
    # and at small mu the discretization surcharge shows
    small, _ = dd.skellam_epsilon(2.0, 4.0, (z * 2.0) ** 2, delta)
    assert small > eps_gauss * 1.01


def _plan(**kw: float) -> dd.DistributedPlan:
    args = {"target_epsilon": 8.0, "delta": 1e-4, "dim": 300, "devices": 60, "min_survivors": 54}
    args.update(kw)
    return dd.plan_distributed(**args)  # type: ignore[arg-type]


def test_the_plan_meets_the_target_at_the_minimum_of_survivors_and_refuses_below() -> None:
    # Prepare / Execute
    plan = _plan()
    # Assert
    assert plan.epsilon(54) == pytest.approx(8.0, rel=1e-4) and plan.epsilon(54) <= 8.0
    assert plan.epsilon(60) < plan.epsilon(54)  # more survivors, more noise
    assert plan.noise_variance(54) == pytest.approx(53 * plan.device_variance)
    assert dd.wrap_bound(scale=plan.scale, clip=1.0, devices=60,
                         device_variance=plan.device_variance, padded=plan.padded,
                         beta=plan.wrap_beta) < 2 ** (plan.bits - 1)  # fmt: skip
    plan.check_survivors(54)
    with pytest.raises(ConfigError, match="nothing is released"):
        plan.check_survivors(53)


def test_rotation_is_orthogonal_and_inverted_exactly() -> None:
    # Prepare
    plan = _plan()
    x = np.random.default_rng(0).normal(size=300)
    # Execute
    y = dd.rotate(x, plan)
    # Assert
    assert y.size == 320 and np.linalg.norm(y) == pytest.approx(np.linalg.norm(x))
    np.testing.assert_allclose(dd.unrotate(y, plan), x, atol=1e-12)


@pytest.mark.parametrize("length", [64, 12 * 8, 20 * 4, 28 * 2, 36, 44 * 4, 60])
def test_the_fast_transform_is_a_hadamard_matrix_of_its_order(length: int) -> None:
    # Prepare: the dense Kronecker product H_m (x) H_{2^k}
    m, block = hadamard.split_length(length)
    dense = np.kron(hadamard.factor_matrix(m), linalg.hadamard(block))
    x = np.random.default_rng(5).normal(size=length)
    # Execute
    fast, fast_t = hadamard.transform(x.copy()), hadamard.transform(x.copy(), transpose=True)
    # Assert: +-1 entries, H H^T = D I, and the fast transform applies H and H^T
    assert set(np.unique(dense)) == {-1.0, 1.0}
    np.testing.assert_array_equal(dense @ dense.T, length * np.eye(length))
    np.testing.assert_allclose(fast, dense @ x, atol=1e-9)
    np.testing.assert_allclose(fast_t, dense.T @ x, atol=1e-9)


def test_padding_is_the_smallest_hadamard_order_and_rotation_flattens_a_spike() -> None:
    # Prepare: ml-100k's and ml-1m's packed Gram lengths; a one-hot (worst-case) input
    plan = _plan(dim=900)
    spike = np.zeros(900)
    spike[899] = 1.0
    # Execute
    y = dd.rotate(spike, plan)
    # Assert: 1,415,403 -> 44 x 2^15 (not 2^21), 6,869,071 -> 28 x 2^18 (not 2^23); every
    # rotated coordinate of a spike is +-1 / sqrt(D), as the wrap bound's Hoeffding step needs
    assert dd.padded_dim(1_415_403) == 44 * 2**15 and dd.padded_dim(6_869_071) == 28 * 2**18
    assert dd.padded_dim(512) == 512 and dd.padded_dim(513) == 36 * 16
    assert plan.padded == 60 * 16 and y.size == 960
    np.testing.assert_allclose(np.abs(y), 1 / math.sqrt(960))


def test_conditional_rounding_is_unbiased_and_within_the_bound() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    y = rng.normal(size=64) * 3
    bound = dd.rounded_l2_bound(float(np.linalg.norm(y)), 64)
    # Execute
    draws = np.stack([dd.conditional_round(y, bound, rng) for _ in range(4000)])
    # Assert
    assert (np.linalg.norm(draws, axis=1) <= bound + 1e-9).all()
    np.testing.assert_allclose(draws.mean(axis=0), y, atol=0.05)


def test_worst_case_sums_never_wrap_and_decode_to_the_noisy_sum() -> None:
    # Prepare: every device holds the same unit vector (the sum's norm is maximal)
    plan = _plan(dim=200, devices=40, min_survivors=36, bits=16)
    x = np.zeros(200)
    x[7] = 1.0
    rng = np.random.default_rng(2)
    # Execute
    total = np.zeros(plan.padded, dtype=np.uint64)
    plain = np.zeros(plan.padded, dtype=np.int64)
    for _ in range(40):
        enc = dd.encode(x, plan, rng)
        total = (total + enc) & np.uint64(2**16 - 1)
        plain += dd.centre(enc, 16)
    decoded = dd.decode(total, plan)
    # Assert: the ring sum equals the integer sum (no wrap), and decodes to 40 x + noise
    assert np.abs(plain).max() < 2**15
    np.testing.assert_array_equal(dd.centre(total, 16), plain)
    noise = plan.release_noise_std(40)
    assert abs(decoded[7] - 40) < 6 * noise and np.abs(np.delete(decoded, 7)).max() < 6 * noise


def test_a_scale_beyond_the_bound_does_wrap() -> None:
    # Prepare: the same worst case with 40x the planned scale (control: the test can fail)
    plan = _plan(dim=200, devices=40, min_survivors=36, bits=16)
    big = dd.DistributedPlan.from_json({**plan.to_json(), "scale": plan.scale * 40,
                                        "l2": plan.l2 * 40 + 100})  # fmt: skip
    x = np.zeros(200)
    x[7] = 1.0
    rng = np.random.default_rng(3)
    # Execute
    total = np.zeros(big.padded, dtype=np.uint64)
    for _ in range(40):
        total = (total + dd.encode(x, big, rng)) & np.uint64(2**16 - 1)
    # Assert
    assert abs(dd.decode(total, big)[7] - 40) > 1.0


def test_encode_clips_an_oversized_vector() -> None:
    # Prepare
    plan = _plan(dim=200, devices=40, min_survivors=36)
    quiet = dd.DistributedPlan.from_json({**plan.to_json(), "device_variance": 1e-9})
    x = np.zeros(200)
    x[3] = 50.0
    # Execute
    decoded = dd.decode(dd.encode(x, quiet, secure_rng()), quiet)
    # Assert: norm clipped to 1 (up to rounding)
    assert decoded[3] == pytest.approx(1.0, abs=1e-3)


def test_epsilon_reproduces_from_the_recorded_parameters() -> None:
    # Prepare
    plan = _plan()
    record = dd.privacy_record(plan, 57)
    # Execute
    again = dd.epsilon_from_record(record)
    # Assert
    assert again == pytest.approx(record["epsilon"], rel=1e-12)
    assert record["noise_devices"] == 56 and record["survivors"] == 57
    assert math.isinf(plan.epsilon(1))


def test_other_models_refuse_distributed_mode() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ConfigError, match="--model ease only"):
        dd.refuse_for_model("mf")
