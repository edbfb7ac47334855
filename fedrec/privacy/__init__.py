"""Privacy core: accounting as data, secret noise, ledgers, central and local DP.

Flower-free. See docs/PRIVACY.md for the threat model and the exact guarantees.
The names below load lazily: importing ``fedrec.privacy.config`` (a dataclass) must not
pay for importing Opacus, which every command line call would otherwise do.
"""

from __future__ import annotations

import importlib
from typing import Any

_EXPORTS = {
    "ACCOUNTANTS": "fedrec.privacy.config",
    "PrivacyAccount": "fedrec.privacy.accounting",
    "Release": "fedrec.privacy.accounting",
    "calibrate_noise": "fedrec.privacy.accounting",
    "default_delta": "fedrec.privacy.accounting",
    "epsilon_from_history": "fedrec.privacy.accounting",
    "secure_generator": "fedrec.privacy.noise",
    "secure_rng": "fedrec.privacy.noise",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        return getattr(importlib.import_module(_EXPORTS[name]), name)
    raise AttributeError(f"module 'fedrec.privacy' has no attribute {name!r}")
