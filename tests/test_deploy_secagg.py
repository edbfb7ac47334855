"""``fedrec deploy-local --model ease --privacy distributed``: SecAgg+ through real Flower.

The fast tests check the wiring a deployment adds to the simulated path: the app copy
carries a federated-EASE run's settings through Flower's own config parser, the deployed
``ServerApp`` entry point (``server.server_app.main``, what ``flwr run`` calls) runs the
Gram server for such a config, and a one-round run cannot be resumed. The end-to-end
run starts a SuperLink and 4 SuperNodes (TLS, SuperNode authentication) with one device
dropping out after key sharing; each message starts a fresh ``flwr-clientapp`` process,
so it takes minutes and is marked ``slow``.
"""

from __future__ import annotations

import json
import tempfile
import time
from pathlib import Path

import pytest
from flwr.app import Context, RecordDict

from fedrec.privacy.distributed import epsilon_from_record
from fedrec.privacy.report import verify_privacy_json
from server.gram_settings import GramSettings
from server.settings import load_split
from simulations.deploy import _proc_info, measure_gram, write_app
from simulations.inprocess import InProcessGrid

DATA = "synthetic:users=8,items=16,dim=4,mean=5,seed=3"
PLAN_FIELDS = {"bits", "scale", "clip", "delta", "min_survivors", "target_epsilon"}


def _flat(run_dir: Path, **extra: object) -> dict[str, object]:
    return {"data": DATA, "run-dir": str(run_dir), "model": "ease", "privacy": "distributed",
            "privacy.target-epsilon": 8.0, "privacy.delta": 1e-4, "secagg.neighbours": 4,
            "secagg.min-survivors": 0.75, **extra}  # fmt: skip


def _check_privacy_json(run_dir: Path, devices: int, survivors: int) -> dict[str, object]:
    """privacy.json records what recomputes epsilon: mechanism, ring, scale, clip, ..."""
    report = json.loads((run_dir / "privacy.json").read_text())
    dist = report["distributed"]
    assert report["mode"] == "distributed" and dist["mechanism"] == "skellam"
    assert set(dist["plan"]) >= PLAN_FIELDS and dist["plan"]["bits"] == 20
    assert dist["survivors"] == survivors and dist["secagg"]["devices"] == devices
    assert dist["plan"]["clip"] == 1.0 and report["delta"] == 1e-4
    assert epsilon_from_record(dist) == pytest.approx(report["epsilon"])
    assert report["epsilon"] <= 8.0 + 1e-6
    assert verify_privacy_json(run_dir / "privacy.json") == []
    return dict(report)


def test_app_copy_carries_a_distributed_ease_run(tmp_path: Path) -> None:
    # Prepare
    settings = GramSettings.from_flat(_flat(Path("/r"), **{"secagg.drop-users": "2"}))
    # Execute
    app = write_app(tmp_path / "app", settings)
    # Assert: Flower validates the app and flattens its config back to the same settings
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    config, _ = load_and_validate(app / "pyproject.toml", check_module=False)
    flat = flatten_dict(config["tool"]["flwr"]["app"]["config"])
    assert GramSettings.from_flat(flat) == settings
    assert flat["model"] == "ease" and flat["privacy"] == "distributed"


def test_the_deployed_server_entry_point_runs_the_secagg_release(tmp_path: Path) -> None:
    # Prepare: what `flwr run` hands the ServerApp: the flat run config, a Grid
    from server.server_app import main

    run_dir = tmp_path / "run"
    flat = _flat(run_dir, **{"secagg.drop-users": "5"})
    grid = InProcessGrid(load_split(GramSettings.from_flat(flat).base).n_users)
    context = Context(run_id=1, node_id=0, node_config={}, state=RecordDict(), run_config=flat)
    # Execute
    main(grid, context)  # type: ignore[arg-type]
    # Assert: the one-round Gram server ran SecAgg+ (not the round loop), 1 of 8 dropped
    _check_privacy_json(run_dir, devices=8, survivors=7)
    (record,) = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    assert record["participants"] == 7 and record["failed"] == 1
    assert record["metrics"] is None  # a deployment's server scores no user
    # Execute: deploy-local's harness scores B afterwards, as simulate's does
    settings = GramSettings.from_flat(flat)
    measured = measure_gram(settings)
    # Assert
    assert measured is not None and measured["users_evaluated"] > 0
    (record,) = [json.loads(line) for line in (run_dir / "rounds.jsonl").read_text().splitlines()]
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert record["metrics"] == measured and metrics["ndcg@10"] == measured["ndcg@10"]
    assert "reference" in metrics


def test_deploy_local_refuses_to_resume_a_one_round_ease_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from simulations.cli import main

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    flat = GramSettings.from_flat(_flat(run_dir)).to_flat()
    (run_dir / "config.json").write_text(json.dumps({"settings": flat}))
    # Execute
    rc = main(["deploy-local", "--resume", str(run_dir), "--nodes", "3"])
    # Assert: refused before any process starts; the run directory is untouched
    assert rc == 2 and "nothing to resume" in capsys.readouterr().err
    assert sorted(p.name for p in run_dir.iterdir()) == ["config.json"]


def _running(pid: int, start: int) -> bool:
    info = _proc_info(pid)
    return info is not None and info[1] == start and info[2] != "Z"


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.deploy
def test_deploy_local_runs_the_secagg_release_with_a_dropout(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: 4 SuperNodes, user 3 goes offline after key sharing (noise for 3 survivors)
    from simulations.cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "run"
    data = "synthetic:users=4,items=20,seed=0"
    argv = ["deploy-local", "--data", data, "--nodes", "4", "--model", "ease"]
    argv += ["--privacy", "distributed", "--target-epsilon", "8", "--delta", "1e-4"]
    argv += ["--set", "secagg.min-survivors=0.75", "--set", "secagg.drop-users=3"]
    argv += ["--out", str(out), "--timeout", "900"]
    # Execute
    t0 = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t0
    # Assert: released with the survivors' epsilon, the run files of `fedrec simulate`
    assert rc == 0
    report = _check_privacy_json(out, devices=4, survivors=3)
    (record,) = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert record["participants"] == 3 and record["failed"] == 1
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["ndcg@10"] <= 1.0 and record["metrics"]["ndcg@10"] == metrics["ndcg@10"]
    for name in ("config.json", "checkpoint.npz", "report.md", "model.safetensors"):
        assert (out / name).is_file(), name
    for path in out.rglob("*"):  # run files hold user data
        assert path.stat().st_mode & 0o077 == 0, path
    # Assert: through real Flower processes, all stopped; credentials removed
    rows = json.loads((out / "logs" / "processes.json").read_text())
    commands = {r["command"] for r in rows}
    assert {"flower-superlink", "flower-supernode", "flwr-serverapp", "flwr-clientapp"} <= commands
    assert not any(_running(r["pid"], r["start"]) for r in rows)
    assert list(scratch.iterdir()) == []
    seconds = report["distributed"]["secagg"]["seconds"]  # type: ignore[index]
    print(f"deploy-local ease distributed, 4 nodes, 1 dropout: {wall:.1f} s wall; {seconds}")
