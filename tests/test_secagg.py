"""SecAgg+ (fedrec.secagg): exact sums, dropouts, aborts, the server's view, Shamir, masks."""

from __future__ import annotations

import numpy as np
import pytest
from flwr.common.secure_aggregation.crypto.shamir import combine_shares, create_shares
from scipy import stats

from fedrec.secagg import crypto, shamir
from fedrec.secagg.config import SecAggConfig
from fedrec.secagg.graph import harary_graph
from fedrec.secagg.protocol import KEY, SEED, Aggregator, Participant, SecAggAbort, SecAggParams

BITS, LENGTH = 20, 256


def _setup(
    n: int, degree: int, threshold: int, *, bits: int = BITS, length: int = LENGTH, split=None
):
    params = SecAggParams(bits=bits, length=length, threshold=threshold, round_id="test")
    nodes = list(range(1, n + 1))
    agg = Aggregator(params, harary_graph(nodes, degree, np.random.default_rng(0)))
    parts = {u: Participant(u, params) for u in nodes}
    for u, p in parts.items():
        agg.add_keys(u, *p.advertise())
    for u, p in parts.items():
        agg.add_ciphertexts(u, p.share_keys(agg.neighbour_keys(u), split or shamir.split))
    return params, agg, parts


def _run(
    n: int,
    degree: int,
    threshold: int,
    drop: set[int],
    *,
    bits: int = BITS,
    split=None,
    combine=None,
):
    """Full protocol; ``drop`` go offline after sharing keys. Returns (sum, expected)."""
    _params, agg, parts = _setup(n, degree, threshold, bits=bits, split=split)
    rng = np.random.default_rng(1)
    inputs = {u: rng.integers(0, 2**bits, LENGTH, dtype=np.uint64) for u in parts}
    for u, p in parts.items():
        masked = p.masked_input(inputs[u], agg.inbox(u))
        if u not in drop:
            agg.add_masked(u, masked)
    survivors = agg.survivors()
    for u in survivors:
        agg.add_shares(u, parts[u].unmask(survivors))
    total = agg.unmasked_sum(combine or shamir.combine)
    expected = sum(inputs[u] for u in parts if u not in drop) % np.uint64(2**bits)
    return total, expected


