"""Run the fedrec apps on Flower's Deployment Engine on this machine, over loopback.

Design rule: :func:`deploy_local` is a script, not a second engine. It starts exactly
what a real deployment starts (``flower-superlink``, one ``flower-supernode`` per
device, their ``flower-superexec``s, ``flwr run``), each as its own process bound to
``127.0.0.1`` only, with the same ``ServerApp`` and ``ClientApp`` as ``fedrec simulate``,
and it stops every process it started, and their children, on success, error, Ctrl-C,
SIGTERM and SIGHUP alike; a watchdog (:mod:`simulations.deploy_watchdog`) does it if
the deployment itself is killed. Node ``i`` is user ``i`` of the split
(``--node-config partition-id=i``) and keeps its device state in its own folder
``RUN_DIR/clients/node-<i>`` (``store-dir`` in its node config).

Locked down as far as open-source Flower 1.42 allows (docs/SECURITY.md, "Deployment"),
with credentials made per deployment (:mod:`simulations.deploy_credentials`): TLS on
every API (SuperLink and SuperNode Runtime APIs), SuperNode authentication (each node's
public key registered through the Control API before the node starts; unregistered
keys are refused), and the SuperExec shared secret on every Runtime API (which needs
``--isolation process``: the SuperExecs are started here, not by Flower). What stays
open: the Control API authenticates no one, so any local account can submit a run.

Flower 1.42 specifics (docs/DEPLOYMENT.md): the SuperLink serves its Fleet, Control
and Runtime APIs on one HTTPS port; each SuperNode serves its Runtime API on a port of
its own; each SuperExec spawns one ``flwr-serverapp`` per run / one ``flwr-clientapp``
per message, in new sessions. ``flwr run`` reads its SuperLink address from
``$FLWR_HOME/config.toml`` and migrates (rewrites) a ``pyproject.toml`` that has
``[tool.flwr.federations]``, so the app is run from a temporary copy whose
``[tool.flwr.app.config]`` holds the run's settings
(:meth:`server.settings.RunSettings.to_flat`; dotted keys are quoted), and every
``FLWR_HOME`` is a temporary folder: nothing under ``~`` or in the repo changes.
"""

from __future__ import annotations

import ctypes
import dataclasses
import json
import os
import re
import secrets
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import tomllib
from collections.abc import Callable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path
from typing import IO, Any

from fedrec.data.atomic import atomic_write_bytes
from fedrec.errors import ConfigError, FedrecError
from server.checkpoint import CLIENTS_DIR, METRICS_JSON
from server.gram_settings import GramSettings
from server.settings import RunSettings
from simulations import deploy_watchdog
from simulations.deploy_credentials import Credentials, create_credentials

LOOPBACK = "127.0.0.1"
CONNECTION = "fedrec-local"
APP_PACKAGES = ("fedrec", "clients", "server")
LOGS_DIR = "logs"
TOKEN_VAR = "FEDREC_DEPLOYMENT"
_REPO = Path(__file__).resolve().parents[1]
_RUN_ID = re.compile(r"Successfully started run (\d+)")
_NODE_UP = "SuperNode ID:"
SUPERLINK_UP = "Uvicorn running on https://"
# seconds between SIGTERM and SIGKILL when a deployment stops: short enough that a
# closed terminal or `kill` ends everything within 10 s even on a busy machine;
# nothing is lost by SIGKILL (SuperLink state is in memory, device stores are SQLite)
STOP_GRACE = 3.0
Status = Callable[[str], None]
AnySettings = RunSettings | GramSettings
"""A round-loop run, or a one-round federated-EASE run (``--model ease``)."""


class DeployError(FedrecError):
    """A process of the local deployment failed, or the run did not complete."""


def free_ports(n: int) -> list[int]:
    """``n`` distinct free TCP ports on 127.0.0.1 (all held open until all are chosen)."""
    socks = []
    try:
        for _ in range(n):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind((LOOPBACK, 0))
            socks.append(s)
        return [int(s.getsockname()[1]) for s in socks]
    finally:
        for s in socks:
            s.close()


def node_store(run_dir: Path, node: int) -> Path:
    """The device-state folder of node ``node`` (its ``store-dir``)."""
    return run_dir / CLIENTS_DIR / f"node-{node}"


