"""Files that describe users are 0600 (folders 0700) whatever the process's umask, and a
run directory's checkpoint is loaded without unpickling anything.

``fedrec simulate`` runs under umask 077, but the ServerApp of ``flwr run``, the Python
API and a library caller do not: each writer here is run under umask 022, where a file
created with the default mode would be 0644. (Tests run as root, so access by another
account cannot be tried; the mode bits are what is checked.)
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterator
from pathlib import Path

import pytest

from fedrec.privacy.accounting import Release
from fedrec.privacy.ledger import FileLedgerStore, PrivacyLedger
from fedrec.privacy.report import write_privacy_json


@pytest.fixture
def open_umask() -> Iterator[None]:
    before = os.umask(0o022)
    try:
        yield
    finally:
        os.umask(before)


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.mark.usefixtures("open_umask")
def test_privacy_json_is_private_under_an_open_umask(tmp_path: Path) -> None:
    # Prepare / Execute: written twice (a run rewrites it every round)
    path = tmp_path / "privacy.json"
    write_privacy_json(path, {"mode": "local", "clients": {"7": {"epsilon": 1.5}}})
    write_privacy_json(path, {"mode": "local", "clients": {"7": {"epsilon": 2.5}}})
    # Assert: private, complete, and no temporary file left beside it
    assert _mode(path) == 0o600
    assert '"epsilon": 2.5' in path.read_text()
    assert [p.name for p in tmp_path.iterdir()] == ["privacy.json"]


@pytest.mark.usefixtures("open_umask")
def test_a_file_ledger_is_private_under_an_open_umask(tmp_path: Path) -> None:
    # Prepare
    path = tmp_path / "ledger.json"
    ledger = PrivacyLedger(FileLedgerStore(path), accountant="rdp", delta=1e-5, unit="one user")
    # Execute: two releases, each rewriting the file
    ledger.reserve(Release(1.0, 0.5, 2), round=1)
    ledger.reserve(Release(1.0, 0.5, 3), round=2)
    # Assert
    assert _mode(path) == 0o600
    assert [r["round"] for r in FileLedgerStore(path).records()] == [1, 2]
    assert [p.name for p in tmp_path.iterdir()] == ["ledger.json"]


@pytest.mark.usefixtures("open_umask")
def test_audit_files_and_the_report_are_private_under_an_open_umask(tmp_path: Path) -> None:
    # Prepare: a finished run made without the CLI's umask (no report yet)
    from simulations.cli import main
    from simulations.report import write_report
    from tests.test_recommend_cli import make_run_dir

    run_dir = make_run_dir(tmp_path / "run")
    elsewhere = tmp_path / "audits" / "a"
    args = ["--clients", "8", "--shadow-clients", "2", "--out", str(elsewhere / "audit.json")]
    # Execute: an audit written outside the run (new folders), and the Python API's report
    assert main(["audit", str(run_dir), *args]) == 0
    write_report(run_dir)
    # Assert
    assert _mode(elsewhere) == 0o700 and _mode(tmp_path / "audits") == 0o700
    assert {p.name: _mode(p) for p in elsewhere.iterdir()} == {
        "audit.json": 0o600,
        "audit_roc.png": 0o600,
    }
    written = ["report.md", *(p.name for p in run_dir.glob("*.png"))]
    assert len(written) > 1
    assert {name: _mode(run_dir / name) for name in written} == dict.fromkeys(written, 0o600)


class _Payload:
    """Unpickling this object writes a marker file: the attack a pickle load would run."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple[object, tuple[Path]]:
        return (Path.touch, (self.marker,))


def test_a_checkpoint_holding_a_pickle_is_refused_without_running_it(tmp_path: Path) -> None:
    # Prepare: a run directory whose checkpoint carries a pickled object array
    import numpy as np

    from fedrec.errors import StoreError
    from server.checkpoint import CHECKPOINT_NPZ, load_checkpoint

    marker = tmp_path / "marker"
    payload = np.empty(1, dtype=object)
    payload[0] = _Payload(marker)
    np.savez(tmp_path / CHECKPOINT_NPZ, round=np.array(1), **{"item.0": payload})
    # Execute / Assert: a clear error, and the pickle never ran
    with pytest.raises(StoreError, match="unreadable checkpoint"):
        load_checkpoint(tmp_path)
    assert not marker.exists()