@pytest.mark.parametrize(("n", "degree", "bits"), [(6, 5, 20), (12, 6, 20), (9, 4, 62)])
def test_masks_cancel_exactly_without_dropouts(n: int, degree: int, bits: int) -> None:
    # Prepare / Execute
    total, expected = _run(n, degree, degree // 2 + 1, set(), bits=bits)
    # Assert
    np.testing.assert_array_equal(total, expected)


def test_masks_cancel_exactly_with_dropouts_after_key_sharing() -> None:
    # Prepare: degree 6, threshold 4: each node tolerates 2 dropped neighbours
    drop = {3, 9}
    # Execute
    total, expected = _run(14, 6, 4, drop)
    # Assert
    np.testing.assert_array_equal(total, expected)


def test_masks_cancel_with_flowers_shamir_injected() -> None:
    # Prepare / Execute: the same protocol with Flower's padded, threaded wrapper
    total, expected = _run(10, 6, 4, {5}, split=create_shares, combine=combine_shares)
    # Assert
    np.testing.assert_array_equal(total, expected)


def test_shamir_rebuilds_from_any_threshold_shares_and_not_from_fewer() -> None:
    # Prepare
    secret = crypto.new_seed()
    shares = shamir.split(secret, 5, 9)
    rng = np.random.default_rng(4)
    # Execute
    rebuilt = [shamir.combine([shares[i] for i in rng.choice(9, 5, replace=False)])
               for _ in range(4)]  # fmt: skip
    short = shamir.combine(shares[:4])
    # Assert: two 16-byte blocks per share (no padding block), any 5 rebuild, 4 do not
    assert all(len(s) == 4 + 32 for s in shares) and len({s[:4] for s in shares}) == 9
    assert rebuilt == [secret] * 4 and short != secret
    with pytest.raises(ValueError, match="multiple of 16"):
        shamir.split(secret[:20], 5, 9)
    with pytest.raises(ValueError, match="duplicate"):
        shamir.combine([shares[0], shares[0], *shares[1:4]])


def test_raw_mask_words_reduce_to_the_mask_and_sums_reduce_once() -> None:
    # Prepare
    seeds = [crypto.new_seed() for _ in range(3)]
    low = np.uint32(2**BITS - 1)
    # Execute: a sum of raw words, reduced once, against the sum of reduced masks
    raw = np.zeros(1000, np.uint32)
    reduced = np.zeros(1000, np.uint64)
    scratch = np.empty(1000, np.dtype(np.uint32).newbyteorder("<"))
    for sign, seed in zip((1, -1, 1), seeds, strict=True):
        words = crypto.mask_words(seed, 1000, BITS, out=scratch)
        raw = raw + words if sign > 0 else raw - words
        mask = crypto.expand_mask(seed, 1000, BITS).astype(np.uint64)
        reduced = reduced + mask if sign > 0 else reduced + 2**BITS - mask
    # Assert
    np.testing.assert_array_equal(crypto.mask_words(seeds[0], 1000, BITS) & low,
                                  crypto.expand_mask(seeds[0], 1000, BITS))  # fmt: skip
    np.testing.assert_array_equal(raw & low, reduced % 2**BITS)
    with pytest.raises(ValueError, match="contiguous words"):
        crypto.mask_words(seeds[0], 1000, BITS, out=np.empty(999, np.uint32))


def test_too_many_dropped_neighbours_abort_and_release_nothing() -> None:
    # Prepare: complete graph of 6, threshold 5: one drop leaves each survivor with 4
    # surviving neighbours, so only 4 shares of its self-mask seed, fewer than 5
    # Execute / Assert
    with pytest.raises(SecAggAbort, match="fewer than 5: nothing is released"):
        _run(6, 5, 5, {2})


def test_fewer_survivors_than_the_threshold_abort_before_unmasking() -> None:
    # Prepare
    _params, agg, parts = _setup(5, 4, 3)
    for u in (1, 2):
        agg.add_masked(u, parts[u].masked_input(np.zeros(LENGTH, np.uint64), agg.inbox(u)))
    # Execute / Assert
    with pytest.raises(SecAggAbort, match="nothing is released"):
        agg.survivors()
    with pytest.raises(SecAggAbort, match="fewer than the threshold"):
        parts[1].unmask([1, 2])


def test_a_device_answers_unmasking_once_and_never_both_shares_of_a_node() -> None:
    # Prepare
    _params, agg, parts = _setup(5, 4, 3)
    for u, p in parts.items():
        p.masked_input(np.zeros(LENGTH, np.uint64), agg.inbox(u))
    # Execute
    first = parts[1].unmask([1, 2, 3, 4])  # 5 "dropped"
    # Assert: seed shares for survivors, a key share for the dropped node, once only
    assert {v: k for v, (k, _) in first.items()} == {2: SEED, 3: SEED, 4: SEED, 5: KEY}
    with pytest.raises(SecAggAbort, match="stage"):
        parts[1].unmask([1, 2, 3, 4, 5])  # would reveal 5's seed share too


def test_the_server_view_of_one_upload_is_uniform_whatever_the_input() -> None:
    # Prepare: bits 8, many coordinates; two very different inputs
    length = 65536
    params = SecAggParams(bits=8, length=length, threshold=2, round_id="u")
    views = []
    for value in (0, 255):
        parts = {u: Participant(u, params) for u in (1, 2, 3)}
        agg = Aggregator(params, {1: [2, 3], 2: [1, 3], 3: [1, 2]})
        for u, p in parts.items():
            agg.add_keys(u, *p.advertise())
        for u, p in parts.items():
            agg.add_ciphertexts(u, p.share_keys(agg.neighbour_keys(u), shamir.split))
        x = np.full(length, value, dtype=np.uint64)
        views.append(parts[1].masked_input(x, agg.inbox(1)))
    # Execute: chi-square of each view against uniform on Z_256, and of the two against each other
    counts = [np.bincount(v.astype(np.int64), minlength=256) for v in views]
    p_uniform = [stats.chisquare(c).pvalue for c in counts]
    p_same = stats.chi2_contingency(np.stack(counts)).pvalue
    # Assert: indistinguishable (an unmasked upload would be a single value: p = 0)
    assert min(p_uniform) > 1e-4 and p_same > 1e-4
    assert not np.array_equal(views[0], np.zeros(length, np.uint64))


def test_mask_expansion_is_uniform_and_reaches_the_top_value() -> None:
    # Prepare
    seed = crypto.new_seed()
    # Execute
    mask = crypto.expand_mask(seed, 200_000, 4)
    again = crypto.expand_mask(seed, 200_000, 4)
    other = crypto.expand_mask(crypto.new_seed(), 200_000, 4)
    # Assert
    counts = np.bincount(mask.astype(np.int64), minlength=16)
    assert counts.size == 16 and counts[15] > 0
    assert stats.chisquare(counts).pvalue > 1e-4
    np.testing.assert_array_equal(mask, again)
    assert not np.array_equal(mask, other)


def test_a_tampered_share_message_is_refused_before_any_upload() -> None:
    # Prepare
    _params, agg, parts = _setup(4, 3, 2)
    inbox = agg.inbox(1)
    sender = next(iter(inbox))
    bad = bytearray(inbox[sender])
    bad[-1] ^= 1
    inbox[sender] = bytes(bad)
    # Execute / Assert
    with pytest.raises(crypto.DecryptionError):
        parts[1].masked_input(np.zeros(LENGTH, np.uint64), inbox)


def test_the_server_refuses_a_share_of_the_wrong_kind() -> None:
    # Prepare
    _params, agg, parts = _setup(4, 3, 2)
    for u, p in parts.items():
        agg.add_masked(u, p.masked_input(np.zeros(LENGTH, np.uint64), agg.inbox(u)))
    shares = parts[1].unmask([1, 2, 3, 4])
    v, (_, share) = next(iter(shares.items()))
    # Execute / Assert: a survivor's mask-key share would let the server strip its masks
    with pytest.raises(ValueError, match="unexpected key share"):
        agg.add_shares(1, {v: (KEY, share)})


def test_participant_state_survives_a_round_trip() -> None:
    # Prepare
    _params, _agg, parts = _setup(4, 3, 2)
    # Execute
    copy = Participant.from_json(parts[2].to_json())
    # Assert
    assert copy == parts[2]


def test_harary_graph_is_regular_and_symmetric() -> None:
    # Prepare / Execute
    graph = harary_graph(range(50), 8, np.random.default_rng(3))
    # Assert
    assert all(len(vs) == 8 for vs in graph.values())
    assert all(u in graph[v] for u, vs in graph.items() for v in vs)
    assert harary_graph(range(5), 8, np.random.default_rng(0))[0] == [1, 2, 3, 4]


def test_secagg_settings_refuse_bad_values() -> None:
    # Prepare / Execute / Assert
    with pytest.raises(ValueError, match=r"secagg\.bits"):
        SecAggConfig(bits=4)
    with pytest.raises(ValueError, match=r"secagg\.min-survivors"):
        SecAggConfig(min_survivors=0.0)
    with pytest.raises(ValueError, match=r"secagg\.threshold"):
        SecAggConfig(neighbours=4, threshold=9).shamir_threshold(100)
    assert SecAggConfig(neighbours=32).shamir_threshold(10) == 5  # complete graph: k = 9
