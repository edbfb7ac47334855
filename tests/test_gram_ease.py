"""One-shot federated EASE: exactness, the DP release, refusals, and a run end to end."""

from __future__ import annotations

import json
from collections.abc import Iterable
from pathlib import Path

import numpy as np
import pytest
from flwr.app import Message, MessageType

from fedrec.baselines.ease import ease_weights
from fedrec.data import Interactions
from fedrec.data.split import random_split
from fedrec.errors import ConfigError
from fedrec.federated import gram
from fedrec.privacy.accounting import epsilon_from_history
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.report import verify_privacy_json
from server.checkpoint import load_checkpoint
from server.gram_app import GramSettings, resolve, run_gram_server
from server.settings import load_split
from simulations.cli import main
from simulations.inprocess import InProcessGrid
from simulations.run_dir import read_metrics, read_rounds

DATA = "synthetic:users=40,items=30,dim=4,mean=10,seed=2"


class RecordingGrid(InProcessGrid):
    """The in-process Grid, keeping every train reply for inspection."""

    def __init__(self, n_nodes: int) -> None:
        super().__init__(n_nodes)
        self.uploads: list[Message] = []

    def send_and_receive(
        self, messages: Iterable[Message], *, timeout: float | None = None
    ) -> Iterable[Message]:
        out = list(super().send_and_receive(messages, timeout=timeout))
        self.uploads += [m for m in out if m.metadata.message_type == MessageType.TRAIN]
        return out


def test_non_private_federated_ease_is_exactly_ease(synthetic_data: Interactions) -> None:
    # Prepare
    split = random_split(synthetic_data, seed=0)
    total = gram.GramSum(split.n_items, clip=False)
    # Execute
    for user in range(split.n_users):
        total.add(gram.client_contribution(split.train_items(user), split.n_items, normalize=False))
    weights = gram.ease_from_gram(gram.unpack(total.total, split.n_items), 500.0)
    # Assert
    reference = ease_weights(split.train, 500.0).numpy()
    np.testing.assert_allclose(weights, reference, rtol=1e-5, atol=1e-7)
    x = split.train.toarray() > 0
    scores = np.stack([gram.score_user(weights, np.flatnonzero(row)) for row in x])
    np.testing.assert_allclose(scores, x @ reference, rtol=1e-4, atol=1e-6)


