"""Security of ``fedrec simulate`` (issue 15): no open doors, one process per run, resume
that checks its data, private files, nothing left by a refused run.

Socket tests read ``/proc`` socket tables of the run's own process tree and connect to
nothing; the Ray test connects only to 127.0.0.1.
"""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import textwrap
import time
from pathlib import Path

import pytest

from fedrec.errors import DataError, OutputError
from simulations.cli import main

ROOT = Path(__file__).resolve().parents[1]
TINY = "synthetic:users=12,items=30,seed=0"
QUICK = ["--rounds", "1", "--clients-per-round", "4", "--eval-every", "0", "--eval-clients", "4"]


# ---------------------------------------------------------------- socket tables


def _tree(root: int) -> set[int]:
    """``root`` and all its descendants (from each thread's ``children`` list)."""
    tree, todo = set(), [root]
    while todo:
        pid = todo.pop()
        if pid in tree:
            continue
        tree.add(pid)
        for task in Path(f"/proc/{pid}/task").glob("*"):
            try:
                todo += [int(c) for c in (task / "children").read_text().split()]
            except OSError:
                continue
    return tree


def _listening_inodes() -> dict[int, str]:
    """Socket inode -> ``local address:port`` of every TCP socket in LISTEN state."""
    out: dict[int, str] = {}
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(table).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            cols = line.split()
            if cols[3] == "0A":  # TCP_LISTEN
                out[int(cols[9])] = cols[1]
    return out


def _socket_inodes(pid: int) -> set[int]:
    found: set[int] = set()
    try:
        fds = list(Path(f"/proc/{pid}/fd").iterdir())
    except OSError:
        return found
    for fd in fds:
        try:
            target = os.readlink(fd)
        except OSError:
            continue
        if target.startswith("socket:["):
            found.add(int(target[8:-1]))
    return found


def listeners_of_tree(root: int) -> set[str]:
    """Listening TCP addresses held by ``root``'s process tree right now."""
    listening = _listening_inodes()
    held: set[str] = set()
    for pid in _tree(root):
        held |= {listening[i] for i in _socket_inodes(pid) if i in listening}
    return held


def watch_listeners(proc: subprocess.Popen[bytes], timeout: float) -> set[str]:
    """Poll the process tree's listeners until ``proc`` exits; all that were seen."""
    seen: set[str] = set()
    deadline = time.monotonic() + timeout
    while proc.poll() is None and time.monotonic() < deadline:
        seen |= listeners_of_tree(proc.pid)
        time.sleep(0.02)
    return seen


def test_listener_watch_sees_a_child_that_listens() -> None:
    # Prepare: a parent whose child listens on loopback (nobody connects to it)
    code = (
        "import socket, subprocess, sys, time\n"
        'child = \'import socket,time; s=socket.socket(); s.bind(("127.0.0.1", 0)); '
        "s.listen(); time.sleep(1.5)'\n"
        "subprocess.run([sys.executable, '-c', child])\n"
    )
    proc = subprocess.Popen([sys.executable, "-c", code])
    # Execute
    seen = watch_listeners(proc, timeout=20)
    proc.wait(10)
    # Assert: the checker would catch a listening socket anywhere in the tree
    assert any(addr.startswith("0100007F:") for addr in seen), seen


