"""Evaluation never leaks: simulate measures outside the messages; deployments send DP aggregates.

The claims (docs/PRIVACY.md, "Evaluation") are checked at the message level, through
the very ClientApp the engines run (the in-process grid):

- ``fedrec simulate`` sends no evaluate message at all (the harness scores the devices
  it owns, :mod:`simulations.evaluation`), and its numbers are those of the reference
  loop (``tests/test_flower_apps.py``);
- in a deployment (no harness) no reply carries a top-k list or a ledger history; in
  ``local`` mode no reply carries a device's un-noised metric (the noise is measured
  against the device's true metrics), each release is in the device's ledger and a
  device out of budget answers with its status only; in ``central`` mode a reply
  carries the clipped vector the trusted server needs, the server adds the noise and
  accounts the release before the noisy mean is written.
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from flwr.app import Message

from clients.device_round import RoundConfig
from clients.sim_store import open_device, read_ledgers
from fedrec.errors import ConfigError
from fedrec.federated.client import derive_seed
from fedrec.federated.loop import EVAL_ROUND
from fedrec.metrics import USER_METRIC_KEYS
from fedrec.metrics.private import PrivateEvaluation, aggregate_replies, evaluation_mechanism
from fedrec.privacy.accounting import epsilon_from_history
from fedrec.privacy.config import PrivacyConfig
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import verify_privacy_json
from server.checkpoint import load_checkpoint
from server.privacy_run import EVAL_RELEASES_JSON, resolve_settings
from server.server_app import run_server
from server.settings import RunSettings, load_split
from simulations.evaluation import device_evaluator
from simulations.inprocess import InProcessGrid, simulate_in_process
from simulations.run_dir import create_run_dir, read_metrics, read_rounds

DATA = "synthetic:users=30,items=50,dim=4,mean=15,seed=3"
EVAL_EPSILON = 2.0
LEAKY_WORDS = ("top", "history", "epsilon", "ledger", "rounds", "steps", "sample", "delta")


class RecordingGrid(InProcessGrid):
    """The in-process grid, keeping every (message, reply) pair."""

    def __init__(self, n_nodes: int) -> None:
        super().__init__(n_nodes)
        self.pairs: list[tuple[Message, Message]] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        sent = list(messages)
        replies = list(super().send_and_receive(sent, timeout=timeout))
        self.pairs.extend(zip(sent, replies, strict=True))
        return replies

    def replies(self, kind: str, rnd: int | None = None) -> list[tuple[int, Message]]:
        """``(user, reply)`` of every answered message of ``kind`` (of server round ``rnd``)."""
        return [
            (self.partition[s.metadata.dst_node_id], r)
            for s, r in self.pairs
            if s.metadata.message_type == kind
            and r.has_content()
            and (rnd is None or s.content["config"]["server-round"] == rnd)  # type: ignore[index]
        ]


def _settings(tmp: Path, mode: str, **over: Any) -> RunSettings:
    flat: dict[str, Any] = {
        "data": DATA, "num-server-rounds": 2, "clients-per-round": 15, "run-dir": str(tmp),
        "train.epochs": 1, "train.refit-steps": 2, "eval-every": 1, "privacy": mode,
    }  # fmt: skip
    if mode == "local":
        flat.update({"train.batch-size": 1000, "train.lr": 0.5, "privacy.noise-multiplier": 1.0,
                     "privacy.delta": 1e-5, "privacy.eval-epsilon": EVAL_EPSILON})  # fmt: skip
    if mode == "central":
        # q = 1 and a given z: Opacus's RDP at fractional alphas (q < 1) takes seconds
        flat.update({"clients-per-round": 30, "privacy.noise-multiplier": 1.0,
                     "privacy.eval-epsilon": EVAL_EPSILON})  # fmt: skip
    flat.update(over)
    settings = RunSettings.from_run_config(flat)
    return resolve_settings(settings, load_split(settings))


def _deploy(settings: RunSettings) -> RecordingGrid:
    """``run_server`` as a deployment runs it: no harness, the ClientApp answers."""
    create_run_dir(Path(settings.run_dir), settings)
    grid = RecordingGrid(load_split(settings).n_users)
    run_server(grid, settings)
    return grid


def _true_metrics(settings: RunSettings, users: Iterable[int]) -> dict[int, dict[str, float]]:
    """The last evaluation's per-user metrics, recomputed on each device after the run."""
    split = load_split(settings)
    ckpt = load_checkpoint(Path(settings.run_dir))
    assert ckpt is not None
    out = {}
    for user in users:
        config = RoundConfig(
            model=settings.model, train=settings.train, round=settings.rounds,
            seed=derive_seed(settings.seed, user, EVAL_ROUND),
        )  # fmt: skip
        store = Path(settings.run_dir) / "clients"
        with open_device(store, user, split.train_items(user), seed=settings.seed) as device:
            result = device.evaluate_round(ckpt.item_arrays, config, split.test_items(user))
        out[user] = result.metrics
    return out


