"""report.md a non-expert can read (issue 18 item 3), and the CLI's plain refusals.

Acceptance: the reports of a local, a central and a non-private run of the same small
settings state the unit protected, who is trusted, epsilon and delta, noise and clip,
and the accuracy against popularity and against the non-private run.
"""

from __future__ import annotations

import argparse
import io
import json
import shutil
from pathlib import Path
from typing import Any

import pytest

from simulations import report as report_mod
from simulations.cli import main
from simulations.commands.simulate import epsilon_fields, resume_line
from simulations.privacy_words import below_popularity
from simulations.progress import Progress
from simulations.report import write_report

DATA = "synthetic:users=20,items=30,dim=4,mean=10,seed=2"
SAME = ["--data", DATA, "--rounds", "2", "--clients-per-round", "10", "--engine", "inprocess",
        "--set", "train.epochs=1", "--set", "train.refit-steps=2"]  # fmt: skip


@pytest.fixture(scope="module")
def runs(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Three finished runs of the same settings, side by side: local, central, none."""
    parent = tmp_path_factory.mktemp("runs")
    privacy = {
        "local": ["--privacy", "local", "--target-epsilon", "4"],
        "central": ["--privacy", "central", "--target-epsilon", "4"],
        "none": [],
    }
    for name, flags in privacy.items():
        assert main(["simulate", *SAME, *flags, "--out", str(parent / name)]) == 0
    return {name: parent / name for name in privacy}


def _read(run: Path) -> tuple[str, dict[str, Any], dict[str, Any]]:
    text = write_report(run).read_text()
    privacy = json.loads((run / "privacy.json").read_text())
    metrics = json.loads((run / "metrics.json").read_text())
    return text, privacy, metrics


def _states_accuracy(text: str, metrics: dict[str, Any]) -> None:
    ndcg, pop = metrics["ndcg@10"], metrics["reference"]["popularity"]["ndcg@10"]
    assert f"against popularity: NDCG@10 {ndcg:.4f} vs {pop:.4f}" in text
    assert ("**Below popularity:**" in text) == (ndcg < pop)
    assert "rows are not private" in text  # popularity and EASE are centralized references


@pytest.mark.parametrize(
    ("mode", "unit", "trusted"),
    [
        ("local", "What epsilon protects: one interaction", "only each user's own device"),
        ("central", "What epsilon protects: one user, all", "Who is trusted:** the server"),
    ],
)
def test_private_report_states_guarantee_numbers_and_accuracy(
    runs: dict[str, Path], mode: str, unit: str, trusted: str
) -> None:
    # Execute
    text, privacy, metrics = _read(runs[mode])
    # Assert: words
    assert unit in text and trusted in text and "What the server sees:" in text
    # Assert: numbers, exactly as privacy.json records them
    assert f"**epsilon = {privacy['epsilon']:.4f}**" in text
    assert f"**delta = {privacy['delta']}**" in text
    assert f"noise multiplier z = {privacy['noise_multiplier']:.4g}" in text
    assert "clip norm C = 1" in text and "sampling rate q = " in text
    # Assert: accuracy against popularity and the non-private run of the same settings
    _states_accuracy(text, metrics)
    none = json.loads((runs["none"] / "metrics.json").read_text())["ndcg@10"]
    assert (
        "against the non-private run of the same settings (`none`): "
        f"NDCG@10 {metrics['ndcg@10']:.4f} vs {none:.4f}" in text
    )


def test_local_report_explains_refusals(runs: dict[str, Path]) -> None:
    lines = (runs["local"] / "rounds.jsonl").read_text().splitlines()
    rounds = [json.loads(line) for line in lines]
    refused = sum(len(r["budget_exhausted"]) for r in rounds)
    text, _, _ = _read(runs["local"])
    assert refused > 0  # 2 rounds of q_c = 1/2: the noise is calibrated for 1 round each
    assert f"**{refused} refusals:**" in text
    assert "spent its whole budget in the first 1 round(s) it joined" in text


def test_non_private_report_says_nothing_is_protected(runs: dict[str, Path]) -> None:
    text, privacy, metrics = _read(runs["none"])
    assert privacy["epsilon"] is None
    assert "Nothing is protected" in text and "no epsilon, no delta" in text
    assert "Who is trusted:" in text and "exact, un-noised update" in text
    _states_accuracy(text, metrics)
    assert "it is the non-private reference for private runs" in text


def test_private_report_without_a_twin_says_where_to_get_one(
    runs: dict[str, Path], tmp_path: Path
) -> None:
    # Prepare: the central run alone in another folder; and beside a run of other settings
    alone = tmp_path / "alone" / "central"
    shutil.copytree(runs["central"], alone)
    other = tmp_path / "alone" / "none"
    shutil.copytree(runs["none"], other)
    config = json.loads((other / "config.json").read_text())
    config["settings"]["num-server-rounds"] = 3
    (other / "config.json").write_text(json.dumps(config))
    # Execute
    text = write_report(alone).read_text()
    # Assert: the differently-configured run is not taken for the twin
    assert "non-private run of the same settings: none found" in text
    assert "fedrec sweep" in text


def test_epsilon_plot_starts_at_zero_and_shows_the_target(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one round, epsilon 5 (once a dot on a 4.8-5.2 axis)
    figures: list[Any] = []
    monkeypatch.setattr(report_mod, "_save", lambda fig, path: figures.append(fig) or path.name)
    rounds = [{"round": 1, "epsilon": 5.0, "metrics": {"ndcg@10": 0.3}}]
    # Execute
    report_mod.plot_epsilon(tmp_path, rounds, target=8.0)
    report_mod.plot_utility(tmp_path, rounds, {"popularity": {"ndcg@10": 0.2}})
    # Assert
    eps_ax, util_ax = figures[0].axes[0], figures[1].axes[0]
    assert eps_ax.get_ylim()[0] == 0 and eps_ax.get_ylim()[1] > 8.0
    assert any(line.get_label() == "target 8" for line in eps_ax.get_lines())
    assert util_ax.get_ylim()[0] == 0 and util_ax.get_ylim()[1] > 0.3
    assert all(float(t).is_integer() for t in eps_ax.get_xticks())


# ------------------------------------------------------------------ the CLI, plainly


@pytest.mark.parametrize(
    "flags",
    [["--target-epsilon", "8"], ["--noise-multiplier", "1"], ["--clip-norm", "0"],
     ["--accountant", "prv"], ["--adaptive-clipping"], ["--delta", "1e-6"]],
)  # fmt: skip
def test_a_privacy_flag_without_privacy_is_refused(
    flags: list[str], tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    code = main(["simulate", *SAME, *flags, "--out", str(out)])
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists()
    assert len(err.splitlines()) == 1
    assert f"{flags[0]}: given without --privacy" in err and "add --privacy" in err


def test_clients_per_round_above_users_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = ["simulate", "--data", DATA, "--clients-per-round", "21", "--out", str(out)]
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and not out.exists() and len(err.splitlines()) == 1
    assert "--clients-per-round: 21 is more than the 20 users with train data" in err


def test_resume_names_the_flags_it_ignores() -> None:
    from simulations.cli import build_parser

    parser = build_parser()
    given = parser.parse_args(["simulate", "--resume", "r", "--rounds", "5", "--engine", "ray"])
    plain = parser.parse_args(["simulate", "--resume", "r"])
    assert resume_line(given).endswith("ignored: --rounds")  # --engine applies on resume
    assert "ignored" not in resume_line(plain)


def test_progress_writes_log_lines_when_not_a_terminal() -> None:
    stream = io.StringIO()
    with Progress(40, "rounds", stream=stream, interactive=False) as bar:
        for r in range(40):
            bar.update(1, round=r + 1, **epsilon_fields({"median": 1.0, "max": 2.5}))
    lines = stream.getvalue().splitlines()
    assert len(lines) == 20 and "\r" not in stream.getvalue()
    assert lines[-1].startswith("rounds 40/40 round=40 eps_max=2.5000")


def test_progress_epsilon_fields() -> None:
    assert epsilon_fields(3.14159) == {"eps": 3.142}
    assert epsilon_fields({"median": 1.0, "max": 2.0}) == {"eps_max": 2.0}
    assert epsilon_fields(None) == {}


def test_help_of_accountant_states_its_default() -> None:
    from simulations.cli import build_parser

    sub = build_parser()._subparsers._group_actions[0].choices["simulate"]  # type: ignore[union-attr]
    assert "default: rdp" in sub.format_help()
    assert isinstance(sub, argparse.ArgumentParser)


@pytest.mark.parametrize(("model", "suggested"), [("mf", True), ("ials", False), (None, True)])
def test_below_popularity_advice_does_not_suggest_the_runs_own_model(
    model: str | None, suggested: bool
) -> None:
    # Execute
    text = below_popularity(0.01, 0.05, private=False, model=model)

    # Assert
    assert text is not None and "**Below popularity:**" in text
    assert ("`--model ials`" in text) == suggested
    assert "`fedrec tune`" in text
