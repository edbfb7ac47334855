"""Past one machine: a 2-node Ray cluster (head + worker, token auth) runs the same run.

The cluster is started the way docs/SCALE.md tells a user to start one on several
machines (``ray start --head``, ``ray start --address``, every node and the driver with
``RAY_AUTH_MODE=token`` and the cluster's token file), here as two nodes on one
machine, and ``fedrec simulate --engine ray --ray-address`` joins it. Ray's listeners
bind every interface, so the whole test runs in a fresh network namespace whose only
interface is the loopback (``unshare --net``, unprivileged through a user namespace):
nothing it starts can be reached from another machine, and a PID namespace ends every
process it started when it ends.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import textwrap
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DATA = "synthetic:users=30,items=50,dim=4,mean=15,seed=3"
SIMULATE = [
    "simulate", "--data", DATA, "--rounds", "2", "--clients-per-round", "10",
    "--eval-every", "1", "--set", "train.epochs=3", "--set", "train.refit-steps=5",
]  # fmt: skip

_CLUSTER = textwrap.dedent(
    """
    import fcntl, json, os, socket, struct, subprocess, sys, time
    from pathlib import Path

    tmp, simulate, ray_tmp = Path(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
    bindir = Path(sys.executable).parent
    out = {}

    # the namespace's only interface, the loopback, is down until brought up
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    flags = struct.unpack("16sh", fcntl.ioctl(sock, 0x8913, struct.pack("16sh", b"lo", 0)))[1]
    fcntl.ioctl(sock, 0x8914, struct.pack("16sh", b"lo", flags | 1))
    out["interfaces"] = [name for _, name in socket.if_nameindex()]

    # the cluster's token, as docs/SCALE.md makes it: a 0600 file in a 0700 folder
    auth = tmp / "auth"
    auth.mkdir(mode=0o700)
    token = auth / "cluster-token"
    fd = os.open(token, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o600)
    os.write(fd, os.urandom(32).hex().encode())
    os.close(fd)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env.update(RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(token))
    env.update(RAY_ACCEL_ENV_VAR_OVERRIDE_ON_ZERO="0", RAY_USAGE_STATS_ENABLED="0")
    address = "127.0.0.1:6379"
    node = ["--node-ip-address=127.0.0.1", "--num-cpus=1",
            "--object-store-memory=100000000", "--disable-usage-stats"]

    def run(cmd, **kw):
        done = subprocess.run(cmd, env=env, capture_output=True, text=True, **kw)
        if done.returncode != 0:
            raise SystemExit(f"{cmd[:2]} failed: {done.stdout[-1500:]} {done.stderr[-1500:]}")
        return done

    run([bindir / "ray", "start", "--head", "--port=6379", "--include-dashboard=false",
         f"--temp-dir={ray_tmp}", *node], timeout=180)
    run([bindir / "ray", "start", f"--address={address}", *node], timeout=180)

    probe = (
        "import json, sys, ray\\n"
        "ray.init(address=sys.argv[1], logging_level='ERROR')\\n"
        "alive = [n for n in ray.nodes() if n['Alive']]\\n"
        "from ray._private.state import actors\\n"
        "clients = {a['Address']['NodeID'] for a in actors().values()\\n"
        "           if a['ActorClassName'].endswith('ClientAppActor')}\\n"
        "print('PROBE ' + json.dumps({'cpus': [n['Resources'].get('CPU') for n in alive],\\n"
        "                             'client_nodes': len(clients)}))\\n"
    )

    def cluster_state():
        line = [l for l in run([sys.executable, "-c", probe, address], timeout=120)
                .stdout.splitlines() if l.startswith("PROBE ")][-1]
        return json.loads(line[6:])

    out["before"] = cluster_state()
    # a driver without the cluster's token cannot join
    bare = {k: v for k, v in env.items() if not k.startswith("RAY_AUTH")}
    refused = subprocess.run(
        [bindir / "fedrec", *simulate, "--engine", "ray", "--ray-address", address,
         "--out", str(tmp / "refused")], env=bare, capture_output=True, text=True, timeout=120)
    out["no_token"] = [refused.returncode, refused.stderr.strip()[-400:]]
    # the run on the cluster, then the same run in one process
    cluster = run([bindir / "fedrec", *simulate, "--engine", "ray", "--ray-address", address,
                   "--out", str(tmp / "cluster")], timeout=400)
    out["engine_line"] = [l for l in cluster.stdout.splitlines() if l.startswith("engine:")]
    out["after"] = cluster_state()
    run([bindir / "fedrec", *simulate, "--out", str(tmp / "one")], timeout=300)
    print("RESULT " + json.dumps(out), flush=True)
    """
)


def _namespaces_available() -> bool:
    unshare = shutil.which("unshare")
    if unshare is None:
        return False
    probe = [unshare, "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc"]
    return subprocess.run([*probe, "true"], capture_output=True).returncode == 0


@pytest.mark.slow
@pytest.mark.flower
@pytest.mark.skipif(
    not _namespaces_available(),
    reason="needs unprivileged user + network namespaces (unshare): without them Ray's "
    "listeners would be reachable on this machine's other interfaces",
)
def test_two_node_ray_cluster_runs_the_same_simulation_as_one_node(tmp_path: Path) -> None:
    # Prepare: a head and a worker node (1 CPU each, so the 2 client actors are on both)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_AUTH")}
    env["PYTHONPATH"] = str(ROOT)
    ray_tmp = tempfile.mkdtemp(prefix="fedrec-ray-")  # short: Ray's socket paths < 108 bytes
    command = [
        "unshare", "--user", "--map-root-user", "--net", "--pid", "--fork", "--mount-proc",
        sys.executable, "-c", _CLUSTER, str(tmp_path), json.dumps(SIMULATE), ray_tmp,
    ]  # fmt: skip
    # Execute
    try:
        done = subprocess.run(
            command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900
        )
    finally:
        shutil.rmtree(ray_tmp, ignore_errors=True)
    # Assert
    lines = [line for line in done.stdout.splitlines() if line.startswith("RESULT ")]
    assert lines, done.stdout[-3000:] + done.stderr[-3000:]
    result = json.loads(lines[-1][7:])
    assert result["interfaces"] == ["lo"]  # nothing reachable from another machine
    assert result["before"] == {"cpus": [1.0, 1.0], "client_nodes": 0}
    assert result["no_token"][0] == 2 and "RAY_AUTH_MODE=token" in result["no_token"][1]
    assert result["engine_line"] == [
        "engine: Ray cluster at 127.0.0.1:6379 (token authentication, your "
        "RAY_AUTH_MODE/RAY_AUTH_TOKEN settings)"
    ]
    assert result["after"]["client_nodes"] == 2  # client actors ran on both nodes
    cluster = json.loads((tmp_path / "cluster" / "metrics.json").read_text())
    one = json.loads((tmp_path / "one" / "metrics.json").read_text())
    assert cluster["ndcg@10"] == one["ndcg@10"] and cluster["ndcg@10"] > 0
    for key in ("recall@20", "hr@10", "mrr"):
        assert cluster[key] == one[key]
    rounds = [
        [json.loads(line)["metrics"] for line in (tmp_path / run / "rounds.jsonl").open()]
        for run in ("cluster", "one")
    ]
    assert rounds[0] == rounds[1]


# ------------------------------------------------------------------ flags, no Ray started


def test_ray_address_needs_the_clusters_token(monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.errors import ConfigError
    from simulations.simulation import check_ray_address

    # Prepare: no token configured in this process
    for name in ("RAY_AUTH_MODE", "RAY_AUTH_TOKEN", "RAY_AUTH_TOKEN_PATH"):
        monkeypatch.delenv(name, raising=False)
    # Execute / Assert: refused, saying what to export
    with pytest.raises(ConfigError, match="RAY_AUTH_MODE=token RAY_AUTH_TOKEN_PATH"):
        check_ray_address("10.0.0.1:6379")
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/cluster/token")
    assert check_ray_address("10.0.0.1:6379") == "10.0.0.1:6379"


@pytest.mark.parametrize("address", ["10.0.0.1", ":6379", "head:port", "head:0", "head:70000"])
def test_a_malformed_ray_address_is_refused(address: str, monkeypatch: pytest.MonkeyPatch) -> None:
    from fedrec.errors import ConfigError
    from simulations.simulation import check_ray_address

    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/cluster/token")
    with pytest.raises(ConfigError, match="expected HOST:PORT"):
        check_ray_address(address)


def test_ray_address_without_the_ray_engine_is_refused_before_any_run_dir(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    from simulations.cli import main

    # Prepare
    monkeypatch.setenv("RAY_AUTH_MODE", "token")
    monkeypatch.setenv("RAY_AUTH_TOKEN_PATH", "/cluster/token")
    out = tmp_path / "run"
    # Execute
    code = main([*SIMULATE, "--ray-address", "127.0.0.1:6379", "--out", str(out)])
    # Assert
    assert code == 2
    assert "--ray-address: only the Ray engine joins a cluster" in capsys.readouterr().err
    assert not out.exists()