def test_default_simulate_opens_no_listening_socket(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import threading

    # Prepare: this process runs the simulation, so its tree is the run's tree
    before = listeners_of_tree(os.getpid())
    argv = ["simulate", "--data", TINY, *QUICK, "--out", str(tmp_path / "run")]
    codes: list[int] = []
    worker = threading.Thread(target=lambda: codes.append(main(argv)))
    # Execute: the default engine, its process tree watched from start to end
    seen: set[str] = set()
    worker.start()
    while worker.is_alive():
        seen |= listeners_of_tree(os.getpid())
        time.sleep(0.05)
    worker.join()
    # Assert
    assert codes == [0]
    assert "engine: in-process (no Ray, no network sockets)" in capsys.readouterr().out
    assert seen - before == set()
    assert (tmp_path / "run" / "metrics.json").is_file()


# ---------------------------------------------------------------- Ray token auth


_RAY_PROBE = textwrap.dedent(
    """
    import json, os, subprocess, sys, tempfile, time
    import ray
    from flwr.app import Context
    from flwr.serverapp import Grid, ServerApp
    from simulations.simulation import run_apps

    CLIENT = (
        "import sys, ray\\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR')\\n"
        "print('CONNECTED', ray.cluster_resources().get('CPU'), flush=True)\\n"
    )
    AUTH_VARS = ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH")

    def attempt(address, extra):
        env = {k: v for k, v in os.environ.items() if k not in AUTH_VARS}
        env.update(extra)
        with tempfile.TemporaryFile("w+") as log:
            proc = subprocess.Popen([sys.executable, "-c", CLIENT, address], env=env,
                                    stdout=log, stderr=subprocess.STDOUT, text=True)
            deadline, text = time.monotonic() + 120, ""
            while time.monotonic() < deadline:
                time.sleep(0.5)
                log.seek(0)
                text = log.read()
                if "CONNECTED" in text or "Unauthenticated" in text or proc.poll() is not None:
                    break
            proc.kill()
            proc.wait()
        return "connected" if "CONNECTED" in text else (
            "refused" if "Unauthenticated" in text else text[-300:])

    result = {}
    app = ServerApp()

    @app.main()
    def main(grid: Grid, context: Context) -> None:
        while not ray.is_initialized():  # the engine starts Ray beside this thread
            time.sleep(0.1)
        time.sleep(1.0)
        port = ray.get_runtime_context().gcs_address.rsplit(":", 1)[1]
        address = f"127.0.0.1:{port}"
        token = os.environ["RAY_AUTH_TOKEN_PATH"]
        result["mode"] = os.environ["RAY_AUTH_MODE"]
        result["token_file"] = token
        result["file_mode"] = oct(os.stat(token).st_mode & 0o777)
        result["dir_mode"] = oct(os.stat(os.path.dirname(token)).st_mode & 0o777)
        result["no_token"] = attempt(address, {})
        result["wrong_token"] = attempt(address, {"RAY_AUTH_MODE": "token",
                                                  "RAY_AUTH_TOKEN": "0" * 64})
        result["right_token"] = attempt(address, {"RAY_AUTH_MODE": "token",
                                                  "RAY_AUTH_TOKEN_PATH": token})

    run_apps(app, 2)
    result["env_after"] = {k: os.environ.get(k) for k in AUTH_VARS}
    print("RESULT " + json.dumps(result), flush=True)
    """
)


@pytest.mark.slow
@pytest.mark.flower
def test_ray_engine_refuses_a_client_without_the_run_token() -> None:
    # Prepare: fedrec's Ray path (run_apps) with a ServerApp that attacks its own cluster
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", _RAY_PROBE],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=400,
    )
    # Assert
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-2000:] + done.stderr[-2000:]
    result = json.loads(lines[-1][7:])
    assert result["mode"] == "token"
    assert result["no_token"] == "refused"
    assert result["wrong_token"] == "refused"
    assert result["right_token"] == "connected"  # the probe can tell the two apart
    assert result["file_mode"] == "0o600" and result["dir_mode"] == "0o700"
    assert not Path(result["token_file"]).parent.exists()  # removed at the end
    assert result["env_after"] == {
        "RAY_AUTH_MODE": None,
        "RAY_AUTH_TOKEN": None,
        "RAY_AUTH_TOKEN_PATH": None,
    }


