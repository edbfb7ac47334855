"""Local-DP reply handling as a strategy wrapper, beside :mod:`server.central_dp`.

Design rule: under local DP the mechanism runs on the devices, so the server's part is
only to read what a reply may carry, and nothing more. :class:`LocalDPStrategy` wraps
any fedrec strategy (FedAvg, FedAdam, FedProx of :mod:`server.strategies`) and installs
one reply hook on it: each train reply must hold a
:class:`fedrec.privacy.record.PrivacyRecord` (the status, parsed by the one wire
format) and, exactly when the status is ``trained``, the item-side arrays. A
``budget_exhausted`` or ``refused`` reply is a refusal, not a failure; a reply with
any other key (a ledger history, an epsilon, a count) is a failure and is left out.
Count weighting is refused: ``num-examples`` is the device's size.

The server never holds a device's ledger. In simulation the harness, which owns the
simulated devices, reads their ledgers (:mod:`server.privacy_run`); in a deployment
the exact ledgers stay on the devices.
"""

from __future__ import annotations

from collections.abc import Iterable

from flwr.app import ArrayRecord, ConfigRecord, Message, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import Strategy

from fedrec.errors import ConfigError, DataError
from fedrec.privacy.record import PrivacyRecord
from server.strategies import (
    ARRAYS_KEY,
    PRIVACY_KEY,
    REFUSED,
    FedAdamStrategy,
    FedAvgStrategy,
    FedProxStrategy,
    Outcome,
)

FedrecStrategy = FedAvgStrategy | FedAdamStrategy | FedProxStrategy


def read_status(content: RecordDict) -> str:
    """'' for a valid ``trained`` reply, ``REFUSED + status`` for a refusal, else why not."""
    raw = content.config_records.get(PRIVACY_KEY)
    if raw is None:
        return "local DP reply without a privacy record"
    try:
        record = PrivacyRecord.from_dict(dict(raw))
    except DataError as err:
        return f"malformed privacy record ({err.what})"
    has_arrays = ARRAYS_KEY in content.array_records
    if record.trained != has_arrays:
        return f"privacy status {record.status!r} {'without' if record.trained else 'with'} arrays"
    return "" if record.trained else REFUSED + record.status


class LocalDPStrategy(Strategy):
    """Wrap a fedrec ``strategy`` so that it accepts local-DP replies, and only those."""

    def __init__(self, strategy: FedrecStrategy) -> None:
        if strategy.plan.weighted:
            raise ConfigError(
                "count weighting sends each device's number of examples to the server",
                where="server.weighted",
                fix="use uniform weights (the default) with --privacy local",
            )
        self.strategy = strategy
        strategy.reply_hook = lambda user, content: read_status(content)
        strategy.reply_configs = frozenset({PRIVACY_KEY})

    def __repr__(self) -> str:
        return f"LocalDPStrategy({type(self.strategy).__name__})"

    @property
    def last_train(self) -> Outcome:
        return self.strategy.last_train

    @property
    def last_eval(self) -> Outcome:
        return self.strategy.last_eval

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
