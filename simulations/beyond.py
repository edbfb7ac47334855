"""The beyond-accuracy page of a run: ``beyond.md``, ``beyond.png``, optional MMR curve.

What it shows, per model of the run (the federated model and the references recorded
in ``metrics.json``: popularity, EASE): catalog coverage@10, novelty@10, Gini@10 of
exposure and intra-list diversity@10 (definitions in :mod:`fedrec.metrics.beyond`),
read from ``metrics.json`` (computing nothing). With ``tradeoff=True`` it also computes
the MMR accuracy-diversity curve of the federated model
(:func:`fedrec.recommend.tradeoff_curve`): that needs the model and every test user's
scores, so it is opt-in (``fedrec report RUN_DIR --tradeoff``) and its result is kept in
``tradeoff.json``, which later renders show without recomputing. MMR's similarity
features (:func:`mmr_features`) are shared with ``fedrec recommend --diversify``.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

if TYPE_CHECKING:
    from simulations.run_model import RunModel

BEYOND_KEYS = ("coverage@10", "novelty@10", "gini@10", "diversity@10")
LABELS = {
    "coverage@10": "catalog coverage@10 (higher: more items shown)",
    "novelty@10": "novelty@10, bits (higher: less popular items)",
    "gini@10": "Gini@10 of exposure (lower: more even)",
    "diversity@10": "diversity@10, genre ILD (higher: more varied lists)",
}
PAGE, CHART, TRADEOFF_JSON, TRADEOFF_PNG = (
    "beyond.md",
    "beyond.png",
    "tradeoff.json",
    "tradeoff.png",
)
TRADEOFF_LAMBDAS = (1.0, 0.9, 0.7, 0.5, 0.3)

Rows = Sequence[tuple[str, dict[str, Any]]]


def _fmt(value: Any) -> str:
    return "–" if value is None else f"{float(value):.4f}"


def beyond_table(rows: Rows) -> str:
    """A markdown table of :data:`BEYOND_KEYS` (plus NDCG@10 for context), one row per model."""
    keys = ("ndcg@10", *BEYOND_KEYS)
    lines = ["| model | " + " | ".join(keys) + " |", "|---|" + "---|" * len(keys)]
    lines += [f"| {name} | " + " | ".join(_fmt(m.get(k)) for k in keys) + " |" for name, m in rows]
    return "\n".join(lines)


def plot_beyond(rows: Rows, path: Path) -> Path | None:
    """One bar panel per beyond-accuracy metric, one bar per model; ``None`` if no data."""
    keys = [k for k in BEYOND_KEYS if any(m.get(k) is not None for _, m in rows)]
    if not keys or not rows:
        return None
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(3.2 * len(keys), 3.4), layout="constrained")
    FigureCanvasAgg(fig)
    names = [name for name, _ in rows]
    for slot, key in enumerate(keys, start=1):
        ax = fig.add_subplot(1, len(keys), slot)
        values = [float(m.get(key) or 0.0) for _, m in rows]
        ax.bar(names, values, color=[f"C{i}" for i in range(len(names))])
        ax.set_title(LABELS[key], fontsize=8)
        ax.tick_params(axis="x", labelrotation=30, labelsize=8)
    fig.savefig(path, dpi=110)
    return path


def mmr_features(model: RunModel) -> tuple[npt.NDArray[np.generic], str]:
    """MMR's similarity features for a run's items, and their name for captions.

    Genre flags where the run's data have them (ml-100k ``u.item``; the geometry of
    ``diversity@10``), otherwise the model's learned item vectors.
    """
    genres = model.exported.genres
    if genres is None:
        return model.item_vectors, "item vectors"
    return genres, "genres"


def compute_tradeoff(run_dir: Path) -> list[dict[str, Any]]:
    """The MMR curve of the run's federated model; written to ``tradeoff.json``."""
    from fedrec.recommend import tradeoff_curve
    from server.checkpoint import atomic_write_json
    from simulations.run_model import load_run_model

    model = load_run_model(run_dir)
    features, _ = mmr_features(model)
    curve = tradeoff_curve(model.score_fn(), model.split, features, TRADEOFF_LAMBDAS)
    atomic_write_json(run_dir / TRADEOFF_JSON, curve)
    return [dict(p) for p in curve]


def _tradeoff_lines(run_dir: Path, curve: list[dict[str, Any]]) -> list[str]:
    from fedrec.recommend import plot_tradeoff

    plot_tradeoff(curve, run_dir / TRADEOFF_PNG)
    lines = [
        "## MMR re-ranking: accuracy against diversity (federated model)",
        "",
        "Maximal Marginal Relevance (MMR, Carbonell & Goldstein 1998) over each user's "
        "top-100 in its mean-redundancy form: greedy lambda * relevance + (1 - lambda) * "
        "intra-list diversity (Ziegler et al. 2005), relevance min-max normalized per user, "
        "similarity the cosine of genre flags (of learned item vectors where the data have "
        "no genres). lambda = 1 is the plain top list.",
        "",
        "| lambda | ndcg@10 | diversity@10 | coverage@10 |",
        "|---|---|---|---|",
    ]
    lines += [
        f"| {p['lambda']} | {_fmt(p.get('ndcg@10'))} | {_fmt(p.get('diversity@10'))} "
        f"| {_fmt(p.get('coverage@10'))} |"
        for p in curve
    ]
    return [*lines, "", f"![{TRADEOFF_PNG}]({TRADEOFF_PNG})", ""]


def write_beyond_page(run_dir: str | Path, rows: Rows, *, tradeoff: bool = False) -> Path:
    """Write ``beyond.md`` (+ ``beyond.png``, and the MMR curve when asked or stored)."""
    run_dir = Path(run_dir)
    lines = [
        f"# Beyond accuracy: {run_dir.name}",
        "",
        "Top-10 lists of every test user (docs/PROTOCOL.md); definitions in "
        "`fedrec/metrics/beyond.py`. Popularity has the lowest coverage and novelty by "
        "construction; a personalised model should spread exposure wider.",
        "",
        beyond_table(rows),
        "",
    ]
    if plot_beyond(rows, run_dir / CHART):
        lines += [f"![{CHART}]({CHART})", ""]
    stored = run_dir / TRADEOFF_JSON
    curve = compute_tradeoff(run_dir) if tradeoff else None
    if curve is None and stored.is_file():
        curve = list(json.loads(stored.read_text(encoding="utf-8")))
    if curve:
        lines += _tradeoff_lines(run_dir, curve)
    else:
        lines += ["MMR trade-off curve: run `fedrec report RUN_DIR --tradeoff` to compute it.", ""]
    page = run_dir / PAGE
    page.write_text("\n".join(lines), encoding="utf-8")
    return page


def report_lines(run_dir: str | Path, rows: Rows, *, tradeoff: bool = False) -> list[str]:
    """Write the page and return the lines ``report.md`` shows for it."""
    page = write_beyond_page(run_dir, rows, tradeoff=tradeoff)
    return [
        "## Beyond accuracy",
        "",
        f"Coverage, novelty, Gini and diversity of every model: [{page.name}]({page.name}).",
        "",
        f"![{CHART}]({CHART})" if (page.parent / CHART).is_file() else "",
        "",
    ]
