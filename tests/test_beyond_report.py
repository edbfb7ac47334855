"""The beyond-accuracy page: table and chart from metrics.json, opt-in MMR curve."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from fedrec.metrics import evaluate_scores
from simulations.beyond import BEYOND_KEYS, beyond_table
from simulations.cli import main
from simulations.run_model import load_run_model
from tests.test_recommend_cli import make_run_dir


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    tiny = "synthetic:users=10,items=30,dim=4,mean=10,seed=3"  # the MMR curve scores every user
    return make_run_dir(tmp_path_factory.mktemp("beyond") / "run", data=tiny)


def test_table_has_one_row_per_model_and_a_dash_for_missing_values() -> None:
    # Prepare
    rows = [("federated", {"coverage@10": 0.5, "ndcg@10": 0.25}), ("ease", {"gini@10": 0.125})]
    # Execute
    table = beyond_table(rows).splitlines()
    # Assert
    assert table[0].split(" | ")[1:-1] == ["ndcg@10", *BEYOND_KEYS[:-1]]
    assert table[2] == "| federated | 0.2500 | 0.5000 | – | – | – |"
    assert table[3] == "| ease | – | – | – | 0.1250 | – |"


def test_report_writes_the_beyond_page_without_the_model(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Execute
    code = main(["report", str(run_dir)])
    # Assert
    page = (run_dir / "beyond.md").read_text()
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert code == 0
    assert f"| federated | {metrics['ndcg@10']:.4f} | {metrics['coverage@10']:.4f}" in page
    assert "| popularity |" in page and (run_dir / "beyond.png").stat().st_size > 0
    assert "--tradeoff" in page and not (run_dir / "tradeoff.json").exists()
    assert "[beyond.md](beyond.md)" in (run_dir / "report.md").read_text()


def test_tradeoff_curve_is_computed_on_request_and_kept(
    run_dir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    model = load_run_model(run_dir)
    plain = evaluate_scores(model.score_fn(), model.split)
    # Execute
    code = main(["report", str(run_dir), "--tradeoff"])
    # Assert: lambda = 1 is the plain top list of the same scores
    curve = json.loads((run_dir / "tradeoff.json").read_text())
    assert code == 0 and [p["lambda"] for p in curve] == [1.0, 0.9, 0.7, 0.5, 0.3]
    assert curve[0]["ndcg@10"] == pytest.approx(plain["ndcg@10"])
    assert curve[0]["diversity@10"] == pytest.approx(plain["diversity@10"])
    assert (run_dir / "tradeoff.png").exists()
    # Execute again without the flag: the stored curve stays on the page
    (run_dir / "tradeoff.png").unlink()
    assert main(["report", str(run_dir)]) == 0
    assert "MMR re-ranking" in (run_dir / "beyond.md").read_text()
    assert (run_dir / "tradeoff.png").exists()
