"""The data-shaped defaults on every path that starts a run: ``fedrec simulate``, the
``ServerApp`` under ``flwr run`` (its run config) and ``fedrec tune``'s first trial
(issue 17 item 4)."""

from __future__ import annotations

import dataclasses
import json
import tomllib
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Context, RecordDict

from fedrec.federated.presets import federated_preset
from fedrec.federated.shape import (
    DENSE_PER_USER,
    DataShape,
    ials_alpha0,
    ials_shaped_defaults,
    rounds_at,
    shaped_rounds,
)
from server import server_app
from server.settings import RunSettings, load_split
from server.shaped import apply_shaped_defaults
from simulations.tuning import TuneSpec, data_shaped, preset_values, tune, with_shaped

DATA = "synthetic:users=30,items=20,seed=1"
ROOT = Path(__file__).resolve().parents[1]


def _shape(data: str) -> DataShape:
    return DataShape.of_train(load_split(RunSettings(data=data)).train)


def _pyproject_config() -> dict[str, Any]:
    text = (ROOT / "pyproject.toml").read_text()
    config: dict[str, Any] = tomllib.loads(text)["tool"]["flwr"]["app"]["config"]
    return config


def _server_settings(monkeypatch: pytest.MonkeyPatch, run_config: dict[str, Any]) -> RunSettings:
    """The settings ``server_app.main`` hands to the round loop for ``run_config``."""
    seen: list[RunSettings] = []
    monkeypatch.setattr(server_app, "run_server", lambda grid, settings: seen.append(settings))
    context = Context(
        run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=run_config
    )
    server_app.main(None, context)  # type: ignore[arg-type]
    assert len(seen) == 1
    return seen[0]


