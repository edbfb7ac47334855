"""Federated hyperparameter search: ``fedrec tune`` (issue 17, item 2).

Each trial is a ``fedrec simulate`` run (in-process engine) with sampled settings on
the **validation split** of the run's protocol split: every simulated device trains on
its train items minus a per-user holdout (``validation-fraction``, carved as
:func:`fedrec.data.split.validation_split` does) and the simulation harness scores the
holdout only (docs/PRIVACY.md, "Evaluation": the experimenter's measurement, never a
Flower message). The test items are in neither set, so nothing a trial measures,
and nothing the selection reads, depends on them.

The search is Optuna's TPE sampler (Bergstra et al., NeurIPS 2011) with its median
pruner on the periodic validation NDCG@10 that reaches the run's ``on_round``
callback (a trial below the median of earlier trials at the same round stops). The
first trial is what ``fedrec simulate`` would run by default: the model's preset with
the data-shaped rounds, devices per round and model fields
(:mod:`fedrec.federated.shape`; iALS, NCF) of the protocol split, so the result is never
worse on validation than the defaults.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import math
import shutil
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from fedrec.errors import ConfigError
from fedrec.federated.aggregation import FEDADAM_LR
from fedrec.federated.presets import default_rounds, federated_preset
from fedrec.federated.shape import DataShape, ShapedDefaults, shaped_defaults

VALIDATION_FRACTION = 0.2
"""Share of each device's train items held out for scoring trials (the protocol's)."""


@dataclass(frozen=True)
class Param:
    """One searched setting: a flat ``--set`` key and its range or choices."""

    key: str
    low: float = 0.0
    high: float = 0.0
    log: bool = False
    choices: tuple[Any, ...] = ()
    integer: bool = False

    def suggest(self, trial: Any) -> Any:
        if self.choices:
            return trial.suggest_categorical(self.key, list(self.choices))
        if self.integer:
            return trial.suggest_int(self.key, int(self.low), int(self.high), log=self.log)
        return trial.suggest_float(self.key, self.low, self.high, log=self.log)


SEARCH_SPACES: dict[str, tuple[Param, ...]] = {
    "mf": (
        Param("model.dim", choices=(16, 32, 64, 128)),
        Param("train.lr", 0.3, 10.0, log=True),
        Param("server.server-lr", 0.01, 0.3, log=True),
        Param("model.l2", 1e-4, 0.1, log=True),
    ),
    "ials": (
        Param("model.dim", choices=(32, 64, 128)),
        Param("model.l2", 1e-3, 0.1, log=True),
        Param("model.alpha0", 0.1, 10.0, log=True),
        Param("server.server-lr", 0.003, 0.03, log=True),
    ),
    "cdae": (
        Param("server.server-lr", 3e-4, 3e-3, log=True),
        Param("model.dropout", 0.2, 0.7),
        Param("train.weight-decay", 1e-3, 0.1, log=True),
    ),
    "multvae": (
        Param("server.server-lr", 3e-4, 3e-3, log=True),
        Param("model.dropout", 0.2, 0.7),
        Param("model.beta", 0.05, 1.0, log=True),
    ),
}
"""The searched settings of each model, around its preset (``fedrec.federated.presets``),
plus ``num-server-rounds`` in ``[ceil(R / 3), R]`` for the run's ``--max-rounds R``.
Every preset value lies inside its range (checked by the tests)."""

ROUNDS_KEY = "num-server-rounds"


def search_space(model: str, max_rounds: int) -> tuple[Param, ...]:
    """The model's searched settings, rounds bounded by ``max_rounds``."""
    if model not in SEARCH_SPACES:
        raise ConfigError(
            f"no search space for model {model!r}",
            where="--model",
            fix=f"use one of {', '.join(SEARCH_SPACES)}",
        )
    low = max(1, math.ceil(max_rounds / 3))
    return (*SEARCH_SPACES[model], Param(ROUNDS_KEY, low, max_rounds, integer=True))