def test_ray_token_auth_makes_a_private_token_per_run_and_removes_it(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from fedrec.ray_auth import ray_token_auth

    # Prepare
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    # Execute
    with ray_token_auth() as first:
        assert first is not None
        token = first.read_text()
        modes = (stat.S_IMODE(first.stat().st_mode), stat.S_IMODE(first.parent.stat().st_mode))
        env = (os.environ["RAY_AUTH_MODE"], os.environ["RAY_AUTH_TOKEN_PATH"])
    with ray_token_auth() as second:
        assert second is not None
        other = second.read_text()
    # Assert
    assert modes == (0o600, 0o700)
    assert env == ("token", str(first))
    assert len(token) == 64 and token != other
    assert not first.parent.exists() and not second.parent.exists()
    assert "RAY_AUTH_MODE" not in os.environ and "RAY_AUTH_TOKEN_PATH" not in os.environ


def test_ray_token_auth_keeps_a_users_own_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.ray_auth import ray_token_auth

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/cluster/token")
    with ray_token_auth() as path:
        assert path is None
        assert os.environ["RAY_AUTH_TOKEN_PATH"] == "/cluster/token"


def test_flwr_simulation_process_gets_token_auth_before_ray_starts() -> None:
    # Prepare: Flower's `flwr-simulation` process (started by `flwr run`) loads the
    # ClientApp before it calls ray.init
    code = textwrap.dedent(
        """
        import os, sys
        sys.argv[0] = "/venv/bin/flwr-simulation"
        import clients.client_app
        print(os.environ.get("RAY_AUTH_MODE"), len(os.environ.get("RAY_AUTH_TOKEN", "")),
              os.environ.get("RAY_AUTH_TOKEN_PATH"))
        """
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    # Execute
    out = subprocess.run(
        [sys.executable, "-c", code], cwd=ROOT, env=env, capture_output=True, text=True
    )
    # Assert: a 256-bit token in the environment Ray's processes inherit, no file
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.split() == ["token", "64", "None"]


def test_other_processes_are_left_alone(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.ray_auth import secure_flwr_simulation

    monkeypatch.delenv("RAY_AUTH_MODE", raising=False)
    for argv0 in ("/venv/bin/flower-supernode", "/venv/lib/ray/default_worker.py"):
        monkeypatch.setattr(sys, "argv", [argv0])
        assert secure_flwr_simulation() is False
    assert "RAY_AUTH_MODE" not in os.environ


# ---------------------------------------------------------------- one process per run


def _new_run(tmp_path: Path, data: str = TINY) -> Path:
    run_dir = tmp_path / "run"
    assert main(["simulate", "--data", data, *QUICK, "--out", str(run_dir)]) == 0
    return run_dir


_HOLDER = (
    "import fcntl, os, sys\n"
    "fd = os.open(sys.argv[1], os.O_RDWR | os.O_CREAT, 0o600)\n"
    "fcntl.flock(fd, fcntl.LOCK_EX)\n"
    "os.ftruncate(fd, 0)\n"
    "os.write(fd, f'{os.getpid()}\\n'.encode())\n"
    "print('held', flush=True)\n"
    "sys.stdin.read()\n"
)


def test_concurrent_resume_is_refused(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from simulations.cli import build_parser
    from simulations.commands.simulate import settings_from_args
    from simulations.run_dir import LOCK_FILE, acquire_run_dir, create_run_dir

    # Prepare: a run directory, locked by another process as a running fedrec holds it
    run_dir = tmp_path / "run"
    args = build_parser().parse_args(["simulate", "--data", TINY, *QUICK, "--out", str(run_dir)])
    create_run_dir(run_dir, settings_from_args(args))
    before = sorted(p.name for p in run_dir.iterdir())
    holder = subprocess.Popen(
        [sys.executable, "-c", _HOLDER, str(run_dir / LOCK_FILE)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout is not None and holder.stdout.readline().strip() == "held"
        # Execute
        code = main(["simulate", "--resume", str(run_dir)])
        err = capsys.readouterr().err
    finally:
        holder.kill()
        holder.wait()
    # Assert: refused at once, nothing touched; the lock dies with its process
    assert code == 2
    assert f"run directory {run_dir} is in use by another fedrec process (pid {holder.pid})" in err
    assert "wait for it or use another --out" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before
    acquire_run_dir(run_dir).release()  # killed holder: no stale lock


def test_a_second_lock_in_one_process_is_refused(tmp_path: Path) -> None:
    from simulations.run_dir import acquire_run_dir

    tmp_path.chmod(0o700)
    with acquire_run_dir(tmp_path), pytest.raises(OutputError, match=f"pid {os.getpid()}"):
        acquire_run_dir(tmp_path)
    acquire_run_dir(tmp_path).release()  # released with the first


# ---------------------------------------------------------------- resume checks its data


def _write_csv(path: Path, users: int = 12) -> None:
    lines = ["user,item,rating,timestamp"]
    for u in range(users):
        for k in range(8):
            lines.append(f"u{u},i{(u * 7 + k * 3) % 30},4,{1000 + len(lines)}")
    path.write_text("\n".join(lines) + "\n")


def test_resume_on_changed_data_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare: a finished run on a CSV, then one user removed from the CSV
    csv = tmp_path / "ratings.csv"
    _write_csv(csv)
    original = csv.read_text()
    run_dir = _new_run(tmp_path, str(csv))
    csv.write_text(
        "".join(line for line in original.splitlines(True) if not line.startswith("u3,"))
    )
    state = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    capsys.readouterr()
    # Execute
    refused = main(["simulate", "--resume", str(run_dir)])
    err = capsys.readouterr().err
    csv.write_text(original)
    restored = main(["simulate", "--resume", str(run_dir)])
    # Assert: refused with what changed and what to do; the restored data resume
    assert refused == 2
    assert "the data changed since the run started" in err and "users 12 -> 11" in err
    assert "start a new run with --out" in err
    assert restored == 0
    kept = {p.name: p.read_bytes() for p in run_dir.iterdir() if p.is_file()}
    assert state["config.json"] == kept["config.json"]


def test_resume_on_another_split_is_refused(tmp_path: Path) -> None:
    from server.settings import load_split
    from simulations.cli import build_parser
    from simulations.commands.simulate import settings_from_args
    from simulations.run_dir import check_fingerprint, create_run_dir, resume_settings

    # Prepare: a run directory; the same data split with another seed
    args = build_parser().parse_args(["simulate", "--data", TINY, "--out", str(tmp_path / "r")])
    settings = settings_from_args(args)
    create_run_dir(tmp_path / "r", settings)
    same = resume_settings(tmp_path / "r")
    other = load_split(settings_from_args(build_parser().parse_args(
        ["simulate", "--data", TINY, "--seed", "1", "--out", str(tmp_path / "r")]
    )))  # fmt: skip
    # Execute / Assert
    check_fingerprint(tmp_path / "r", load_split(same), same)  # unchanged: accepted
    with pytest.raises(DataError, match="the train/test split changed"):
        check_fingerprint(tmp_path / "r", other, same)


# ---------------------------------------------------------------- private files


def _modes(root: Path) -> dict[str, int]:
    out = {".": stat.S_IMODE(root.stat().st_mode)}
    for path in root.rglob("*"):
        out[str(path.relative_to(root))] = stat.S_IMODE(path.lstat().st_mode)
    return out


def test_run_directory_is_0700_and_every_file_0600_under_a_permissive_umask(
    tmp_path: Path,
) -> None:
    # Prepare: a umask that would make everything world-readable
    old = os.umask(0o022)
    try:
        # Execute
        run_dir = _new_run(tmp_path)
        modes = _modes(run_dir)
    finally:
        os.umask(old)
    # Assert
    stores = [name for name in modes if name.endswith(".sqlite")]
    assert stores and "rounds.jsonl" in modes and "checkpoint.npz" in modes
    bad = {
        name: oct(mode)
        for name, mode in modes.items()
        if mode != (0o700 if (run_dir / name).is_dir() else 0o600)
    }
    assert bad == {}


def test_device_store_and_round_log_are_private_without_the_cli_umask(tmp_path: Path) -> None:
    import numpy as np

    from clients.sim_store import device_path, open_device
    from server.checkpoint import append_round

    # Prepare
    old = os.umask(0o022)
    try:
        # Execute: library calls, as `flwr run` makes them (no fedrec CLI umask)
        open_device(tmp_path / "clients", 1234, np.arange(3, dtype=np.int64), seed=0).close()
        append_round(tmp_path, {"round": 1})
    finally:
        os.umask(old)
    # Assert
    store = device_path(tmp_path / "clients", 1234)
    assert stat.S_IMODE(store.stat().st_mode) == 0o600
    assert stat.S_IMODE(store.parent.stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "clients").stat().st_mode) == 0o700
    assert stat.S_IMODE((tmp_path / "rounds.jsonl").stat().st_mode) == 0o600
    for side in store.parent.glob("*-wal"):
        assert stat.S_IMODE(side.stat().st_mode) == 0o600


def test_split_files_are_private(tmp_path: Path) -> None:
    old = os.umask(0o022)
    try:
        assert main(["split", "--data", TINY, "--out", str(tmp_path / "s")]) == 0
    finally:
        os.umask(old)
    assert _modes(tmp_path / "s") == {".": 0o700, "train.csv": 0o600, "test.csv": 0o600}


# ---------------------------------------------------------------- refused runs leave nothing


@pytest.mark.parametrize(
    "bad",
    [
        ["--data", "/nonexistent/ratings.csv"],
        ["--data", "MALFORMED"],
        ["--rounds", "0"],
        ["--k-core", "0"],
        ["--seed", "-1"],
        ["--set", "model.dim=1.5"],
        ["--set", "train.lr=abc"],
        ["--set", "no.such=1"],
        ["--privacy", "local", "--delta", "2"],
        ["--privacy", "central", "--clip-norm", "0"],
    ],
)
def test_a_refused_simulate_leaves_no_directory(
    tmp_path: Path, bad: list[str], capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    malformed = tmp_path / "bad.csv"
    malformed.write_text('user,item\nu1\n"unterminated,\n')
    argv = ["simulate", "--data", TINY, *QUICK, "--out", str(tmp_path / "run")]
    argv += [str(malformed) if a == "MALFORMED" else a for a in bad]
    # Execute
    code = main(argv)
    # Assert: refused, nothing created, so the same --out works at once
    assert code == 2, capsys.readouterr()
    assert "error:" in capsys.readouterr().err
    assert not (tmp_path / "run").exists()
