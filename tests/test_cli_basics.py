"""The command line's own manners: a version, and defaults visible in every --help."""

from __future__ import annotations

from pathlib import Path

import pytest

from simulations.cli import COMMANDS, build_parser, main


def test_version_prints_the_installed_version(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as stop:
        main(["--version"])
    out = capsys.readouterr().out
    assert stop.value.code == 0 and out.startswith("fedrec ") and out.strip() != "fedrec"


@pytest.mark.parametrize("name", [c.replace("_", "-") for c in COMMANDS])
def test_every_option_with_a_default_shows_it_in_help(name: str) -> None:
    # Prepare
    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command")
    command = sub.choices[name]  # type: ignore[attr-defined]
    # Execute
    text = " ".join(command.format_help().split())
    # Assert: every option whose default is a real value names it
    for action in command._actions:
        if not action.option_strings or action.help in (None, "==SUPPRESS=="):
            continue
        if action.default in (None, False) or action.dest == "help":
            continue
        stated = "default" in (action.help or "").lower()
        assert stated or f"(default: {action.default})" in text, (
            name,
            action.dest,
        )


@pytest.mark.parametrize(
    ("flag", "listed"),
    [("model.nope=3", "model.dim"), ("train.lr-x=1", "train.lr"), ("server.zzz=1", "server.")],
)
def test_an_unknown_set_key_is_one_line_listing_the_valid_keys(
    flag: str, listed: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = main(["simulate", "--data", "synthetic", "--set", flag, "--out", f"{tmp_path}/r"])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert f"unknown setting {flag.split('=')[0]}" in err and listed in err


def test_the_flwr_run_defaults_equal_the_cli_defaults() -> None:
    # Prepare: pyproject's [tool.flwr.app.config] and fedrec simulate's parser
    import tomllib

    from server.settings import RunSettings
    from simulations.commands.simulate import settings_from_args

    root = Path(__file__).resolve().parents[1]
    app = tomllib.loads((root / "pyproject.toml").read_text())["tool"]["flwr"]["app"]["config"]
    parser = build_parser()
    args = parser.parse_args(["simulate", "--data", app["data"], "--out", "unused"])
    # Execute
    from_pyproject = RunSettings.from_run_config(app)
    from_cli = settings_from_args(args)
    # Assert: everything but where the run is written
    assert from_pyproject.rounds == from_cli.rounds == 150
    for name in ("model", "train", "server", "privacy", "clients_per_round", "seed",
                 "eval_every", "eval_clients", "data"):  # fmt: skip
        assert getattr(from_pyproject, name) == getattr(from_cli, name), name


@pytest.mark.parametrize("privacy", [[], ["--privacy", "central", "--noise-multiplier", "1.0"]])
def test_a_runs_own_config_json_reruns_it_with_the_same_settings(
    tmp_path: Path, privacy: list[str]
) -> None:
    # Prepare
    import json

    first, second = tmp_path / "first", tmp_path / "second"
    data = "synthetic:users=40,items=30,seed=2"
    argv = ["simulate", "--data", data, "--rounds", "2", "--clients-per-round", "10",
            "--model", "mf", "--set", "model.dim=8", *privacy]  # fmt: skip
    assert main([*argv, "--out", str(first)]) == 0
    # Execute
    code = main(["simulate", "--config", str(first / "config.json"), "--out", str(second)])
    # Assert: every setting but the run directory; the same result without privacy
    a, b = (json.loads((d / "config.json").read_text())["settings"] for d in (first, second))
    assert code == 0 and {k for k in a if a[k] != b.get(k)} == {"run-dir"}
    if not privacy:  # DP noise is fresh by design
        m1, m2 = (json.loads((d / "metrics.json").read_text()) for d in (first, second))
        assert m1["ndcg@10"] == m2["ndcg@10"]
