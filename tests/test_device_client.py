"""DeviceClient behaviour on a tiny catalog with hand-set global parameters."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from clients import DeviceClient, Recommendation
from clients.device import LocalPrivacy, RoundConfig, measure_recommend_latency
from fedrec.errors import StoreError
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays

MODEL = ModelConfig(kind="mf", dim=4)
TRAIN = LocalTrainConfig(epochs=2, refit_steps=5, batch_size=64)
PRIVACY = LocalPrivacy(noise_multiplier=2.0, clip_norm=1.0, epsilon_budget=100.0)


def _config(round: int = 1, ids: list[int | str] | None = None, **kw: object) -> RoundConfig:
    return RoundConfig(model=MODEL, train=TRAIN, round=round, seed=round, item_ids=ids, **kw)  # type: ignore[arg-type]


def _arrays(n: int, bias: list[float] | None = None) -> list[np.ndarray]:
    """MF global arrays; item ``i``'s bias is ``bias[i]`` (default: ``-i``)."""
    q, b = init_item_arrays(MODEL, n, seed=0)
    b[:, 0] = -np.arange(n, dtype=np.float32) if bias is None else bias
    return [q, b]


@pytest.fixture
def device(tmp_path: Path) -> DeviceClient:
    dev = DeviceClient.open(tmp_path / "device.db", user_id="u1", min_interactions=3)
    yield dev  # type: ignore[misc]
    dev.close()


def test_without_global_parameters_there_is_nothing_to_recommend(device: DeviceClient) -> None:
    device.record(3)
    assert device.recommend(5) == []


def test_popularity_fallback_below_min_interactions_uses_item_bias(device: DeviceClient) -> None:
    # Prepare: bias ranks items 0 > 1 > 2 > ...; the user has seen item 0 only
    device.set_global(_arrays(8), _config())
    device.record(0)
    # Execute
    recs = device.recommend(3)
    # Assert: bias order, seen item excluded, all marked fallback
    assert [r.item for r in recs] == [1, 2, 3]
    assert all(isinstance(r, Recommendation) and r.fallback for r in recs)


def test_model_recommendations_are_not_fallback_and_exclude_seen(device: DeviceClient) -> None:
    # Prepare
    device.set_global(_arrays(10), _config())
    device.record_many([0, 1, (2, 5.0), (3, None, 123.0)])
    # Execute
    recs = device.recommend(10)
    with_seen = device.recommend(10, exclude_seen=False)
    # Assert
    assert len(recs) == 6 and not any(r.fallback for r in recs)
    assert {r.item for r in recs} == set(range(4, 10))
    assert {r.item for r in with_seen} == set(range(10))
    assert [r.score for r in recs] == sorted((r.score for r in recs), reverse=True)


def test_record_refreshes_serving_state_but_not_training_state(device: DeviceClient) -> None:
    # Prepare
    arrays = _arrays(12)
    device.record_many([0, 1, 2])
    device.fit_round(arrays, _config(1))
    train_before = device.store.load_slot("train")
    scores_before = [r.score for r in device.recommend(12, exclude_seen=False)]
    # Execute
    device.record(7)
    # Assert: scores move at once; the state that feeds uploads does not
    scores_after = [r.score for r in device.recommend(12, exclude_seen=False)]
    train_after = device.store.load_slot("train")
    assert scores_after != scores_before
    assert train_before is not None and train_after is not None
    np.testing.assert_array_equal(train_before.arrays[0], train_after.arrays[0])


def test_explanations_cite_seen_items(device: DeviceClient) -> None:
    device.set_global(_arrays(10), _config())
    device.record_many([0, 1, 2, 3])
    recs = device.recommend(3, explain=True)
    assert all(item in {0, 1, 2, 3} and w > 0 for r in recs for item, w in r.because)
    assert any(r.because for r in recs)


def test_fit_round_uploads_item_arrays_and_rerun_starts_from_state_before(
    device: DeviceClient,
) -> None:
    # Prepare
    arrays = _arrays(10)
    device.record_many([0, 1, 2, 3])
    device.fit_round(arrays, _config(1))
    # Execute: round 2 twice (a re-run after an interruption)
    first = device.fit_round(arrays, _config(2))
    again = device.fit_round(arrays, _config(2))
    # Assert
    assert first.ok and first.item_arrays is not None and first.num_examples == 4
    assert [a.shape for a in first.item_arrays] == [(10, 4), (10, 1)]
    for a, b in zip(first.item_arrays, again.item_arrays or [], strict=True):
        np.testing.assert_array_equal(a, b)