def node_config(node: int, n_nodes: int, store: Path) -> str:
    """The ``--node-config`` of a SuperNode: its user, the node count, its store folder."""
    text = str(store)
    if any(c in text for c in "\"'\\"):
        raise ConfigError(
            "quotes and backslashes cannot be passed in a Flower node config",
            where=text,
            fix="choose a run directory whose path has none",
        )
    return f'partition-id={node} num-partitions={n_nodes} store-dir="{text}"'


def _tls_server(creds: Credentials) -> list[str]:
    return [
        "--ssl-certfile",
        str(creds.server_cert),
        "--ssl-keyfile",
        str(creds.server_key),
        "--ssl-ca-certfile",
        str(creds.ca_cert),
    ]


def superlink_command(port: int, creds: Credentials) -> list[str]:
    """``flower-superlink`` on ``127.0.0.1:port``: TLS, SuperNode auth, SuperExec secret.

    ``--isolation process``: Flower ignores the SuperExec secret when it starts the
    SuperExec itself (``subprocess``), so :func:`superexec_command` starts it here.
    Dependencies are never installed.
    """
    return [
        "flower-superlink",
        *_tls_server(creds),
        "--enable-supernode-auth",
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(creds.superexec_secret),
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        "--disable-runtime-dependency-installation",
    ]


def supernode_command(
    superlink_port: int, port: int, config: str, creds: Credentials, node: int
) -> list[str]:
    """``flower-supernode`` ``node``: verifies the SuperLink's certificate, signs with its
    key, serves its Runtime API on ``127.0.0.1:port`` over TLS behind the SuperExec secret.
    """
    return [
        "flower-supernode",
        "--root-certificates",
        str(creds.ca_cert),
        "--auth-supernode-private-key",
        str(creds.node_keys[node]),
        "--superlink",
        f"{LOOPBACK}:{superlink_port}",
        "--host",
        LOOPBACK,
        "--port",
        str(port),
        *_tls_server(creds),
        "--isolation",
        "process",
        "--superexec-auth-secret-file",
        str(creds.superexec_secret),
        "--node-config",
        config,
    ]


def superexec_command(runtime_port: int, creds: Credentials, parent_pid: int) -> list[str]:
    """``flower-superexec`` for the Runtime API on ``127.0.0.1:runtime_port`` (TLS, secret).

    ``parent_pid``: the SuperLink or SuperNode it serves; it exits when that one does.
    """
    return [
        "flower-superexec",
        "--root-certificates",
        str(creds.ca_cert),
        "--runtime-api-address",
        f"{LOOPBACK}:{runtime_port}",
        "--superexec-auth-secret-file",
        str(creds.superexec_secret),
        "--parent-pid",
        str(parent_pid),
    ]


def register_command(public_key: Path) -> list[str]:
    """``flwr supernode register``: the SuperLink accepts the node holding that key."""
    return ["flwr", "supernode", "register", str(public_key), CONNECTION]


def write_app(app_dir: Path, settings: AnySettings) -> Path:
    """A copy of the fedrec app whose ``[tool.flwr.app.config]`` is ``settings``."""
    import tomli_w  # a dependency of flwr (its config files)

    with open(_REPO / "pyproject.toml", "rb") as fh:
        project = tomllib.load(fh)
    flwr_app = dict(project["tool"]["flwr"]["app"])
    flwr_app["config"] = settings.to_flat()
    keep = ("name", "version", "description", "license", "dependencies")
    pyproject = {
        "build-system": project["build-system"],
        "project": {k: v for k, v in project["project"].items() if k in keep},
        "tool": {"flwr": {"app": flwr_app}},  # no federations: flwr run would rewrite them
    }
    app_dir.mkdir(parents=True, exist_ok=True)
    (app_dir / "pyproject.toml").write_text(tomli_w.dumps(pyproject), encoding="utf-8")
    ignore = shutil.ignore_patterns("__pycache__", "*.pyc")
    for package in APP_PACKAGES:
        shutil.copytree(_REPO / package, app_dir / package, ignore=ignore)
    return app_dir


