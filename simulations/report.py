"""Render a run directory into ``report.md`` with PNG plots.

The report reads only the files of the run directory (``config.json``,
``rounds.jsonl``, ``metrics.json`` and, for private runs, ``privacy.json``), so it can
be re-rendered at any time with ``fedrec report RUN_DIR``. Every number it shows is
read from those files; it computes nothing new except summaries (median, max) of the
recorded per-client epsilons.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedrec.errors import DataError
from server.checkpoint import headcount
from simulations import privacy_words as words

TABLE_KEYS = (
    "ndcg@10",
    "recall@20",
    "hr@10",
    "mrr",
    "coverage@10",
    "novelty@10",
    "gini@10",
    "diversity@10",
)
REFERENCE_NAMES = ("popularity", "ease", "itemknn")


def _read_json(path: Path) -> Any:
    try:
        return json.loads(path.read_text())
    except FileNotFoundError:
        raise DataError(
            "missing run file", where=str(path), fix="pass a directory written by fedrec simulate"
        ) from None
    except json.JSONDecodeError as err:
        raise DataError(f"not valid JSON ({err.msg})", where=f"{path}:{err.lineno}") from None


def read_rounds(run_dir: Path) -> list[dict[str, Any]]:
    """The per-round records of ``rounds.jsonl`` (empty when the file is absent)."""
    path = run_dir / "rounds.jsonl"
    if not path.exists():
        return []
    rows = []
    for lineno, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rows.append(json.loads(line))
        except json.JSONDecodeError:
            raise DataError(
                "malformed line in rounds.jsonl",
                where=f"{path}:{lineno}",
                fix="the run was cut mid-write; resume it with fedrec simulate --resume",
            ) from None
    return rows


def references(metrics: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """The reference baselines (popularity, EASE) recorded beside a run's metrics."""
    found: dict[str, dict[str, Any]] = {}
    block = metrics.get("reference") or metrics.get("references") or {}
    for name in REFERENCE_NAMES:
        ref = block.get(name) if isinstance(block, dict) else None
        if ref is None:
            ref = metrics.get(name)
        if isinstance(ref, dict):
            found[name] = ref
    return found


def _fmt(value: Any) -> str:
    if value is None:
        return "–"
    if isinstance(value, float):
        return f"{value:.4f}"
    return str(value)


def metrics_table(rows: Iterable[tuple[str, dict[str, Any]]]) -> str:
    """A markdown table of ``TABLE_KEYS`` with one row per (name, metrics)."""
    lines = [
        "| model | " + " | ".join(TABLE_KEYS) + " |",
        "|---|" + "---|" * len(TABLE_KEYS),
    ]
    for name, m in rows:
        lines.append(f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in TABLE_KEYS) + " |")
    return "\n".join(lines)


def _metric_series(rounds: list[dict[str, Any]], key: str) -> tuple[list[int], list[float]]:
    xs, ys = [], []
    for row in rounds:
        m = row.get("metrics") or {}
        if isinstance(m, dict) and m.get(key) is not None:
            xs.append(int(row["round"]))
            ys.append(float(m[key]))
    return xs, ys


def plot_utility(
    run_dir: Path, rounds: list[dict[str, Any]], refs: dict[str, dict[str, Any]]
) -> str | None:
    """NDCG@10 against round, with popularity and EASE as reference lines."""
    xs, ys = _metric_series(rounds, "ndcg@10")
    if not xs:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot(xs, ys, marker="o", markersize=3, label="federated (sampled users; last: all)")
    top = max(ys)
    for (name, ref), style in zip(refs.items(), ("--", ":"), strict=False):
        if ref.get("ndcg@10") is not None:
            top = max(top, float(ref["ndcg@10"]))
            label = f"{name} (centralized, not private)"
            ax.axhline(float(ref["ndcg@10"]), linestyle=style, color="gray", label=label)
    _readable_axes(ax, rounds, bottom=0.0, top=top)
    ax.set_xlabel("round")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Utility against round")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    return _save(fig, run_dir / "utility.png")