def preset_values(
    model: str, max_rounds: int, shaped: ShapedDefaults | None = None
) -> dict[str, Any]:
    """The preset's value of every searched setting; with ``shaped`` (the data's shaped
    defaults), its rounds (at most ``max_rounds``) and model fields instead: the first
    trial, the run ``fedrec simulate`` makes by default."""
    preset_model, preset_train, preset_server = federated_preset(model)
    if shaped is not None:
        preset_model = dataclasses.replace(preset_model, **shaped.model)  # type: ignore[arg-type]
        preset_server = dataclasses.replace(preset_server, **shaped.server)  # type: ignore[arg-type]
    parts: dict[str, Any] = {"model": preset_model, "train": preset_train}
    parts["server"] = preset_server
    rounds = max_rounds if shaped is None else min(shaped.rounds, max_rounds)
    values: dict[str, Any] = {ROUNDS_KEY: rounds}
    for param in SEARCH_SPACES[model]:
        prefix, _, name = param.key.partition(".")
        value = getattr(parts[prefix], name.replace("-", "_"))
        values[param.key] = FEDADAM_LR if value is None and name == "server-lr" else value
    return values


def data_shaped(spec: TuneSpec) -> ShapedDefaults | None:
    """The shaped defaults ``fedrec simulate`` would use for ``spec``'s model on the
    protocol split of its data (``None``: the model has none)."""
    from server.settings import RunSettings, load_split

    flat = {k: v for k, v in spec.fixed().items() if k != "clients-per-round"}
    split = load_split(RunSettings.from_run_config(flat))
    return shaped_defaults(spec.model, DataShape.of_train(split.train))


def with_shaped(spec: TuneSpec, shaped: ShapedDefaults | None) -> TuneSpec:
    """``spec`` with the shaped rounds as ``--max-rounds`` and the shaped devices per
    round, where it leaves them unset (the cohort size is fixed across trials)."""
    if shaped is None:
        return spec
    return dataclasses.replace(
        spec,
        max_rounds=spec.max_rounds if spec.max_rounds is not None else shaped.rounds,
        clients_per_round=(
            spec.clients_per_round
            if spec.clients_per_round is not None
            else shaped.clients_per_round
        ),
    )


@dataclass(frozen=True)
class TuneSpec:
    """What ``fedrec tune`` searches: data, model, budget and the fixed run settings."""

    data: str
    model: str
    budget: int
    out: Path
    seed: int = 0
    max_rounds: int | None = None
    clients_per_round: int | None = None
    eval_every: int = 5
    eval_clients: int = 100
    min_rating: float | None = None
    k_core: int | None = None
    validation_fraction: float = VALIDATION_FRACTION
    prune: bool = True
    keep_runs: bool = False

    @property
    def rounds(self) -> int:
        return self.max_rounds if self.max_rounds is not None else default_rounds(self.model)

    def fixed(self) -> dict[str, Any]:
        """The settings every trial and ``best.json`` share (the split's, the model)."""
        flat: dict[str, Any] = {"data": self.data, "model": self.model, "seed": self.seed}
        for key, value in (
            ("min-rating", self.min_rating),
            ("k-core", self.k_core),
            ("clients-per-round", self.clients_per_round),
        ):
            if value is not None:
                flat[key] = value
        return flat


def check_spec(spec: TuneSpec) -> None:
    """Refuse what cannot be tuned before anything runs."""
    if spec.budget < 1:
        raise ConfigError(f"must be at least 1 trial, got {spec.budget}", where="--budget")
    if spec.rounds < 1:
        raise ConfigError(f"must be at least 1, got {spec.rounds}", where="--max-rounds")
    if not 0.0 < spec.validation_fraction < 1.0:
        raise ConfigError(
            f"must be strictly between 0 and 1, got {spec.validation_fraction}",
            where="--validation-fraction",
            fix="use e.g. 0.2",
        )
    search_space(spec.model, spec.rounds)


Reporter = Callable[[float, int], None]
"""``(validation NDCG@10 of a periodic evaluation, round)``; may raise to stop the trial."""


