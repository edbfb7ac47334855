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

from flwr.app import RecordDict

from fedrec.errors import ConfigError, DataError
from fedrec.privacy.record import PrivacyRecord
from server.strategies import (
    ARRAYS_KEY,
    PRIVACY_KEY,
    REFUSED,
    FedAdamStrategy,
    FedAvgStrategy,
    FedProxStrategy,
    StrategyWrapper,
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


class LocalDPStrategy(StrategyWrapper):
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
