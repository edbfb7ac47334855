"""Defaults from the data's shape (fedrec.federated.shape, simulations.shaped; issue 17)."""

from __future__ import annotations

import argparse
import dataclasses
from pathlib import Path

import pytest
import scipy.sparse as sp

from fedrec.federated.shape import (
    CLIENTS_PER_ROUND,
    MAX_ROUNDS,
    MIN_ROUNDS,
    PASSES,
    DataShape,
    ials_alpha0,
    shaped_defaults,
    shaped_rounds,
)
from server.privacy_run import eligible_users
from server.settings import load_split
from simulations.commands import simulate as simulate_cmd
from simulations.shaped import apply_shape_defaults

ML100K = DataShape(users=943, items=1682, interactions=79_619)
ML1M = DataShape(users=6040, items=3706, interactions=797_758)


def test_rounds_grow_with_users_so_each_user_joins_about_passes_times() -> None:
    # Prepare: the two MovieLens shapes, a tiny and a huge one
    tiny, huge = DataShape(30, 50, 600), DataShape(100_000, 20_000, 5_000_000)

    # Execute
    r100k, r1m = shaped_rounds(ML100K), shaped_rounds(ML1M)
    r_tiny, r_huge = shaped_rounds(tiny), shaped_rounds(huge)

    # Assert: ~PASSES participations per user, within the bounds
    assert r100k == (95, CLIENTS_PER_ROUND)
    assert r1m == (604, CLIENTS_PER_ROUND)
    for (rounds, k), shape in ((r100k, ML100K), (r1m, ML1M), (r_huge, huge)):
        assert PASSES <= rounds * k / shape.users < PASSES + 1
    assert r_tiny == (MIN_ROUNDS, 30)  # never more devices than users, never under 50 rounds
    assert r_huge[0] <= MAX_ROUNDS and r_huge[1] == 1000  # more devices, not more rounds


def test_ials_alpha0_falls_with_the_number_of_users_not_the_density() -> None:
    # Prepare: ml-1m, ml-100k, and ml-1m's users at a fifth of the interactions
    sparse = DataShape(ML1M.users, ML1M.items, ML1M.interactions // 5)

    # Execute
    a1m, a100k, a_sparse = ials_alpha0(ML1M), ials_alpha0(ML100K), ials_alpha0(sparse)

    # Assert: ml-1m keeps the measured 0.3; alpha0 grows as 1 / sqrt(users); bounded
    assert a1m == 0.3
    assert a100k == pytest.approx(0.3 * (ML1M.users / ML100K.users) ** 0.5, rel=0.01)
    assert a_sparse == a1m  # the same users: the density does not move it
    assert ials_alpha0(DataShape(10, 100, 50)) == 3.0
    assert ials_alpha0(DataShape(10**6, 100, 50)) == 0.1


def test_shape_of_a_train_matrix_counts_only_users_with_train_items() -> None:
    # Prepare: 3 users, one of them without train items
    train = sp.csr_matrix([[1, 0, 1, 0], [0, 0, 0, 0], [1, 1, 1, 0]])

    # Execute
    shape = DataShape.of_train(train)

    # Assert
    assert (shape.users, shape.items, shape.interactions) == (2, 4, 5)
    assert shape.per_user == 2.5


def test_only_ials_lightgcns_and_ncfs_rounds_are_shaped() -> None:
    # Execute / Assert: the other presets were measured on ml-100k only and stay as they are
    assert shaped_defaults("mf", ML1M) is None
    assert shaped_defaults("cdae", ML1M) is None
    shaped = shaped_defaults("ials", ML1M)
    assert shaped is not None and shaped.rounds == 604 and len(shaped.reasons) == 2
    ncf = shaped_defaults("ncf", ML1M)  # 5 passes (presets.NCF_PASSES)
    assert ncf is not None and (ncf.rounds, ncf.model) == (302, {}) and len(ncf.reasons) == 1
    gcn = shaped_defaults("lightgcn", ML1M)
    assert gcn is not None and (gcn.rounds, gcn.model) == (604, {}) and len(gcn.reasons) == 1


def _settings(argv: list[str], tmp_path: Path) -> tuple[argparse.Namespace, object]:
    parser = argparse.ArgumentParser()
    simulate_cmd.add_arguments(parser)
    args = parser.parse_args(["--data", "synthetic", "--out", str(tmp_path / "run"), *argv])
    return args, simulate_cmd.settings_from_args(args)


def test_simulate_fills_in_only_what_the_command_line_left_unset(tmp_path: Path) -> None:
    # Prepare: iALS with nothing set, with --rounds, with --set model.alpha0, and private
    runs = {
        "plain": ["--model", "ials"],
        "rounds": ["--model", "ials", "--rounds", "7"],
        "alpha0": ["--model", "ials", "--set", "model.alpha0=2.0"],
        "mf": ["--model", "mf"],
    }
    out = {}
    for name, argv in runs.items():
        args, settings = _settings(argv, tmp_path / name)
        split = load_split(settings)  # type: ignore[arg-type]
        out[name] = apply_shape_defaults(settings, split, args)  # type: ignore[arg-type]
    shape = DataShape.of_train(split.train)

    # Assert: shaped where unset, the user's value where set, MF untouched
    plain, reasons = out["plain"]
    assert (plain.rounds, plain.clients_per_round) == shaped_rounds(shape)
    assert plain.model.alpha0 == ials_alpha0(shape)
    assert len(reasons) == 2 and "takes part about" in reasons[0]
    assert out["rounds"][0].rounds == 7 and out["rounds"][0].model.alpha0 == ials_alpha0(shape)
    assert out["alpha0"][0].model.alpha0 == 2.0 and out["alpha0"][0].rounds == plain.rounds
    assert out["mf"][1] == [] and out["mf"][0].rounds == 150


def test_private_runs_keep_their_rounds(tmp_path: Path) -> None:
    # Prepare: a central-DP iALS run (its noise is calibrated to its round count)
    args, settings = _settings(
        ["--model", "ials", "--privacy", "central", "--target-epsilon", "8"], tmp_path
    )

    # Execute
    shaped, reasons = apply_shape_defaults(settings, load_split(settings), args)  # type: ignore[arg-type]

    # Assert: the rounds stay; the cohort is every user (central iALS's q = 1 preset,
    # fedrec.federated.presets.central_clients_per_round), nothing else changes
    n = len(eligible_users(load_split(settings)))  # type: ignore[arg-type]
    assert shaped == dataclasses.replace(settings, clients_per_round=n)
    assert shaped.rounds == settings.rounds and len(reasons) == 1 and "every user" in reasons[0]
