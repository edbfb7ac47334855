"""``fedrec deploy-local``: a SuperLink and SuperNodes on 127.0.0.1, and their clean-up.

The fast tests check the pieces (commands bind loopback only, the node config, the app
copy's run config round-trips through Flower's parser, the process tree is stopped).
The deployment tests start real Flower processes; each ``flwr-clientapp`` is a fresh
Python process per message, so a whole run takes minutes on a 2-core box: the full run
is marked ``slow``; the timeout test stays in the default suite. The security settings
and what happens when ``fedrec deploy-local`` is killed: tests/test_deploy_security.py.
"""

from __future__ import annotations

import hashlib
import json
import sys
import tempfile
import time
from pathlib import Path

import pytest

from clients.device import NEGATIVE_KEY
from clients.sim_store import device_path
from clients.store import DeviceStore
from fedrec.metrics import USER_METRIC_KEYS
from fedrec.training.negatives import KEY_BYTES
from server.settings import RunSettings
from simulations.deploy import (
    LOOPBACK,
    Processes,
    _proc_info,
    free_ports,
    node_config,
    node_store,
    superexec_command,
    superlink_command,
    supernode_command,
    write_app,
)
from simulations.deploy_credentials import create_credentials

REPO = Path(__file__).resolve().parents[1]
TINY = "synthetic:users=3,items=30,seed=0"


def _running(pid: int, start: int) -> bool:
    info = _proc_info(pid)
    return info is not None and info[1] == start and info[2] != "Z"


def test_commands_bind_loopback_only(tmp_path: Path) -> None:
    # Prepare
    link_port, node_port = free_ports(2)
    creds = create_credentials(tmp_path / "c", 1)
    # Execute
    link = superlink_command(link_port, creds)
    node = supernode_command(link_port, node_port, node_config(0, 3, Path("/s")), creds, 0)
    execs = [superexec_command(p, creds, 1) for p in (link_port, node_port)]
    # Assert
    assert link[link.index("--host") + 1] == LOOPBACK
    assert node[node.index("--host") + 1] == LOOPBACK
    assert node[node.index("--superlink") + 1] == f"{LOOPBACK}:{link_port}"
    assert [e[e.index("--runtime-api-address") + 1] for e in execs] == [
        f"{LOOPBACK}:{link_port}",
        f"{LOOPBACK}:{node_port}",
    ]
    assert "--disable-runtime-dependency-installation" in link
    assert link_port != node_port


def test_node_config_names_user_and_store() -> None:
    # Execute
    text = node_config(2, 3, Path("/runs/a/clients/node-2"))
    # Assert: Flower's own parser reads it back
    from flwr.common.config import parse_config_args

    parsed = parse_config_args([text])
    assert parsed == {
        "partition-id": 2,
        "num-partitions": 3,
        "store-dir": "/runs/a/clients/node-2",
    }
    with pytest.raises(ValueError, match="quotes"):
        node_config(0, 1, Path('/runs/"x"'))


def test_app_copy_carries_the_settings_and_leaves_the_repo_alone(tmp_path: Path) -> None:
    # Prepare
    settings = RunSettings.from_run_config(
        {"data": TINY, "num-server-rounds": 2, "model.dim": 8, "train.lr": 0.05, "run-dir": "/r"}
    )
    before = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    # Execute
    app = write_app(tmp_path / "app", settings)
    # Assert: Flower validates the app and flattens its config back to the settings
    from flwr.cli.config_utils import load_and_validate
    from flwr.common.config import flatten_dict

    config, _ = load_and_validate(app / "pyproject.toml", check_module=False)
    flat = flatten_dict(config["tool"]["flwr"]["app"]["config"])
    assert RunSettings.from_run_config(flat) == settings
    assert "federations" not in config["tool"]["flwr"]
    assert (app / "clients" / "client_app.py").is_file()
    assert (app / "server" / "server_app.py").is_file()
    after = hashlib.sha256((REPO / "pyproject.toml").read_bytes()).hexdigest()
    assert before == after


