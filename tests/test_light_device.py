"""An MF or iALS device opens, records and recommends without the training stack.

Before, an app embedding :class:`clients.DeviceClient` imported torch, Opacus, SciPy and
pandas on every start (about 5 CPU s and 430 MB per process, docs/BENCHMARKS.md
"Serving without the training stack"). These tests fail when a module on the device's
open/record/recommend/explain path imports one of them again, when the torch-free
serving refit or fallback bias drifts from the device's torch path, or when MF's
refresh stops being the refit evaluation runs (:func:`fedrec.training.mf_fast.refit`).
"""

from __future__ import annotations

import dataclasses
import json
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from clients import DeviceClient
from clients.device_round import RoundConfig
from clients.serving import HeldGlobal, item_bias, top_k
from fedrec.federated.seeds import derive_seed
from fedrec.modelfile import ExportedModel, save_model
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.training import mf_fast
from tests.test_light_serving import DATA_STACK, TRAINING_STACK

APP = """
import json, sys
from clients import DeviceClient

def rows(recs):
    return [[r.item, r.score, r.fallback, [list(b) for b in r.because]] for r in recs]

with DeviceClient.open(sys.argv[1], user_id="me", seed=7) as device:
    before = device.recommend(10)
    device.record(sys.argv[2], timestamp=2000.0)
    after = device.recommend(10, explain=True)
print(json.dumps({"before": rows(before), "after": rows(after), "modules": sorted(sys.modules)}))
"""

FIRST_START = """
import json, sys
from clients import DeviceClient

with DeviceClient.open(sys.argv[1], user_id="me", seed=7) as device:  # creates the store
    device.load_model(sys.argv[2])
    device.record_many([(item, None, 1000.0 + j) for j, item in enumerate(sys.argv[3:])])
    recs = device.recommend(10, explain=True)
rows = [[r.item, r.score, r.fallback, [list(b) for b in r.because], r.title] for r in recs]
print(json.dumps({"recs": rows, "modules": sorted(sys.modules)}))
"""

MODELS = {
    "mf": ModelConfig(kind="mf", dim=6),
    "ials": ModelConfig(kind="ials", dim=5, alpha0=0.1),
}
IDS = [f"i{r}" for r in range(40)]
HISTORY = ["i31", "i2", "i17", "i9", "i38", "i11"]
NEW_ITEM = "i23"
SEED = 7  # the device's seed (APP opens with it)


def _rows(recs: list[object]) -> list[list[object]]:
    return [
        [r.item, r.score, r.fallback, [list(b) for b in r.because]]  # type: ignore[attr-defined]
        for r in recs
    ]


def _arrays(model: ModelConfig) -> list[np.ndarray]:
    """Trained-looking global arrays (MF: a bias that differs per item)."""
    arrays = [a * 5 for a in init_item_arrays(model, len(IDS), seed=3)]
    if model.kind == "mf":
        arrays[1][:, 0] = np.linspace(-1.0, 1.0, len(IDS), dtype=np.float32)
    return arrays


def _store(tmp_path: Path, model: ModelConfig) -> Path:
    """A device store holding the global arrays and six interactions (served state)."""
    path = tmp_path / f"{model.kind}.db"
    config = RoundConfig(model=model, train=LocalTrainConfig(), round=1, seed=1, item_ids=IDS)
    with DeviceClient.open(path, user_id="me", seed=SEED) as device:
        device.set_global(_arrays(model), config)
        device.record_many([(item, None, 1000.0 + j) for j, item in enumerate(HISTORY)])
    return path