def _readable_axes(ax: Any, rounds: list[dict[str, Any]], *, bottom: float, top: float) -> None:
    """Whole rounds on x (a short run is not a dot on a 0.2-wide axis); y from ``bottom``."""
    from matplotlib.ticker import MaxNLocator

    last = max((int(r["round"]) for r in rounds), default=1)
    ax.set_xlim(0.5, max(last, 1) + 0.5)
    if last <= 10:
        ax.set_xticks(range(1, max(last, 1) + 1))
    else:
        ax.xaxis.set_major_locator(MaxNLocator(integer=True))
    ax.set_ylim(bottom, top * 1.15 if top > 0 else 1.0)


def plot_loss(run_dir: Path, rounds: list[dict[str, Any]]) -> str | None:
    """Mean client training loss against round (recorded only in non-private runs)."""
    pts = [
        (int(r["round"]), float(r["train_loss"])) for r in rounds if r.get("train_loss") is not None
    ]
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3)
    _readable_axes(ax, rounds, bottom=0.0, top=max(p[1] for p in pts))
    ax.set_xlabel("round")
    ax.set_ylabel("mean client training loss")
    ax.set_title("Training loss (non-private runs only)")
    ax.grid(alpha=0.3)
    return _save(fig, run_dir / "loss.png")


def plot_epsilon(
    run_dir: Path, rounds: list[dict[str, Any]], target: float | None = None
) -> str | None:
    """Epsilon spent so far against round (run epsilon, or median and max per client),
    with the target budget as a line."""
    series: dict[str, list[tuple[int, float]]] = {}
    for row in rounds:
        eps = row.get("epsilon")
        if isinstance(eps, dict):
            for name, value in eps.items():
                if value is not None:
                    series.setdefault(name, []).append((int(row["round"]), float(value)))
        elif eps is not None:
            series.setdefault("epsilon", []).append((int(row["round"]), float(eps)))
    if not series:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    top = max(v for pts in series.values() for _, v in pts)
    for name, pts in series.items():
        label = f"per-device {name}" if name in ("median", "max") else name
        ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", markersize=3, label=label)
    if target is not None:
        top = max(top, float(target))
        ax.axhline(float(target), linestyle="--", color="red", label=f"target {float(target):g}")
    _readable_axes(ax, rounds, bottom=0.0, top=top)
    ax.set_xlabel("round")
    ax.set_ylabel("epsilon spent")
    ax.set_title("Privacy budget spent")
    ax.grid(alpha=0.3)
    ax.legend()
    return _save(fig, run_dir / "epsilon.png")


