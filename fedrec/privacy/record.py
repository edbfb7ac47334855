"""The privacy record a local-DP device sends with its train reply: its status, nothing else.

Design rule: one wire format, defined once, for both sides. The device (``clients``)
writes :meth:`PrivacyRecord.to_dict` into its reply and the server (``server``) reads
it back with :meth:`PrivacyRecord.from_dict`, which refuses anything else. The record
holds only the round's outcome (``trained``, ``budget_exhausted`` or ``refused``):
no ledger history, no sampling rate, no step count, no epsilon. Each of those is a
function of the device's number of interactions ``n`` (``q = ceil(n / k) / n`` gives
``n`` away once ``n`` exceeds the batch size), so the exact ledger stays on the device
(docs/PRIVACY.md, "What a reply carries").
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from fedrec.errors import DataError

TRAINED, BUDGET_EXHAUSTED, REFUSED = "trained", "budget_exhausted", "refused"
STATUSES = (TRAINED, BUDGET_EXHAUSTED, REFUSED)
"""What a device may answer: it trained; its budget is spent; it refused (e.g. no data)."""

WIRE_KEYS = frozenset({"status"})
"""The only key of the record on the wire."""


@dataclass(frozen=True)
class PrivacyRecord:
    """A local-DP device's answer to a train request, as sent to the server.

    Attributes
    ----------
    status
        One of :data:`STATUSES`. ``trained`` comes with the item-side arrays; the two
        others come alone (nothing was trained, nothing was spent).
    """

    status: str

    def __post_init__(self) -> None:
        if self.status not in STATUSES:
            raise DataError(
                f"unknown privacy status {self.status!r}",
                where="privacy record",
                fix=f"use one of {', '.join(STATUSES)}",
            )

    @property
    def trained(self) -> bool:
        return self.status == TRAINED

    def to_dict(self) -> dict[str, str]:
        """The wire form: ``{"status": ...}`` (a Flower ``ConfigRecord``'s content)."""
        return {"status": self.status}

    @classmethod
    def from_dict(cls, data: Mapping[str, object]) -> PrivacyRecord:
        """Parse the wire form; any other key is refused (it could describe the data).

        Raises
        ------
        DataError
            On a missing status, an unknown status or an extra key.
        """
        keys = set(data)
        if keys != WIRE_KEYS:
            raise DataError(
                f"privacy record keys {sorted(keys)} != {sorted(WIRE_KEYS)}",
                where="privacy record",
                fix="a device sends its status only (fedrec.privacy.record.PrivacyRecord)",
            )
        return cls(str(data["status"]))


__all__ = ["BUDGET_EXHAUSTED", "REFUSED", "STATUSES", "TRAINED", "WIRE_KEYS", "PrivacyRecord"]
