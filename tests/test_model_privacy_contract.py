"""Every model kind under the privacy modes: central DP trains and verifies; local DP
runs where its unit is wired (MF, the autoencoders) and is refused with a reason elsewhere.

A new model joins by being in ``MODEL_KIND_NAMES``; nothing here names one model's code.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from fedrec.errors import ConfigError
from fedrec.models.config import MODEL_KIND_NAMES
from fedrec.models.registry import init_item_arrays

LOCAL_REFUSED = {
    "ials": "closed-form",
    "ncf": "one-interaction unit",
    "sasrec": "no audited local-DP mechanism",
}
"""Kinds that refuse local DP, and a phrase of the reason they give."""


def _flat(tmp: Path, kind: str, **over: Any) -> dict[str, Any]:
    return {
        "data": "synthetic:users=30,items=40,dim=4,mean=12,seed=5",
        "model": kind,
        "num-server-rounds": 2,
        "clients-per-round": 15,
        "run-dir": str(tmp),
        **over,
    }


@pytest.mark.parametrize("kind", MODEL_KIND_NAMES)
def test_local_dp_is_supported_or_refused_with_the_reason(kind: str, tmp_path: Path) -> None:
    from server.settings import RunSettings

    flat = _flat(tmp_path, kind, privacy="local", **{"privacy.target-epsilon": 8.0})
    if kind not in LOCAL_REFUSED:
        assert RunSettings.from_run_config(flat).privacy.mode == "local"
        return
    with pytest.raises(ConfigError, match=LOCAL_REFUSED[kind]) as info:
        RunSettings.from_run_config(flat)
    assert "--privacy central" in str(info.value)


@pytest.mark.parametrize("kind", MODEL_KIND_NAMES)
def test_central_dp_run_trains_every_item_array_and_accounts(kind: str, tmp_path: Path) -> None:
    # Prepare: user-level DP-FedAvg on the clipped dense uploads, through the Flower apps
    from fedrec.privacy.report import verify_privacy_json
    from server.checkpoint import load_checkpoint
    from server.privacy_run import resolve_settings
    from server.server_app import run_server
    from server.settings import RunSettings, load_split
    from simulations.evaluation import device_evaluator
    from simulations.inprocess import InProcessGrid
    from simulations.run_dir import create_run_dir

    dp = {"privacy.target-epsilon": 8.0, "privacy.insecure-noise-seed": 7}
    flat = _flat(tmp_path, kind, privacy="central", **dp)
    settings = RunSettings.from_run_config(flat)
    split = load_split(settings)
    settings = resolve_settings(settings, split)
    create_run_dir(tmp_path, settings)
    start = init_item_arrays(settings.model, split.n_items, seed=settings.seed)
    # Execute
    run_server(InProcessGrid(split.n_users), settings, evaluator=device_evaluator(settings))
    # Assert: every item-side array moved, the guarantee verifies
    ckpt = load_checkpoint(tmp_path)
    assert ckpt is not None
    for before, after in zip(start, ckpt.item_arrays, strict=True):
        assert np.isfinite(after).all() and not np.array_equal(before, after)
    assert verify_privacy_json(tmp_path / "privacy.json") == []
    report = json.loads((tmp_path / "privacy.json").read_text())
    assert report["mode"] == "central" and 0 < report["epsilon"] <= 8.0
