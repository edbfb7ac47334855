"""Who gets a message: node discovery, the training cohort and the evaluation sample.

Design rule: fedrec samples *users*, never Flower nodes, and never with the global
``random`` module (which Flower's own ``sample_nodes`` uses). The training cohort is
:func:`fedrec.federated.aggregation.sample_clients` (Poisson, ``q = K / N``, generator
from ``(seed, round)``) over the users with train items, exactly as the Flower-free
reference loop :mod:`fedrec.federated.loop` draws it, so both runs see the same
cohorts and a resumed run draws the cohorts the uninterrupted run drew.

Node ids in Flower's simulation engine are random 64-bit integers drawn afresh at
every start (``os.urandom``), so the user of a node cannot be derived from its id.
:func:`discover_users` asks every node once, with a ``query`` message, for its
``partition-id`` (= user index) and returns ``user -> node id``. It runs at every
start (a resumed run has new node ids); on ml-100k (943 nodes, 2 cores) it costs
about one round of messages to every node (20-30 s).
"""

from __future__ import annotations

import time
from collections.abc import Mapping

import numpy as np
import numpy.typing as npt
from flwr.app import ConfigRecord, Message, MessageType, RecordDict
from flwr.serverapp import Grid

from fedrec.federated.aggregation import sample_clients

PARTITION_KEY = "partition-id"
_EVAL_STREAM = 0xE7A1


def wait_for_nodes(grid: Grid, n_nodes: int, *, timeout: float, settle: float = 5.0) -> list[int]:
    """Node ids once ``n_nodes`` are connected, or once their number has not changed
    for ``settle`` seconds (a deployment with fewer nodes than users), or at ``timeout``.
    """
    deadline = time.monotonic() + timeout
    nodes = list(grid.get_node_ids())
    changed = time.monotonic()
    while len(nodes) < n_nodes and time.monotonic() < deadline:
        if nodes and time.monotonic() - changed > settle:
            break
        time.sleep(0.05)
        now = list(grid.get_node_ids())
        if len(now) != len(nodes):
            nodes, changed = now, time.monotonic()
    return nodes


def discover_users(grid: Grid, n_nodes: int, *, timeout: float) -> dict[int, int]:
    """Map each user (node's ``partition-id``) to its node id with one query per node.

    Parameters
    ----------
    n_nodes
        How many nodes to wait for (in simulation: one per user).
    timeout
        Seconds to wait for the nodes to connect, and again for their answers.
    """
    nodes = wait_for_nodes(grid, n_nodes, timeout=timeout)
    messages = [
        Message(RecordDict({"config": ConfigRecord({})}), node, MessageType.QUERY) for node in nodes
    ]
    mapping: dict[int, int] = {}
    for reply in grid.send_and_receive(messages, timeout=timeout):
        if reply.has_error():
            continue  # an unreachable node is a user that never joins
        user = int(reply.content["config"][PARTITION_KEY])  # type: ignore[arg-type]
        mapping[user] = reply.metadata.src_node_id
    return mapping


def train_cohort(
    eligible: npt.NDArray[np.int64], clients_per_round: int, server_round: int, seed: int
) -> npt.NDArray[np.int64]:
    """The users sampled for ``server_round`` (1-based) among ``eligible`` users.

    Round ``r`` draws with the reference loop's round index ``r - 1``.
    """
    idx = sample_clients(len(eligible), clients_per_round, server_round - 1, seed)
    return eligible[idx]


def eval_sample(
    test_users: npt.NDArray[np.int64], n: int, server_round: int, seed: int
) -> npt.NDArray[np.int64]:
    """``n`` test users drawn without replacement for a periodic evaluation (sorted).

    ``n <= 0`` or ``n >= len(test_users)`` selects every test user.
    """
    if n <= 0 or n >= len(test_users):
        return np.asarray(test_users, dtype=np.int64)
    rng = np.random.default_rng(np.random.SeedSequence([seed, server_round, _EVAL_STREAM]))
    return np.sort(rng.choice(test_users, size=n, replace=False)).astype(np.int64)


def nodes_of(users: npt.NDArray[np.int64], user_nodes: Mapping[int, int]) -> list[tuple[int, int]]:
    """``(user, node id)`` pairs; users without a connected node are left out."""
    return [(int(u), user_nodes[int(u)]) for u in users if int(u) in user_nodes]