def write_flower_config(flwr_home: Path, superlink_port: int, ca_cert: Path) -> Path:
    """``$FLWR_HOME/config.toml``: connection ``fedrec-local``, TLS verified with ``ca_cert``."""
    import tomli_w

    flwr_home.mkdir(parents=True, exist_ok=True)
    path = flwr_home / "config.toml"
    connection = {"address": f"{LOOPBACK}:{superlink_port}", "root-certificates": str(ca_cert)}
    config = {"superlink": {"default": CONNECTION, CONNECTION: connection}}
    path.write_text(tomli_w.dumps(config), encoding="utf-8")
    return path


_proc_info = deploy_watchdog.proc_info
_has_env = deploy_watchdog.has_env


def _die_with_parent() -> None:
    """In a child before ``exec``: SIGTERM when the thread that started it exits (Linux).

    A first line of defence against SIGKILL of the deployment; the watchdog is the
    second (it also reaches grandchildren in other sessions).
    """
    if _LIBC is not None:
        _LIBC.prctl(_PR_SET_PDEATHSIG, int(signal.SIGTERM), 0, 0, 0)


# loaded here, not in the forked child, where as little as possible should run
_LIBC = ctypes.CDLL(None, use_errno=True) if sys.platform == "linux" else None
_PR_SET_PDEATHSIG = 1


def _command_name(pid: int) -> str:
    try:
        argv = Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0")
    except OSError:
        return "?"
    names = [Path(a.decode(errors="replace")).name for a in argv[:2]]
    return names[1] if names[0].startswith("python") and len(names) > 1 else names[0]


