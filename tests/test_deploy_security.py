"""``fedrec deploy-local`` locked down, and leaving nothing behind when it is killed.

What each test attacks (docs/SECURITY.md, "Deployment"):

- credentials: a fresh CA per deployment whose server certificate names only loopback,
  P-384 node keys, a random SuperExec secret, all 0600 in a 0700 folder;
- the launched SuperLink really has TLS, SuperNode authentication and the SuperExec
  secret on (its ``/proc/PID/cmdline``), and each is enforced: a client without the
  deployment's CA fails the TLS handshake and plain HTTP gets no answer, a SuperNode
  whose key was not registered (or that trusts another CA) is refused while a registered
  one connects, a SuperExec with a wrong secret is refused while the right one is served;
- deploy-local's supervision (:func:`simulations.deploy.supervised` under the command's
  signal handling) with a process tree shaped like Flower's (a grandchild in a session
  of its own): SIGKILL, SIGHUP and SIGTERM of the deploying process each leave no
  process and no temporary folder within 10 s (SIGKILL: the watchdog's doing);
- end to end (``slow``: 1.5-2 min each on a busy 2-core box), SIGKILL and SIGHUP of
  ``fedrec deploy-local`` in the middle of a run (ServerApp and ClientApps running)
  leave no process and no temporary folder within 10 s.

Everything connects to 127.0.0.1 only. The tests that start Flower are marked
``flower`` and ``deploy``; those on one SuperLink share it (a module fixture).
"""

from __future__ import annotations

import contextlib
import ipaddress
import json
import os
import re
import secrets
import signal
import socket
import ssl
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest
from cryptography import x509
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.serialization import (
    load_pem_private_key,
    load_ssh_private_key,
    load_ssh_public_key,
)

from simulations.deploy import (
    CONNECTION,
    LOOPBACK,
    SUPERLINK_UP,
    Processes,
    Watchdog,
    flower_env,
    free_ports,
    register_command,
    superlink_command,
    supernode_command,
    write_flower_config,
)
from simulations.deploy_credentials import Credentials, create_credentials
from simulations.deploy_watchdog import marked, running

REPO = Path(__file__).resolve().parents[1]
TINY = "synthetic:users=3,items=30,seed=0"
MARK_VAR = "FEDREC_TEST_DEPLOYMENT"


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _wait(predicate: object, timeout: float, what: str) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():  # type: ignore[operator]
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out after {timeout:.0f} s waiting for {what}")
        time.sleep(0.1)


# --- credentials and commands (no process started) ---------------------------------


def test_credentials_are_private_and_name_only_loopback(tmp_path: Path) -> None:
    # Execute
    creds = create_credentials(tmp_path / "creds", 2)
    # Assert: 0700 folder, every file 0600
    assert _mode(creds.folder) == 0o700
    files = sorted(creds.folder.iterdir())
    assert len(files) == 8 and all(_mode(f) == 0o600 for f in files)
    # Assert: the server certificate is signed by this deployment's CA, for loopback only
    ca = x509.load_pem_x509_certificate(creds.ca_cert.read_bytes())
    server = x509.load_pem_x509_certificate(creds.server_cert.read_bytes())
    server.verify_directly_issued_by(ca)
    assert ca.extensions.get_extension_for_class(x509.BasicConstraints).value.ca
    san = server.extensions.get_extension_for_class(x509.SubjectAlternativeName).value
    assert san.get_values_for_type(x509.DNSName) == ["localhost"]
    assert sorted(str(a) for a in san.get_values_for_type(x509.IPAddress)) == [
        "127.0.0.1",
        "::1",
    ]
    server_key = load_pem_private_key(creds.server_key.read_bytes(), None)
    assert server_key.public_key() == server.public_key()
    # Assert: node keys are P-384 pairs in the formats Flower reads
    for i in range(2):
        private = load_ssh_private_key(creds.node_keys[i].read_bytes(), None)
        public = load_ssh_public_key(creds.node_public_key(i).read_bytes())
        assert isinstance(private, ec.EllipticCurvePrivateKey)
        assert private.curve.name == "secp384r1" and private.public_key() == public
    assert creds.node_keys[0].read_bytes() != creds.node_keys[1].read_bytes()
    # Assert: a 32-byte secret, different for every deployment
    again = create_credentials(tmp_path / "again", 1)
    assert len(creds.superexec_secret.read_bytes()) == 32
    assert creds.superexec_secret.read_bytes() != again.superexec_secret.read_bytes()
    assert creds.ca_cert.read_bytes() != again.ca_cert.read_bytes()
    with pytest.raises(FileExistsError):
        create_credentials(tmp_path / "creds", 1)