@pytest.mark.parametrize("n_touched", [1, 2, 7, 60])
def test_a_private_contribution_is_dense_with_frobenius_norm_at_most_one(n_touched: int) -> None:
    # Prepare
    items = np.random.default_rng(n_touched).choice(80, n_touched, replace=False)
    # Execute
    upload = gram.client_contribution(items, 80, normalize=True)
    matrix = gram.unpack(upload, 80)
    # Assert
    assert isinstance(upload, np.ndarray) and upload.dtype == np.float32
    assert upload.shape == (gram.packed_size(80),) == (80 * 81 // 2,)
    assert np.linalg.norm(upload.astype(np.float64)) <= 1.0
    assert np.linalg.norm(matrix) <= 1.0 + 1e-9
    x = np.zeros(80)
    x[items] = 1 / np.sqrt(n_touched)
    np.testing.assert_allclose(matrix, np.outer(x, x), rtol=1e-5, atol=1e-9)


def test_the_noise_is_on_the_sum_symmetric_with_std_z() -> None:
    # Prepare
    n, z = 200, 0.7
    total = gram.GramSum(n, clip=True)
    for items in ([1, 2, 3], [4], [5, 6]):
        total.add(gram.client_contribution(items, n, normalize=True))
    # Execute
    noisy = gram.release(total.total, noise_multiplier=z, rng=secure_rng(insecure_seed=11))
    again = gram.release(np.zeros_like(total.total), noise_multiplier=z, rng=secure_rng(11))
    noise = gram.unpack(noisy, n) - gram.unpack(total.total, n)
    # Assert
    np.testing.assert_allclose(noisy - total.total, again, atol=1e-12)  # one draw on the sum
    assert np.array_equal(noise, noise.T)
    off = noise[np.triu_indices(n, 1)]
    assert np.std(noisy - total.total) == pytest.approx(z, rel=0.03)  # every released coord
    assert np.std(off) == pytest.approx(z / np.sqrt(2), rel=0.03)
    assert np.std(np.diag(noise)) == pytest.approx(z, rel=0.15)
    assert abs(float(np.mean(off))) < 0.02


def test_the_server_clips_an_oversized_upload() -> None:
    total = gram.GramSum(4, clip=True)
    total.add(np.full(gram.packed_size(4), 10.0, dtype=np.float32))
    assert np.linalg.norm(total.total) == pytest.approx(1.0, rel=1e-6)


def test_local_mode_and_oversized_catalogs_are_refused(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="far too large"):
        gram.check_privacy_mode("local")
    with pytest.raises(ConfigError, match=r"I\(I\+1\)/2"):
        gram.check_catalog(6000)
    flat = {"data": DATA, "run-dir": str(tmp_path), "model": "ease", "ease.max-items": 10}
    settings = GramSettings.from_flat(flat)
    with pytest.raises(ConfigError, match="floats"):
        resolve(settings, load_split(settings.base))


def test_cli_refuses_local_dp_for_ease(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    argv = ["simulate", "--model", "ease", "--data", DATA, "--privacy", "local"]
    code = main([*argv, "--target-epsilon", "8", "--out", str(tmp_path / "r")])
    assert code == 2 and "local DP is not offered" in capsys.readouterr().err


def test_flower_round_uploads_dense_arrays_and_evaluates_on_devices(tmp_path: Path) -> None:
    # Prepare
    flat = {"data": DATA, "run-dir": str(tmp_path), "model": "ease", "privacy": "central",
            "privacy.target-epsilon": 8.0, "privacy.insecure-noise-seed": 5}  # fmt: skip
    settings = GramSettings.from_flat(flat)
    split = load_split(settings.base)
    grid = RecordingGrid(split.n_users)
    # Execute
    metrics = run_gram_server(grid, settings)
    # Assert
    shape = (gram.packed_size(split.n_items),)
    assert len(grid.uploads) == split.n_users
    for reply in grid.uploads:
        (upload,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert upload.shape == shape and upload.dtype == np.float32
        assert np.linalg.norm(upload.astype(np.float64)) <= 1.0
        assert not reply.content.metric_records and not reply.content.config_records
    assert 0.0 < metrics["ndcg@10"] <= 1.0 and "ease" in metrics["reference"]
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.item_arrays[0].shape == (split.n_items, split.n_items)


def test_simulate_ease_in_process_end_to_end(tmp_path: Path) -> None:
    # Prepare
    common = ["simulate", "--model", "ease", "--engine", "inprocess", "--data", DATA]
    plain, private = tmp_path / "plain", tmp_path / "central"
    # Execute
    code_plain = main([*common, "--out", str(plain)])
    dp = ["--privacy", "central", "--target-epsilon", "4", "--delta", "1e-4"]
    code_private = main([*common, *dp, "--insecure-noise-seed", "3", "--out", str(private)])
    # Assert
    assert code_plain == 0 and code_private == 0
    exact = read_metrics(plain)
    assert exact["ndcg@10"] == pytest.approx(exact["reference"]["ease"]["ndcg@10"], abs=1e-9)
    for run in (plain, private):
        rounds = read_rounds(run)
        assert len(rounds) == 1 and rounds[0]["round"] == 1 and not rounds[0]["failed"]
        for name in ("config.json", "metrics.json", "report.md", "checkpoint.npz"):
            assert (run / name).exists()
        assert json.loads((run / "config.json").read_text())["settings"]["model"] == "ease"
    report = json.loads((private / "privacy.json").read_text())
    assert verify_privacy_json(private / "privacy.json") == []
    z = report["noise_multiplier"]
    assert report["history"] == [[z, 1.0, 1]] and report["delta"] == 1e-4
    assert epsilon_from_history([[z, 1.0, 1]], 1e-4) <= 4.0
    assert read_rounds(private)[0]["epsilon"] == pytest.approx(report["epsilon"])
    assert "insecure-noise-seed" in (private / "report.md").read_text()
