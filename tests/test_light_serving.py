"""Serving an MF or iALS run imports no torch, and serves what the torch path serves.

Before, ``fedrec recommend`` on any run imported torch, Opacus and SciPy (about 4.5 s of
CPU per call, docs/BENCHMARKS.md "Serving without the training stack"). These tests fail
when a module on the serving path imports torch or Opacus at its top again, when a fact
copied into :mod:`fedrec.models.torch_free` drifts from its class, or when a torch-free
score differs from :func:`fedrec.federated.client.client_scores` by one bit.
"""

from __future__ import annotations

import json
import subprocess
import sys
from dataclasses import replace
from pathlib import Path

import numpy as np
import pytest

from fedrec.federated.client import client_scores
from fedrec.federated.presets import federated_preset
from fedrec.federated.seeds import EVAL_ROUND, derive_seed
from fedrec.federated.serving import user_scores
from fedrec.models.base import item_side, user_side
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import build_model, init_item_arrays, model_class
from fedrec.models.torch_free import TORCH_FREE, side_shapes
from server.settings import RunSettings, load_split
from simulations.run_model import load_run_model, save_run_model
from tests.test_recommend_cli import DATA, make_run_dir

TRAINING_STACK = ("torch", "opacus", "sympy", "flwr")
DATA_STACK = ("pandas", "scipy", "pyarrow")

RECOMMEND = """
import contextlib, io, json, sys
from simulations.cli import main
out = io.StringIO()
with contextlib.redirect_stdout(out):
    code = main(sys.argv[1:])
print(json.dumps({"code": code, "out": out.getvalue(), "modules": sorted(sys.modules)}))
"""


@pytest.mark.parametrize("kind", sorted(TORCH_FREE))
def test_copied_facts_are_the_class_facts(kind: str) -> None:
    # Prepare
    cls, light = model_class(kind), TORCH_FREE[kind]
    # Execute / Assert: every copy, and the preset it names, as on the class
    assert light.PRESET == cls.PRESET
    assert light.ITEM_SIDE == cls.ITEM_SIDE
    assert light.USER_SIDE == cls.USER_SIDE
    assert light.ITEM_VECTORS == cls.ITEM_VECTORS
    assert light.ORDERED == cls.ORDERED
    assert light.ITEM_BIAS == cls.ITEM_BIAS
    assert light.USER_VECTOR == cls.USER_VECTOR
    for dim, n_items in ((3, 7), (8, 40)):  # the shapes of a device's one-user model
        model = build_model(ModelConfig(kind=kind, dim=dim), n_items, 1, seed=0)
        items = tuple((n, tuple(a.shape)) for n, a in item_side(model).items())
        users = tuple((n, tuple(a.shape)) for n, a in user_side(model).items())
        assert side_shapes(light, ModelConfig(kind=kind, dim=dim), n_items) == (items, users)
    for strategy in (None, "fedavg", "fedadam", "fedprox"):
        for privacy in ("none", "central"):
            preset = cls.federated_preset(strategy, privacy)
            light_preset = federated_preset(kind, strategy, privacy)
            assert light_preset[:2] == preset[:2]
            if privacy == "none":  # a private run drops count weighting (federated_preset)
                assert light_preset[2] == preset[2]


MF = ModelConfig(kind="mf", dim=6)
REFITS = [
    LocalTrainConfig(),  # Adam refit, 20 steps, one batch
    LocalTrainConfig(refit_optimizer="sgd", refit_steps=3, batch_size=7, weight_decay=1e-3),
    LocalTrainConfig(refit_steps=0),
    LocalTrainConfig(user_lr=1e-2),  # no fast path: through client_scores (torch)
]


@pytest.mark.parametrize(
    ("model", "train"),
    [(MF, t) for t in REFITS]
    + [(replace(MF, loss="bpr", negatives=2, l2=0.0), REFITS[1])]
    + [(ModelConfig(kind="ials", dim=5, alpha0=0.1), LocalTrainConfig())],
)
def test_torch_free_scores_are_client_scores_bit_for_bit(
    model: ModelConfig, train: LocalTrainConfig
) -> None:
    # Prepare: trained-looking item arrays, a user with repeated and unsorted items
    arrays = init_item_arrays(model, 40, seed=3)
    arrays = [a * 5 for a in arrays]
    history = np.array([31, 2, 17, 2, 9, 38, 11, 5, 23], dtype=np.int64)
    for seed in (0, 2**62 + 99):
        # Execute
        served = user_scores(model, train, arrays, None, history, seed=seed)
        expected = client_scores(model, train, arrays, None, history, seed=seed)
        # Assert
        assert served.dtype == np.float64
        np.testing.assert_array_equal(served, expected.double().numpy())


@pytest.fixture(scope="module")
def mf_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A finished MF run with its model file, as ``fedrec simulate`` leaves it."""
    path = make_run_dir(tmp_path_factory.mktemp("light") / "run")
    assert save_run_model(path) is not None
    return path


def _recommend(*argv: str) -> tuple[list[dict[str, object]], set[str]]:
    done = subprocess.run(
        [sys.executable, "-c", RECOMMEND, "recommend", *argv, "--json"],
        capture_output=True,
        text=True,
        check=True,
    )
    result = json.loads(done.stdout.splitlines()[-1])
    assert result["code"] == 0
    return json.loads(result["out"]), {m.split(".")[0] for m in result["modules"]}


def test_recommend_on_an_mf_run_imports_no_torch_and_serves_the_torch_scores(
    mf_run: Path,
) -> None:
    # Prepare: the list of the torch path (client_scores, as the run's evaluation)
    model = load_run_model(mf_run)
    split = load_split(RunSettings.from_run_config({"data": DATA}))
    user = 4
    scores = client_scores(
        model.settings.model, model.settings.train, model.item_arrays, None,
        split.train_items(user), seed=derive_seed(model.settings.seed, user, EVAL_ROUND),
    ).double().numpy()  # fmt: skip
    scores[split.train_items(user)] = -np.inf
    top = np.argsort(-scores, kind="stable")[:5]
    expected = [
        {"item": int(split.data.item_ids[i]), "score": float(scores[i]), "fallback": False,
         "title": f"Item {int(split.data.item_ids[i])}"}
        for i in top
    ]  # fmt: skip
    # Execute: a user of the run, then a new user given by item ids
    rows, loaded = _recommend(str(mf_run), "--user", str(split.data.user_ids[user]), "--k", "5")
    new_rows, new_loaded = _recommend(str(mf_run), "--items", "3,5,9", "--k", "3")
    # Assert: the same list, to the bit, without the training stack; the new user's
    # list needs no data either (no split: neither SciPy nor pandas)
    assert rows == expected
    assert not loaded & set(TRAINING_STACK), sorted(loaded & set(TRAINING_STACK))
    assert len(new_rows) == 3 and not any(r["fallback"] for r in new_rows)
    assert not new_loaded & set(TRAINING_STACK + DATA_STACK)