def test_commands_turn_on_tls_node_auth_and_the_superexec_secret(tmp_path: Path) -> None:
    # Prepare
    creds = create_credentials(tmp_path / "c", 1)
    # Execute
    link = superlink_command(9000, creds)
    node = supernode_command(9000, 9001, "partition-id=0", creds, 0)
    # Assert
    for cmd in (link, node):
        assert "--insecure" not in cmd
        assert cmd[cmd.index("--ssl-certfile") + 1] == str(creds.server_cert)
        assert cmd[cmd.index("--ssl-keyfile") + 1] == str(creds.server_key)
        assert cmd[cmd.index("--superexec-auth-secret-file") + 1] == str(creds.superexec_secret)
        assert cmd[cmd.index("--isolation") + 1] == "process"  # else the secret is ignored
    assert "--enable-supernode-auth" in link
    assert node[node.index("--root-certificates") + 1] == str(creds.ca_cert)
    assert node[node.index("--auth-supernode-private-key") + 1] == str(creds.node_keys[0])


def test_flower_config_verifies_the_superlink_with_the_deployment_ca(tmp_path: Path) -> None:
    # Prepare
    creds = create_credentials(tmp_path / "c", 1)
    # Execute
    write_flower_config(tmp_path / "home", 9000, creds.ca_cert)
    # Assert: read back by Flower's own reader
    from flwr.cli.flower_config import read_superlink_connection

    os.environ["FLWR_HOME"], old = str(tmp_path / "home"), os.environ.get("FLWR_HOME")
    try:
        conn = read_superlink_connection(CONNECTION)
    finally:
        if old is None:
            del os.environ["FLWR_HOME"]
        else:
            os.environ["FLWR_HOME"] = old
    assert conn is not None
    assert conn.address == f"{LOOPBACK}:9000" and conn.root_certificates == str(creds.ca_cert)
    assert not conn.insecure


# --- the watchdog (no Flower) ------------------------------------------------------

_DEPLOYMENT = """
import sys, time
from pathlib import Path
from simulations.commands.deploy_local import _signals_as_interrupt
from simulations.deploy import supervised
logs, pids = Path(sys.argv[1]), Path(sys.argv[2])
grandchild = ("import subprocess, sys, time; subprocess.Popen([sys.executable, '-c', "
              "'import time; time.sleep(300)'], start_new_session=True); time.sleep(300)")
with _signals_as_interrupt(), supervised(logs) as (procs, tmp):
    procs.start("child", [sys.executable, "-c", grandchild], logs / "child.log", {})
    while len(procs.tracked) < 2:
        time.sleep(0.05)
        procs.track()
    pids.write_text(" ".join(f"{p}:{s}" for p, s in procs.tracked.items()))
    time.sleep(300)
"""


