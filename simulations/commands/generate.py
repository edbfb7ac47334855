"""``fedrec generate``: write a synthetic interaction log with the shape of a real catalog."""

from __future__ import annotations

import argparse
import io
from pathlib import Path

from fedrec.data.atomic import atomic_write_bytes
from fedrec.data.shapes import SHAPES, shaped_log
from fedrec.errors import ConfigError

NAME = "generate"
HELP = (
    "Write a synthetic log (Parquet, string ids) with the shape of a real catalog: "
    "users, items, interactions, power-law item popularity, heavy-tailed user activity "
    "(fedrec.data.shapes)."
)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--shape",
        choices=sorted(SHAPES),
        default="books",
        help="books: Book-Crossing's shape, 105k users x 340k items, 1.15M interactions",
    )
    parser.add_argument(
        "--scale",
        type=float,
        default=1.0,
        metavar="F",
        help="multiply users, items and interactions by F, e.g. 0.01 for a quick test",
    )
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--out", type=Path, required=True, metavar="FILE", help="new .parquet file")


def run(args: argparse.Namespace) -> int:
    if args.out.suffix not in (".parquet", ".pq"):
        raise ConfigError(
            f"not a Parquet file name: {args.out}", where="--out", fix="end it in .parquet"
        )
    if args.out.exists():
        raise ConfigError("already exists", where=str(args.out), fix="give a new file name")
    if not args.scale > 0:
        raise ConfigError(f"must be > 0, got {args.scale}", where="--scale")
    shape = SHAPES[args.shape].scaled(args.scale)
    frame = shaped_log(shape, seed=args.seed)
    buffer = io.BytesIO()
    frame.to_parquet(buffer, index=False)
    atomic_write_bytes(args.out, buffer.getvalue())
    print(
        f"{args.out}: {len(frame):,} interactions, {shape.users:,} users, "
        f"{shape.items:,} items (shape {args.shape}, scale {args.scale}, seed {args.seed}); "
        f"use --data {args.out}"
    )
    return 0
