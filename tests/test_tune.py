"""Validation split, ``fedrec tune``, ``simulate --config`` and central mode's default model."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import pytest

from fedrec.data import resolve_data
from fedrec.data.split import random_split, validation_split
from fedrec.data.split_files import read_split
from fedrec.errors import ConfigError
from server.settings import RunSettings, load_split
from simulations.cli import build_parser, main
from simulations.commands.simulate import choose_model, settings_from_args
from simulations.tuning import (
    SEARCH_SPACES,
    TuneSpec,
    check_spec,
    preset_values,
    search_space,
    tune,
)

DATA = "synthetic:users=30,items=20,seed=1"


def _pairs(frame: pd.DataFrame) -> set[tuple[str, str]]:
    return set(zip(frame["user"].astype(str), frame["item"].astype(str), strict=True))


def _matrix_pairs(m: Any) -> set[tuple[int, int]]:
    coo = m.tocoo()
    return set(zip(coo.row.tolist(), coo.col.tolist(), strict=True))


# --- fedrec split --validation -------------------------------------------------------


def test_split_validation_writes_three_disjoint_files_whose_union_is_the_protocol(
    tmp_path: Path,
) -> None:
    # Prepare
    out = tmp_path / "split"
    # Execute
    code = main(["split", "--data", DATA, "--out", str(out), "--validation"])
    # Assert
    assert code == 0
    train, valid, test = (
        pd.read_csv(out / f"{n}.csv", dtype=str) for n in ("train", "valid", "test")
    )
    tr, va, te = _pairs(train), _pairs(valid), _pairs(test)
    assert va and not (tr & va) and not (tr & te) and not (va & te)
    protocol = random_split(resolve_data(DATA), seed=0)
    assert len(tr) + len(va) == protocol.train.nnz and len(te) == protocol.test.nnz
    # per user, about 20% of the train items are validation (ceil, users with >= 5)
    per_user_valid = valid.groupby("user").size()
    per_user_train = train.groupby("user").size()
    for user, n_valid in per_user_valid.items():
        assert n_valid == int(np.ceil(0.2 * (n_valid + per_user_train[user]) - 1e-9))
    # read back (fedrec evaluate), valid.csv counts as train: the protocol's train set
    back = read_split(out)
    assert back.train.nnz == protocol.train.nnz and back.test.nnz == protocol.test.nnz


def test_split_validation_fraction_needs_validation_and_a_fraction_in_range(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["split", "--data", DATA, "--out", str(tmp_path / "s")]
    assert main([*base, "--validation-fraction", "0.3"]) == 2
    assert "--validation-fraction: given without --validation" in capsys.readouterr().err
    assert main([*base, "--validation", "--validation-fraction", "1.5"]) == 2
    assert "--validation-fraction" in capsys.readouterr().err
    assert not (tmp_path / "s").exists()


def test_validation_fraction_setting_scores_validation_items_never_test_items() -> None:
    # Prepare
    protocol = load_split(RunSettings(data=DATA))
    # Execute
    valid = load_split(RunSettings(data=DATA, validation_fraction=0.25))
    # Assert
    expected = validation_split(protocol, seed=0, test_fraction=0.25)
    assert _matrix_pairs(valid.test) == _matrix_pairs(expected.test)
    assert not _matrix_pairs(valid.test) & _matrix_pairs(protocol.test)
    assert not _matrix_pairs(valid.train) & _matrix_pairs(protocol.test)
    assert _matrix_pairs(valid.train) | _matrix_pairs(valid.test) == _matrix_pairs(protocol.train)
    with pytest.raises(ConfigError, match="validation-fraction"):
        RunSettings(data=DATA, validation_fraction=1.0)


def test_clients_load_the_same_validation_split_as_the_harness() -> None:
    from clients.client_config import load_split as client_split

    settings = RunSettings(data=DATA, validation_fraction=0.2)
    config = settings.client_config()
    assert config["validation-fraction"] == 0.2
    ours, theirs = load_split(settings), client_split(config)  # type: ignore[arg-type]
    assert _matrix_pairs(ours.test) == _matrix_pairs(theirs.test)
    assert _matrix_pairs(ours.train) == _matrix_pairs(theirs.train)
    assert "validation-fraction" not in RunSettings(data=DATA).to_flat()  # old runs unchanged


# --- fedrec tune -----------------------------------------------------------------------


def test_tune_writes_trials_best_and_report_and_scores_only_validation_items(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: spy on the split the harness's evaluator scores
    import simulations.evaluation as evaluation

    seen: list[Any] = []
    real = evaluation.load_split

    def spy(settings: RunSettings) -> Any:
        split = real(settings)
        seen.append(split)
        return split

    monkeypatch.setattr(evaluation, "load_split", spy)
    spec = TuneSpec(
        data=DATA, model="mf", budget=2, out=tmp_path / "tune", max_rounds=2,
        clients_per_round=10, eval_every=1, eval_clients=10,
    )  # fmt: skip
    # Execute
    best = tune(spec, log=lambda line: None)
    # Assert: files
    rows = [json.loads(line) for line in (spec.out / "trials.jsonl").read_text().splitlines()]
    assert [r["trial"] for r in rows] == [0, 1]
    for row in rows:
        assert set(row) >= {"params", "validation_ndcg@10", "seconds", "state"}
        assert set(row["params"]) == {p.key for p in search_space("mf", 2)}
    assert rows[0]["params"] == preset_values("mf", 2)  # the preset is trial 0
    complete = [r for r in rows if r["state"] == "complete"]
    assert best["validation_ndcg@10"] == max(r["validation_ndcg@10"] for r in complete)
    flat = json.loads((spec.out / "best.json").read_text())
    assert flat["model"] == "mf" and flat["data"] == DATA and flat["seed"] == 0
    assert {k: flat[k] for k in best["params"]} == best["params"]
    assert "validation-fraction" not in flat  # best.json runs on the protocol split
    assert "Test items were not used" in (spec.out / "report.md").read_text()
    assert not list((spec.out / "trials").iterdir())  # trial runs removed
    # Assert: every split the evaluator scored is the validation split, no test item
    protocol = random_split(resolve_data(DATA), seed=0)
    valid = validation_split(protocol, seed=0, test_fraction=0.2)
    assert len(seen) == 2
    for split in seen:
        assert _matrix_pairs(split.test) == _matrix_pairs(valid.test)
        assert not _matrix_pairs(split.test) & _matrix_pairs(protocol.test)
        assert not _matrix_pairs(split.train) & _matrix_pairs(protocol.test)


def test_every_preset_lies_inside_its_search_space() -> None:
    for model in SEARCH_SPACES:
        values = preset_values(model, 30)
        for param in search_space(model, 30):
            value = values[param.key]
            if param.choices:
                assert value in param.choices, (model, param.key)
            else:
                assert param.low <= value <= param.high, (model, param.key, value)


def test_tune_refuses_bad_budgets_private_modes_and_unknown_models(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    base = ["tune", "--data", DATA, "--model", "mf", "--out", str(tmp_path / "t")]
    assert main([*base, "--budget", "0"]) == 2
    assert "--budget: must be at least 1 trial" in capsys.readouterr().err
    assert main([*base, "--privacy", "central"]) == 2
    err = capsys.readouterr().err
    assert "--privacy central" in err and "RepeatAndSelectDpEvent" in err
    assert "does not account" in err and "public or non-private" in err
    with pytest.raises(SystemExit):
        build_parser().parse_args(["tune", "--data", DATA, "--model", "svd", "--out", "x"])
    assert "invalid choice: 'svd'" in capsys.readouterr().err
    with pytest.raises(ConfigError, match="no search space"):
        check_spec(TuneSpec(data=DATA, model="ease", budget=1, out=tmp_path / "e"))
    assert not (tmp_path / "t").exists()


# --- fedrec simulate --config ----------------------------------------------------------


def _settings(argv: list[str]) -> RunSettings:
    args = build_parser().parse_args(["simulate", *argv])
    choose_model(args)
    return settings_from_args(args)


def test_config_file_round_trips_and_flags_given_override_it(tmp_path: Path) -> None:
    # Prepare
    config = tmp_path / "best.json"
    config.write_text(json.dumps({
        "data": DATA, "model": "mf", "seed": 3, "num-server-rounds": 9, "model.dim": 16,
        "server.server-lr": 0.05, "train.lr": 1.5,
    }))  # fmt: skip
    out = ["--out", str(tmp_path / "run")]
    # Execute
    plain = _settings([*out, "--config", str(config)])
    over = _settings(
        [*out, "--config", str(config), "--rounds", "4", "--seed", "0", "--server-lr", "0.2",
         "--set", "model.dim=8"]
    )  # fmt: skip
    # Assert
    assert (plain.data, plain.seed, plain.rounds) == (DATA, 3, 9)
    assert (plain.model.dim, plain.server.server_lr, plain.train.lr) == (16, 0.05, 1.5)
    assert (over.rounds, over.seed, over.server.server_lr) == (4, 0, 0.2)  # --seed 0: default
    assert over.model.dim == 8 and over.train.lr == 1.5


def test_config_file_in_toml_with_tables(tmp_path: Path) -> None:
    config = tmp_path / "c.toml"
    config.write_text('model = "mf"\nnum-server-rounds = 5\n"model.dim" = 24\n[train]\nlr = 1.5\n')
    settings = _settings(["--out", str(tmp_path / "r"), "--config", str(config)])
    assert settings.rounds == 5 and settings.model.dim == 24 and settings.train.lr == 1.5


def test_config_file_errors_say_what_and_where(tmp_path: Path) -> None:
    bad = tmp_path / "bad.json"
    bad.write_text("{not json")
    with pytest.raises(ConfigError, match="not valid JSON") as err:
        _settings(["--out", "x", "--config", str(bad)])
    assert str(bad) in str(err.value)
    with pytest.raises(ConfigError, match="cannot read"):
        _settings(["--out", "x", "--config", str(tmp_path / "absent.json")])
    unknown = tmp_path / "u.json"
    unknown.write_text(json.dumps({"model.dimension": 3}))
    with pytest.raises(ConfigError, match=r"model\.dimension"):
        _settings(["--out", "x", "--config", str(unknown)])


# --- central mode's default model ------------------------------------------------------


def _model(argv: list[str]) -> str:
    args = build_parser().parse_args(["simulate", "--data", DATA, "--out", "x", *argv])
    choose_model(args)
    return str(args.model)


def test_central_mode_defaults_to_federated_ease_when_the_catalog_fits(
    capsys: pytest.CaptureFixture[str],
) -> None:
    central = ["--privacy", "central", "--target-epsilon", "8"]
    assert _model(central) == "ease"
    assert "central mode's default when the catalog fits" in capsys.readouterr().out
    assert _model([*central, "--model", "mf"]) == "mf"  # an explicit model is respected
    assert _model([*central, "--set", "ease.max-items=10"]) == "ials"  # 20 items > cap 10
    assert "exceed federated EASE's cap of 10" in capsys.readouterr().out
    assert _model([*central, "--rounds", "5"]) == "mf"  # round-based flags: MF
    assert _model(["--privacy", "local", "--target-epsilon", "8"]) == "mf"
    assert _model(["--privacy", "distributed", "--target-epsilon", "8"]) == "ease"


def test_runs_without_privacy_default_to_ials_unless_mf_flags_are_given(
    capsys: pytest.CaptureFixture[str],
) -> None:
    assert _model([]) == "ials"
    assert "the default without privacy" in capsys.readouterr().out
    assert _model(["--model", "cdae"]) == "cdae"  # an explicit model is respected
    assert _model(["--rounds", "5"]) == "mf"  # a command written for MF keeps MF
    assert "--rounds given" in capsys.readouterr().out
    assert _model(["--set", "train.lr=0.5"]) == "mf"
    assert _model(["--seed", "3", "--engine", "inprocess"]) == "ials"  # not MF's flags