@pytest.mark.parametrize(
    "sig", [signal.SIGKILL, signal.SIGHUP, signal.SIGTERM], ids=["sigkill", "sighup", "sigterm"]
)
def test_a_killed_deployment_leaves_no_process_and_no_temp_folder(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # Prepare: deploy-local's supervision (signal handling, temporary folder, watchdog)
    # around a child whose own child runs in a session of its own, as Flower's do
    logs, pids, scratch = tmp_path / "logs", tmp_path / "pids", tmp_path / "tmp"
    logs.mkdir()
    scratch.mkdir()
    parent = subprocess.Popen(
        [sys.executable, "-c", _DEPLOYMENT, str(logs), str(pids)],
        cwd=REPO,
        env={**os.environ, "TMPDIR": str(scratch)},
        start_new_session=True,
    )
    _wait(lambda: pids.exists() and pids.read_text(), 60, "the deployment's tree")
    tree = {int(p): int(s) for p, s in (x.split(":") for x in pids.read_text().split())}
    assert len(tree) == 2 and all(running(p, s) for p, s in tree.items())
    assert len(list(scratch.iterdir())) == 1
    # Execute
    parent.send_signal(sig)
    sent = time.monotonic()
    _wait(lambda: not any(running(p, s) for p, s in tree.items()), 10, "the tree to end")
    _wait(lambda: not list(scratch.iterdir()), 10, "the temporary folder to go")
    # Assert: within 10 s; SIGHUP and SIGTERM stop cleanly, SIGKILL leaves it to the watchdog
    assert time.monotonic() - sent < 10
    parent.wait(timeout=60)
    swept = (logs / "watchdog.log").read_text()
    if sig == signal.SIGKILL:
        # the child may die of its parent-death signal first; the grandchild, in another
        # session and started by a process that is not ours, only by the watchdog
        found = re.search(r"ended (\d+) processes, removed 1 folders", swept)
        assert found is not None and int(found.group(1)) >= 1
    else:
        assert parent.returncode != 0 and swept == ""
        rows = json.loads((logs / "processes.json").read_text())
        assert {r["pid"] for r in rows} == set(tree) and not any(r["running"] for r in rows)


def test_a_dismissed_watchdog_touches_nothing(tmp_path: Path) -> None:
    # Prepare: a live process carrying the deployment's marker, and its folder
    folder = tmp_path / "deploy-tmp"
    folder.mkdir()
    procs = Processes({})
    procs.start("sleeper", [sys.executable, "-c", "import time; time.sleep(60)"], folder / "s", {})
    watchdog = Watchdog(procs, [folder], tmp_path / "wd.log")
    try:
        # Execute
        watchdog.dismiss(clean=True)
        # Assert
        assert watchdog.proc.returncode == 0
        assert folder.is_dir() and procs.alive()
        assert (tmp_path / "wd.log").read_text() == ""
    finally:
        procs.stop(grace=1.0)


# --- a real SuperLink, locked down --------------------------------------------------


class SecuredLink:
    def __init__(self, root: Path) -> None:
        self.root = root
        self.creds: Credentials = create_credentials(root / "creds", 3)
        self.port = free_ports(1)[0]
        self.procs = Processes(flower_env())
        self.logs = root / "logs"
        self.logs.mkdir()
        self.cli_env = {"FLWR_HOME": str(root / "cli")}
        write_flower_config(root / "cli", self.port, self.creds.ca_cert)


@pytest.fixture(scope="module")
def secured_link(tmp_path_factory: pytest.TempPathFactory) -> Iterator[SecuredLink]:
    link = SecuredLink(tmp_path_factory.mktemp("secured-link"))
    cmd = superlink_command(link.port, link.creds)
    link.procs.start("superlink", cmd, link.logs / "superlink.log", {})
    try:
        _wait(lambda: SUPERLINK_UP in link.procs.log_text("superlink"), 60, "the SuperLink")
        yield link
    finally:
        link.procs.stop(grace=3.0)


def _listening(pids: object) -> set[tuple[str, int]]:
    """``(address, port)`` of every TCP socket the processes ``pids`` listen on, read from
    ``/proc/net/tcp*`` (nothing is connected to)."""
    inodes = set()
    for pid in pids:  # type: ignore[attr-defined]
        with contextlib.suppress(OSError):
            for fd in os.listdir(f"/proc/{pid}/fd"):
                with contextlib.suppress(OSError):
                    link = os.readlink(f"/proc/{pid}/fd/{fd}")
                    if link.startswith("socket:["):
                        inodes.add(link[8:-1])
    found = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        for line in Path(table).read_text().splitlines()[1:]:
            fields = line.split()
            if fields[3] == "0A" and fields[9] in inodes:  # 0A: LISTEN
                host, port = fields[1].split(":")
                raw = bytes.fromhex(host)
                raw = b"".join(raw[i : i + 4][::-1] for i in range(0, len(raw), 4))
                found.add((str(ipaddress.ip_address(raw)), int(port, 16)))
    return found


def _cmdline(pid: int) -> list[str]:
    return [a.decode() for a in Path(f"/proc/{pid}/cmdline").read_bytes().split(b"\0") if a]


@pytest.mark.flower
@pytest.mark.deploy
def test_the_launched_superlink_runs_with_every_setting_on(secured_link: SecuredLink) -> None:
    # Execute: what the running process was given, not what we meant to give it
    argv = _cmdline(secured_link.procs.started["superlink"].pid)
    log = secured_link.procs.log_text("superlink")
    # Assert
    assert "--insecure" not in argv and "--enable-supernode-auth" in argv
    assert argv[argv.index("--host") + 1] == LOOPBACK
    assert argv[argv.index("--superexec-auth-secret-file") + 1] == str(
        secured_link.creds.superexec_secret
    )
    assert f"Uvicorn running on https://{LOOPBACK}:{secured_link.port}" in log
    assert _listening([secured_link.procs.started["superlink"].pid]) == {
        (LOOPBACK, secured_link.port)
    }
    assert "SuperNode authentication is disabled" not in log
    assert "secret is ignored" not in log


@pytest.mark.flower
@pytest.mark.deploy
def test_tls_refuses_clients_without_the_deployment_ca(secured_link: SecuredLink) -> None:
    address = (LOOPBACK, secured_link.port)
    # Execute / Assert: the system's trust store does not know this deployment's CA
    with (
        socket.create_connection(address, timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context().wrap_socket(sock, server_hostname=LOOPBACK)
    # Execute / Assert: a CA of another deployment is no better
    other = create_credentials(secured_link.root / "other-creds", 0)
    with (
        socket.create_connection(address, timeout=10) as sock,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        ssl.create_default_context(cafile=other.ca_cert).wrap_socket(sock, server_hostname=LOOPBACK)
    # Execute / Assert: plain HTTP gets no HTTP answer
    with socket.create_connection(address, timeout=10) as sock:
        sock.sendall(b"GET /health HTTP/1.1\r\nHost: 127.0.0.1\r\n\r\n")
        try:
            reply = sock.recv(64)
        except (ConnectionResetError, TimeoutError):
            reply = b""
    assert not reply.startswith(b"HTTP/")
    # Execute / Assert: with the deployment's CA the handshake succeeds
    ctx = ssl.create_default_context(cafile=secured_link.creds.ca_cert)
    with (
        socket.create_connection(address, timeout=10) as sock,
        ctx.wrap_socket(sock, server_hostname=LOOPBACK) as tls,
    ):
        assert tls.version() in ("TLSv1.2", "TLSv1.3")


@pytest.mark.flower
@pytest.mark.deploy
def test_supernode_auth_refuses_unregistered_keys(secured_link: SecuredLink) -> None:
    # Prepare: register keys 0 and 2 (not 1); node 2 trusts another deployment's CA
    link, creds = secured_link, secured_link.creds
    env = {**link.procs.env, **link.cli_env}
    for i in (0, 2):
        done = subprocess.run(
            register_command(creds.node_public_key(i)), env=env, capture_output=True, timeout=60
        )
        assert done.returncode == 0, done.stdout + done.stderr
    other = create_credentials(link.root / "foreign-ca", 0)
    ports = free_ports(3)
    for i, port in enumerate(ports):
        cmd = supernode_command(link.port, port, f"partition-id={i}", creds, i)
        if i == 2:
            cmd[cmd.index("--root-certificates") + 1] = str(other.ca_cert)
        cmd += ["--max-retries", "1"]
        link.procs.start(f"node-{i}", cmd, link.logs / f"node-{i}.log", {})
    # Execute
    _wait(lambda: {"node-1", "node-2"} <= set(link.procs.exited()), 60, "refused nodes to exit")
    _wait(lambda: "SuperNode ID:" in link.procs.log_text("node-0"), 60, "node 0 to connect")
    # Assert: the registered node is in, the unregistered key and the foreign CA are out
    assert link.procs.exited()["node-1"] != 0 and link.procs.exited()["node-2"] != 0
    assert "Failed to activate SuperNode" in link.procs.log_text("node-1")
    assert "SuperNode ID:" not in link.procs.log_text("node-2")
    assert "CERTIFICATE_VERIFY_FAILED" in link.procs.log_text("node-2").upper().replace(" ", "_")
    assert "node-0" not in link.procs.exited()


@pytest.mark.flower
@pytest.mark.deploy
def test_superexec_secret_refuses_a_wrong_secret(secured_link: SecuredLink) -> None:
    # Prepare: a Runtime API client signing AcquireTask as a SuperExec does
    import httpx
    from flwr.proto.runtime_pb2 import AcquireTaskRequest
    from flwr.supercore.interceptors import SuperExecAuthHttpInterceptor
    from flwr.supercore.runtime import RuntimeHttpClient

    def acquire(secret: bytes | None) -> None:
        methods = frozenset({"/flwr.proto.Runtime/AcquireTask"})
        signers = (
            []
            if secret is None
            else [SuperExecAuthHttpInterceptor(master_secret=secret, protected_methods=methods)]
        )
        client = RuntimeHttpClient.from_server_address(
            server_address=f"{LOOPBACK}:{secured_link.port}",
            insecure=False,
            root_certificates=secured_link.creds.ca_cert.read_bytes(),
            interceptors=signers,
        )
        try:
            client.AcquireTask(AcquireTaskRequest())
        finally:
            client.close()

    # Execute / Assert: the right secret is served (no task pending), others are not
    acquire(secured_link.creds.superexec_secret.read_bytes())
    for wrong in (None, secrets.token_bytes(32)):
        with pytest.raises(httpx.HTTPStatusError) as refused:
            acquire(wrong)
        assert refused.value.response.status_code == 401


# --- end to end: killing `fedrec deploy-local` --------------------------------------


def _kill_mid_run(
    tmp_path: Path, sig: signal.Signals
) -> tuple[subprocess.Popen[bytes], dict[int, int], Path, float]:
    """Start ``fedrec deploy-local``, wait for its ServerApp, send ``sig`` to it.

    Returns the process, every process seen in its tree (by an environment mark of the
    test's own), the temporary folder it ran with, and when the signal was sent.
    """
    scratch = tmp_path / "tmp"
    scratch.mkdir()
    mark = f"{MARK_VAR}={secrets.token_hex(6)}".encode()
    env = {**os.environ, "TMPDIR": str(scratch), MARK_VAR: mark.decode().split("=")[1]}
    argv = ["deploy-local", "--data", TINY, "--nodes", "2", "--rounds", "50"]
    argv += ["--out", str(tmp_path / "run"), "--timeout", "600"]
    code = "import sys; from simulations.cli import main; sys.exit(main(sys.argv[1:]))"
    parent = subprocess.Popen(
        [sys.executable, "-c", code, *argv],
        cwd=REPO,
        env=env,
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        start_new_session=True,
    )
    seen: dict[int, int] = {}
    names: set[str] = set()

    def server_app_up() -> bool:
        for pid, start in marked(mark).items():
            seen[pid] = start
            cmd = _cmdline(pid) if running(pid, start) else []
            names.update(Path(a).name for a in cmd[:2])
        if parent.poll() is not None:
            raise AssertionError(f"deploy-local exited early ({parent.returncode})")
        return "flwr-clientapp" in names and "flwr-serverapp" in names

    try:
        _wait(server_app_up, 240, "the ServerApp and a ClientApp")
        listening = _listening(p for p, s in seen.items() if running(p, s))
    except BaseException:
        parent.kill()
        raise
    # nothing of the deployment listens on anything but loopback
    assert listening and all(ipaddress.ip_address(a).is_loopback for a, _ in listening)
    print(f"listening: {sorted(listening)}")
    assert any(p.name.startswith("fedrec-deploy-") for p in scratch.iterdir())
    parent.send_signal(sig)
    return parent, seen, scratch, time.monotonic()


def _nothing_left(seen: dict[int, int], scratch: Path) -> bool:
    return not any(running(p, s) for p, s in seen.items()) and not list(scratch.iterdir())


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.deploy
@pytest.mark.parametrize("sig", [signal.SIGKILL, signal.SIGHUP], ids=["sigkill", "sighup"])
def test_killing_deploy_local_leaves_no_process_and_no_temp_folder(
    tmp_path: Path, sig: signal.Signals
) -> None:
    # Execute: kill it while the ServerApp and ClientApps run
    parent, seen, scratch, sent = _kill_mid_run(tmp_path, sig)
    seen.pop(parent.pid, None)  # itself: its interpreter may take seconds more to exit
    # Assert: within 10 s nothing it started runs and its temporary folder is gone
    while not _nothing_left(seen, scratch) and time.monotonic() < sent + 30:
        time.sleep(0.1)
    took = time.monotonic() - sent
    print(f"{sig.name}: {len(seen)} processes, all gone {took:.1f} s after")
    left = {p: s for p, s in seen.items() if running(p, s)}
    assert not left, f"running {took:.0f} s after: {left}"
    assert list(scratch.iterdir()) == []
    assert took < 10.0
    # Assert: SIGHUP is a clean stop (Ctrl-C's exit status), SIGKILL is SIGKILL
    assert parent.wait(timeout=60) == (130 if sig == signal.SIGHUP else -signal.SIGKILL)
    assert len(seen) >= 8  # SuperLink, 2 SuperNodes, 3 SuperExecs, ServerApp, ClientApp, ...


@pytest.mark.flower
@pytest.mark.deploy
def test_the_control_api_stays_open_to_any_local_client(secured_link: SecuredLink) -> None:
    """Pins what docs/SECURITY.md says stays open: open-source Flower authenticates no
    Control API caller, so a local process that merely skips certificate verification
    (no CA, no key, no secret) can list runs and register a SuperNode key of its own.
    If this test fails, Flower started authenticating callers: update the docs."""
    # Prepare
    from flwr.proto.control_pb2 import ListRunsRequest, RegisterNodeRequest
    from flwr.supercore.control import ControlHttpClient
    from flwr.supercore.primitives.asymmetric import public_key_to_bytes

    stranger = ControlHttpClient(f"https://{LOOPBACK}:{secured_link.port}", verify=False)
    key = ec.generate_private_key(ec.SECP384R1()).public_key()
    try:
        # Execute
        runs = stranger.ListRuns(ListRunsRequest())
        node = stranger.RegisterNode(RegisterNodeRequest(public_key=public_key_to_bytes(key)))
    finally:
        stranger.close()
    # Assert
    assert runs is not None and node.node_id != 0