def run_trial(
    spec: TuneSpec, params: Mapping[str, Any], run_dir: Path, report: Reporter | None
) -> dict[str, Any]:
    """One ``fedrec simulate`` run of ``params`` on the validation split; its metrics.

    Uses the simulate command's own parser and settings code, with
    ``validation-fraction`` set, so the run's split is the validation split.
    """
    from fedrec.data.atomic import check_output_dir
    from server.settings import load_split
    from simulations.commands import simulate as simulate_cmd
    from simulations.run_dir import open_new_run_dir

    flat = {**spec.fixed(), **params, "validation-fraction": spec.validation_fraction}
    argv = ["--out", str(run_dir), "--eval-every", str(spec.eval_every)]
    argv += ["--eval-clients", str(spec.eval_clients)]
    flags = {"data": "--data", "model": "--model", "seed": "--seed", ROUNDS_KEY: "--rounds"}
    flags |= {"min-rating": "--min-rating", "k-core": "--k-core"}
    flags |= {"clients-per-round": "--clients-per-round"}
    for key, value in flat.items():
        if key in flags:
            argv += [flags[key], str(value)]
        else:
            argv += ["--set", f"{key}={json.dumps(value)}"]
    parser = argparse.ArgumentParser()
    simulate_cmd.add_arguments(parser)
    args = parser.parse_args(argv)
    settings = simulate_cmd.settings_from_args(args)
    check_output_dir(Path(settings.run_dir))
    split = load_split(settings)
    simulate_cmd.check_clients_per_round(args, split)
    settings = simulate_cmd.prepare_settings(settings, split)

    def on_round(record: dict[str, Any]) -> None:
        value = (record.get("metrics") or {}).get("ndcg@10")
        if report is not None and value is not None and record["round"] < settings.rounds:
            report(float(value), int(record["round"]))

    from simulations.inprocess import simulate_in_process

    with open_new_run_dir(Path(settings.run_dir), settings, split):
        # the trial's directory is removed afterwards: no model file, no report.md
        return simulate_in_process(settings, on_round=on_round, finish=False)


