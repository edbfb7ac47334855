"""One-shot federated EASE: exactness, the DP release, refusals, and a run end to end."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from flwr.app import MessageType

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
from simulations.evaluation import gram_evaluator
from simulations.inprocess import RecordingGrid
from simulations.run_dir import read_metrics, read_rounds

DATA = "synthetic:users=40,items=30,dim=4,mean=10,seed=2"


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
    metrics = run_gram_server(grid, settings, evaluator=gram_evaluator(settings.base))
    # Assert
    shape = (gram.packed_size(split.n_items),)
    assert len(grid.uploads) == split.n_users
    for reply in grid.uploads:
        (upload,) = reply.content.array_records["arrays"].to_numpy_ndarrays()
        assert upload.shape == shape and upload.dtype == np.float32
        assert np.linalg.norm(upload.astype(np.float64)) <= 1.0
        assert not reply.content.metric_records and not reply.content.config_records
    assert 0.0 < metrics["ndcg@10"] <= 1.0 and "ease" in metrics["reference"]
    assert MessageType.EVALUATE not in grid.kinds  # measured by the harness, not by messages
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None and ckpt.item_arrays[0].shape == (split.n_items, split.n_items)


def test_the_ledger_is_durable_before_the_released_model_is_stored_or_measured(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: the process dies the moment it would measure or store the noisy model
    flat = {"data": DATA, "run-dir": str(tmp_path), "model": "ease", "privacy": "central",
            "privacy.target-epsilon": 8.0, "privacy.insecure-noise-seed": 5}  # fmt: skip
    settings = GramSettings.from_flat(flat)
    grid = RecordingGrid(load_split(settings.base).n_users)

    def crash(*args: object, **kwargs: object) -> None:
        raise KeyboardInterrupt("killed after the release")

    monkeypatch.setattr("server.gram_app._evaluate", crash)
    # Execute
    with pytest.raises(KeyboardInterrupt):
        run_gram_server(grid, settings, evaluator=gram_evaluator(settings.base))
    # Assert: the release is on the ledger, and no model file exists without it
    assert load_checkpoint(tmp_path) is None
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mode"] == "central" and report["history"]
    assert verify_privacy_json(tmp_path / "privacy.json") == []


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
    assert epsilon_from_history([[z, 1.0, 1]], 1e-4, report["accountant"]) <= 4.0
    assert read_rounds(private)[0]["epsilon"] == pytest.approx(report["epsilon"])
    assert "insecure-noise-seed" in (private / "report.md").read_text()


def _wigner(n: int, z: float, rng: np.random.Generator) -> np.ndarray:
    upper = gram.release(np.zeros(gram.packed_size(n)), noise_multiplier=z, rng=rng)
    return gram.unpack(upper, n)


def test_spectral_denoise_keeps_the_spikes_above_the_noise_edge() -> None:
    # Prepare: a rank-3 Gram matrix far above the semicircle edge (noise_scale = 10)
    rng = np.random.default_rng(0)
    n, z = 50, 1.0
    basis, _ = np.linalg.qr(rng.normal(size=(n, 3)))
    signal = basis @ np.diag([100.0, 60.0, 40.0]) @ basis.T
    released = signal + _wigner(n, z, rng)
    # Execute
    values, vectors = gram.spectral_denoise(released, z, tau=1.2)
    lonely, _ = gram.spectral_denoise(_wigner(n, z, rng), z, tau=1.2)
    # Assert
    assert gram.noise_scale(z, n) == pytest.approx(10.0)
    assert len(values) == 3 and np.all(values > 12.0)
    overlap = np.linalg.svd(basis.T @ vectors, compute_uv=False)
    assert np.all(overlap > 0.97)  # the signal's subspace is recovered
    assert len(lonely) == 1  # pure noise: only the top eigenpair, always kept


def test_ease_from_spectrum_is_ease_of_the_low_rank_matrix() -> None:
    # Prepare
    rng = np.random.default_rng(1)
    vectors, _ = np.linalg.qr(rng.normal(size=(12, 4)))
    values = np.array([9.0, 5.0, 2.0, 0.5])
    # Execute
    spectral = gram.ease_from_spectrum(values, vectors, 0.7)
    dense = gram.ease_from_gram(vectors @ np.diag(values) @ vectors.T, 0.7)
    # Assert
    np.testing.assert_allclose(spectral, dense, rtol=1e-4, atol=1e-5)
    assert np.all(np.diag(spectral) == 0)


def test_solve_release_is_exact_ease_without_noise_and_spectral_with_it() -> None:
    # Prepare
    rng = np.random.default_rng(2)
    x = (rng.random((60, 15)) < 0.3).astype(np.float64)
    config = gram.GramConfig()
    # Execute
    exact, lam, rank = gram.solve_release(x.T @ x, None, config)
    noisy = x.T @ x + _wigner(15, 0.5, rng)
    private, lam_dp, rank_dp = gram.solve_release(noisy, 0.5, config)
    # Assert
    np.testing.assert_allclose(exact, gram.ease_from_gram(x.T @ x, 500.0))
    assert (lam, rank) == (500.0, 15)
    assert lam_dp == pytest.approx(config.lambda_c * gram.noise_scale(0.5, 15))
    assert 1 <= rank_dp < 15 and private.shape == (15, 15)
    with pytest.raises(ConfigError, match="denoiser"):
        gram.GramConfig(denoise="magic")


def test_explanations_are_exact_and_faithful() -> None:
    # Prepare
    rng = np.random.default_rng(3)
    weights = rng.normal(size=(20, 20)).astype(np.float32)
    history = np.array([1, 4, 7, 9, 15])
    # Execute
    cited = gram.explain(weights, history, [2, 3, 18], top=2)
    # Assert: score_j = sum_i B_ij, and removing the cited items lowers it by their weights
    for j, because in zip([2, 3, 18], cited, strict=True):
        assert len(because) <= 2 and all(w > 0 for _, w in because)
        assert [w for _, w in because] == sorted((w for _, w in because), reverse=True)
        for i, w in because:
            assert i in history and w == float(weights[i, j])
        kept = [i for i in history if i not in {i for i, _ in because}]
        full = weights[history, j].astype(np.float64).sum()
        rest = weights[kept, j].astype(np.float64).sum()
        assert full - rest == pytest.approx(sum(w for _, w in because), abs=1e-12)
        positive = weights[history, j][weights[history, j] > 0]
        assert sum(w for _, w in because) == pytest.approx(np.sort(positive)[::-1][:2].sum())


def test_similar_items_are_the_row_of_b() -> None:
    weights = np.array([[0, 3, 1, 2], [1, 0, 1, 1], [0, 0, 0, 0], [5, 4, 6, 0]], np.float32)
    assert gram.similar_items(weights, 0, k=2) == [(1, 3.0), (3, 2.0)]
    assert gram.similar_items(weights, 3, k=5) == [(2, 6.0), (0, 5.0), (1, 4.0)]


@pytest.fixture(scope="module")
def ease_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    run = tmp_path_factory.mktemp("ease") / "run"
    argv = ["simulate", "--model", "ease", "--engine", "inprocess", "--data", DATA]
    dp = ["--privacy", "central", "--target-epsilon", "8", "--insecure-noise-seed", "4"]
    assert main([*argv, *dp, "--out", str(run)]) == 0
    return run


def _cli_json(capsys: pytest.CaptureFixture[str], *argv: str) -> list[dict[str, object]]:
    capsys.readouterr()
    assert main([*argv, "--json"]) == 0
    rows: list[dict[str, object]] = json.loads(capsys.readouterr().out)
    return rows


def test_recommend_on_an_ease_run_scores_x_b_and_explains_exactly(
    ease_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from simulations.run_model import GramRunModel, load_run_model

    model = load_run_model(ease_run)
    assert isinstance(model, GramRunModel)
    user = "3"
    history = model.split.train_items(model.user_index(user))
    b = model.weights.astype(np.float64)
    ids = model.split.data.item_ids.tolist()
    # Execute
    rows = _cli_json(capsys, "recommend", str(ease_run), "--user", user, "--explain")
    diverse = _cli_json(capsys, "recommend", str(ease_run), "--user", user, "--diversify", "0.3")
    # Assert
    assert len(rows) == len(diverse) == 10
    for row in rows:
        j = ids.index(row["item"])
        assert j not in history and row["score"] == pytest.approx(b[history, j].sum())
        because = row["because"]
        assert isinstance(because, list) and because
        for cite in because:
            assert cite["weight"] == pytest.approx(b[ids.index(cite["item"]), j])
    scores = [float(r["score"]) for r in rows]  # type: ignore[arg-type]
    assert scores == sorted(scores, reverse=True)


def test_similar_and_fallback_on_an_ease_run(
    ease_run: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # Prepare
    from simulations.run_model import load_run_model

    model = load_run_model(ease_run)
    ids = model.split.data.item_ids.tolist()
    # Execute
    near = _cli_json(capsys, "similar", str(ease_run), "--item", str(ids[4]), "--k", "3")
    cold = _cli_json(
        capsys, "recommend", str(ease_run), "--user", "3", "--min-interactions", "1000"
    )
    # Assert
    row = model.weights[4].astype(np.float64)
    expected = [j for j, _ in gram.similar_items(model.weights, 4, k=3)]
    assert [ids.index(r["item"]) for r in near] == expected
    assert near[0]["similarity"] == pytest.approx(max(np.delete(row, 4)))
    unseen = np.setdiff1d(np.arange(len(ids)), model.split.train_items(model.user_index("3")))
    released = model.item_arrays[1].astype(np.float64)  # released diag(G)
    order = [released[ids.index(r["item"])] for r in cold]
    assert all(r["fallback"] and r["score"] is None for r in cold)  # no count shown
    assert order == sorted(order, reverse=True) and order[0] == pytest.approx(
        released[unseen].max()
    )


def test_audit_of_an_ease_run_attacks_its_gram_uploads(
    ease_run: Path, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    # Execute: the central server receives each exact contribution (tests/test_audit_gram.py)
    out = tmp_path / "audit.json"
    code = main(["audit", str(ease_run), "--clients", "10", "--out", str(out)])
    # Assert
    assert code == 0 and "upload_diagonal" in capsys.readouterr().out
    audit = json.loads(out.read_text())
    assert audit["model"] == "ease" and audit["gram"]["auc"]["upload_diagonal"] > 0.99