def _torch_path(monkeypatch: pytest.MonkeyPatch) -> None:
    """The device as for a kind without a torch-free twin: refit_user and the model."""
    monkeypatch.setattr("clients.device.refit_state", lambda *a, **k: None)
    monkeypatch.setattr("clients.serving.light_item_bias", lambda *a, **k: None)


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_a_device_records_and_recommends_without_the_training_stack_as_its_torch_path(
    kind: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: one store, copied for the torch path
    light_store = _store(tmp_path, MODELS[kind])
    torch_store = tmp_path / "torch.db"
    shutil.copy(light_store, torch_store)
    # Execute: a fresh app process opens, recommends, records, recommends with reasons
    done = subprocess.run(
        [sys.executable, "-c", APP, str(light_store), NEW_ITEM],
        capture_output=True,
        text=True,
        check=True,
    )
    light = json.loads(done.stdout.splitlines()[-1])
    _torch_path(monkeypatch)
    with DeviceClient.open(torch_store, user_id="me", seed=SEED) as device:
        before = _rows(device.recommend(10))
        device.record(NEW_ITEM, timestamp=2000.0)
        after = _rows(device.recommend(10, explain=True))
    # Assert: no torch, Opacus, Flower, SciPy or pandas in the app process
    loaded = {m.split(".")[0] for m in light["modules"]}
    assert not loaded & set(TRAINING_STACK + DATA_STACK), sorted(loaded & set(TRAINING_STACK))
    # the stored state's list is the torch path's to the bit; after the refresh, iALS's
    # closed form is too, and MF's refit equals autograd's to float rounding
    assert light["before"] == before and not any(r[2] for r in before)
    assert [r[0] for r in light["after"]] == [r[0] for r in after]
    assert [r[3] for r in light["after"]] == [r[3] for r in after]
    if kind == "ials":
        assert light["after"] == after
    else:
        np.testing.assert_allclose(
            [r[1] for r in light["after"]], [r[1] for r in after], rtol=1e-6, atol=1e-7
        )


def test_mf_refresh_is_the_refit_evaluation_runs_to_the_bit(tmp_path: Path) -> None:
    # Prepare: the served state before the record, and the refit with torch's generator
    model = MODELS["mf"]
    path = _store(tmp_path, model)
    with DeviceClient.open(path, user_id="me", seed=SEED) as device:
        serve = device.store.load_slot("serve")
        steps = device.refresh_steps
    assert serve is not None
    arrays = _arrays(model)
    seen = np.array(sorted(IDS.index(i) for i in [*HISTORY, NEW_ITEM]), dtype=np.int64)
    train = dataclasses.replace(LocalTrainConfig(), refit_steps=steps)
    p = mf_fast.refit(
        model, train, arrays, dict(zip(serve.names, serve.arrays, strict=True)), seen,
        seed=derive_seed(SEED, len(HISTORY) + 1), torch_free=False,
    )  # fmt: skip
    scores = np.einsum("ij,j->i", arrays[0], p[0]) + arrays[1][:, 0]
    expected = [[IDS[r], float(scores[r])] for r in top_k(scores, seen, 10)]
    # Execute
    done = subprocess.run(
        [sys.executable, "-c", APP, str(path), NEW_ITEM], capture_output=True, text=True,
        check=True,
    )  # fmt: skip
    # Assert
    after = json.loads(done.stdout.splitlines()[-1])["after"]
    assert [r[:2] for r in after] == expected


@pytest.mark.parametrize("kind", sorted(MODELS))
def test_the_fallback_bias_is_read_from_the_arrays_as_from_the_model(kind: str) -> None:
    # Prepare
    model = MODELS[kind]
    arrays = _arrays(model)
    # Execute: the held arrays of a torch-free kind build no model
    held = HeldGlobal.build(arrays, model, LocalTrainConfig(), IDS, seed=SEED)
    assert held._built is None
    # Assert: the same bias as the model's (MF: the trained b; iALS: none, zeros)
    np.testing.assert_array_equal(held.bias, item_bias(held.model, len(IDS)))
    assert held.bias.dtype == np.float32
    assert kind != "mf" or np.ptp(held.bias) > 0


def test_a_new_device_loads_a_model_file_without_the_training_stack(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Prepare: an exported MF model file with titles
    model = MODELS["mf"]
    titles = [f"Title {i}" for i in IDS]
    exported = ExportedModel(
        kind="mf", item_ids=list(IDS), arrays=_arrays(model), titles=titles,
        model=dataclasses.asdict(model), train=dataclasses.asdict(LocalTrainConfig()),
    )  # fmt: skip
    model_file = save_model(tmp_path / "model.fedrec", exported)
    # Execute: an app's first start (the store is created, the ledger table included)
    done = subprocess.run(
        [sys.executable, "-c", FIRST_START, str(tmp_path / "new.db"), str(model_file), *HISTORY],
        capture_output=True, text=True, check=True,
    )  # fmt: skip
    light = json.loads(done.stdout.splitlines()[-1])
    _torch_path(monkeypatch)
    with DeviceClient.open(tmp_path / "torch.db", user_id="me", seed=SEED) as device:
        device.load_model(model_file)
        device.record_many([(item, None, 1000.0 + j) for j, item in enumerate(HISTORY)])
        recs = device.recommend(10, explain=True)
    # Assert: nothing heavy imported; the torch path's list and titles (its refit: to rounding)
    loaded = {m.split(".")[0] for m in light["modules"]}
    assert not loaded & set(TRAINING_STACK + DATA_STACK), sorted(loaded & set(TRAINING_STACK))
    expected = [[r.item, r.fallback, [list(b) for b in r.because], r.title] for r in recs]
    assert [[r[0], r[2], r[3], r[4]] for r in light["recs"]] == expected
    np.testing.assert_allclose(
        [r[1] for r in light["recs"]], [r.score for r in recs], rtol=1e-6, atol=1e-7
    )
