"""Central DP's claims, attacked through the Flower apps (in-process grid).

1. The cohort is secret: no run file and no log line names a sampled user.
2. ``privacy.json`` states both the amplified epsilon and the worst-case per-user one
   (q = 1 over the rounds that user joined), and both recompute from their histories.
3. Write ahead: a release that may have left the server before a crash is charged on
   resume, and the redo of the round pays again.
"""

from __future__ import annotations

import json
import logging
import stat
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
from flwr.app import Message

from fedrec.privacy.accounting import epsilon_from_history
from fedrec.privacy.report import verify_privacy_json
from server.checkpoint import RESERVED_JSON, load_checkpoint, load_reservation
from server.privacy_run import resolve_settings
from server.server_app import run_server
from server.settings import RunSettings, load_split
from simulations.run_dir import create_run_dir, read_rounds
from tests.test_flower_apps import DATA, InProcessGrid

FAILING = (0, 5)


def _settings(tmp: Path, **over: Any) -> RunSettings:
    flat: dict[str, Any] = {"data": DATA, "num-server-rounds": 3, "clients-per-round": 12,
                            "run-dir": str(tmp), "train.epochs": 1, "train.refit-steps": 1,
                            "privacy": "central", "privacy.noise-multiplier": 1.2,
                            "privacy.insecure-noise-seed": 7, "eval-every": 1}  # fmt: skip
    flat.update(over)
    settings = RunSettings.from_run_config(flat)
    return resolve_settings(settings, load_split(settings))


