"""SASRec's rounds and devices per round from the data's shape (fedrec.federated.shape).

The federated run tracks its twin's epochs at equal passes over the users, so the rounds
must make enough passes on a large set (ml-1m: the preset's 600 rounds of 33 are 3.3)
without cutting the server steps a small set needs (ml-100k: 600).
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np

from fedrec.federated.aggregation import sample_clients
from fedrec.federated.presets import default_rounds
from fedrec.federated.shape import (
    PASSES,
    SASREC_CLIENTS_PER_ROUND,
    SASREC_MAX_ROUNDS,
    DataShape,
    rounds_at,
    shaped_defaults,
)
from server.settings import load_split
from simulations.commands import simulate as simulate_cmd
from simulations.shaped import apply_shape_defaults

ML100K = DataShape(users=943, items=1682, interactions=79_619)
ML1M = DataShape(users=6040, items=3706, interactions=797_758)


def _participations(users: int, rounds: int, per_round: int) -> np.ndarray:
    counts = np.zeros(users, dtype=np.int64)
    for rnd in range(rounds):
        counts[sample_clients(users, per_round, rnd, 0)] += 1
    return counts


def test_ml1m_gets_passes_participations_per_user_at_33_devices() -> None:
    # Prepare: ml-1m's train shape, where the preset's 600 rounds of 33 are 3.3 passes
    # Execute
    shaped = shaped_defaults("sasrec", ML1M)
    assert shaped is not None
    counts = _participations(ML1M.users, shaped.rounds, shaped.clients_per_round)

    # Assert: 1,831 rounds of 33, about PASSES participations each and nobody left out
    # (the preset's 600 rounds of 33 are 3.3 passes); only the rounds and cohort are shaped
    assert (shaped.rounds, shaped.clients_per_round) == (1831, 33)
    assert shaped.rounds > default_rounds("sasrec")
    assert abs(counts.mean() - PASSES) < 0.2 and (counts == 0).mean() < 0.001
    assert shaped.model == {} and shaped.server == {}
    assert "takes part about 10 times" in shaped.reasons[0]


def test_a_small_set_keeps_the_presets_server_steps_at_33_devices() -> None:
    # Prepare: ml-100k (10 passes would be 286 rounds) and a 10-user set
    # Execute
    small, tiny = shaped_defaults("sasrec", ML100K), shaped_defaults("sasrec", DataShape(10, 5, 50))

    # Assert: never fewer rounds than the preset's 600 (ml-100k's measured setting, 21
    # passes), and the cohort is 33 (not simulate's 100), at most every user
    assert small is not None and tiny is not None
    assert (small.rounds, small.clients_per_round) == (600, 33)
    assert abs(small.passes - 600 * 33 / 943) < 1e-9
    assert (tiny.rounds, tiny.clients_per_round) == (600, 10)


def test_a_huge_set_takes_more_devices_per_round_not_more_rounds() -> None:
    # Prepare: the books shape's users (105,000)
    huge = DataShape(users=105_000, items=340_000, interactions=1_150_000)

    # Execute
    shaped = shaped_defaults("sasrec", huge)

    # Assert: at most SASREC_MAX_ROUNDS rounds, still about PASSES passes
    assert shaped is not None and shaped.rounds <= SASREC_MAX_ROUNDS
    assert shaped.clients_per_round > SASREC_CLIENTS_PER_ROUND
    assert PASSES <= shaped.rounds * shaped.clients_per_round / huge.users < PASSES + 0.1


def _settings(argv: list[str], tmp_path: Path) -> tuple[argparse.Namespace, object]:
    parser = argparse.ArgumentParser()
    simulate_cmd.add_arguments(parser)
    args = parser.parse_args(
        [
            "--data",
            "synthetic:users=2400,items=40",
            "--model",
            "sasrec",
            "--out",
            str(tmp_path / "run"),
            *argv,
        ]
    )
    return args, simulate_cmd.settings_from_args(args)


def test_simulate_applies_the_shaped_rounds_and_a_given_cohort_keeps_the_passes(
    tmp_path: Path,
) -> None:
    # Prepare: a set large enough for 10 passes at 33 to exceed 600 rounds; nothing set,
    # a cohort set, rounds set
    runs = {
        "plain": [],
        "cohort": ["--clients-per-round", "100"],
        "rounds": ["--rounds", "9"],
        "both": ["--rounds", "9", "--clients-per-round", "50"],
    }
    out = {}
    for name, argv in runs.items():
        args, settings = _settings(argv, tmp_path / name)
        split = load_split(settings)  # type: ignore[arg-type]
        out[name] = apply_shape_defaults(settings, split, args)  # type: ignore[arg-type]
    shape = DataShape.of_train(split.train)
    expected = rounds_at(shape, SASREC_CLIENTS_PER_ROUND, PASSES)

    # Assert: simulate runs the shaped rounds at 33 devices (not the preset's 600 rounds
    # of simulate's 100), a given cohort gets the rounds of the same passes, given rounds
    # stay
    plain, reasons = out["plain"]
    assert expected > 600 and (plain.rounds, plain.clients_per_round) == (expected, 33)
    assert len(reasons) == 1 and "takes part about 10 times" in reasons[0]
    cohort = out["cohort"][0]
    assert cohort.clients_per_round == 100
    assert cohort.rounds == rounds_at(shape, 100, expected * 33 / shape.users)
    # given rounds alone keep SASRec's own 33 devices (not simulate's 100), said why;
    # rounds and a cohort both given stay as given
    given_rounds, reasons = out["rounds"]
    assert (given_rounds.rounds, given_rounds.clients_per_round) == (9, 33)
    assert reasons == ["33 devices per round, the model's own (the rounds were given)"]
    assert (out["both"][0].rounds, out["both"][0].clients_per_round) == (9, 50)
