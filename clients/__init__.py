"""On-device client library: :class:`DeviceClient` over a durable local store.

Exports are loaded lazily (PEP 562), so that ``import clients.store`` stays light (no
torch) and importing :mod:`clients` never imports Flower; the Flower ``ClientApp``
lives in :mod:`clients.client_app`.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from clients.device import DeviceClient, EvalReply, FitReply, LocalPrivacy, RoundConfig
    from fedrec.recommend.types import Recommendation

_EXPORTS = {
    "DeviceClient": "clients.device",
    "EvalReply": "clients.device",
    "FitReply": "clients.device",
    "LocalPrivacy": "clients.device",
    "RoundConfig": "clients.device",
    "Recommendation": "fedrec.recommend.types",
}

__all__ = [
    "DeviceClient",
    "EvalReply",
    "FitReply",
    "LocalPrivacy",
    "Recommendation",
    "RoundConfig",
]


def __getattr__(name: str) -> Any:
    if name not in _EXPORTS:
        raise AttributeError(f"module 'clients' has no attribute {name!r}")
    return getattr(importlib.import_module(_EXPORTS[name]), name)
