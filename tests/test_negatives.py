"""Keyed negatives: uniform, one interaction's own function, keyed by the device's secret."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch
from scipy import stats

from clients.device import NEGATIVE_KEY, DeviceClient
from clients.sim_store import open_device
from fedrec.training.negatives import (
    KEY_BYTES,
    below,
    keyed_negatives,
    new_device_key,
    splitmix64,
)


def _draw(
    items: np.ndarray, key: bytes | None = b"k" * 32, seed: int = 0, k: int = 4
) -> np.ndarray:
    gen = torch.Generator().manual_seed(seed)
    return keyed_negatives(gen, key, np.zeros(len(items), dtype=np.int64), items, k, 1000)


def test_negatives_are_uniform_over_all_items() -> None:
    # Execute: 200,000 draws over 1,000 items
    neg = _draw(np.arange(1000, dtype=np.int64), k=200)
    # Assert: chi-square against uniform, every item reachable
    counts = np.bincount(neg.reshape(-1), minlength=1000)
    assert stats.chisquare(counts).pvalue > 1e-3 and counts.min() > 0


def test_an_interactions_negatives_ignore_position_and_the_other_items() -> None:
    # Prepare
    items = np.array([5, 17, 42, 99, 640], dtype=np.int64)
    # Execute
    full = _draw(items)
    without_first = _draw(items[1:])
    shuffled = _draw(items[::-1])
    # Assert: row of item i is the same wherever i sits and whatever else is there
    np.testing.assert_array_equal(full[1:], without_first)
    np.testing.assert_array_equal(full[::-1], shuffled)


def test_key_and_epoch_nonce_change_the_negatives() -> None:
    items = np.arange(50, dtype=np.int64)
    gen = torch.Generator().manual_seed(0)
    users = np.zeros(50, dtype=np.int64)
    first = keyed_negatives(gen, b"k" * 32, users, items, 4, 1000)
    second = keyed_negatives(gen, b"k" * 32, users, items, 4, 1000)  # the next epoch
    assert not np.array_equal(first, second)
    assert not np.array_equal(_draw(items), _draw(items, key=b"j" * 32))
    assert not np.array_equal(_draw(items), _draw(items, key=None))


def test_multiply_shift_is_exact_and_in_range() -> None:
    # Prepare: extreme 64-bit words
    words = np.array([0, 1, 2**63, 2**64 - 1, 0x9E3779B97F4A7C15], dtype=np.uint64)
    # Execute
    out = below(words, 1682)
    # Assert: floor(w n / 2^64), exactly
    assert out.tolist() == [int(w) * 1682 >> 64 for w in words.tolist()]
    with pytest.raises(ValueError, match="2\\*\\*32"):
        below(words, 2**32)


def test_splitmix64_matches_the_reference_sequence() -> None:
    # The first outputs of SplitMix64 seeded with 0 (Vigna's splitmix64.c)
    out = splitmix64(0, np.arange(3, dtype=np.uint64))
    assert out.tolist() == [0xE220A8397B1DCDAF, 0x6E789E6AA1B965F4, 0x06C45D188009454F]


def test_device_keys_are_fresh_secrets_and_bad_keys_are_refused() -> None:
    a, b = new_device_key(), new_device_key()
    assert len(a) == KEY_BYTES and a != b
    gen = torch.Generator().manual_seed(0)
    with pytest.raises(ValueError, match="16 to 64 bytes"):
        keyed_negatives(
            gen, b"short", np.zeros(1, dtype=np.int64), np.zeros(1, dtype=np.int64), 1, 9
        )


def test_a_device_keeps_a_secret_key_a_simulated_device_none(tmp_path: Path) -> None:
    # Execute
    with DeviceClient.open(tmp_path / "a.sqlite") as device:
        key = device.negative_key
        stored = device.store.get_meta(NEGATIVE_KEY)
    with DeviceClient.open(tmp_path / "a.sqlite") as again:
        kept = again.negative_key
    sim = open_device(tmp_path / "sim", 3, np.array([1, 2], dtype=np.int64), seed=0)
    try:
        sim_key = sim.negative_key
    finally:
        sim.close()
    # Assert: 32 secret bytes, persisted on the device; the simulation uses the public key
    assert key is not None and len(key) == KEY_BYTES and bytes.fromhex(stored) == key
    assert kept == key and sim_key is None


def test_a_device_trains_with_its_own_key(tmp_path: Path) -> None:
    # Prepare: a device with a secret key, hand-set global arrays, four interactions
    from clients.device import RoundConfig
    from fedrec.federated.client import client_fit
    from fedrec.models.config import LocalTrainConfig, ModelConfig
    from fedrec.models.registry import init_item_arrays

    model, train = ModelConfig(kind="mf", dim=4), LocalTrainConfig(epochs=1, refit_steps=2)
    arrays = init_item_arrays(model, 10, seed=0)
    items = np.array([0, 1, 2, 3], dtype=np.int64)
    with DeviceClient.open(tmp_path / "d.sqlite") as device:
        device.record_many([0, 1, 2, 3])
        # Execute
        reply = device.fit_round(arrays, RoundConfig(model=model, train=train, round=1, seed=5))
        key = device.negative_key
    keyed = client_fit(model, train, arrays, None, items, seed=5, key=key)
    public = client_fit(model, train, arrays, None, items, seed=5)
    # Assert: the device's upload is the update with its key, not with the public key
    assert reply.ok and reply.item_arrays is not None
    np.testing.assert_array_equal(reply.item_arrays[0], keyed.item_arrays[0])
    assert not np.array_equal(reply.item_arrays[0], public.item_arrays[0])