def test_stop_ends_children_started_in_new_sessions(tmp_path: Path) -> None:
    # Prepare: a parent whose child starts its own session, as Flower's SuperExec does
    code = (
        "import subprocess, sys, time; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
        "start_new_session=True); time.sleep(300)"
    )
    procs = Processes({})
    procs.start("parent", [sys.executable, "-c", code], tmp_path / "p.log", {})
    deadline = time.monotonic() + 20
    while len(procs.tracked) < 2 and time.monotonic() < deadline:
        time.sleep(0.05)
        procs.track()
    tracked = dict(procs.tracked)
    # Execute
    procs.stop(grace=2.0, record=tmp_path / "processes.json")
    # Assert
    assert len(tracked) == 2
    assert not any(_running(pid, start) for pid, start in tracked.items())
    rows = json.loads((tmp_path / "processes.json").read_text())
    assert {r["pid"] for r in rows} == set(tracked) and not any(r["running"] for r in rows)


def test_stop_ends_orphans_by_their_inherited_token(tmp_path: Path) -> None:
    # Prepare: the parent exits at once, so its child is an orphan no parent links to us
    code = (
        "import subprocess, sys; "
        "subprocess.Popen([sys.executable, '-c', 'import time; time.sleep(300)'], "
        "start_new_session=True)"
    )
    procs = Processes({})
    procs.start("parent", [sys.executable, "-c", code], tmp_path / "p.log", {})
    procs.started["parent"].wait(timeout=20)
    procs.tracked.clear()  # forget what was seen while the parent lived
    deadline = time.monotonic() + 20
    while not procs.alive() and time.monotonic() < deadline:
        time.sleep(0.05)
        procs.track()
    orphans = {pid: procs.tracked[pid] for pid in procs.alive()}
    # Execute
    procs.stop(grace=2.0)
    # Assert
    assert len(orphans) == 1
    assert not any(_running(pid, start) for pid, start in orphans.items())


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.deploy
def test_deploy_local_three_nodes_two_rounds(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    from simulations.cli import main

    scratch = tmp_path / "tmp"
    scratch.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(scratch))
    out = tmp_path / "run"
    # iALS samples no negatives, so the deployed devices' secret negative keys leave the
    # run equal to the in-process one (an MF run's negatives differ: docs/PRIVACY.md).
    # Neither command is given alpha0: both shape it from the data (3.0 on 3 users).
    model = ["--model", "ials"]
    argv = ["deploy-local", "--data", TINY, "--nodes", "3", "--rounds", "2", *model]
    argv += ["--out", str(out), "--timeout", "600"]
    # Execute
    t0 = time.perf_counter()
    rc = main(argv)
    wall = time.perf_counter() - t0
    # Assert: the run directory of `fedrec simulate`
    assert rc == 0
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").read_text().splitlines()]
    assert [r["round"] for r in rounds] == [1, 2]
    assert all(sorted(r["participants"]) == [1, 2, 3] and not r["failed"] for r in rounds)
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["users_evaluated"] == 3 and 0.0 <= metrics["ndcg@10"] <= 1.0
    for name in ("config.json", "checkpoint.npz", "report.md", "logs/superlink.log"):
        assert (out / name).is_file(), name
    assert sorted(p.name for p in (out / "clients").iterdir()) == ["node-0", "node-1", "node-2"]
    for node in range(3):  # each deployed device drew its own secret negative key
        with DeviceStore.open(device_path(node_store(out, node), node)) as store:
            assert len(bytes.fromhex(store.get_meta(NEGATIVE_KEY))) == KEY_BYTES
    # Assert: no process left running, checked by pid and start time
    rows = json.loads((out / "logs" / "processes.json").read_text())
    commands = {r["command"] for r in rows}
    assert {"flower-superlink", "flower-supernode", "flower-superexec"} <= commands
    assert {"flwr-serverapp", "flwr-clientapp"} <= commands
    assert not any(_running(r["pid"], r["start"]) for r in rows)
    # Assert: the temporary folder (credentials, app copy, Flower homes) is gone, and
    # the watchdog was dismissed without having to sweep anything
    assert list(scratch.iterdir()) == []
    assert (out / "logs" / "watchdog.log").read_text() == ""
    # Assert: the same result as the same apps in one process (no Flower processes)
    ref = tmp_path / "ref"
    argv = ["simulate", "--engine", "inprocess", "--data", TINY, "--rounds", "2", *model]
    assert main([*argv, "--clients-per-round", "3", "--out", str(ref)]) == 0
    expected = json.loads((ref / "metrics.json").read_text())
    # the deployed evaluation averages the devices' metrics (no list leaves a device, so
    # no coverage, novelty or Gini); simulate's harness measures the very same devices
    assert "coverage@10" not in metrics and "coverage@10" in expected
    for key in (*USER_METRIC_KEYS, "users_evaluated"):
        assert metrics[key] == pytest.approx(expected[key], abs=1e-12), key
    assert metrics["reference"] == expected["reference"]
    print(f"deploy-local 3 nodes x 2 rounds: {wall:.1f} s wall")


