"""A privacy-utility sweep: one run per target epsilon plus the non-private run.

Design rule: a sweep is nothing but ``fedrec simulate`` runs with different
``--target-epsilon`` (one run directory each, under the sweep directory), read back
from their own files: ``DIR/sweep.json`` lists, per run, the target and the epsilon
actually spent (from its ``privacy.json``) next to its final metrics, and
``DIR/report.md`` shows the frontier (NDCG@10 against epsilon) with the popularity
baseline and the non-private run as horizontal lines. Every run of a sweep spends
privacy on the same data: the sweep as a whole is *not* covered by any one run's
guarantee (docs/PRIVACY.md, "hyperparameter tuning").
"""

from __future__ import annotations

import dataclasses
import json
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt

from fedrec.errors import ConfigError
from fedrec.privacy.config import PrivacyConfig
from server.checkpoint import atomic_write_json
from server.settings import RunSettings

SWEEP_JSON = "sweep.json"
FRONTIER_PNG = "frontier.png"
NON_PRIVATE = "none"
Runner = Callable[[RunSettings], dict[str, Any]]


def parse_epsilons(text: str) -> list[float]:
    """``"1,4,8"`` -> ``[1.0, 4.0, 8.0]`` (each > 0, distinct)."""
    try:
        values = [float(v) for v in text.split(",") if v.strip()]
    except ValueError as err:
        raise ConfigError(f"not a list of numbers: {text!r}", where="--epsilons") from err
    if not values or any(not v > 0 for v in values) or len(set(values)) != len(values):
        raise ConfigError(
            f"need distinct epsilons > 0, got {text!r}", where="--epsilons", fix="e.g. 1,4,8"
        )
    return values


def run_name(epsilon: float | None) -> str:
    """The run directory name of one point of the sweep."""
    return NON_PRIVATE if epsilon is None else f"eps-{epsilon:g}"


def sweep_settings(
    base: RunSettings, epsilons: Sequence[float], out_dir: Path
) -> list[tuple[float | None, RunSettings]]:
    """The non-private run, then one run per target epsilon (``base`` is private)."""
    if not base.privacy.enabled:
        raise ConfigError("a sweep needs a privacy mode", where="--privacy", fix="local|central")
    none = dataclasses.replace(
        base,
        privacy=PrivacyConfig(),
        run_dir=str(out_dir / run_name(None)),
    )
    runs: list[tuple[float | None, RunSettings]] = [(None, none)]
    for eps in epsilons:
        privacy = dataclasses.replace(base.privacy, target_epsilon=eps, noise_multiplier=None)
        runs.append(
            (eps, dataclasses.replace(base, privacy=privacy, run_dir=str(out_dir / run_name(eps))))
        )
    return runs


def summarize(epsilon: float | None, run_dir: Path, metrics: dict[str, Any]) -> dict[str, Any]:
    """One ``sweep.json`` row from a finished run's files."""
    privacy_path = run_dir / "privacy.json"
    privacy = json.loads(privacy_path.read_text()) if privacy_path.exists() else {}
    return {
        "run": run_dir.name,
        "target_epsilon": epsilon,
        "epsilon": privacy.get("epsilon"),
        "delta": privacy.get("delta"),
        "noise_multiplier": privacy.get("noise_multiplier"),
        "metrics": {k: v for k, v in metrics.items() if k != "reference"},
    }


def frontier_label(mode: str, model: str | None) -> str:
    """A frontier legend entry: the privacy mode and the unit one epsilon protects.

    The unit as in :func:`simulations.privacy_words.unit_sentence` (docs/PRIVACY.md).
    """
    from fedrec.models.registry import MODEL_KINDS, model_class

    unit = "one user"
    if mode == "local":
        user = model in MODEL_KINDS and model_class(str(model)).LOCAL_DP_UNIT == "user"
        unit = "one user's vector" if user else "one interaction"
    name = {"local": "local DP", "central": "central DP (trusted server)",
            "distributed": "distributed DP (SecAgg+)"}.get(mode, mode)  # fmt: skip
    return f"{name}{f', {model}' if model else ''}: protects {unit}"


