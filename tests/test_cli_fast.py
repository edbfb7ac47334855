"""``fedrec --help`` and every ``fedrec <cmd> --help`` build without the heavy libraries.

Before, building the parser imported torch, Opacus and Flower through the command
modules (about 5.5 s of CPU per call, ``--help`` included). These tests fail as soon as
one command module, or a module it imports at its top level, imports one of them again.
"""

from __future__ import annotations

import json
import pkgutil
import subprocess
import sys
import types

import fedrec.data

HEAVY = ("torch", "opacus", "flwr", "ray", "pandas", "scipy", "optuna", "matplotlib")

BUILD_EVERY_HELP = """
import json, sys
from simulations.cli import build_parser
parser = build_parser()
parser.format_help()
sub = next(a for a in parser._actions if a.dest == "command")
for command in sub.choices.values():
    command.format_help()
print(json.dumps(sorted(m.split(".")[0] for m in sys.modules)))
"""


def test_building_the_parser_and_every_help_imports_no_heavy_library() -> None:
    # Prepare: a fresh interpreter, so nothing the test session imported counts
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", BUILD_EVERY_HELP], capture_output=True, text=True, check=True
    )
    # Assert
    loaded = set(json.loads(done.stdout))
    assert not loaded & set(HEAVY), sorted(loaded & set(HEAVY))


def test_baseline_names_of_the_parser_are_the_registry_keys() -> None:
    # Prepare: the parser's copy (light) and the registry (imports torch)
    from fedrec.baselines import BASELINES
    from simulations.commands.baseline import BASELINE_NAMES

    # Execute / Assert: a baseline added to the registry is offered by the command line
    assert tuple(BASELINES) == BASELINE_NAMES


def test_lazy_data_exports_are_the_objects_not_their_submodules() -> None:
    # Prepare: every submodule loaded (the import system binds each on the package)
    for info in pkgutil.iter_modules(fedrec.data.__path__):
        __import__(f"fedrec.data.{info.name}")
    # Execute
    exported = {name: getattr(fedrec.data, name) for name in fedrec.data.__all__}
    # Assert: fedrec.data.synthetic is the function, not the module of the same name
    modules = [name for name, value in exported.items() if isinstance(value, types.ModuleType)]
    assert modules == []
    assert exported["Split"].__module__ == "fedrec.data.split"
