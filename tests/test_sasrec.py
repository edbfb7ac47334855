"""The on-device sequential model (SASRec), its time-ordered data and the next-item baseline.

Planted data: every user walks the same hidden cycle ``i -> NEXT[i]`` over the catalog
from a random start, so the next item after ``i`` is known exactly.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import scipy.sparse as sp
import torch

from clients import DeviceClient
from clients.device import RoundConfig
from fedrec.baselines.markov import MarkovNextItem
from fedrec.data.interactions import Interactions
from fedrec.data.sequences import (
    ordered_history,
    sequence_from_history,
    train_sequence,
    train_sequences,
)
from fedrec.data.split import Split, temporal_split
from fedrec.errors import ConfigError
from fedrec.federated.aggregation import ServerConfig
from fedrec.federated.client import client_fit
from fedrec.federated.loop import FederatedResult, run_federated
from fedrec.federated.presets import federated_preset
from fedrec.models.base import set_item_arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays, item_array_shapes
from fedrec.training.sequential import train_sequential_twin

N_ITEMS = 12
NEXT = np.roll(np.random.default_rng(3).permutation(N_ITEMS), 1)
"""A fixed permutation: the item after ``i`` is ``NEXT[i]`` (no fixed point)."""
MODEL = ModelConfig(kind="sasrec", dim=16, init_std=0.1, dropout=0.0, max_len=16, blocks=1)
FEDSGD = LocalTrainConfig(epochs=1, lr=1.0, optimizer="sgd", refit_steps=0, batch_size=1 << 30)
SERVER = ServerConfig(strategy="fedadam", server_lr=0.01, beta2=0.999, tau=1e-8)
ROUNDS = 50


@pytest.fixture(autouse=True)
def one_thread() -> object:
    """One torch thread, as on a device (and much faster on a busy machine)."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)


def _walk(start: int, length: int) -> list[int]:
    seq = [start]
    while len(seq) < length:
        seq.append(int(NEXT[seq[-1]]))
    return seq


def _cycle_data(n_users: int = 24, length: int = 10, seed: int = 0) -> Interactions:
    """Users walking the planted cycle, rows shuffled in the file, timestamps in walk order."""
    rng = np.random.default_rng(seed)
    users, items, stamps = [], [], []
    for u in range(n_users):
        for t, i in enumerate(_walk(int(rng.integers(N_ITEMS)), length)):
            users.append(u)
            items.append(i)
            stamps.append(1000 * u + t)
    order = rng.permutation(len(users))  # file order is not time order
    return Interactions(
        user=np.asarray(users, dtype=np.int64)[order],
        item=np.asarray(items, dtype=np.int64)[order],
        user_ids=np.arange(n_users, dtype=np.int64),
        item_ids=np.arange(N_ITEMS, dtype=np.int64),
        timestamp=np.asarray(stamps, dtype=np.int64)[order],
        source="cycle",
    )


def _next_item_accuracy(score: torch.Tensor, lasts: list[int]) -> float:
    return float(np.mean([int(score[j].argmax()) == NEXT[a] for j, a in enumerate(lasts)]))


# ---- time-ordered data ---------------------------------------------------------------
def test_temporal_split_sequences_are_in_time_order_with_file_order_ties() -> None:
    # Prepare: user 0 with a tie at t=5 (file order 7 then 3), user 1 out of file order
    data = Interactions(
        user=np.array([0, 0, 0, 1, 1, 0, 1], dtype=np.int64),
        item=np.array([7, 3, 1, 2, 4, 5, 6], dtype=np.int64),
        user_ids=np.arange(2, dtype=np.int64),
        item_ids=np.arange(8, dtype=np.int64),
        timestamp=np.array([5, 5, 9, 30, 10, 1, 20], dtype=np.int64),
    )
    # Execute
    split = temporal_split(data, test_fraction=0.25, min_interactions=3)
    # Assert: the last 25% by time is test, the train sequence is oldest first
    assert train_sequence(split, 0).tolist() == [5, 7, 3]
    assert split.test_items(0).tolist() == [1]
    assert train_sequence(split, 1).tolist() == [4, 6]
    assert split.test_items(1).tolist() == [2]
    assert train_sequences(split) is train_sequences(split)  # cached per split


def test_ordered_history_round_trips_and_keeps_a_repeat_at_its_latest() -> None:
    history = ordered_history(np.array([4, 1, 4, 2]), 6)
    assert sequence_from_history(history[0]).tolist() == [1, 4, 2]
    binary = ordered_history(np.array([4, 1]), 6, ordered=False)
    assert sequence_from_history(binary[0]).tolist() == [1, 4]  # no order: by index