class Processes:
    """Processes started here, and every descendant they spawn, stopped together.

    Each process starts in a new session (its own process group). Descendants are
    tracked by ``(pid, start time)`` from ``/proc`` (:meth:`track`), because Flower's
    SuperExec starts its children in new sessions too: a process is ours when its
    parent is, or when it inherited this deployment's ``FEDREC_DEPLOYMENT`` token in
    its environment (an orphan whose parent already exited). :meth:`stop` signals only
    tracked processes whose start time still matches, so a reused pid is never hit.
    """

    def __init__(self, env: dict[str, str], record: Path | None = None) -> None:
        self.token = secrets.token_hex(8)
        self.env = {**env, TOKEN_VAR: self.token}
        self.started: dict[str, subprocess.Popen[bytes]] = {}
        self.tracked: dict[int, int] = {}
        self.names: dict[int, str] = {}
        self.record = record  # "pid start" lines for the watchdog
        self._logs: dict[str, tuple[IO[bytes], int]] = {}

    @property
    def marker(self) -> str:
        """``FEDREC_DEPLOYMENT=<token>``: in the environment of every process started."""
        return f"{TOKEN_VAR}={self.token}"

    def start(self, name: str, cmd: list[str], log: Path, env: dict[str, str]) -> None:
        """Start ``cmd`` as ``name``, stdout and stderr to ``log``."""
        # closed in stop(); created 0600: process logs can name users
        out = open(log, "ab", opener=lambda path, flags: os.open(path, flags, 0o600))  # noqa: SIM115
        self._logs[name] = (out, out.tell())
        proc = subprocess.Popen(
            cmd,
            stdout=out,
            stderr=subprocess.STDOUT,
            stdin=subprocess.DEVNULL,
            env={**self.env, **env},
            start_new_session=True,
            preexec_fn=_die_with_parent if sys.platform == "linux" else None,
        )
        self.started[name] = proc
        self.track()

    def log_text(self, name: str) -> str:
        """What process ``name`` has written to its log so far (not earlier runs' lines)."""
        out, offset = self._logs[name]
        with open(out.name, "rb") as fh:
            fh.seek(offset)
            return fh.read().decode(errors="replace")

    def track(self) -> None:
        """Record every live descendant of the started processes."""
        children: dict[int, list[int]] = {}
        todo = [p.pid for p in self.started.values()]
        marker = self.marker.encode()
        known = len(self.tracked)
        for entry in os.scandir("/proc"):
            if entry.name.isdigit() and (info := _proc_info(int(entry.name))) is not None:
                children.setdefault(info[0], []).append(int(entry.name))
                if int(entry.name) not in self.tracked and _has_env(int(entry.name), marker):
                    todo.append(int(entry.name))
        while todo:
            pid = todo.pop()
            info = _proc_info(pid)
            if info is not None and pid not in self.tracked:
                self.tracked[pid] = info[1]
                self.names[pid] = _command_name(pid)
            todo.extend(children.get(pid, []))
        if self.record is not None and len(self.tracked) > known:
            lines = "".join(f"{pid} {start}\n" for pid, start in self.tracked.items())
            tmp = self.record.with_suffix(".tmp")
            tmp.write_text(lines, encoding="utf-8")
            tmp.replace(self.record)

    def alive(self) -> list[int]:
        """Tracked pids still running (zombies count as stopped)."""
        live = []
        for pid, start in self.tracked.items():
            info = _proc_info(pid)
            if info is not None and info[1] == start and info[2] != "Z":
                live.append(pid)
        return live

    def exited(self) -> dict[str, int]:
        """Started processes that have exited, with their exit codes."""
        return {n: rc for n, p in self.started.items() if (rc := p.poll()) is not None}

    def stop(self, grace: float = 10.0, record: Path | None = None) -> None:
        """SIGTERM everything tracked, wait up to ``grace`` s, then SIGKILL the rest.

        ``record``: a JSON file that receives every tracked process (pid, start time
        in clock ticks since boot, command, whether it is still running afterwards).
        Ctrl-C, SIGTERM and SIGHUP wait until the processes are stopped (blocked meanwhile).
        """
        stops = {signal.SIGINT, signal.SIGTERM, signal.SIGHUP}
        blocked = signal.pthread_sigmask(signal.SIG_BLOCK, stops)
        try:
            self._stop(grace)
        finally:
            signal.pthread_sigmask(signal.SIG_SETMASK, blocked)
        if record is not None:
            live = set(self.alive())
            rows = [
                {"pid": pid, "start": start, "command": self.names[pid], "running": pid in live}
                for pid, start in self.tracked.items()
            ]
            record.write_text(json.dumps(rows, indent=2) + "\n", encoding="utf-8")

    def _stop(self, grace: float) -> None:
        for sig, wait in ((signal.SIGTERM, grace), (signal.SIGKILL, 5.0)):
            signalled: set[int] = set()
            deadline = time.monotonic() + wait
            while True:
                self.track()  # also what was spawned meanwhile
                for pid in set(self.alive()) - signalled:
                    with suppress(ProcessLookupError):
                        os.kill(pid, sig)
                    signalled.add(pid)
                self.exited()  # reaps our direct children
                if not self.alive() or time.monotonic() > deadline:
                    break
                time.sleep(0.1)
        for proc in self.started.values():
            with suppress(ProcessLookupError, subprocess.TimeoutExpired):
                proc.wait(timeout=1.0)
        for out, _ in self._logs.values():
            out.close()


class Watchdog:
    """This deployment's watchdog process (:mod:`simulations.deploy_watchdog`).

    Started before any Flower process, in its own session (SIGHUP and Ctrl-C of the
    terminal do not reach it); its stdin is a pipe only this process holds, so it sees
    this process die, SIGKILL included, the moment the pipe closes. :meth:`dismiss` ends
    it after a normal stop.
    """

    def __init__(self, procs: Processes, folders: list[Path], log: Path) -> None:
        me = _proc_info(os.getpid())
        record = procs.record or Path(os.devnull)
        cmd = [sys.executable, "-I", deploy_watchdog.__file__, procs.marker, str(os.getpid())]
        cmd += [str(me[1] if me else 0), str(record), *map(str, folders)]
        env = {k: v for k, v in os.environ.items() if k != TOKEN_VAR}
        with open(log, "ab") as out:
            self.proc = subprocess.Popen(
                cmd,
                stdin=subprocess.PIPE,
                stdout=out,
                stderr=subprocess.STDOUT,
                env=env,
                start_new_session=True,
            )

    def dismiss(self, clean: bool) -> None:
        """End the watchdog and wait for it: ``clean``, everything was stopped here;
        otherwise it does its own sweep first."""
        stdin = self.proc.stdin
        with suppress(OSError):
            if stdin is not None:
                if clean:
                    stdin.write(deploy_watchdog.DONE)
                stdin.close()
        with suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=10.0)


