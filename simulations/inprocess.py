"""Run the fedrec ServerApp logic against the ClientApp in one process, without Ray.

Design rule: :class:`InProcessGrid` delivers each message straight to the very
``ClientApp`` the simulation engine runs (random node ids, one ``partition-id`` per
user, a raising client becomes an error reply), synchronously. It is for small runs
and sweeps on a few cores, where Ray's start-up (~20 s) costs more than the rounds.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
from flwr.app import Context, Error, Message, MessageType, RecordDict
from flwr.serverapp import Grid
from flwr.supercore.task_identity import TaskIdentity

from clients.client_app import app as client_app
from clients.sim_store import ledger_reader
from server.checkpoint import CLIENTS_DIR
from server.privacy_run import DeviceLedgers
from server.server_app import RoundCallback, run_server
from server.settings import RunSettings, load_split


def simulated_ledgers(settings: RunSettings) -> DeviceLedgers:
    """The harness's reader of its simulated devices' ledgers (local DP's privacy.json)."""
    return ledger_reader(Path(settings.run_dir) / CLIENTS_DIR)


class InProcessGrid(Grid):
    """A Grid that runs the ClientApp synchronously for ``n_nodes`` users."""

    def __init__(self, n_nodes: int, seed: int = 0) -> None:
        for name in ("task_id", "run_id", "node_id"):
            setattr(TaskIdentity, name, 1)
        # ids only: a Context is made on a node's first message, so memory grows with
        # the users who get messages, not with every user (100k users: ~1 GB of Contexts)
        ids = np.random.default_rng(seed).choice(2**40, n_nodes, replace=False) + 2
        self.n_nodes = n_nodes
        self.partition = {int(node): i for i, node in enumerate(ids)}
        self.contexts: dict[int, Context] = {}

    def context(self, node: int, *, keep: bool = True) -> Context:
        """The node's Context (kept from its first train/evaluate message on)."""
        if node in self.contexts:
            return self.contexts[node]
        context = Context(
            run_id=1,
            node_id=node,
            node_config={"partition-id": self.partition[node], "num-partitions": self.n_nodes},
            state=RecordDict(),
            run_config={},
        )
        if keep:
            self.contexts[node] = context
        return context

    def set_run(self, run: Any) -> None:
        del run

    @property
    def run(self) -> Any:
        raise NotImplementedError

    def create_message(self, *args: Any, **kwargs: Any) -> Message:
        raise NotImplementedError

    def get_node_ids(self) -> Iterable[int]:
        return list(self.partition)

    def push_messages(self, messages: Iterable[Message]) -> Iterable[str]:
        raise NotImplementedError

    def pull_messages(self, message_ids: Iterable[str]) -> Iterable[Message]:
        raise NotImplementedError

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        """The replies, lazily: each message is delivered when its reply is read.

        A reader that consumes replies one at a time (the strategies' aggregation)
        thus holds one dense upload at a time, not the cohort's.
        """
        return self._replies(list(messages))

    def _replies(self, messages: list[Message]) -> Iterator[Message]:
        for msg in messages:
            try:
                node = msg.metadata.dst_node_id
                keep = msg.metadata.message_type != MessageType.QUERY  # discovery: all nodes
                reply = client_app(msg, self.context(node, keep=keep))
            except Exception as ex:  # as the engine does: a raising ClientApp -> error reply
                reply = Message(Error(code=0, reason=f"Message: {ex}"), reply_to=msg)
            yield reply


class RecordingGrid(InProcessGrid):
    """The in-process Grid, keeping every reply the server receives (for audits and the
    tests that read what left the devices)."""

    def __init__(self, n_nodes: int, seed: int = 0) -> None:
        super().__init__(n_nodes, seed)
        self.replies: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = list(super().send_and_receive(messages, timeout=timeout))
        self.replies += out
        return out

    @property
    def uploads(self) -> list[Message]:
        """The train replies (what a device uploads)."""
        return [m for m in self.replies if m.metadata.message_type == MessageType.TRAIN]

    @property
    def kinds(self) -> set[str]:
        """The message types of every reply."""
        return {m.metadata.message_type for m in self.replies}


def simulate_in_process(
    settings: RunSettings, *, on_round: RoundCallback | None = None, finish: bool = True
) -> dict[str, Any]:
    """Run (or resume) ``settings`` in process; return the final metrics.

    ``finish`` writes the run's model file and report.md (:func:`finish_run`); a tuning
    trial, whose directory is removed afterwards, passes ``False``.
    """
    from simulations.evaluation import device_evaluator
    from simulations.run_dir import read_metrics
    from simulations.run_model import finish_run
    from simulations.simulation import absolute

    settings = absolute(settings)
    grid = InProcessGrid(load_split(settings).n_users)
    run_server(
        grid,
        settings,
        on_round,
        device_ledgers=simulated_ledgers(settings),
        evaluator=device_evaluator(settings),  # measured by the harness, not by messages
    )
    if finish:
        finish_run(settings.run_dir)
    return read_metrics(Path(settings.run_dir))
