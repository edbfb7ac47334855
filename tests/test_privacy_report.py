"""privacy.json: every epsilon is recomputable from its history."""

from __future__ import annotations

import json
from pathlib import Path

from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.report import (
    central_report,
    local_report,
    none_report,
    other_release,
    verify_privacy_json,
    write_privacy_json,
)


def _account(*entries: tuple[float, float, int]) -> PrivacyAccount:
    account = PrivacyAccount()
    for e in entries:
        account.record(*e)
    return account


def test_central_report_verifies(tmp_path: Path) -> None:
    # Prepare
    extra = other_release("clip count", _account((5.0, 0.1, 20)), 1e-5, "adaptive clipping")
    report = central_report(_account((1.1, 0.1, 20)), delta=1e-5, other_releases=[extra])
    # Execute
    write_privacy_json(tmp_path / "privacy.json", report)
    # Assert
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    assert report["epsilon"] > 0 and report["history"] == [[1.1, 0.1, 20]]


def test_local_report_states_the_largest_client(tmp_path: Path) -> None:
    clients = {"1": (_account((1.0, 1.0, 4)), 2), "2": (_account((1.0, 1.0, 8)), 4)}
    report = local_report(clients, delta=1e-5, accountant="rdp", unit="one interaction")
    write_privacy_json(tmp_path / "privacy.json", report)
    assert report["epsilon"] == report["clients"]["2"]["epsilon"]
    assert report["clients"]["2"]["rounds_participated"] == 4
    assert verify_privacy_json(tmp_path / "privacy.json") == []


def test_tampered_epsilon_is_found(tmp_path: Path) -> None:
    # Prepare
    report = central_report(_account((1.1, 0.1, 20)), delta=1e-5)
    report["epsilon"] *= 0.9
    path = tmp_path / "privacy.json"
    path.write_text(json.dumps(report))
    # Execute
    problems = verify_privacy_json(path)
    # Assert
    assert len(problems) == 1 and "run" in problems[0]


def test_none_report_has_no_epsilon(tmp_path: Path) -> None:
    write_privacy_json(tmp_path / "privacy.json", none_report())
    assert verify_privacy_json(tmp_path / "privacy.json") == []
