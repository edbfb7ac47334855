"""A wrong setting is one line naming what, where (``--set`` or the config file) and the fix.

Before: ``--set num-server-rounds=1.5`` ended in a TypeError traceback, ``--set rounds=5``
was refused with "run config: ... remove it" (no valid key named), and a wrong value
read from ``--config FILE`` was reported as ``--set KEY``.
"""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from simulations.cli import main

DATA = "synthetic:users=5,items=10,seed=0"


def _simulate(tmp_path: Path, capsys: pytest.CaptureFixture[str], *flags: str) -> tuple[int, str]:
    code = main(["simulate", "--data", DATA, *flags, "--out", str(tmp_path / "run")])
    return code, capsys.readouterr().err.strip()


@pytest.mark.parametrize(
    ("flags", "where", "fix"),
    [
        (("--set", "rounds=5"), "--set rounds", "did you mean num-server-rounds?"),
        (("--set", "eval_every=3"), "--set eval_every", "did you mean eval-every?"),
        (("--set", "model.dimm=16"), "--set model.dimm", "did you mean model.dim?"),
        (("--set", "num-server-rounds=1.5"), "--set num-server-rounds", "give an int value"),
        (("--set", "nope"), "--set", "e.g. --set model.dim=16"),
    ],
)
def test_a_wrong_set_is_one_line_with_where_and_fix(
    flags: tuple[str, ...],
    where: str,
    fix: str,
    tmp_path: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Execute
    code, err = _simulate(tmp_path, capsys, *flags)
    # Assert: exit 2, one line (no traceback), where and what to do; nothing written
    assert code == 2 and len(err.splitlines()) == 1, err
    assert err.startswith(f"fedrec simulate: error: {where}:") and fix in err
    assert not (tmp_path / "run").exists()


def test_a_wrong_value_from_the_config_file_names_the_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: one value of the wrong type through a flag's key, one through --set's
    config = tmp_path / "best.json"
    config.write_text(json.dumps({"num-server-rounds": 1.5, "model.dim": 16}))
    # Execute
    code, err = _simulate(tmp_path, capsys, "--config", str(config))
    # Assert: the file and the key, not "--set"
    assert code == 2 and len(err.splitlines()) == 1, err
    assert f"error: {config}: num-server-rounds: expected an int, got 1.5" in err


def test_a_set_on_the_command_line_is_named_even_with_a_config_file(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: the file's model.dim is fine; the command line's overrides it, wrongly
    config = tmp_path / "best.json"
    config.write_text(json.dumps({"model.dim": 16}))
    # Execute
    code, err = _simulate(tmp_path, capsys, "--config", str(config), "--set", "model.dim=x")
    # Assert
    assert code == 2 and "error: --set model.dim: expected an int, got 'x'" in err


def test_no_suggestion_when_no_key_is_close() -> None:
    # Prepare
    from server.settings import unknown_setting

    # Execute
    err = unknown_setting("server.zzz")
    # Assert: no misleading "did you mean", the prefix's keys listed
    assert "did you mean" not in err.fix and "server.server-lr" in err.fix
