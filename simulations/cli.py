"""The ``fedrec`` command line: parses, then forwards to one module per subcommand.

Each module in :mod:`simulations.commands` exposes ``NAME``, ``HELP``,
``add_arguments(parser)`` and ``run(args) -> int``. A :class:`fedrec.errors.FedrecError`
anywhere below is printed as one line on stderr with exit code 2, never a traceback.

Building the parser imports every command module, so their top level stays light:
torch, Opacus, Flower, pandas and SciPy load inside ``run`` (``fedrec --help`` takes a
fraction of a second; tests/test_cli_fast.py checks ``sys.modules`` after building it).
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from fedrec.errors import FedrecError

# Order is the order shown by ``fedrec --help``.
COMMANDS = (
    "split",
    "evaluate",
    "baseline",
    "download",
    "generate",
    "simulate",
    "tune",
    "sweep",
    "deploy_local",
    "report",
    "recommend",
    "similar",
    "export",
    "audit",
    "bench",
)


class DefaultsHelpFormatter(argparse.HelpFormatter):
    """Shows every option's default in ``--help``, unless its help already states it."""

    def _get_help_string(self, action: argparse.Action) -> str | None:
        text = action.help or ""
        stated = "default" in text.lower()  # "Default: ials (...)" is not followed by "mf"
        shown = stated or action.default in (None, False, argparse.SUPPRESS)
        if shown or not action.option_strings:
            return text
        return f"{text} (default: %(default)s)"


def _version() -> str:
    from importlib.metadata import PackageNotFoundError, version

    try:
        return version("fedrec")
    except PackageNotFoundError:
        return "unknown (not installed)"


class _VersionAction(argparse.Action):
    """``--version``: reads the installed version only when asked (importlib.metadata)."""

    def __init__(self, option_strings: Sequence[str], dest: str = argparse.SUPPRESS) -> None:
        super().__init__(
            option_strings, dest, nargs=0, default=argparse.SUPPRESS, help="show the version"
        )

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        print(f"fedrec {_version()}")  # stdout, as argparse's own version action
        parser.exit()


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="fedrec",
        description="Federated, privacy-preserving recommendation (Flower + Opacus).",
    )
    parser.add_argument("--version", action=_VersionAction)
    sub = parser.add_subparsers(dest="command", required=True, metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"simulations.commands.{name}")
        p = sub.add_parser(
            module.NAME,
            help=module.HELP,
            description=module.HELP,
            formatter_class=DefaultsHelpFormatter,
        )
        module.add_arguments(p)
        p.set_defaults(_run=module.run)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args._run(args))
    except FedrecError as err:
        print(f"fedrec {args.command}: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"fedrec {args.command}: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