# ---- the next-item baseline ----------------------------------------------------------
def test_markov_scores_the_transitions_out_of_the_last_item_then_popularity() -> None:
    # Prepare: transitions 0->1 (x2), 1->2 (x2), 2->0, 1->3, 4->0; users holding each
    # item (popularity): 0: 4, 1: 3, 2: 2, 3: 1, 4: 1
    seqs = [np.array([0, 1, 2]), np.array([1, 2, 0]), np.array([0, 1, 3]), np.array([4, 0])]
    # Execute
    model = MarkovNextItem().fit_sequences(seqs, 5)
    scores = model.score(np.array([0, 1, 2, 3]))
    # Assert: users end in 2, 0, 3 and 0
    assert torch.argsort(scores[0], descending=True)[:2].tolist() == [0, 1]  # 2->0, then pop
    assert torch.argsort(scores[1], descending=True)[:2].tolist() == [1, 0]  # 0->1, then pop
    assert scores[0, 0] - scores[0, 1] >= 1.0 - 1e-6  # a transition beats any popularity
    no_way_out = torch.argsort(scores[2], descending=True).tolist()
    assert no_way_out == [0, 1, 2, 3, 4]  # nothing follows 3: popularity, ties by index
    assert torch.allclose(scores[1], scores[3])  # the same last item, the same scores


def test_markov_refuses_an_unordered_matrix_and_bad_items() -> None:
    with pytest.raises(ConfigError, match="time order"):
        MarkovNextItem().fit(sp.csr_matrix(np.eye(3, dtype=np.float32)))
    with pytest.raises(ConfigError, match="outside"):
        MarkovNextItem().fit_sequences([np.array([0, 5])], 3)


# ---- the model -----------------------------------------------------------------------
def test_sasrec_has_no_user_side_and_reads_the_order() -> None:
    model = build_model(MODEL, N_ITEMS, seed=0)
    assert model.USER_SIDE == () and model.ORDERED
    history = ordered_history(np.array([1, 2, 3]), N_ITEMS)
    reversed_history = ordered_history(np.array([3, 2, 1]), N_ITEMS)
    model.eval()
    with torch.no_grad():
        a = model.score(torch.zeros(1, dtype=torch.int64), history)
        b = model.score(torch.zeros(1, dtype=torch.int64), reversed_history)
    assert not torch.allclose(a, b)  # same set, other order: other scores


def test_centralized_twin_learns_the_planted_next_item() -> None:
    # Prepare
    split = temporal_split(_cycle_data())
    train = LocalTrainConfig(optimizer="adam", lr=0.02, batch_size=32)
    # Execute
    score = train_sequential_twin(MODEL, train, split, seed=0, epochs=40)
    users = np.arange(split.n_users)
    lasts = [int(train_sequence(split, int(u))[-1]) for u in users]
    # Assert: the item after each user's last train item is ranked first
    assert _next_item_accuracy(score(users), lasts) >= 0.9


@pytest.fixture(scope="module")
def federated() -> tuple[Split, FederatedResult]:
    """A federated run on the planted cycle: FedSGD with server Adam, as the preset."""
    with torch.random.fork_rng():
        before = torch.get_num_threads()
        torch.set_num_threads(1)
        split = temporal_split(_cycle_data())
        result = run_federated(
            split, MODEL, FEDSGD, SERVER, rounds=ROUNDS, clients_per_round=24, seed=0
        )
        torch.set_num_threads(before)
    return split, result


def test_federated_run_learns_the_planted_next_item(
    federated: tuple[Split, FederatedResult],
) -> None:
    # Prepare: the run of the fixture
    split, result = federated
    model = build_model(MODEL, N_ITEMS, seed=0)
    set_item_arrays(model, result.item_arrays)
    model.eval()
    users = range(split.n_users)
    lasts = [int(train_sequence(split, u)[-1]) for u in users]
    histories = torch.cat([ordered_history(train_sequence(split, u), N_ITEMS) for u in users])
    # Execute
    with torch.no_grad():
        scores = model.score(torch.zeros(split.n_users, dtype=torch.int64), histories)
    # Assert: the planted next item of each user's last train item is ranked first, and
    # no device kept a user state
    assert _next_item_accuracy(scores, lasts) >= 0.9
    assert result.user_states and all(state == {} for state in result.user_states.values())


