"""Errors a user can hit, each saying what was wrong, where, and what to do.

Every error raised at a boundary (a file, a CLI flag, a config value, a store) is a
:class:`FedrecError`. The CLI prints ``str(error)`` on one line and exits with code 2,
never a traceback.
"""

from __future__ import annotations


class FedrecError(ValueError):
    """A problem with the user's input, stated as *what*, *where* and *what to do*.

    Parameters
    ----------
    what
        What is wrong, e.g. ``"malformed line (expected 4 fields, got 2)"``.
    where
        Where it is: a path with line number, a flag, a config key.
    fix
        What the user should do about it.
    """

    def __init__(self, what: str, *, where: str = "", fix: str = "") -> None:
        self.what = what
        self.where = where
        self.fix = fix
        parts = [f"{where}: {what}" if where else what]
        if fix:
            parts.append(fix)
        super().__init__(". ".join(p.rstrip(".") for p in parts) + ".")


class DataError(FedrecError):
    """Bad or missing input data."""


class ConfigError(FedrecError):
    """A configuration value or command-line flag that cannot be used."""


class OutputError(FedrecError):
    """An output location that cannot be written safely."""


class BudgetExhaustedError(FedrecError):
    """A client's privacy budget would be exceeded by the next release."""


class StoreError(FedrecError):
    """A device store that is corrupted, foreign, locked or of an unknown version."""
