"""fedrec's Python API: simulate, load a run, recommend, evaluate, export, from a notebook.

Design rule: the API is the command line's own code, called without a shell. Each
function builds the same arguments the ``fedrec`` command would parse and runs the
same command module, so a script and ``fedrec simulate ...`` give the same run
directory; errors are raised as :class:`fedrec.errors.FedrecError` (what, where, what
to do) instead of printed. It lives in ``simulations`` because ``simulate`` runs the
Flower apps; ``fedrec/`` stays free of Flower.

    from simulations.api import simulate, load_run

    run = simulate("ml-100k", out="runs/api", rounds=50, settings={"model.dim": 64})
    print(run.metrics["ndcg@10"], run.metrics["reference"]["ease"]["ndcg@10"])
    print(run.recommend("1", k=5))
    run.export("model.fedrec")       # for DeviceClient.load_model
"""

from __future__ import annotations

import contextlib
import io
import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError

__all__ = ["Run", "baseline", "evaluate", "load_run", "simulate"]


def _run_command(argv: Sequence[str], *, quiet: bool = True) -> str:
    """Run ``fedrec ARGV`` in this process; return its stdout, raise its FedrecError."""
    from simulations.cli import build_parser

    parser = build_parser()
    try:
        args = parser.parse_args(list(argv))
    except SystemExit as stop:  # argparse's usage error: say it as fedrec does
        raise ConfigError(f"invalid arguments {list(argv)!r}", where="simulations.api") from stop
    out = io.StringIO()
    with contextlib.redirect_stdout(out) if quiet else contextlib.nullcontext():
        code = int(args._run(args))
    if code != 0:
        raise ConfigError(f"fedrec {argv[0]} exited with code {code}", where="simulations.api")
    return out.getvalue()


def _flags(options: Mapping[str, Any]) -> list[str]:
    """``{"clients_per_round": 50, "verbose": True}`` -> ``--clients-per-round 50 --verbose``."""
    argv: list[str] = []
    for key, value in options.items():
        if value is None or value is False:
            continue
        flag = "--" + key.replace("_", "-")
        argv += [flag] if value is True else [flag, str(value)]
    return argv


def simulate(
    data: str | Path,
    *,
    out: str | Path,
    settings: Mapping[str, Any] | None = None,
    quiet: bool = True,
    **options: Any,
) -> Run:
    """Run ``fedrec simulate`` and return the finished :class:`Run`.

    ``options`` are the command's flags in Python spelling (``model="cdae"``,
    ``rounds=50``, ``clients_per_round=100``, ``privacy="central"``,
    ``target_epsilon=8``...); ``settings`` are ``--set`` pairs (``{"model.dim": 64}``).
    """
    argv = ["simulate", "--data", str(data), "--out", str(out), *_flags(options)]
    for key, value in (settings or {}).items():
        argv += ["--set", f"{key}={value}"]
    _run_command(argv, quiet=quiet)
    return load_run(out)


def baseline(data: str | Path, *, model: str, out: str | Path, **options: Any) -> Run:
    """Run ``fedrec baseline`` (a centralized reference) and return its :class:`Run`."""
    argv = ["baseline", "--data", str(data), "--model", model, "--out", str(out)]
    _run_command([*argv, *_flags(options)])
    return load_run(out)


def evaluate(split_dir: str | Path, recs: str | Path, data: str | Path | None = None) -> Any:
    """``fedrec evaluate``: the metrics of a ``user,item,rank`` CSV on a split, as a dict."""
    argv = ["evaluate", "--split", str(split_dir), "--recs", str(recs)]
    if data is not None:
        argv += ["--data", str(data)]
    return json.loads(_run_command(argv))


@dataclass(frozen=True)
class Run:
    """A finished run directory: its metrics, privacy statement and model."""

    path: Path

    @property
    def metrics(self) -> dict[str, Any]:
        """``metrics.json``: final metrics, with ``reference`` (popularity, EASE)."""
        return dict(json.loads((self.path / "metrics.json").read_text(encoding="utf-8")))

    @property
    def privacy(self) -> dict[str, Any] | None:
        """``privacy.json`` (``None`` for a run that wrote none)."""
        path = self.path / "privacy.json"
        return json.loads(path.read_text(encoding="utf-8")) if path.is_file() else None

    def recommend(
        self, user: str | None = None, *, k: int = 10, items: Sequence[Any] | None = None
    ) -> list[dict[str, Any]]:
        """Top-``k`` for a user of the run, or for a new user's ``items`` (original ids)."""
        from simulations.commands.recommend import DEFAULT_MIN_INTERACTIONS, recommendations

        history = None if items is None else ",".join(str(i) for i in items)
        return recommendations(
            self.path,
            user,
            k=k,
            explain=True,
            min_interactions=DEFAULT_MIN_INTERACTIONS,
            items=history,
        )

    def similar(self, item: Any, *, k: int = 10) -> list[dict[str, Any]]:
        """The ``k`` items closest to ``item`` in the run's model."""
        from simulations.commands.similar import similar

        return similar(self.path, str(item), k=k)

    def export(self, out: str | Path, *, force: bool = False) -> Path:
        """``fedrec export``: the model file a device loads (``DeviceClient.load_model``)."""
        _run_command(["export", str(self.path), "--out", str(out), *_flags({"force": force})])
        return Path(out)

    def report(self) -> Path:
        """Re-render ``report.md`` and its plots; return its path."""
        from simulations.report import write_report

        return write_report(self.path)


def load_run(path: str | Path) -> Run:
    """A run directory written by ``simulate``, ``baseline`` or ``deploy-local``."""
    run = Run(Path(path))
    if not (run.path / "metrics.json").is_file():
        from fedrec.errors import DataError

        raise DataError(
            "not a finished fedrec run (no metrics.json)",
            where=str(run.path),
            fix="pass the --out of a finished fedrec simulate or baseline",
        )
    return run