def test_deploy_local_refuses_more_nodes_than_users(tmp_path: Path) -> None:
    # Prepare
    from simulations.cli import main

    # Execute
    rc = main(["deploy-local", "--data", TINY, "--nodes", "4", "--out", str(tmp_path / "r")])
    # Assert: refused before any process starts
    assert rc == 2
    assert not (tmp_path / "r" / "logs").exists()


@pytest.mark.flower
@pytest.mark.deploy
def test_a_run_past_its_timeout_stops_every_flower_process(tmp_path: Path) -> None:
    # Prepare: real SuperLink, SuperNodes and flwr run, and 1 s for the run
    from simulations.deploy import DeployError, deploy_local

    settings = RunSettings.from_run_config(
        {"data": TINY, "num-server-rounds": 1, "run-dir": str(tmp_path / "run")}
    )
    # Execute
    with pytest.raises(DeployError, match="did not finish"):
        deploy_local(settings, 1, timeout=1.0)
    # Assert: the whole tree was recorded, and none of it is running
    rows = json.loads((tmp_path / "run" / "logs" / "processes.json").read_text())
    commands = {r["command"] for r in rows}
    assert {"flower-superlink", "flower-supernode", "flower-superexec", "flwr"} <= commands
    assert not any(_running(r["pid"], r["start"]) for r in rows)


def test_deploy_local_resume_is_refused_while_another_process_drives_the_run(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run directory whose lock another process (here: this test) holds
    from simulations.cli import main
    from simulations.run_dir import acquire_run_dir, create_run_dir

    run = tmp_path / "run"
    create_run_dir(run, RunSettings.from_run_config({"data": TINY, "run-dir": str(run)}))
    with acquire_run_dir(run):
        # Execute
        code = main(["deploy-local", "--resume", str(run), "--nodes", "3"])
    # Assert: refused before any Flower process starts
    err = capsys.readouterr().err
    assert code == 2 and "in use by another fedrec process" in err


def test_deploy_local_resume_is_refused_on_changed_data(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a run on a CSV, then the CSV loses a user
    from simulations.cli import main
    from simulations.run_dir import create_run_dir

    data = tmp_path / "log.csv"
    rows = [f"{u},{i}" for u in range(1, 4) for i in range(1, 9)]
    data.write_text("user,item\n" + "\n".join(rows) + "\n")
    run = tmp_path / "run"
    create_run_dir(run, RunSettings.from_run_config({"data": str(data), "run-dir": str(run)}))
    data.write_text("user,item\n" + "\n".join(rows[:-8]) + "\n")
    # Execute
    code = main(["deploy-local", "--resume", str(run), "--nodes", "3"])
    # Assert
    err = capsys.readouterr().err
    assert code == 2 and "users 3 -> 2" in err
