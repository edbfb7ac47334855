"""The batched federated iALS rounds (simulations.ials_rounds) against the reference loop."""

from __future__ import annotations

import dataclasses

import numpy as np
import pytest

from fedrec.federated.loop import run_federated
from fedrec.federated.presets import federated_preset
from server.settings import RunSettings, load_split
from simulations.ials_rounds import evaluate, run_rounds

DATA = "synthetic:users=120,items=60,seed=3"


@pytest.mark.parametrize("fast", [False, True])
def test_batched_rounds_equal_the_reference_loop(fast: bool) -> None:
    # Prepare: the iALS preset at a shaped-like alpha0, 8 rounds of about 30 devices
    split = load_split(RunSettings(data=DATA))
    model, train, server = federated_preset("ials")
    model = dataclasses.replace(model, alpha0=1.3)
    reference = run_federated(split, model, train, server, rounds=8, clients_per_round=30, seed=0)
    seen: list[dict[str, float]] = []

    # Execute
    items = run_rounds(split, model, train, server, rounds=8, clients_per_round=30,
                       eval_at={8}, fast=fast, on_eval=seen.append)  # fmt: skip

    # Assert: the same item table up to float rounding, the same ranking metrics
    np.testing.assert_allclose(items[0], reference.item_arrays[0], rtol=1e-5, atol=1e-7)
    assert seen[0]["round"] == 8
    assert seen[0]["ndcg@10"] == pytest.approx(reference.metrics["ndcg@10"], abs=1e-9)
    assert evaluate(split, items, model)["recall@20"] == pytest.approx(
        reference.metrics["recall@20"], abs=1e-9
    )


def test_batched_rounds_refuse_settings_they_do_not_cover() -> None:
    split = load_split(RunSettings(data=DATA))
    model, train, server = federated_preset("ials")
    with pytest.raises(ValueError, match="one SGD epoch"):
        run_rounds(split, model, dataclasses.replace(train, epochs=2), server, rounds=1,
                   clients_per_round=10)  # fmt: skip
