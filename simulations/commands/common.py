"""Options and helpers shared by the subcommands that read data or write a directory.

Stable API for every command module:

- ``add_data_arguments(parser)``: adds ``--data`` (default ``synthetic``),
  ``--min-rating``, ``--k-core`` and ``--user-col --item-col --rating-col --time-col``
  (folded into ``args.data`` as ``PATH#user=COL,...``, :func:`fedrec.data.resolve.data_spec`,
  so every command and a run's config.json see them).
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
from typing import TYPE_CHECKING

from fedrec.data.atomic import atomic_output_dir
from fedrec.errors import ConfigError

if TYPE_CHECKING:  # loaders (pandas, SciPy) load when data is read, not to build the parser
    from fedrec.data import Interactions

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
    """Add ``--data``, ``--min-rating``, ``--k-core`` and the column options to ``parser``."""
    parser.add_argument(
        "--data", default=default, action=_DataSpec, help=f"{help} (default: {default})"
    )
    for role, what in (("user", "user id"), ("item", "item id"), ("rating", "rating")):
        parser.add_argument(
            f"--{role}-col",
            default=None,
            action=_DataSpec,
            metavar="NAME",
            help=f"CSV/Parquet column of the {what} (default: found by name or alias)",
        )
    parser.add_argument(
        "--time-col",
        default=None,
        action=_DataSpec,
        metavar="NAME",
        help="CSV/Parquet column of the timestamp (default: timestamp or time)",
    )
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


class _DataSpec(argparse.Action):
    """Fold ``--*-col`` into ``--data`` whatever their order on the command line."""

    def __call__(
        self,
        parser: argparse.ArgumentParser,
        namespace: argparse.Namespace,
        values: object,
        option_string: str | None = None,
    ) -> None:
        from fedrec.data.resolve import data_spec

        setattr(namespace, self.dest, values)
        columns = {
            role: getattr(namespace, f"{role}_col", None)
            for role in ("user", "item", "rating", "time")
        }
        if getattr(namespace, "data", None) is not None:
            try:
                namespace.data = data_spec(str(namespace.data), **columns)
            except ConfigError as err:
                raise argparse.ArgumentError(self, err.what + "; " + err.fix) from err


def load_data(args: argparse.Namespace) -> Interactions:
    """The interaction log named by the options of :func:`add_data_arguments`."""
    from fedrec.data import resolve_data

    if args.k_core is not None and args.k_core < 1:
        raise ConfigError(f"--k-core must be at least 1, got {args.k_core}", where="--k-core")
    return resolve_data(args.data, min_rating=args.min_rating, k_core=args.k_core)


@contextmanager
def prepare_output_dir(path: str | Path) -> Iterator[Path]:
    """Yield a temporary folder that becomes ``path`` only if the block succeeds."""
    with atomic_output_dir(path) as tmp:
        yield tmp