def tune(spec: TuneSpec, *, log: Callable[[str], None] = print) -> dict[str, Any]:
    """Run the search; write ``trials.jsonl``, ``best.json`` and ``report.md``; return best."""
    import optuna

    check_spec(spec)
    shaped = data_shaped(spec)
    spec = with_shaped(spec, shaped)
    optuna.logging.set_verbosity(optuna.logging.WARNING)
    out = spec.out
    out.mkdir(mode=0o700, parents=True, exist_ok=True)
    if any(out.iterdir()):
        from fedrec.errors import OutputError

        raise OutputError("output directory is not empty", where=str(out), fix="choose a new --out")
    space = search_space(spec.model, spec.rounds)
    sampler = optuna.samplers.TPESampler(
        seed=spec.seed, n_startup_trials=min(10, max(2, spec.budget // 2))
    )
    pruner: Any = (
        optuna.pruners.MedianPruner(n_startup_trials=2, n_warmup_steps=spec.eval_every)
        if spec.prune
        else optuna.pruners.NopPruner()
    )
    study = optuna.create_study(direction="maximize", sampler=sampler, pruner=pruner)
    study.enqueue_trial(preset_values(spec.model, spec.rounds, shaped))
    rows: list[dict[str, Any]] = []

    def objective(trial: Any) -> float:
        params = {p.key: p.suggest(trial) for p in space}
        run_dir = out / "trials" / f"{trial.number:03d}"
        run_dir.parent.mkdir(mode=0o700, exist_ok=True)
        start = time.perf_counter()
        row: dict[str, Any] = {"trial": trial.number, "params": params}
        last: dict[str, Any] = {}

        def report(value: float, rnd: int) -> None:
            last.update(value=value, round=rnd)
            trial.report(value, rnd)
            if trial.should_prune():
                raise optuna.TrialPruned(f"validation NDCG@10 {value:.4f} at round {rnd}")

        try:
            metrics = run_trial(spec, params, run_dir, report)
        except optuna.TrialPruned:
            row.update(state="pruned", seconds=round(time.perf_counter() - start, 1))
            row["validation_ndcg@10"] = None
            row["pruned_at_round"], row["last_periodic_ndcg@10"] = last["round"], last["value"]
            _finish_row(rows, row, out, run_dir, spec, log)
            raise
        value = float(metrics["ndcg@10"])
        row.update(state="complete", seconds=round(time.perf_counter() - start, 1))
        row["validation_ndcg@10"] = value
        _finish_row(rows, row, out, run_dir, spec, log)
        return value

    study.optimize(objective, n_trials=spec.budget)
    done = [r for r in rows if r["state"] == "complete"]
    best = max(done, key=lambda r: float(r["validation_ndcg@10"]))
    best_flat = {**spec.fixed(), **best["params"]}
    write_json(out / "best.json", best_flat)
    (out / "report.md").write_text(report_markdown(spec, rows, best), encoding="utf-8")
    return best


def _finish_row(
    rows: list[dict[str, Any]],
    row: dict[str, Any],
    out: Path,
    run_dir: Path,
    spec: TuneSpec,
    log: Callable[[str], None],
) -> None:
    rows.append(row)
    with open(out / "trials.jsonl", "a", encoding="utf-8") as fh:
        fh.write(json.dumps(row) + "\n")
    if not spec.keep_runs:
        shutil.rmtree(run_dir, ignore_errors=True)
    value = row["validation_ndcg@10"]
    what = (
        f"validation NDCG@10 {value:.4f}"
        if value is not None
        else f"pruned at round {row['pruned_at_round']}"
    )
    log(f"trial {row['trial']}: {what} ({row['seconds']} s) {json.dumps(row['params'])}")


def write_json(path: Path, payload: Any) -> None:
    """``payload`` as indented JSON, owner-readable only."""
    import os

    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w", encoding="utf-8") as fh:
        json.dump(payload, fh, indent=2)
        fh.write("\n")


def report_markdown(spec: TuneSpec, rows: list[dict[str, Any]], best: dict[str, Any]) -> str:
    """``report.md``: what was searched, every trial, the choice and how to use it."""
    keys = [p.key for p in search_space(spec.model, spec.rounds)]
    lines = [
        f"# fedrec tune: {spec.model} on {spec.data}",
        "",
        f"{len(rows)} trials (Optuna TPE, "
        f"{'median pruning on the periodic validation NDCG@10' if spec.prune else 'no pruning'};"
        " trial 0 is the default run: the preset, with the data-shaped settings where the"
        " model has them). Each trial is a federated simulation on the validation "
        f"split: every device trains on its train items minus a holdout of "
        f"{spec.validation_fraction} (seed {spec.seed}) and is scored on that holdout by the "
        "simulation harness. **Test items were not used**; the selection reads validation "
        "NDCG@10 over every validation user only.",
        "",
        "| trial | state | validation NDCG@10 | seconds | " + " | ".join(keys) + " |",
        "|" + "---|" * (4 + len(keys)),
    ]
    for row in sorted(rows, key=lambda r: -(r["validation_ndcg@10"] or -1.0)):
        value = row["validation_ndcg@10"]
        cells = [
            str(row["trial"]),
            row["state"],
            "-" if value is None else f"{value:.4f}",
            str(row["seconds"]),
            *(_cell(row["params"].get(k)) for k in keys),
        ]
        lines.append("| " + " | ".join(cells) + " |")
    lines += [
        "",
        f"Best: trial {best['trial']}, validation NDCG@10 {best['validation_ndcg@10']:.4f}. "
        "Its settings are in `best.json`; the test metrics come from a run on the protocol "
        "split:",
        "",
        f"    fedrec simulate --config {spec.out / 'best.json'} --out RUN_DIR",
        "",
    ]
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    return "-" if value is None else str(value)