def _assert_no_list_and_no_ledger(grid: RecordingGrid) -> None:
    """No train or evaluate reply carries a list, a ledger or anything named like one."""
    replies = [
        r for s, r in grid.pairs if r.has_content() and s.metadata.message_type != "query"
    ]  # (query: the simulation's node discovery)
    assert replies
    for reply in replies:
        content = reply.content
        for record in content.metric_records.values():
            for key, value in record.items():
                assert isinstance(value, int | float), f"{key} is a list"
                assert not any(word in key for word in LEAKY_WORDS), key
        for record in content.config_records.values():
            assert set(record) == {"status"}, dict(record)


# ---- the mechanism ------------------------------------------------------------------


def test_clipped_vectors_are_bounded_and_their_diameter_is_sqrt2_c() -> None:
    # Prepare: extreme and out-of-range metric vectors
    mech = PrivateEvaluation(noise_multiplier=1.0, clip_norm=1.0)
    rng = np.random.default_rng(0)
    vectors = [dict(zip(mech.keys, rng.uniform(-2, 3, len(mech.keys)), strict=True))
               for _ in range(200)]  # fmt: skip
    one_hot = [dict.fromkeys(mech.keys, 0.0) | {k: 1.0} for k in mech.keys[:2]]
    # Execute
    clipped = [mech.clip(v) for v in [*vectors, *one_hot]]
    a, b = mech.clip(one_hot[0]), mech.clip(one_hot[1])
    # Assert: in [0, 1], norm <= C; two users' vectors differ by up to sqrt(2) C, which
    # is why a device's noise is scaled by sqrt(2) C
    assert all(np.all((c >= 0) & (c <= 1)) for c in clipped)
    assert max(float(np.linalg.norm(c)) for c in clipped) <= 1.0 + 1e-12
    assert float(np.linalg.norm(a - b)) == pytest.approx(math.sqrt(2))
    assert mech.local_std == pytest.approx(math.sqrt(2) * mech.central_std)
    with pytest.raises(ConfigError):
        mech.clip({"ndcg@10": 0.5})  # a missing key would escape the bound


def test_calibration_is_opacus_and_the_default_clip_never_binds() -> None:
    # Execute
    mech = PrivateEvaluation.calibrate(EVAL_EPSILON, 1e-5)
    # Assert
    epsilon = epsilon_from_history([mech.release.entry()], 1e-5, "rdp")
    assert EVAL_EPSILON * 0.97 <= epsilon <= EVAL_EPSILON
    assert mech.clip_norm == pytest.approx(math.sqrt(len(USER_METRIC_KEYS)))
    ones = dict.fromkeys(USER_METRIC_KEYS, 1.0)
    np.testing.assert_array_equal(mech.clip(ones), np.ones(len(USER_METRIC_KEYS)))
    assert evaluation_mechanism(PrivacyConfig(mode="central", target_epsilon=1.0)) is None
    assert evaluation_mechanism(PrivacyConfig()) is None


def test_a_device_noise_has_the_stated_std() -> None:
    # Prepare
    mech = PrivateEvaluation(noise_multiplier=0.8, clip_norm=1.0)
    metrics = dict(zip(mech.keys, np.linspace(0.1, 0.6, len(mech.keys)), strict=True))
    rng = secure_rng()
    # Execute
    draws = np.array([mech.vector(mech.privatize(metrics, rng)) for _ in range(4000)])
    # Assert: centred on the clipped vector, std z sqrt(2) C per coordinate
    np.testing.assert_allclose(draws.mean(axis=0), mech.clip(metrics), atol=0.1)
    np.testing.assert_allclose(draws.std(axis=0), mech.local_std, rtol=0.06)


