"""``--device cpu|cuda`` and ``--track tensorboard`` for ``fedrec simulate`` and ``baseline``.

The machine running these tests has no GPU, so ``cuda`` is checked three ways: refused
with a clear error where CUDA is unavailable; with CUDA reported available, every heavy
call (EASE's Gram inverse, the protocol's ranking) runs under the chosen device; and on
PyTorch's ``meta`` device, EASE's computation really happens on the device it is given.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
import torch

from fedrec.training import device as device_mod
from simulations.cli import main

DATA = "synthetic:users=30,items=50,dim=4,mean=15,seed=3"
SIMULATE = [
    "simulate", "--data", DATA, "--rounds", "2", "--clients-per-round", "10",
    "--eval-every", "1", "--set", "train.epochs=2", "--set", "train.refit-steps=3",
]  # fmt: skip


@pytest.mark.parametrize("command", ["baseline", "simulate"])
def test_cuda_is_refused_where_it_is_unavailable(
    command: str,
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    capsys: pytest.CaptureFixture[str],
) -> None:
    # Prepare
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    out = tmp_path / "run"
    argv = ["baseline", "--data", DATA, "--model", "ease"] if command == "baseline" else SIMULATE
    # Execute
    code = main([*argv, "--device", "cuda", "--out", str(out)])
    # Assert: exit 2, one line naming the flag and the fix, nothing written
    err = capsys.readouterr().err
    assert code == 2
    assert f"fedrec {command}: error: --device: CUDA is not available here" in err
    assert "use --device cpu" in err
    assert not out.exists()


def _record_devices(monkeypatch: pytest.MonkeyPatch) -> dict[str, list[str]]:
    """Run EASE and the ranking on the CPU, recording the device each was asked to use."""
    import fedrec.baselines as baselines
    import fedrec.baselines.ease as ease
    import fedrec.metrics as metrics

    seen: dict[str, list[str]] = {"ease": [], "ranking": []}
    real_weights, real_evaluate = ease.ease_weights, baselines.evaluate_scores

    def weights(train: Any, lam: float, device: torch.device | None = None) -> torch.Tensor:
        seen["ease"].append(str(device_mod.current_device() if device is None else device))
        return real_weights(train, lam, torch.device("cpu"))

    def evaluate(*args: Any, **kw: Any) -> Any:
        seen["ranking"].append(str(kw.get("device") or device_mod.current_device()))
        return real_evaluate(*args, **{**kw, "device": "cpu"})

    monkeypatch.setattr(ease, "ease_weights", weights)
    monkeypatch.setattr(baselines, "evaluate_scores", evaluate)
    monkeypatch.setattr(metrics, "evaluate_scores", evaluate)  # the baseline command's
    return seen


@pytest.mark.parametrize("device", ["cpu", "cuda"])
def test_baseline_runs_ease_and_ranking_on_the_chosen_device(
    device: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: CUDA reported available; the heavy calls record where they were sent
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = _record_devices(monkeypatch)
    # Execute
    code = main(["baseline", "--data", DATA, "--model", "ease", "--device", device,
                 "--out", str(tmp_path / "run")])  # fmt: skip
    # Assert: every heavy call on the chosen device; the result as on the CPU
    assert code == 0
    assert seen == {"ease": [device], "ranking": [device]}
    assert device_mod.current_device() == torch.device("cpu")  # restored afterwards
    plain = tmp_path / "plain"
    assert main(["baseline", "--data", DATA, "--model", "ease", "--out", str(plain)]) == 0
    ours = json.loads((tmp_path / "run" / "metrics.json").read_text())
    assert ours["ndcg@10"] == json.loads((plain / "metrics.json").read_text())["ndcg@10"]


def test_simulate_runs_its_references_on_the_chosen_device(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    seen = _record_devices(monkeypatch)
    # Execute
    code = main([*SIMULATE, "--device", "cuda", "--out", str(tmp_path / "run")])
    # Assert: the reference rows (popularity, EASE) ran on it; the devices' own
    # evaluation is per user, on the CPU (no call here)
    assert code == 0
    assert seen["ease"] == ["cuda"] and set(seen["ranking"]) == {"cuda"}
    assert len(seen["ranking"]) == 2  # popularity and EASE


def test_ease_computes_on_the_device_it_is_given() -> None:
    # Prepare: the meta device has shapes and no data: a CPU fallback would show
    import scipy.sparse as sp

    from fedrec.baselines.ease import EASE, ease_weights

    train = sp.random(20, 12, density=0.3, format="csr", random_state=0)
    train.data[:] = 1.0
    # Execute
    b = ease_weights(train, 5.0, torch.device("meta"))
    model = EASE(5.0)
    with device_mod.compute_device("cpu"):
        model.fit(train)
    model.weights = b
    scores = model.score(torch.arange(3).numpy())
    # Assert
    assert b.device.type == "meta" and tuple(b.shape) == (12, 12) and b.dtype == torch.float32
    assert scores.device.type == "meta" and tuple(scores.shape) == (3, 12)


def test_unknown_device_is_refused() -> None:
    from fedrec.errors import ConfigError

    with pytest.raises(ConfigError, match=r"--device: unknown device 'tpu'"):
        device_mod.resolve_device("tpu")


# ------------------------------------------------------------------------------ tracking


def _scalars(log_dir: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    events = EventAccumulator(str(log_dir))
    events.Reload()
    return {
        tag: [(e.step, e.value) for e in events.Scalars(tag)] for tag in events.Tags()["scalars"]
    }


def test_simulate_tracks_its_rounds_in_tensorboard(tmp_path: Path) -> None:
    # Execute
    out = tmp_path / "run"
    assert main([*SIMULATE, "--track", "tensorboard", "--out", str(out)]) == 0
    # Assert: TensorBoard reads back what rounds.jsonl and metrics.json say, and no more
    scalars = _scalars(out / "tensorboard")
    rounds = [json.loads(line) for line in (out / "rounds.jsonl").open()]
    metrics = json.loads((out / "metrics.json").read_text())
    assert [s for s, _ in scalars["eval/ndcg@10"]] == [1, 2]
    for (step, value), record in zip(scalars["eval/ndcg@10"], rounds, strict=True):
        assert step == record["round"]
        assert value == pytest.approx(record["metrics"]["ndcg@10"], rel=1e-6)
    assert scalars["final/ndcg@10"][-1][1] == pytest.approx(metrics["ndcg@10"], rel=1e-6)
    assert "reference/popularity/ndcg@10" in scalars
    assert all(not tag.startswith(("user", "item")) for tag in scalars)
    files = [p for p in (out / "tensorboard").rglob("*") if p.is_file()]
    assert files and all(p.stat().st_mode & 0o077 == 0 for p in files)  # 0600


def test_baseline_tracks_its_metrics_in_tensorboard(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["baseline", "--data", DATA, "--model", "popularity", "--track", "tensorboard"]
    assert main([*argv, "--out", str(out)]) == 0
    scalars = _scalars(out / "tensorboard")
    metrics = json.loads((out / "metrics.json").read_text())
    assert scalars["final/ndcg@10"][-1][1] == pytest.approx(metrics["ndcg@10"], rel=1e-6)


def test_track_without_tensorboard_installed_is_refused(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    import builtins

    # Prepare: torch.utils.tensorboard cannot be imported
    real_import = builtins.__import__

    def no_tensorboard(name: str, *args: Any, **kw: Any) -> Any:
        if name.startswith("torch.utils.tensorboard"):
            raise ImportError("No module named 'tensorboard'")
        return real_import(name, *args, **kw)

    monkeypatch.setattr(builtins, "__import__", no_tensorboard)
    out = tmp_path / "run"
    # Execute
    code = main([*SIMULATE, "--track", "tensorboard", "--out", str(out)])
    # Assert
    assert code == 2
    assert "--track tensorboard: the tensorboard package is not installed" in (
        capsys.readouterr().err
    )
    assert not out.exists()
