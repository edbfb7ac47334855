"""A dependency-free progress bar, silent when stdout is not a terminal."""

from __future__ import annotations

import sys
import time
from types import TracebackType
from typing import TextIO


class Progress:
    """``with Progress(total, "rounds") as bar: bar.update(1, ndcg=0.41)``.

    Draws on stderr only when stdout is a terminal, so piped output and CI logs
    stay clean.
    """

    def __init__(self, total: int, label: str = "", *, stream: TextIO | None = None) -> None:
        self.total = max(int(total), 1)
        self.label = label
        self.done = 0
        self.stream = stream or sys.stderr
        self.enabled = sys.stdout.isatty()
        self.start = time.monotonic()

    def update(self, n: int = 1, **fields: object) -> None:
        self.done += n
        if not self.enabled:
            return
        elapsed = time.monotonic() - self.start
        eta = elapsed / self.done * (self.total - self.done) if self.done else 0.0
        width = 30
        filled = int(width * self.done / self.total)
        extra = " ".join(
            f"{k}={v:.4f}" if isinstance(v, float) else f"{k}={v}" for k, v in fields.items()
        )
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
        if self.enabled:
            self.stream.write("\n")
            self.stream.flush()