def test_client_upload_is_only_the_item_side_arrays() -> None:
    # Prepare
    start = init_item_arrays(MODEL, N_ITEMS, seed=0)
    # Execute
    fit = client_fit(MODEL, FEDSGD, start, None, np.array(_walk(0, 6)), seed=1)
    # Assert: every parameter is item-side, nothing user-side is kept or sent
    assert [a.shape for a in fit.item_arrays] == item_array_shapes(MODEL, N_ITEMS)
    assert fit.user_state == {}
    assert all(not np.array_equal(a, b) for a, b in zip(start, fit.item_arrays, strict=True))


def test_client_update_depends_on_the_order_of_the_sequence() -> None:
    start = init_item_arrays(MODEL, N_ITEMS, seed=0)
    walk = np.array(_walk(0, 6))
    a = client_fit(MODEL, FEDSGD, start, None, walk, seed=1)
    b = client_fit(MODEL, FEDSGD, start, None, walk[::-1].copy(), seed=1)
    assert not np.allclose(a.item_arrays[0], b.item_arrays[0])


def test_preset_is_fedsgd_with_server_adam_and_local_dp_is_refused() -> None:
    from fedrec.models.registry import refuse_local_dp

    model, local, server = federated_preset("sasrec")
    assert model.kind == "sasrec" and local.epochs == 1 and server.strategy == "fedadam"
    with pytest.raises(ConfigError, match="no audited local-DP"):
        refuse_local_dp("sasrec", "local")


def test_preset_weights_uploads_by_count_only_without_privacy() -> None:
    # Prepare / Execute
    plain = federated_preset("sasrec")[2]
    private = {mode: federated_preset("sasrec", privacy=mode)[2] for mode in ("central", "local")}
    # Assert: the non-private server step is the count-weighted mean (the twin's loss over
    # positions); a private one keeps uniform weights, which DP-FedAvg's sensitivity needs
    # and the central strategy refuses otherwise (server.central_dp)
    assert plain.weighted
    assert not any(server.weighted for server in private.values())
    assert {server.server_lr for server in private.values()} == {plain.server_lr}


# ---- on the device -------------------------------------------------------------------
@pytest.fixture
def trained(federated: tuple[Split, FederatedResult]) -> list[np.ndarray]:
    return federated[1].item_arrays


def test_record_changes_the_top10_at_once_without_a_round(
    tmp_path: Path, trained: list[np.ndarray]
) -> None:
    # Prepare: a device holding the trained global model, a walk of three items
    config = RoundConfig(model=MODEL, train=FEDSGD, round=1, seed=0)
    with DeviceClient.open(tmp_path / "d.db", user_id="u", min_interactions=3) as device:
        device.set_global(trained, config)
        device.record_many(_walk(0, 3))
        before = device.recommend(10)
        last = _walk(0, 4)[-1]
        # Execute: one more interaction, no round
        device.record(last)
        after = device.recommend(10)
    # Assert: the top item follows the newest item at once
    assert not before[0].fallback and before[0].item == NEXT[_walk(0, 3)[-1]]
    assert after[0].item == NEXT[last] and [r.item for r in after] != [r.item for r in before]


def test_device_orders_by_timestamp_not_by_recording_order(
    tmp_path: Path, trained: list[np.ndarray]
) -> None:
    config = RoundConfig(model=MODEL, train=FEDSGD, round=1, seed=0)
    walk = _walk(5, 4)
    with DeviceClient.open(tmp_path / "d.db", user_id="u", min_interactions=3) as device:
        device.set_global(trained, config)
        # recorded newest first, with their timestamps
        device.record_many([(item, None, 100.0 - t) for t, item in enumerate(walk[::-1])])
        top = device.recommend(1)
    assert top[0].item == NEXT[walk[-1]]


def test_device_fit_round_uploads_item_arrays_and_keeps_no_user_state(
    tmp_path: Path, trained: list[np.ndarray]
) -> None:
    config = RoundConfig(model=MODEL, train=FEDSGD, round=1, seed=0)
    with DeviceClient.open(tmp_path / "d.db", user_id="u") as device:
        device.record_many(_walk(2, 6))
        reply = device.fit_round(trained, config)
        explained = device.recommend(3, explain=True)
    assert reply.status == "ok"
    assert [a.shape for a in reply.item_arrays] == [a.shape for a in trained]
    assert len(explained) == 3 and all(r.because for r in explained)  # from the item table


def test_record_to_top10_is_measured_and_every_record_changes_the_list() -> None:
    from clients.realtime import measure_record_to_top10

    r = measure_record_to_top10(30, calls=5, model=MODEL, history=5)
    assert r["changed_fraction"] == 1.0
    assert 0 < r["top10_p50_ms"] <= r["p50_ms"]