def _wait_for_log(procs: Processes, logs: Path, name: str, text: str, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while text not in procs.log_text(name):
        _check_alive(procs, logs, allow=())
        if time.monotonic() > deadline:
            raise DeployError(f"{name} did not start in {timeout:.0f} s", where=str(logs))
        time.sleep(0.1)


def _register_nodes(
    procs: Processes, creds: Credentials, cli_env: dict[str, str], log: Path, timeout: float
) -> None:
    """Register every node's public key with the SuperLink (a few at a time)."""
    env = {**procs.env, **cli_env}
    keys = [creds.node_public_key(i) for i in range(len(creds.node_keys))]
    with open(log, "ab") as out:
        for first in range(0, len(keys), 4):
            batch = [
                subprocess.Popen(
                    register_command(key),
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    stdin=subprocess.DEVNULL,
                    env=env,
                    preexec_fn=_die_with_parent if sys.platform == "linux" else None,
                )
                for key in keys[first : first + 4]
            ]
            codes = []
            for proc in batch:
                try:
                    codes.append(proc.wait(timeout=timeout))
                except subprocess.TimeoutExpired:
                    proc.kill()
                    codes.append(proc.wait())
            if any(codes):
                raise DeployError(
                    f"the SuperLink refused to register a SuperNode key (exit codes {codes})",
                    where=str(log),
                    fix="read that log",
                )


def _wait_for_nodes(procs: Processes, logs: Path, n_nodes: int, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        _check_alive(procs, logs, allow=())
        up = sum(_NODE_UP in procs.log_text(f"supernode-{i}") for i in range(n_nodes))
        if up == n_nodes:
            return
        time.sleep(0.2)
    raise DeployError(f"not all {n_nodes} SuperNodes connected in {timeout:.0f} s", where=str(logs))


def _check_alive(procs: Processes, logs: Path, allow: tuple[str, ...]) -> None:
    dead = {n: rc for n, rc in procs.exited().items() if n not in allow}
    if dead:
        name, rc = next(iter(dead.items()))
        raise DeployError(
            f"{name} exited early (exit code {rc})",
            where=str(logs / f"{name}.log"),
            fix="read that log",
        )


def _run_status(env: dict[str, str], run_id: str) -> str:
    out = subprocess.run(
        ["flwr", "ls", CONNECTION, "--run-id", run_id, "--format", "json"],
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
    )
    try:
        return str(json.loads(out.stdout)["runs"][0]["status"])
    except (json.JSONDecodeError, KeyError, IndexError):
        return f"unknown ({out.stdout.strip() or out.stderr.strip()})"


def flower_env() -> dict[str, str]:
    """This environment with Flower's commands first on ``PATH`` and telemetry off.

    The SuperLink and SuperNodes start ``flower-superexec`` (and it ``flwr-serverapp`` /
    ``flwr-clientapp``) by name, so the interpreter's ``bin`` folder must be on ``PATH``.
    """
    bin_dir = Path(sys.executable).parent
    if not (bin_dir / "flower-superlink").exists() and shutil.which("flower-superlink") is None:
        raise ConfigError(
            "Flower's commands (flower-superlink, flower-supernode, flwr) are not installed",
            where=str(bin_dir),
            fix="install fedrec's dependencies (flwr>=1.42) into this environment",
        )
    path = os.pathsep.join([str(bin_dir), os.environ.get("PATH", "")])
    return {**os.environ, "PATH": path, "FLWR_TELEMETRY_ENABLED": "0", "PYTHONUNBUFFERED": "1"}


def deploy_local(
    settings: AnySettings,
    n_nodes: int,
    *,
    timeout: float = 3600.0,
    connect_timeout: float = 120.0,
    on_round: Callable[[dict[str, Any]], None] | None = None,
    status: Status | None = None,
) -> dict[str, Any]:
    """Run ``settings`` on a SuperLink and ``n_nodes`` SuperNodes on 127.0.0.1.

    The run directory must exist with its ``config.json``
    (:func:`simulations.run_dir.create_run_dir`); it receives the same files as
    ``fedrec simulate`` plus ``logs/`` (one log per process). Node ``i`` is user ``i``.
    Every process started is stopped before this returns or raises. A federated-EASE
    run (:class:`GramSettings`; its ServerApp is :mod:`server.gram_app`'s, with SecAgg+
    under ``--privacy distributed``) is measured here afterwards, outside the
    deployment (:func:`measure_gram`), as ``fedrec simulate``'s harness measures it.

    Raises
    ------
    DeployError
        A process exited early, the nodes did not connect within ``connect_timeout``
        seconds, the run did not complete within ``timeout`` seconds, or failed.
    """
    from simulations.run_dir import read_metrics
    from simulations.simulation import _write_report, absolute

    if isinstance(settings, GramSettings):
        settings = dataclasses.replace(settings, base=absolute(settings.base))
        base = settings.base
    else:
        settings = base = absolute(settings)
    run_dir = Path(base.run_dir)
    check_nodes(base, n_nodes)
    logs = run_dir / LOGS_DIR
    logs.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(logs, 0o700)
    say = status or (lambda _: None)
    with supervised(logs, say) as (procs, tmp):
        creds = create_credentials(tmp / "credentials", n_nodes)
        cli_env = {"FLWR_HOME": str(tmp / "cli")}
        _start(procs, tmp, creds, base, n_nodes, logs, say, connect_timeout)
        _wait_for_nodes(procs, logs, n_nodes, connect_timeout)
        say(f"{n_nodes} SuperNodes connected; flwr run (logs in {logs})")
        app = write_app(tmp / "app", settings)
        run_cmd = ["flwr", "run", str(app), CONNECTION, "--stream"]
        procs.start("flwr-run", run_cmd, logs / "flwr-run.log", cli_env)
        _wait_for_run(procs, run_dir, timeout, on_round)
        _check_completed(procs, logs, cli_env)
    if isinstance(settings, GramSettings):
        measure_gram(settings)
    _write_report(run_dir)
    return read_metrics(run_dir)


def measure_gram(settings: GramSettings) -> dict[str, Any] | None:
    """Score a finished federated-EASE run's ``B`` on every test user; record it.

    The deployment's server never scores users (federated EASE answers no evaluate
    message), so this harness does it afterwards with the split it holds
    (:func:`simulations.evaluation.gram_evaluator`, as ``fedrec simulate``): the
    metrics go into ``metrics.json`` and the round's line of ``rounds.jsonl``.
    """
    from server.checkpoint import ROUNDS_JSONL, atomic_write_json, load_checkpoint
    from simulations.evaluation import gram_evaluator
    from simulations.run_dir import read_metrics, read_rounds

    run_dir = Path(settings.base.run_dir)
    ckpt = load_checkpoint(run_dir)
    if ckpt is None:
        raise DeployError("the federated-EASE run left no checkpoint", where=str(run_dir))
    metrics = gram_evaluator(settings.base)(ckpt.item_arrays[0])
    if metrics is None:
        return None
    atomic_write_json(run_dir / METRICS_JSON, {**read_metrics(run_dir), **metrics})
    rounds = [{**r, "metrics": r.get("metrics") or metrics} for r in read_rounds(run_dir)]
    lines = "".join(json.dumps(r) + "\n" for r in rounds)
    atomic_write_bytes(run_dir / ROUNDS_JSONL, lines.encode("utf-8"))
    return metrics


@contextmanager
def supervised(logs: Path, say: Status | None = None) -> Iterator[tuple[Processes, Path]]:
    """A temporary folder (0700) and the processes a deployment starts, under a watchdog.

    On leaving, by any exit (an exception, Ctrl-C, or SIGTERM/SIGHUP turned into
    KeyboardInterrupt by the command), every process is stopped (:meth:`Processes.stop`,
    ``logs/processes.json``) and the folder removed; if this process is killed instead,
    the watchdog does both (``logs/watchdog.log``).
    """
    watchdog: Watchdog | None = None
    procs: Processes | None = None
    try:
        with tempfile.TemporaryDirectory(prefix="fedrec-deploy-") as tmp_name:
            tmp = Path(tmp_name)
            procs = Processes(flower_env(), record=tmp / "processes.tracked")
            watchdog = Watchdog(procs, [tmp], logs / "watchdog.log")
            try:
                yield procs, tmp
            finally:
                procs.stop(grace=STOP_GRACE, record=logs / "processes.json")
                if say is not None:
                    say(f"stopped every process started ({logs / 'processes.json'})")
    finally:
        if watchdog is not None:
            watchdog.dismiss(clean=procs is not None and not procs.alive())


def check_nodes(settings: RunSettings, n_nodes: int) -> None:
    """Refuse a node count outside ``1..users of the split`` (node ``i`` is user ``i``)."""
    from server.settings import load_split

    n_users = load_split(settings).n_users
    if not 1 <= n_nodes <= n_users:
        raise ConfigError(
            f"need 1 to {n_users} nodes (one per user of the split), got {n_nodes}",
            where="--nodes",
        )


def _start(
    procs: Processes,
    tmp: Path,
    creds: Credentials,
    settings: RunSettings,
    n_nodes: int,
    logs: Path,
    say: Status,
    timeout: float,
) -> None:
    """SuperLink, its SuperExec, the nodes' keys registered, then SuperNodes and theirs."""
    link_port, *node_ports = free_ports(n_nodes + 1)
    cli_env = {"FLWR_HOME": str(tmp / "cli")}
    write_flower_config(tmp / "cli", link_port, creds.ca_cert)
    link_env = {"FLWR_HOME": str(tmp / "superlink")}
    cmd = superlink_command(link_port, creds)
    procs.start("superlink", cmd, logs / "superlink.log", link_env)
    _wait_for_log(procs, logs, "superlink", SUPERLINK_UP, timeout)
    say(
        f"SuperLink on https://{LOOPBACK}:{link_port} "
        "(TLS, SuperNode authentication, SuperExec secret; credentials made for this run)"
    )
    cmd = superexec_command(link_port, creds, procs.started["superlink"].pid)
    procs.start("superexec-superlink", cmd, logs / "superexec-superlink.log", link_env)
    _register_nodes(procs, creds, cli_env, logs / "register.log", timeout)
    for i, port in enumerate(node_ports):
        config = node_config(i, n_nodes, node_store(Path(settings.run_dir), i))
        node_env = {"FLWR_HOME": str(tmp / f"node-{i}")}
        cmd = supernode_command(link_port, port, config, creds, i)
        procs.start(f"supernode-{i}", cmd, logs / f"supernode-{i}.log", node_env)
        cmd = superexec_command(port, creds, procs.started[f"supernode-{i}"].pid)
        procs.start(f"superexec-node-{i}", cmd, logs / f"superexec-node-{i}.log", node_env)
    say(f"{n_nodes} SuperNodes registered, Runtime APIs on {LOOPBACK}:{node_ports[0]}..")


def _wait_for_run(
    procs: Processes,
    run_dir: Path,
    timeout: float,
    on_round: Callable[[dict[str, Any]], None] | None,
) -> None:
    from simulations.run_dir import read_rounds

    deadline, seen = time.monotonic() + timeout, len(read_rounds(run_dir))
    while procs.started["flwr-run"].poll() is None:
        _check_alive(procs, run_dir / LOGS_DIR, allow=("flwr-run",))
        procs.track()
        rounds = read_rounds(run_dir)
        for record in rounds[seen:]:
            if on_round is not None:
                on_round(record)
        seen = max(seen, len(rounds))
        if time.monotonic() > deadline:
            raise DeployError(f"the run did not finish in {timeout:.0f} s", where=str(run_dir))
        time.sleep(0.5)


def _check_completed(procs: Processes, logs: Path, cli_env: dict[str, str]) -> None:
    rc = procs.started["flwr-run"].returncode
    found = _RUN_ID.search(procs.log_text("flwr-run"))
    if rc != 0 or found is None:
        raise DeployError(f"flwr run failed (exit code {rc})", where=str(logs / "flwr-run.log"))
    state = _run_status({**procs.env, **cli_env}, found.group(1))
    if state != "finished:completed":
        raise DeployError(
            f"run {found.group(1)} ended as {state}",
            where=str(logs / "flwr-run.log"),
            fix="the ServerApp's log is in that file; client errors are in supernode-*.log",
        )
    if not (logs.parent / METRICS_JSON).is_file():
        raise DeployError("the run completed without metrics.json", where=str(logs.parent))
