"""Options and helpers shared by the subcommands that read data or write a directory.

Stable API for every command module:

- ``add_data_arguments(parser)``: adds ``--data`` (default ``synthetic``),
  ``--min-rating`` and ``--k-core``.
- ``load_data(args) -> Interactions``: resolves those options (never downloads).
- ``prepare_output_dir(path)``: a context manager yielding a temporary sibling folder
  that is renamed to ``path`` when the block succeeds (refuses a non-empty ``path``;
  removes the temporary folder on failure).
"""

from __future__ import annotations

import argparse
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from fedrec.data import Interactions, resolve_data
from fedrec.data.atomic import atomic_output_dir
from fedrec.errors import ConfigError

DATA_HELP = (
    "a MovieLens folder, a CSV/Parquet file (user,item[,rating,timestamp]), a "
    "downloaded name such as ml-100k (under $FEDREC_DATA_DIR), or "
    "'synthetic[:users=N,items=M,seed=S]'"
)


def add_data_arguments(
    parser: argparse.ArgumentParser,
    *,
    default: str | None = "synthetic",
    help: str = DATA_HELP,
) -> None:
    """Add ``--data``, ``--min-rating`` and ``--k-core`` to ``parser``."""
    parser.add_argument("--data", default=default, help=f"{help} (default: {default})")
    parser.add_argument(
        "--min-rating",
        type=float,
        default=None,
        metavar="X",
        help="keep only interactions rated at least X",
    )
    parser.add_argument(
        "--k-core",
        type=int,
        default=None,
        metavar="K",
        help="repeatedly drop users and items with fewer than K interactions",
    )


def load_data(args: argparse.Namespace) -> Interactions:
    """The interaction log named by the options of :func:`add_data_arguments`."""
    if args.k_core is not None and args.k_core < 1:
        raise ConfigError(f"--k-core must be at least 1, got {args.k_core}", where="--k-core")
    return resolve_data(args.data, min_rating=args.min_rating, k_core=args.k_core)


@contextmanager
def prepare_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` only if the block succeeds."""
    with atomic_output_dir(path) as tmp:
        yield tmp
