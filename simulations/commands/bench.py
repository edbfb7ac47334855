"""``fedrec bench``: measure DP overhead, round overhead, evaluation speed, memory at scale
and on-device latency in one run, write them as JSON and print a short table
(docs/BENCHMARKS.md explains every figure)."""

from __future__ import annotations

import argparse
from pathlib import Path

from fedrec.errors import ConfigError

NAME = "bench"
HELP = "Benchmark DP overhead, round overhead, evaluation, memory at 100k clients, latency."


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--out", type=Path, required=True, metavar="BENCH_JSON")
    parser.add_argument(
        "--quick", action="store_true", help="fewer repetitions (every figure still measured)"
    )
    parser.add_argument("--device", choices=("cpu", "cuda"), default="cpu")
    parser.add_argument(
        "--workdir", type=Path, default=None, help="where the scale runs write (default: temp)"
    )
    parser.add_argument(
        "--large",
        action="store_true",
        help="add the large-catalog entry: 105k users x 340k items (Book-Crossing's shape), "
        "2 rounds of 100 clients; peak RSS, s/round, evaluation s, bytes per device "
        "(minutes)",
    )
    parser.add_argument("--tiny", action="store_true", help=argparse.SUPPRESS)  # tests only


def run(args: argparse.Namespace) -> int:
    import torch

    from simulations.bench import run_bench, table

    if args.device == "cuda" and not torch.cuda.is_available():
        raise ConfigError("CUDA is not available here", where="--device", fix="use --device cpu")
    result = run_bench(
        Path(args.out),
        quick=args.quick,
        device=args.device,
        tiny=args.tiny,
        large=args.large,
        workdir=args.workdir,
    )
    print(table(result))
    print(f"wrote {args.out}")
    return 0