class CohortGrid(InProcessGrid):
    """Records each train step's cohort (users) and who replied without an error."""

    def __init__(self, n_nodes: int) -> None:
        super().__init__(n_nodes)
        self.cohorts: list[list[int]] = []
        self.joined: list[list[int]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        replies = list(super().send_and_receive(messages, timeout=timeout))
        if messages and messages[0].metadata.message_type == "train":
            users = {
                m.metadata.dst_node_id: self.partition[m.metadata.dst_node_id] for m in messages
            }
            self.cohorts.append(sorted(users.values()))
            ok = [users[r.metadata.src_node_id] for r in replies if not r.has_error()]
            self.joined.append(sorted(ok))
        return replies


@pytest.fixture(scope="module")
def central_run(
    tmp_path_factory: pytest.TempPathFactory,
) -> tuple[Path, CohortGrid, list[logging.LogRecord]]:
    run_dir = tmp_path_factory.mktemp("central")
    settings = _settings(run_dir, **{"fail-users": ",".join(map(str, FAILING))})
    create_run_dir(run_dir, settings)
    grid = CohortGrid(load_split(settings).n_users)
    records: list[logging.LogRecord] = []
    handler = logging.Handler(logging.DEBUG)
    handler.emit = records.append  # type: ignore[method-assign]
    root = logging.getLogger()
    level = root.level
    root.addHandler(handler)
    root.setLevel(logging.DEBUG)
    try:
        run_server(grid, settings)
    finally:
        root.removeHandler(handler)
        root.setLevel(level)
    return run_dir, grid, records


def _lists_of_ints(value: Any) -> list[list[int]]:
    """Every list of integers anywhere inside a JSON value."""
    if isinstance(value, dict):
        return [x for v in value.values() for x in _lists_of_ints(v)]
    if isinstance(value, list):
        if value and all(isinstance(v, int) and not isinstance(v, bool) for v in value):
            return [value]
        return [x for v in value for x in _lists_of_ints(v)]
    return []


def test_run_files_and_logs_name_no_sampled_user(
    central_run: tuple[Path, CohortGrid, list[logging.LogRecord]],
) -> None:
    # Prepare: the cohorts the server really sampled (seen on the wire), failures included
    run_dir, grid, records = central_run
    assert len(grid.cohorts) == 3 and any(u in c for c in grid.cohorts for u in FAILING)
    # Execute
    rounds = read_rounds(run_dir)
    texts = {p.name: p.read_text() for p in (run_dir / "rounds.jsonl", run_dir / "metrics.json")}
    texts["privacy.json"] = (run_dir / "privacy.json").read_text()
    texts["logs"] = "\n".join(r.getMessage() for r in records)
    # Assert: counts, never ids; no list of users anywhere; no failure reason naming one
    for row, cohort, joined in zip(rounds, grid.cohorts, grid.joined, strict=True):
        assert row["participants"] == len(joined)
        assert row["failed"] == len(cohort) - len(joined)
        assert all(type(row[k]) is int for k in ("failed", "budget_exhausted", "refused"))
        assert "failures" not in row
    for name in ("rounds.jsonl", "metrics.json", "privacy.json"):
        lines = texts[name].splitlines() if name.endswith("jsonl") else [texts[name]]
        for line in lines:
            assert _lists_of_ints(json.loads(line)) == [], name
    for name, text in texts.items():
        for user in FAILING:
            assert f"user {user}" not in text, name  # the clients' failure messages
        for cohort in grid.cohorts:
            assert json.dumps(cohort) not in text and repr(cohort) not in text, name


def test_privacy_json_states_both_epsilons_and_both_recompute(
    central_run: tuple[Path, CohortGrid, list[logging.LogRecord]],
) -> None:
    # Prepare
    run_dir, grid, _ = central_run
    path = run_dir / "privacy.json"
    report = json.loads(path.read_text())
    most = max(sum(u in j for j in grid.joined) for u in {u for j in grid.joined for u in j})
    z = report["noise_multiplier"]
    # Execute
    worst = report["worst_case_user"]
    # Assert: amplified (secret cohorts) and worst case (q = 1, the most rounds joined)
    assert verify_privacy_json(path) == []
    assert "secret" in report["epsilon_valid_only_if"]
    assert worst["rounds_joined"] == most and worst["history"] == [[z, 1.0, most]]
    assert worst["epsilon"] == pytest.approx(
        epsilon_from_history([[z, 1.0, most]], report["delta"])
    )
    assert worst["epsilon"] > report["epsilon"] > 0
    tampered = {**report, "worst_case_user": {**worst, "epsilon": worst["epsilon"] / 2}}
    path.with_name("tampered.json").write_text(json.dumps(tampered))
    assert verify_privacy_json(path.with_name("tampered.json")) != []


def test_the_join_counts_stay_in_the_servers_private_files(
    central_run: tuple[Path, CohortGrid, list[logging.LogRecord]],
) -> None:
    run_dir, grid, _ = central_run
    ckpt = load_checkpoint(run_dir)
    assert ckpt is not None and ckpt.privacy_state is not None
    joins = {int(u): n for u, n in ckpt.privacy_state["joins"].items()}
    assert sum(joins.values()) == sum(len(j) for j in grid.joined)
    for name in ("checkpoint.npz", RESERVED_JSON):
        assert stat.S_IMODE((run_dir / name).stat().st_mode) == 0o600, name


class Killed(RuntimeError):
    """Stands for the server process dying."""


class WatchingGrid(InProcessGrid):
    """Before every send after a train step, notes which release is reserved on disk."""

    def __init__(self, n_nodes: int, run_dir: Path) -> None:
        super().__init__(n_nodes)
        self.run_dir, self.trains = run_dir, 0
        self.seen: list[tuple[int, int | None]] = []  # (train steps done, reserved round)

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        messages = list(messages)
        if self.trains and messages:  # a model derived from the last release may leave now
            reserved = load_reservation(self.run_dir)
            self.seen.append((self.trains, None if reserved is None else reserved[0]))
        if messages and messages[0].metadata.message_type == "train":
            self.trains += 1
        return super().send_and_receive(messages, timeout=timeout)


def test_a_release_reserved_before_a_crash_is_charged_and_the_redo_pays_twice(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the server dies in round 2 after its release, before its checkpoint
    import server.server_app as server_app

    settings = _settings(tmp_path, **{"eval-every": 0})
    create_run_dir(tmp_path, settings)
    n = load_split(settings).n_users
    append = server_app.append_round
    at_crash: list[Any] = []

    def dying_append(run_dir: Path, record: dict[str, Any]) -> None:
        if record["round"] == 2:
            ckpt = load_checkpoint(run_dir)
            at_crash.append((None if ckpt is None else ckpt.round, load_reservation(run_dir)))
            raise Killed("killed after the release, before the checkpoint")
        append(run_dir, record)

    monkeypatch.setattr(server_app, "append_round", dying_append)
    with pytest.raises(Killed):
        run_server(InProcessGrid(n), settings)
    monkeypatch.setattr(server_app, "append_round", append)
    # Execute: resume from the directory, watching every send
    watching = WatchingGrid(n, tmp_path)
    run_server(watching, settings)
    # Assert: reserved before the crash; 3 rounds, 4 releases; every send came after its
    # release was on disk
    ((ckpt_round, reservation),) = at_crash
    assert ckpt_round == 1 and reservation is not None
    assert reservation[0] == 2 and reservation[1]["account"]["history"][0][2] == 2
    report = json.loads((tmp_path / "privacy.json").read_text())
    z, q = report["history"][0][:2]
    assert report["history"] == [[z, q, 4]], "round 2 paid twice"
    assert report["epsilon"] == pytest.approx(epsilon_from_history([[z, q, 4]], report["delta"]))
    assert [r["round"] for r in read_rounds(tmp_path)] == [1, 2, 3]
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    assert watching.seen and all(done + 1 == reserved for done, reserved in watching.seen)


def test_the_report_renders_the_counts(
    central_run: tuple[Path, CohortGrid, list[logging.LogRecord]],
) -> None:
    # Prepare
    from simulations.report import write_report

    run_dir, grid, _ = central_run
    failed = sum(len(c) - len(j) for c, j in zip(grid.cohorts, grid.joined, strict=True))
    # Execute
    text = write_report(run_dir).read_text()
    # Assert
    assert failed > 0 and f"{failed} client failures recorded" in text
