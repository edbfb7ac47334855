"""Server learning-rate schedules: the cosine decay and its exact resume."""

from __future__ import annotations

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.federated.aggregation import ServerConfig, build_server_optimizer


def _arrays(value: float) -> list[np.ndarray]:
    return [np.full((3, 2), value, dtype=np.float32)]


def test_constant_schedule_keeps_the_learning_rate() -> None:
    # Prepare
    opt = build_server_optimizer(ServerConfig(strategy="fedavg", server_lr=0.5), rounds=4)

    # Execute
    out = opt.step(_arrays(0.0), [_arrays(1.0)])

    # Assert
    np.testing.assert_allclose(out[0], 0.5)


def test_cosine_schedule_decays_from_full_rate_to_the_floor() -> None:
    # Prepare: FedAvg moves by exactly lr * (mean - x), so each step shows the lr used
    cfg = ServerConfig(strategy="fedavg", server_lr=1.0, lr_schedule="cosine", lr_floor=0.1)
    opt = build_server_optimizer(cfg, rounds=4)

    # Execute
    used = [float(opt.step(_arrays(0.0), [_arrays(1.0)])[0][0, 0]) for _ in range(5)]

    # Assert: t/T = 0, 1/4, 1/2, 3/4, then held at the floor
    expected = [0.1 + 0.9 * 0.5 * (1 + np.cos(np.pi * t / 4)) for t in (0, 1, 2, 3, 4)]
    np.testing.assert_allclose(used, expected, rtol=1e-6)
    assert used[-1] == pytest.approx(0.1)


def test_step_schedule_drops_to_the_floor_late_in_the_run() -> None:
    # Prepare
    cfg = ServerConfig(
        strategy="fedavg", server_lr=1.0, lr_schedule="step", lr_floor=0.3, lr_decay_at=0.7
    )
    opt = build_server_optimizer(cfg, rounds=10)

    # Execute
    used = [float(opt.step(_arrays(0.0), [_arrays(1.0)])[0][0, 0]) for _ in range(10)]

    # Assert: rounds 1-6 at the full rate, rounds 7-10 (from 0.7 T on) at 0.3
    np.testing.assert_allclose(used, [1.0] * 6 + [0.3] * 4, rtol=1e-6)


def test_resumed_schedule_continues_bit_for_bit() -> None:
    # Prepare
    cfg = ServerConfig(strategy="fedadam", server_lr=0.1, lr_schedule="cosine")
    rng = np.random.default_rng(0)
    uploads = [[_arrays(float(v)) for v in rng.normal(size=3)] for _ in range(6)]
    straight = build_server_optimizer(cfg, rounds=6)
    x = _arrays(0.0)
    for up in uploads:
        x = straight.step(x, up)

    # Execute: stop after 3 steps, restore into a fresh optimizer, finish
    first = build_server_optimizer(cfg, rounds=6)
    y = _arrays(0.0)
    for up in uploads[:3]:
        y = first.step(y, up)
    resumed = build_server_optimizer(cfg, rounds=6)
    resumed.load_state_dict(first.state_dict())
    for up in uploads[3:]:
        y = resumed.step(y, up)

    # Assert
    np.testing.assert_array_equal(x[0], y[0])


@pytest.mark.parametrize(
    ("field", "value"), [("lr_schedule", "linear"), ("lr_floor", 1.5), ("lr_decay_at", -0.1)]
)
def test_bad_schedule_settings_are_config_errors(field: str, value: object) -> None:
    # Execute / Assert
    with pytest.raises(ConfigError, match=r"server\.lr_"):
        ServerConfig(**{field: value})  # type: ignore[arg-type]
