"""Apply the data-shaped defaults (:mod:`fedrec.federated.shape`) to a run's settings.

Only what the user left unset changes: ``--rounds``, ``--clients-per-round`` and the
``--set model.*`` fields the rules cover (the rule itself, shared with ``flwr run``'s
path, is :func:`server.shaped.apply_shaped_defaults`). Private runs keep their own round
count (each round spends budget, and the noise is calibrated to it).
"""

from __future__ import annotations

import argparse

from fedrec.data.split import Split
from server.settings import RunSettings
from server.shaped import CLIENTS_KEY, ROUNDS_KEY, apply_shaped_defaults


def given_keys(args: argparse.Namespace) -> set[str]:
    """The flat settings the command line (or its ``--config`` file) set."""
    given = {item.partition("=")[0].strip() for item in getattr(args, "set", None) or []}
    if getattr(args, "rounds", None) is not None:
        given.add(ROUNDS_KEY)
    if getattr(args, "clients_per_round", None) is not None:
        given.add(CLIENTS_KEY)
    if getattr(args, "server_lr", None) is not None:
        given.add("server.server-lr")
    return given


def apply_shape_defaults(
    settings: RunSettings, split: Split, args: argparse.Namespace
) -> tuple[RunSettings, list[str]]:
    """``settings`` with the shaped defaults filled in, and the reasons for each one used."""
    return apply_shaped_defaults(settings, split, given_keys(args))
