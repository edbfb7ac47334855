"""The ``fedrec`` commands in README.md and docs/*.md run as written, on small data.

A collector reads every fenced shell block, keeps the ``fedrec ...`` lines (joined over
``\\`` continuations) and runs them in order, in one scratch folder, through
:func:`simulations.cli.main`. Small data stand in for the real ones: a data set name
resolves under a ``FEDREC_DATA_DIR`` holding a tiny MovieLens-100K-format folder,
``synthetic`` becomes a small synthetic set, and a ``simulate`` without ``--rounds`` runs
2 rounds. Commands that need the network or take minutes (``download``,
``deploy-local``, ``bench``) are skipped here; their own tests cover them.
"""

from __future__ import annotations

import re
import shlex
from pathlib import Path

import pytest

from simulations.cli import main
from tests.test_export import write_ml100k_folder

ROOT = Path(__file__).resolve().parents[1]
SKIPPED = ("download", "deploy-local", "bench")
SMALL_SYNTHETIC = "synthetic:users=40,items=30,seed=2"


def doc_commands() -> list[tuple[str, list[str]]]:
    """``(file, argv)`` of every ``fedrec`` line in a fenced shell block, in order."""
    found = []
    for path in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        text = path.read_text(encoding="utf-8")
        for block in re.findall(r"```(?:bash|sh|shell|console)\n(.*?)```", text, re.S):
            for line in block.replace("\\\n", " ").splitlines():
                argv = shlex.split(line, comments=True)
                if argv[:1] == ["fedrec"] and argv[1] not in SKIPPED:
                    found.append((path.name, argv[1:]))
    return found


def small(argv: list[str]) -> list[str]:
    """The same command on small data (see the module docstring)."""
    out = [SMALL_SYNTHETIC if a == "synthetic" else a for a in argv]
    if out[0] == "simulate" and "--rounds" not in out:
        out += ["--rounds", "2"]
    return out


def test_the_collector_finds_the_documented_commands() -> None:
    names = {argv[0] for _, argv in doc_commands()}
    assert {"baseline", "simulate", "report", "split", "export"} <= names


def test_every_documented_command_runs_as_written(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: a scratch folder with the files the docs name, small data for data names
    data_dir = tmp_path / "data"
    write_ml100k_folder(data_dir / "ml-100k", n_users=120)
    work = tmp_path / "work"
    work.mkdir()
    (work / "my_log.csv").write_text(
        "account,sku\n" + "".join(f"a{u},s{i}\n" for u in range(8) for i in range(u, u + 6))
    )
    monkeypatch.chdir(work)
    monkeypatch.setenv("FEDREC_DATA_DIR", str(data_dir))
    # Execute / Assert: each command exits 0, in the order the docs give them
    for source, argv in doc_commands():
        assert main(small(argv)) == 0, f"{source}: fedrec {' '.join(argv)}"