def test_flwr_run_config_gets_the_shaped_rounds_and_alpha0(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: pyproject's run config with iALS, on a set with more users than a cohort
    data = "synthetic:users=300,items=40,seed=2"
    config = {**_pyproject_config(), "model": "ials", "data": data, "run-dir": str(tmp_path)}
    assert "num-server-rounds" not in config and config["clients-per-round"] == 100
    shape = _shape(data)

    # Execute
    settings = _server_settings(monkeypatch, config)
    given = _server_settings(monkeypatch, {**config, "num-server-rounds": 7, "model.alpha0": 2.0})

    # Assert: pyproject's 100 devices per round, the rounds for the passes at 100 and the
    # shaped alpha0 (the preset's 150 rounds and 0.3 without the rule) ...
    assert settings.clients_per_round == 100
    assert settings.rounds == rounds_at(shape, 100) == shaped_rounds(shape)[0] == 50
    assert settings.model.alpha0 == ials_alpha0(shape) != federated_preset("ials")[0].alpha0
    # ... and what the run config gives stays
    assert (given.rounds, given.model.alpha0) == (7, 2.0)


def test_flwr_run_config_of_mf_and_of_private_runs_is_unchanged(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Prepare: pyproject's MF, and iALS under central DP (noise calibrated to its rounds)
    config = {**_pyproject_config(), "data": DATA, "run-dir": str(tmp_path)}
    private = {**config, "model": "ials", "privacy": "central"}
    private |= {"privacy.noise-multiplier": 1.0}

    # Execute
    mf = _server_settings(monkeypatch, config)
    dp = _server_settings(monkeypatch, private)

    # Assert
    assert mf == RunSettings.from_run_config(config)
    assert dp == RunSettings.from_run_config(private)


def test_clients_per_round_given_alone_sets_the_rounds_for_the_same_passes() -> None:
    # Prepare: a 300-user set, 20 devices per round given
    data = "synthetic:users=300,items=40,seed=2"
    settings = RunSettings(data=data, model=federated_preset("ials")[0], clients_per_round=20)
    split = load_split(settings)
    shape = DataShape.of_train(split.train)

    # Execute
    shaped, reasons = apply_shaped_defaults(settings, split, {"clients-per-round"})

    # Assert: about 10 passes at 20 a round, not the preset's 150 rounds (5 passes)
    assert shaped.clients_per_round == 20
    assert shaped.rounds == rounds_at(shape, 20) == 10 * shape.users // 20
    assert "20 devices per round (given)" in reasons[0]


def test_tune_starts_from_the_shaped_defaults() -> None:
    # Prepare
    spec = TuneSpec(data=DATA, model="ials", budget=1, out=Path("unused"))
    shape = _shape(DATA)

    # Execute
    shaped = data_shaped(spec)
    resolved = with_shaped(spec, shaped)
    first = preset_values("ials", resolved.rounds, shaped)
    capped = preset_values("ials", 5, shaped)

    # Assert: trial 0 is the run `fedrec simulate --model ials` makes by default
    assert shaped is not None
    assert (resolved.rounds, resolved.clients_per_round) == shaped_rounds(shape)
    assert first["num-server-rounds"] == shaped_rounds(shape)[0]
    assert first["model.alpha0"] == ials_alpha0(shape) != federated_preset("ials")[0].alpha0
    assert capped["num-server-rounds"] == 5  # a smaller --max-rounds bounds it
    assert data_shaped(TuneSpec(data=DATA, model="mf", budget=1, out=Path("x"))) is None


def test_tune_runs_the_shaped_defaults_as_trial_zero(tmp_path: Path) -> None:
    # Prepare: one trial of iALS, two rounds at most
    spec = TuneSpec(
        data=DATA, model="ials", budget=1, out=tmp_path / "tune", max_rounds=2,
        eval_every=1, eval_clients=10,
    )  # fmt: skip
    shape = _shape(DATA)

    # Execute
    tune(spec, log=lambda line: None)

    # Assert: the trial ran the shaped alpha0 and cohort; best.json replays them
    row = json.loads((spec.out / "trials.jsonl").read_text().splitlines()[0])
    assert row["params"]["model.alpha0"] == ials_alpha0(shape)
    assert row["params"]["num-server-rounds"] == 2
    best = json.loads((spec.out / "best.json").read_text())
    assert best["clients-per-round"] == shaped_rounds(shape)[1]
    assert best["model.alpha0"] == ials_alpha0(shape)


DENSE = DataShape(users=605, items=3624, interactions=243_660)  # ml-1m's dense cut (validation)


def test_dense_data_gets_a_smaller_server_rate_over_more_rounds_and_no_other_set_does() -> None:
    # Execute
    dense = ials_shaped_defaults(DENSE)
    others = [
        ials_shaped_defaults(DataShape(943, 1682, 79_619)),  # ml-100k
        ials_shaped_defaults(DataShape(6040, 3706, 797_758)),  # ml-1m
        ials_shaped_defaults(DataShape(6040, 3465, 157_937)),  # its sparse cut
    ]

    # Assert: rate x rounds kept (the distance Adam moves), about 0.0099 and 122 rounds
    scale = DENSE.per_user / DENSE_PER_USER
    assert dense.server == {"server_lr": pytest.approx(0.02 / scale, rel=1e-3)}
    assert dense.rounds == rounds_at(DENSE, 100, 10 * scale) == 122
    assert "server rate 0.00993" in dense.reason("server", "server_lr")
    assert all(o.server == {} and o.passes == 10 for o in others)
    assert [o.rounds for o in others] == [95, 604, 604]


def test_the_shaped_server_rate_applies_only_where_unset_and_under_fedadam(tmp_path: Path) -> None:
    # Prepare: a dense synthetic set (240 train items per user)
    data = "synthetic:users=40,items=600,mean=500,seed=4"
    preset = RunSettings(data=data, model=federated_preset("ials")[0])
    preset = dataclasses.replace(preset, server=federated_preset("ials")[2])
    split = load_split(preset)
    shape = DataShape.of_train(split.train)
    assert shape.per_user > DENSE_PER_USER

    # Execute
    plain, reasons = apply_shaped_defaults(preset, split, set())
    given, _ = apply_shaped_defaults(preset, split, {"server.server-lr"})
    fedavg = dataclasses.replace(
        preset, server=dataclasses.replace(preset.server, strategy="fedavg")
    )
    other, _ = apply_shaped_defaults(fedavg, split, set())
    tuned = preset_values("ials", 1000, ials_shaped_defaults(shape))

    # Assert
    assert plain.server.server_lr == ials_shaped_defaults(shape).server["server_lr"] < 0.02
    assert any(r.startswith("server rate") for r in reasons)
    assert given.server.server_lr == 0.02 and other.server.server_lr == fedavg.server.server_lr
    assert tuned["server.server-lr"] == plain.server.server_lr  # tune's trial 0 too