def test_central_mean_divides_the_noisy_sum_by_the_public_number_asked() -> None:
    # Prepare: 3 replies out of 4 users asked
    mech = PrivateEvaluation(noise_multiplier=1.0, clip_norm=1.0)
    replies = [dict.fromkeys(mech.keys, 0.2) for _ in range(3)]
    # Execute
    out, release = aggregate_replies("central", replies, mechanism=mech, asked=4,
                                     rng=np.random.default_rng(1))  # fmt: skip
    noise = np.random.default_rng(1).normal(0.0, 1.0, len(mech.keys))
    # Assert
    assert out is not None and release == mech.release
    expected = (3 * mech.clip(replies[0]) + noise) / 4
    np.testing.assert_allclose([out[k] for k in mech.keys], expected)
    assert out["users_asked"] == 4 and out["eval_noise_std"] == pytest.approx(0.25)


# ---- through Flower -------------------------------------------------------------------


def test_simulate_sends_no_evaluate_message(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: count the message types the in-process engine delivers
    kinds: list[str] = []
    deliver = InProcessGrid.send_and_receive

    def counting(self: InProcessGrid, messages: Iterable[Message], **kw: Any) -> Any:
        messages = list(messages)
        kinds.extend(m.metadata.message_type for m in messages)
        return deliver(self, messages, **kw)

    monkeypatch.setattr(InProcessGrid, "send_and_receive", counting)
    settings = _settings(tmp_path, "local")
    create_run_dir(tmp_path, settings)
    # Execute
    metrics = simulate_in_process(settings)
    # Assert: training only; the harness's measurement has the list-based metrics
    assert "train" in kinds and "evaluate" not in kinds
    assert metrics["users_evaluated"] > 0 and metrics["coverage@10"] > 0
    assert all(r["metrics"] is not None for r in read_rounds(tmp_path))


def test_deployment_without_privacy_sends_metrics_never_lists(tmp_path: Path) -> None:
    # Prepare
    deployed = _settings(tmp_path / "deployed", "none")
    simulated = _settings(tmp_path / "simulated", "none")
    create_run_dir(tmp_path / "simulated", simulated)
    # Execute
    grid = _deploy(deployed)
    run_server(RecordingGrid(30), simulated, evaluator=device_evaluator(simulated))
    # Assert: the per-user metrics and nothing else; the same averages as the harness
    evals = grid.replies("evaluate")
    assert evals and all(set(r.content.keys()) == {"metrics"} for _, r in evals)
    assert all(set(r.content.metric_records["metrics"]) == set(USER_METRIC_KEYS)
               for _, r in evals)  # fmt: skip
    _assert_no_list_and_no_ledger(grid)
    ours, harness = read_metrics(tmp_path / "deployed"), read_metrics(tmp_path / "simulated")
    assert "coverage@10" not in ours and "coverage@10" in harness
    for key in USER_METRIC_KEYS:
        assert ours[key] == pytest.approx(harness[key], abs=1e-12)


def test_local_deployment_sends_only_noised_metrics_spent_from_the_ledger(
    tmp_path: Path,
) -> None:
    # Prepare
    settings = _settings(tmp_path, "local")
    mech = evaluation_mechanism(settings.privacy)
    assert mech is not None
    # Execute
    grid = _deploy(settings)
    last = grid.replies("evaluate", settings.rounds)
    truth = _true_metrics(settings, [u for u, _ in last])
    ledgers = read_ledgers(tmp_path / "clients")
    # Assert: no list, no ledger, and every value is its true metric plus fresh noise
    _assert_no_list_and_no_ledger(grid)
    assert len(last) == len(load_split(settings).test_users())
    residuals = np.array([
        mech.vector(dict(r.content.metric_records["metrics"])) - mech.clip(truth[u])
        for u, r in last
    ])  # fmt: skip
    assert np.all(residuals != 0.0), "an un-noised per-user metric reached the server"
    assert residuals.std() == pytest.approx(mech.local_std, rel=0.25)  # ~180 draws: 4.7 SE
    for user, _ in last:  # written to the device's ledger before the reply
        evaluations = [e for e in ledgers[user].history if e[0] == mech.noise_multiplier]
        assert evaluations and all(e[1] == 1.0 for e in evaluations)
        assert sum(int(e[2]) for e in evaluations) == settings.rounds  # one per evaluation
    rounds = read_rounds(tmp_path)
    assert rounds[-1]["metrics"]["users_evaluated"] == len(last)


def test_a_local_device_out_of_budget_answers_its_status_only(tmp_path: Path) -> None:
    # Prepare: a budget below one evaluation's epsilon
    settings = _settings(tmp_path, "local", **{"privacy.target-epsilon": EVAL_EPSILON / 2,
                                               "privacy.noise-multiplier": 50.0})  # fmt: skip
    # Execute
    grid = _deploy(settings)
    # Assert: refused (not failed), nothing computed left the device, nothing spent on it
    evals = grid.replies("evaluate")
    assert evals
    for _, reply in evals:
        assert set(reply.content.keys()) == {"privacy"}
        assert dict(reply.content.config_records["privacy"]) == {"status": "budget_exhausted"}
    for spent in read_ledgers(tmp_path / "clients").values():
        assert all(e[0] == 50.0 for e in spent.history)  # training releases only
    assert read_rounds(tmp_path)[-1]["metrics"] is None


def test_central_deployment_noises_the_sum_and_accounts_it_before_writing(
    tmp_path: Path,
) -> None:
    # Prepare
    settings = _settings(tmp_path, "central", **{"num-server-rounds": 1})
    mech = evaluation_mechanism(settings.privacy)
    assert mech is not None
    # Execute
    grid = _deploy(settings)
    evals = grid.replies("evaluate")
    truth = _true_metrics(settings, [u for u, _ in evals])
    report = json.loads((tmp_path / "privacy.json").read_text())
    # Assert: each reply is the clipped vector only (the trusted server needs it) ...
    _assert_no_list_and_no_ledger(grid)
    for user, reply in evals:
        sent = mech.vector(dict(reply.content.metric_records["metrics"]))
        np.testing.assert_allclose(sent, mech.clip(truth[user]), atol=1e-12)
    # ... what the run files hold is the noisy mean over the users asked
    exact = np.mean([mech.clip(truth[u]) for u, _ in evals], axis=0)
    written = read_metrics(tmp_path)
    noisy = np.array([written[k] for k in mech.keys])
    assert np.all(noisy != exact)
    assert np.all(np.abs(noisy - exact) < 6 * mech.central_std / len(evals))
    # ... and the release is accounted (written ahead, in its own append-only file)
    (entry,) = [r for r in report["other_releases"] if r["name"] == "evaluation"]
    assert entry["history"] == [[mech.noise_multiplier, 1.0, 1]]
    assert entry["epsilon"] == pytest.approx(EVAL_EPSILON, rel=0.03)
    assert entry["epsilon_with_training"] > report["epsilon"]
    assert json.loads((tmp_path / EVAL_RELEASES_JSON).read_text())["rounds"] == [1]
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    # ... and never refunded: resuming the finished run evaluates (and pays) once more
    run_server(RecordingGrid(30), settings)
    report = json.loads((tmp_path / "privacy.json").read_text())
    (entry,) = [r for r in report["other_releases"] if r["name"] == "evaluation"]
    assert entry["history"] == [[mech.noise_multiplier, 1.0, 2]]
    assert json.loads((tmp_path / EVAL_RELEASES_JSON).read_text())["rounds"] == [1, 1]


def test_a_private_deployment_without_eval_epsilon_asks_nothing(tmp_path: Path) -> None:
    # Prepare
    settings = _settings(tmp_path, "central", **{"num-server-rounds": 1,
                                                 "privacy.eval-epsilon": None})  # fmt: skip
    # Execute
    grid = _deploy(settings)
    # Assert
    assert not grid.replies("evaluate")
    assert read_rounds(tmp_path)[-1]["metrics"] is None
