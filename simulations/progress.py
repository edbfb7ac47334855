"""A dependency-free progress display: a bar on a terminal, log lines otherwise."""

from __future__ import annotations

import math
import sys
import time
from types import TracebackType
from typing import TextIO

LOG_LINES = 20
"""When stdout is not a terminal, about this many progress lines per run (and the last)."""


class Progress:
    """``with Progress(total, "rounds") as bar: bar.update(1, ndcg=0.41)``.

    On a terminal it redraws one bar on stderr. When stdout is not a terminal (a pipe,
    a CI log, ``nohup``), it writes plain lines instead, one every ``total / 20``
    updates and the last, so a log shows how far a run got without a line per round
    of a long run. ``interactive`` forces either form (default: ``sys.stdout.isatty()``).
    """

    def __init__(
        self,
        total: int,
        label: str = "",
        *,
        stream: TextIO | None = None,
        interactive: bool | None = None,
    ) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.interactive = sys.stdout.isatty() if interactive is None else interactive
        self.every = max(1, math.ceil(self.total / LOG_LINES))
        self.start = time.monotonic()

    def update(self, n: int = 1, **fields: object) -> None:
        self.done += n
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        extra = " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
        if not self.interactive:
            if self.done % self.every == 0 or self.done >= self.total:
                self.stream.write(
                    f"{self.label} {self.done}/{self.total} {extra} "
                    f"elapsed {elapsed:.0f}s eta {eta:.0f}s\n".replace("  ", " ")
                )
                self.stream.flush()
            return
        width = 30
        filled = int(width * min(self.done, self.total) / self.total)
        self.stream.write(
            f"\r{self.label} [{'#' * filled}{'.' * (width - filled)}] "
            f"{self.done}/{self.total} {extra} eta {eta:4.0f}s"
        )
        self.stream.flush()

    def __enter__(self) -> Progress:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        if self.interactive:
            self.stream.write("\n")
            self.stream.flush()