def load_compared(paths: Sequence[Path]) -> list[dict[str, Any]]:
    """Other sweeps to draw on this sweep's frontier (``--compare DIR``): their rows."""
    from fedrec.errors import DataError

    out = []
    for path in paths:
        file = Path(path) / SWEEP_JSON
        if not file.is_file():
            raise DataError("not a sweep directory (no sweep.json)", where=str(path),
                            fix="pass the --out of an earlier fedrec sweep")  # fmt: skip
        sweep = json.loads(file.read_text(encoding="utf-8"))
        out.append({"dir": str(Path(path).resolve()), "mode": sweep["mode"],
                    "model": sweep.get("model"), "runs": sweep["runs"]})  # fmt: skip
    return out


def write_sweep(
    out_dir: Path,
    mode: str,
    rows: list[dict[str, Any]],
    refs: dict[str, Any],
    *,
    model: str | None = None,
    compare: list[dict[str, Any]] | None = None,
) -> Path:
    """Write ``sweep.json``, the frontier plot and ``report.md``; return the report path.

    ``compare``: other sweeps (:func:`load_compared`) drawn on the same frontier.
    """
    from simulations import privacy_words as words

    payload: dict[str, Any] = {"mode": mode, "runs": rows, "reference": refs}
    if model is not None:
        payload["model"] = model
    if compare:
        payload["compare"] = compare
    atomic_write_json(out_dir / SWEEP_JSON, payload)
    image = plot_frontier(out_dir, rows, refs, mode=mode, model=model, compare=compare)
    lines = [
        f"# fedrec sweep: {out_dir.name}",
        "",
        f"Privacy mode `{mode}`" + (f", model `{model}`" if model else "") + "; one run per "
        "target epsilon and the same settings without privacy (`none`); each run's folder "
        "has its own report.md.",
        "",
        words.unit_sentence(mode, model),
        "",
        words.trust_sentence(mode, model),
        "",
        "Every run spends privacy on the same data: the sweep as a whole is not covered by "
        "one run's guarantee (docs/PRIVACY.md, hyperparameter tuning).",
        "",
        "| run | target epsilon | epsilon spent | delta | noise multiplier | NDCG@10 | "
        "Recall@20 | vs non-private | vs popularity |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    plain = next((r["metrics"].get("ndcg@10") for r in rows if r["epsilon"] is None), None)
    popularity = refs.get("popularity", {}).get("ndcg@10")
    for r in rows:
        m = r["metrics"]
        lines.append(
            f"| {r['run']} | {_fmt(r['target_epsilon'])} | {_fmt(r['epsilon'])} | "
            f"{_fmt(r['delta'])} | {_fmt(r.get('noise_multiplier'))} | {_fmt(m.get('ndcg@10'))} | "
            f"{_fmt(m.get('recall@20'))} | {_share(m.get('ndcg@10'), plain)} | "
            f"{_share(m.get('ndcg@10'), popularity)} |"
        )
    for name, ref in refs.items():
        lines.append(
            f"| {name} (centralized, not private) | – | – | – | – | {_fmt(ref.get('ndcg@10'))} | "
            f"{_fmt(ref.get('recall@20'))} | {_share(ref.get('ndcg@10'), plain)} | "
            f"{_share(ref.get('ndcg@10'), popularity)} |"
        )
    lines.append("")
    for other in compare or []:
        points = ", ".join(
            f"{_fmt(r['epsilon'])}: {_fmt(r['metrics'].get('ndcg@10'))}"
            for r in other["runs"] if r["epsilon"] is not None
        )  # fmt: skip
        lines += [f"Also on the frontier: {frontier_label(other['mode'], other.get('model'))} "
                  f"(`{other['dir']}`; epsilon: NDCG@10 {points}).", ""]  # fmt: skip
    below = [
        f"`{r['run']}`"
        for r in rows
        if words.below_popularity(r["metrics"].get("ndcg@10"), popularity) is not None
    ]
    if below:
        lines += [
            f"**Below popularity:** {', '.join(below)} rank worse (NDCG@10) than recommending "
            f"the most popular items to everyone ({_fmt(popularity)}); such a model is not "
            "worth deploying as is (docs/PRIVACY.md, 'DP popularity release', publishes a "
            "private popularity ranking instead).",
            "",
        ]
    note = words.references_sentence(list(refs))
    if note:
        lines += [note, ""]
    lines += [f"![{image}]({image})" if image else "", ""]
    path = out_dir / "report.md"
    path.write_text("\n".join(lines))
    return path


def render_sweep_dir(out_dir: Path) -> Path:
    """Re-render ``report.md`` and the frontier of a sweep directory from its sweep.json."""
    sweep = json.loads((out_dir / SWEEP_JSON).read_text())
    return write_sweep(
        out_dir,
        sweep["mode"],
        sweep["runs"],
        sweep.get("reference", {}),
        model=sweep.get("model"),
        compare=sweep.get("compare"),
    )


def _points(rows: list[dict[str, Any]]) -> list[tuple[float, float]]:
    return sorted(
        (float(r["epsilon"]), float(r["metrics"]["ndcg@10"]))
        for r in rows
        if r["epsilon"] is not None and r["metrics"].get("ndcg@10") is not None
    )


def plot_frontier(
    out_dir: Path,
    rows: list[dict[str, Any]],
    refs: dict[str, Any],
    *,
    mode: str | None = None,
    model: str | None = None,
    compare: list[dict[str, Any]] | None = None,
) -> str | None:
    """NDCG@10 against epsilon spent; the non-private run, popularity and EASE as lines.

    Each private curve's legend entry names its mode and the unit it protects
    (:func:`frontier_label`); ``compare`` adds other sweeps' curves.
    """
    from matplotlib.ticker import FixedLocator, NullFormatter, NullLocator

    pts = _points(rows)
    if not pts:
        return None
    fig, ax = plt.subplots(figsize=(6.4, 3.8))
    label = "private runs" if mode is None else frontier_label(mode, model)
    ax.plot([p[0] for p in pts], [p[1] for p in pts], marker="o", label=label)
    for other in compare or []:
        other_pts = _points(other["runs"])
        if other_pts:
            ax.plot([p[0] for p in other_pts], [p[1] for p in other_pts], marker="s",
                    label=frontier_label(other["mode"], other.get("model")))  # fmt: skip
            pts += other_pts
    lines = [
        (r["metrics"].get("ndcg@10"), "same settings, no privacy", "--", "black")
        for r in rows
        if r["epsilon"] is None
    ]
    for name, style, color in (("popularity", ":", "gray"), ("ease", "-.", "gray")):
        if name in refs:
            label = f"{'EASE' if name == 'ease' else name} (centralized, not private)"
            lines.append((refs[name].get("ndcg@10"), label, style, color))
    top = max(p[1] for p in pts)  # every curve
    for value, label, style, color in lines:
        if value is not None:
            top = max(top, float(value))
            ax.axhline(float(value), linestyle=style, color=color, label=label)
    ax.set_xscale("log")
    ticks = sorted({p[0] for p in pts})
    ax.xaxis.set_major_locator(FixedLocator(ticks))
    ax.xaxis.set_major_formatter(plt.FuncFormatter(lambda v, _: f"{v:.3g}"))
    ax.xaxis.set_minor_locator(NullLocator())
    ax.xaxis.set_minor_formatter(NullFormatter())
    if len(ticks) == 1:
        ax.set_xlim(ticks[0] / 2, ticks[0] * 2)
    ax.set_ylim(0, top * 1.15 if top > 0 else 1.0)
    ax.set_xlabel("epsilon spent (log scale)")
    ax.set_ylabel("NDCG@10")
    ax.set_title("Privacy-utility frontier")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(out_dir / FRONTIER_PNG, dpi=110)
    plt.close(fig)
    return FRONTIER_PNG


def _share(value: Any, reference: Any) -> str:
    if value is None or not reference:
        return "–"
    return f"{float(value) / float(reference):.0%}"


def _fmt(value: Any) -> str:
    return "–" if value is None else (f"{value:.4g}" if isinstance(value, float) else str(value))
