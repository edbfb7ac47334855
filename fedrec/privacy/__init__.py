"""Privacy core: accounting as data, secret noise, ledgers, central and local DP.

Flower-free. See docs/PRIVACY.md for the threat model and the exact guarantees.
"""

from __future__ import annotations

from fedrec.privacy.accounting import (
    ACCOUNTANTS,
    PrivacyAccount,
    Release,
    calibrate_noise,
    default_delta,
    epsilon_from_history,
)
from fedrec.privacy.noise import secure_generator, secure_rng

__all__ = [
    "ACCOUNTANTS",
    "PrivacyAccount",
    "Release",
    "calibrate_noise",
    "default_delta",
    "epsilon_from_history",
    "secure_generator",
    "secure_rng",
]