def test_no_data_round_is_reported(device: DeviceClient) -> None:
    device.record("not-in-catalog")
    assert device.fit_round(_arrays(5), _config()).status == "no_data"


def test_private_round_writes_ledger_and_budget_is_enforced(device: DeviceClient) -> None:
    # Prepare
    arrays = _arrays(10)
    device.record_many([0, 1, 2, 3])
    # Execute
    reply = device.fit_round(arrays, _config(1, privacy=PRIVACY))
    spent = device.privacy_spent()
    tight = LocalPrivacy(noise_multiplier=2.0, clip_norm=1.0, epsilon_budget=spent.epsilon + 1e-3)
    refused = device.fit_round(arrays, _config(2, privacy=tight))
    # Assert
    assert reply.ok and reply.spent is not None and spent.epsilon == reply.spent.epsilon > 0
    assert (spent.unit, spent.accountant, spent.delta) == ("one interaction", "rdp", 1e-5)
    assert refused.status == "budget_exhausted" and refused.item_arrays is None
    assert "budget" in refused.message
    assert device.privacy_spent().epsilon == spent.epsilon


def test_forget_deletes_data_and_state_but_keeps_the_ledger(device: DeviceClient) -> None:
    # Prepare
    device.record_many([0, 1, 2, 3, 3])
    device.fit_round(_arrays(10), _config(1, privacy=PRIVACY))
    spent = device.privacy_spent().epsilon
    # Execute
    removed = device.forget(3)
    remaining = [r.item for r in device.interactions()]
    device.forget_all()
    # Assert
    assert removed == 2 and remaining == [0, 1, 2]
    assert device.interactions() == []
    assert device.store.load_slot("train") is None and device.store.load_slot("serve") is None
    assert device.privacy_spent().epsilon == spent > 0
    assert all(r.fallback for r in device.recommend(3))


def test_catalog_growth_aligns_rows_by_original_id(device: DeviceClient) -> None:
    # Prepare: "z" is not in the first catalog
    device.record_many(["a", "b", "z"])
    old = device.fit_round(_arrays(3), _config(1, ids=["a", "b", "c"]))
    # Execute: a grown and reordered catalog; seen items get the best biases
    grown = ["z", "c", "b", "d", "a", "e"]
    new = device.fit_round(_arrays(6, [9, 0, 9, 1, 9, 2]), _config(2, ids=grown))
    recs = device.recommend(6)
    # Assert: "z" is used once known; seen items are excluded by id, not position
    assert old.num_examples == 2 and new.num_examples == 3
    assert {r.item for r in recs} == {"c", "d", "e"}
    assert device.item_ids == grown


def test_catalog_size_change_without_ids_is_refused(device: DeviceClient) -> None:
    device.set_global(_arrays(3), _config(ids=["a", "b", "c"]))
    with pytest.raises(ValueError, match="item_ids"):
        device.set_global(_arrays(4), _config())


def test_state_survives_reopen(tmp_path: Path) -> None:
    # Prepare
    with DeviceClient.open(tmp_path / "d.db", user_id=5) as dev:
        dev.record_many([0, 1, 2, 3])
        dev.fit_round(_arrays(10), _config(1))
        before = dev.recommend(5)
    # Execute
    with DeviceClient.open(tmp_path / "d.db", user_id=5) as dev:
        after = dev.recommend(5)
    # Assert
    assert after == before
    with pytest.raises(StoreError, match="belongs to user"):
        DeviceClient.open(tmp_path / "d.db", user_id=6)


def test_evaluate_round_ranks_test_items(device: DeviceClient) -> None:
    device.record_many([0, 1, 2])
    reply = device.evaluate_round(_arrays(10), _config(1), test_items=[4, 5])
    assert 0.0 <= reply.metrics["ndcg@10"] <= 1.0
    assert not set(reply.top10_items) & {0, 1, 2}


def test_latency_measurement_reports_percentiles() -> None:
    result = measure_recommend_latency(300, calls=20)
    assert result["p50_ms"] > 0 and result["p99_ms"] >= result["p50_ms"]