def plot_client_epsilons(run_dir: Path, privacy: dict[str, Any]) -> str | None:
    """Histogram of the final per-client epsilons (local DP)."""
    clients = privacy.get("clients") or {}
    values = [float(c["epsilon"]) for c in clients.values() if c.get("epsilon") is not None]
    if not values:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.6))
    ax.hist(values, bins=min(30, max(5, len(values) // 10)))
    ax.set_xlabel("epsilon of a client")
    ax.set_ylabel("clients")
    ax.set_title("Distribution of per-client epsilon")
    return _save(fig, run_dir / "client_epsilon.png")


def _save(fig: Any, path: Path) -> str:
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    plt.close(fig)
    return path.name


def _privacy_section(
    run_dir: Path, config: dict[str, Any], rounds: list[dict[str, Any]]
) -> list[str]:
    """The guarantee in words (unit, trust, what the server sees), then its numbers."""
    path = run_dir / "privacy.json"
    mode = config.get("privacy", "none")
    if isinstance(mode, dict):
        mode = mode.get("mode", "none")
    privacy = _read_json(path) if path.exists() else {"mode": mode}
    mode = str(privacy.get("mode") or "none")
    kind = _model_kind(config)
    lines = ["## Privacy", ""]
    who = [
        words.unit_sentence(mode, kind),
        "",
        words.trust_sentence(mode, kind),
        "",
        words.server_sees_sentence(mode, kind),
        "",
    ]
    if mode == "none":
        return [
            *lines,
            "Privacy mode `none`: no privacy guarantee is claimed (no epsilon, no delta).",
            "",
            *who,
        ]
    eps, delta, target = privacy.get("epsilon"), privacy.get("delta"), privacy.get("target_epsilon")
    per = "the largest of any device (each device has its own budget)" if mode == "local" else ""
    accountant = str(privacy.get("accountant"))
    lines += [
        f"Mode `{mode}`: **epsilon = {_fmt(eps)}**{', ' + per if per else ''}, at "
        f"**delta = {delta}** (the probability that the epsilon bound may fail), "
        f"target epsilon {_fmt(target)}; accountant `{accountant}`"
        + ("." if "Opacus" in accountant else " (Opacus)."),
        "",
        *who,
        words.mechanism_sentence(privacy, config),
        "",
    ]
    settings: dict[str, Any] = config["privacy"] if isinstance(config.get("privacy"), dict) else {}
    if privacy.get("insecure_noise_seed") is not None or (
        settings.get("insecure_noise_seed") is not None
    ):
        lines += [
            "**WARNING: this run used `--insecure-noise-seed`; its noise is reproducible "
            "and its privacy guarantee does not hold. For tests only.**",
            "",
        ]
    if privacy.get("epsilon_valid_only_if"):
        lines += [f"The epsilon holds only if {privacy['epsilon_valid_only_if']}.", ""]
    clients = privacy.get("clients") or {}
    values = sorted(float(c["epsilon"]) for c in clients.values() if c.get("epsilon") is not None)
    if values:
        lines += [
            f"Per-client epsilon over {len(values)} clients: "
            f"median {values[len(values) // 2]:.3f}, max {values[-1]:.3f}.",
            "",
        ]
    lines += [f"**{r['stopped']}**" for r in rounds if r.get("stopped")]
    exhausted = sum(headcount(r.get("budget_exhausted")) for r in rounds)
    if exhausted:
        lines += [_refusals_sentence(exhausted, config), ""]
    not_protected = [str(x) for x in privacy.get("not_protected") or []]
    if not_protected:
        lines += ["**Not protected:** " + "; ".join(not_protected) + ".", ""]
    lines += [
        f"Threat model, exact guarantees and how to read privacy.json: {words.PRIVACY_DOC}.",
        "",
    ]
    images = (plot_epsilon(run_dir, rounds, target), plot_client_epsilons(run_dir, privacy))
    for image in images:
        if image:
            lines += [f"![{image}]({image})", ""]
    return lines


def _refusals_sentence(exhausted: int, config: dict[str, Any]) -> str:
    """Why devices refused: a spent budget, and how many rounds a budget was made for."""
    users = (config.get("fingerprint") or {}).get("data", {}).get("users")
    rounds, per_round = config.get("rounds"), config.get("clients_per_round")
    planned = ""
    if users and rounds and per_round:
        r = math.ceil(int(rounds) * min(1.0, int(per_round) / int(users)))
        planned = (
            f" The noise was calibrated so that a device can afford about {r} round(s) "
            f"(rounds x clients per round / users = {rounds} x {per_round} / {users}, rounded "
            f"up): a device sampled more often spent its whole budget in the first {r} "
            "round(s) it joined and sat out the later ones."
        )
    return (
        f"**{exhausted} refusals:** a sampled device refused to train because its privacy "
        f"budget was already spent.{planned} Its epsilon stays within the target; the model "
        "simply trains on fewer devices in those rounds (rounds.jsonl, `budget_exhausted`)."
    )


def _model_kind(config: dict[str, Any]) -> str | None:
    model = config.get("model")
    if isinstance(model, dict):
        return str(model.get("kind")) if model.get("kind") else None
    settings = config.get("settings")
    if model is None and isinstance(settings, dict):
        model = settings.get("model")
    return None if model is None else str(model)


def _accuracy_section(
    run_dir: Path, config: dict[str, Any], metrics: dict[str, Any], refs: dict[str, Any]
) -> list[str]:
    """NDCG@10 against popularity, EASE and the non-private run of the same settings."""
    ndcg = metrics.get("ndcg@10")
    lines = ["## Accuracy against the references", ""]
    for name, ref in refs.items():
        value = ref.get("ndcg@10")
        if ndcg is not None and value:
            lines.append(
                f"- against {name}: NDCG@10 {float(ndcg):.4f} vs {float(value):.4f} "
                f"({float(ndcg) / float(value):.0%} of it)"
            )
    if "itemknn" in refs and "ease" not in refs:
        from fedrec.baselines import EASE_MAX_ITEMS  # imports torch: only where it is said

        lines.append(
            "- EASE: skipped, the catalog is above "
            f"{EASE_MAX_ITEMS:,} items (its dense items x items matrices do not fit in "
            "memory); item-kNN (cosine, 20 neighbours, sparse similarity) is the reference "
            "instead; plain cosine favours items that few users share, so on a sparse, "
            "heavy-tailed catalog it can rank below popularity"
        )
    mode = _mode(config)
    if mode == "none":
        lines.append("- this run has no privacy: it is the non-private reference for private runs")
    else:
        other = find_non_private_twin(run_dir, config)
        if other is None:
            lines.append(
                "- against the non-private run of the same settings: none found beside this "
                f"run (in {run_dir.parent}). Run `fedrec simulate` with the same flags and "
                "without the privacy flags into a folder there, then `fedrec report` again; "
                "or use `fedrec sweep`, whose report shows both."
            )
        else:
            value = _read_json(other / "metrics.json").get("ndcg@10")
            share = f" ({float(ndcg) / float(value):.0%} of it)" if ndcg and value else ""
            lines.append(
                f"- against the non-private run of the same settings (`{other.name}`): "
                f"NDCG@10 {_fmt(ndcg)} vs {_fmt(value)}{share}"
            )
    lines.append("")
    popularity = refs.get("popularity", {}).get("ndcg@10")
    flag = words.below_popularity(
        ndcg, popularity, private=mode != "none", model=_model_kind(config)
    )
    if flag:
        lines += [flag, ""]
    note = words.references_sentence([name for name in refs])
    if note:
        lines += [note, ""]
    return lines


def _mode(config: dict[str, Any]) -> str:
    mode = config.get("privacy", "none")
    if isinstance(mode, dict):
        mode = mode.get("mode", "none")
    return str(mode or "none")


_RUN_SPECIFIC = ("run-dir", "privacy")


def _comparable(config: dict[str, Any]) -> dict[str, Any] | None:
    """A run's settings without its directory and privacy settings (None: unreadable)."""
    settings = config.get("settings")
    if not isinstance(settings, dict):
        return None
    return {
        k: v for k, v in settings.items() if k not in _RUN_SPECIFIC and not k.startswith("privacy.")
    }


def find_non_private_twin(run_dir: Path, config: dict[str, Any]) -> Path | None:
    """A finished non-private run beside ``run_dir`` with the same other settings."""
    mine = _comparable(config)
    if mine is None or not run_dir.parent.is_dir():
        return None
    for other in sorted(run_dir.parent.iterdir()):
        if other == run_dir or not (other / "metrics.json").is_file():
            continue
        try:
            theirs = json.loads((other / "config.json").read_text())
        except (OSError, ValueError):
            continue
        if isinstance(theirs, dict) and _mode(theirs) == "none" and _comparable(theirs) == mine:
            return other
    return None


def _audit_section(run_dir: Path) -> list[str]:
    """The privacy audit's table and ROC plot, when ``fedrec audit`` wrote RUN_DIR/audit.json."""
    path = run_dir / "audit.json"
    if not path.exists():
        return []
    audit = _read_json(path)
    lines = [
        "## Privacy audit (empirical)",
        "",
        f"{audit.get('clients_audited')} clients audited, mode `{audit.get('mode')}`. "
        f"{audit.get('regenerated', '')}",
        "",
        "| attack | sees | AUC | precision@k | epsilon lower bound | epsilon accounted |",
        "|---|---|---|---|---|---|",
    ]
    for a in audit.get("attacks", []):
        lines.append(
            f"| {a['attack']} | {a.get('sees', '')} | {_fmt(a.get('auc'))} | "
            f"{_fmt(a.get('precision_at_k'))} | {_fmt(a.get('epsilon_lower_bound'))} | "
            f"{_fmt(a.get('epsilon_accounted'))} |"
        )
    lines += [
        "",
        "Lower bounds hold with probability 1 - alpha (Clopper-Pearson); see docs/PRIVACY.md.",
        "",
    ]
    if (run_dir / "audit_roc.png").exists():
        lines += ["![audit_roc.png](audit_roc.png)", ""]
    return lines


def write_report(run_dir: str | Path, *, tradeoff: bool = False) -> Path:
    """Write ``report.md`` and its PNG plots into ``run_dir``; return the report path.

    ``tradeoff`` also computes the federated model's MMR curve (slow: needs the model).
    The files describe the users' data: they are created 0600 whatever the caller's
    umask (the Python API and ``fedrec audit`` call this outside ``fedrec report``).
    """
    from fedrec.data.atomic import private_files

    with private_files():
        return _write_report(Path(run_dir), tradeoff=tradeoff)


def _write_report(run_dir: Path, *, tradeoff: bool) -> Path:
    if not run_dir.is_dir():
        raise DataError(
            "run directory not found", where=str(run_dir), fix="pass the --out of a run"
        )
    from simulations.sweep import SWEEP_JSON, render_sweep_dir

    if (run_dir / SWEEP_JSON).is_file() and not (run_dir / "config.json").exists():
        return render_sweep_dir(run_dir)  # a fedrec sweep directory
    config = _read_json(run_dir / "config.json")
    metrics = _read_json(run_dir / "metrics.json")
    if config.get("command") == "baseline":
        return _write_baseline_report(run_dir, config, metrics)
    rounds = read_rounds(run_dir)
    refs = references(metrics)
    title = (
        config.get("model", {}).get("kind")
        if isinstance(config.get("model"), dict)
        else config.get("model")
    )
    lines = [
        f"# fedrec run: {run_dir.name}",
        "",
        f"Data `{config.get('data')}`, model `{title}`, strategy `{config.get('strategy')}`, "
        f"{len(rounds)} rounds recorded, seed {config.get('seed')}.",
        "",
        "## Final metrics (full ranking, uniform over users; docs/PROTOCOL.md)",
        "",
        metrics_table([("federated", metrics), *refs.items()]),
        "",
        *_accuracy_section(run_dir, config, metrics, refs),
    ]
    for image in (plot_utility(run_dir, rounds, refs), plot_loss(run_dir, rounds)):
        if image:
            lines += [f"![{image}]({image})", ""]
    failed = sum(headcount(r.get("failed")) for r in rounds)
    seconds = sum(float(r.get("seconds") or 0.0) for r in rounds)
    lines += [
        "## Rounds",
        "",
        f"{len(rounds)} rounds in {seconds:.1f} s; "
        f"{failed} client failures recorded in rounds.jsonl.",
        "",
    ]
    from simulations.beyond import report_lines

    lines += report_lines(run_dir, [("federated", metrics), *refs.items()], tradeoff=tradeoff)
    lines += _privacy_section(run_dir, config, rounds)
    lines += _audit_section(run_dir)
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out


def _write_baseline_report(run_dir: Path, config: dict[str, Any], metrics: Any) -> Path:
    """``report.md`` of a ``fedrec baseline`` run: a centralized model, no federation."""
    seeds = ",".join(str(s) for s in config.get("seeds", []))
    mean = metrics.get("mean", metrics) if isinstance(metrics, dict) else {}
    lines = [
        f"# fedrec baseline: {run_dir.name}",
        "",
        f"Centralized `{config.get('model')}` trained on every user's train data in one "
        f"place (not federated), data `{config.get('data')}`, {config.get('split')} split, "
        f"seed {seeds}.",
        "",
        "## Metrics (full ranking, uniform over users; docs/PROTOCOL.md)",
        "",
        metrics_table([(f"centralized {config.get('model')}", mean)]),
        "",
        "## Privacy",
        "",
        "None: a centralized baseline sees every interaction. It is a reference point for "
        "the federated runs on the same split, not a private model.",
        "",
    ]
    out = run_dir / "report.md"
    out.write_text("\n".join(lines))
    return out
