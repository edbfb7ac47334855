"""Run one experiment per seed and summarise each metric by its mean and std.

``--seeds 0,1,2`` on any command goes through :func:`parse_seeds` and
:func:`run_seeds`. The std is the sample standard deviation (``ddof=1``), the
usual spread reported across independent repetitions; it is 0 for one seed.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

from fedrec.errors import ConfigError


def parse_seeds(text: str, *, flag: str = "--seeds") -> tuple[int, ...]:
    """``"0,1,2"`` -> ``(0, 1, 2)``; also ``"0-4"`` for a range; rejects duplicates."""
    seeds: list[int] = []
    try:
        for part in (p.strip() for p in text.split(",")):
            lo, sep, hi = part.partition("-")
            seeds.extend(range(int(lo), int(hi) + 1) if sep and lo else [int(part)])
    except ValueError:
        raise ConfigError(
            f"cannot read seeds {text!r}", where=flag, fix="give integers like 0,1,2 or 0-4"
        ) from None
    if not seeds or len(set(seeds)) != len(seeds) or any(s < 0 for s in seeds):
        raise ConfigError(
            f"seeds must be distinct non-negative integers, got {text!r}",
            where=flag,
            fix="give e.g. 0,1,2",
        )
    return tuple(seeds)


Value = float | int | None
"""A metric value; ``None`` where a metric is undefined (e.g. no genres for diversity)."""


@dataclass(frozen=True)
class SeedSummary:
    """Metrics per seed, and their mean and sample std over seeds (``None`` if undefined)."""

    per_seed: dict[int, dict[str, Value]]
    mean: dict[str, float | None]
    std: dict[str, float | None]

    def to_json(self) -> dict[str, object]:
        """The metrics.json shape: the means flat at top level, then std and per seed."""
        return {
            **self.mean,
            "seeds": list(self.per_seed),
            "std": self.std,
            "per_seed": {str(s): m for s, m in self.per_seed.items()},
        }


def summarize(per_seed: Mapping[int, Mapping[str, Value]]) -> SeedSummary:
    """Mean and sample std of every key the seeds' metric dicts share.

    A key that is ``None`` for any seed has ``None`` mean and std.
    """
    runs = {int(s): dict(m) for s, m in per_seed.items()}
    if not runs:
        raise ValueError("summarize needs at least one seed")
    keys = [k for k in next(iter(runs.values())) if all(k in m for m in runs.values())]
    mean: dict[str, float | None] = {}
    std: dict[str, float | None] = {}
    for key in keys:
        mean[key], std[key] = _mean_std([m[key] for m in runs.values()])
    return SeedSummary(per_seed=runs, mean=mean, std=std)


def _mean_std(values: Sequence[Value]) -> tuple[float | None, float | None]:
    numbers = [float(v) for v in values if v is not None]
    if len(numbers) < len(values):
        return None, None
    mean = math.fsum(numbers) / len(numbers)
    spread = math.fsum((v - mean) ** 2 for v in numbers)
    return mean, math.sqrt(spread / (len(numbers) - 1)) if len(numbers) > 1 else 0.0


def run_seeds(seeds: Sequence[int], run_one: Callable[[int], Mapping[str, Value]]) -> SeedSummary:
    """Call ``run_one(seed)`` for each seed in order and summarise the results."""
    return summarize({seed: run_one(seed) for seed in seeds})
