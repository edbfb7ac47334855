"""The sensitivity audit bounds one interaction's effect on a device's clipped sum, and
flags a coupling between units (negatives handed out by position) when it is put back."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt
import pytest
import torch

from fedrec.audit import sensitivity
from fedrec.audit.sensitivity import Sensitivity, clipped_sum, default_removals, sensitivity_audit
from fedrec.models import mf
from fedrec.models.base import Arrays
from fedrec.models.config import ModelConfig

N_ITEMS, DIM, CLIP = 1500, 8, 0.01  # every unit's gradient is above C: each clips to C
CFG = ModelConfig(kind="mf", dim=DIM, negatives=4, l2=1e-4)
KEY = bytes(range(32))


def _tables(seed: int = 0) -> tuple[Arrays, dict[str, npt.NDArray[np.float32]]]:
    """Random non-trivial item tables and a user vector (the scale of trained ones)."""
    rng = np.random.default_rng(seed)
    q = rng.normal(0.0, 0.3, (N_ITEMS, DIM)).astype(np.float32)
    b = rng.normal(0.0, 0.1, (N_ITEMS, 1)).astype(np.float32)
    return [q, b], {"user_emb.weight": rng.normal(0.0, 0.3, (1, DIM)).astype(np.float32)}


def _user(n: int, seed: int = 1) -> npt.NDArray[np.int64]:
    return np.random.default_rng(seed).choice(N_ITEMS, n, replace=False).astype(np.int64)


def _positional(
    generator: torch.Generator,
    key: bytes | None,
    users: npt.NDArray[np.int64],
    items: npt.NDArray[np.int64],
    k: int,
    n_items: int,
) -> npt.NDArray[np.int64]:
    """The old sampler: one ``randint(n k)`` handed out by position over the positives."""
    del key, users
    drawn = torch.randint(0, n_items, (len(items) * k,), generator=generator)
    return drawn.numpy().reshape(len(items), k)


def test_one_interaction_moves_the_clipped_sum_of_1000_by_at_most_the_clip_norm() -> None:
    # Prepare: a 1,000-interaction user; first, middle and last among the removals
    items_tab, state = _tables()
    train = _user(1000)
    removals = sorted({*default_removals(len(train), 12), 500})
    assert {0, 500, 999} <= set(removals)
    # Execute
    result = sensitivity_audit(CFG, items_tab, state, train, clip_norm=CLIP, seed=7, key=KEY,
                               removals=removals)  # fmt: skip
    # Assert: within C (1 + 1e-6), and sharp: a removed unit's clipped gradient is C
    assert result.within and result.max_change <= CLIP * (1 + 1e-6)
    assert result.ratio > 0.999


def test_the_reconstruction_step_is_audited_too() -> None:
    # Prepare: first participation, the refit clips the user side only
    items_tab, _ = _tables()
    train, removals = _user(120), default_removals(120, 8)
    # Execute
    result = sensitivity_audit(CFG, items_tab, None, train, clip_norm=CLIP, seed=3,
                               phase="reconstruction", removals=removals)  # fmt: skip
    # Assert
    assert result.within and result.ratio > 0.999


@pytest.mark.parametrize("removed", [0, 150])
def test_the_audit_flags_negatives_handed_out_by_position(
    monkeypatch: pytest.MonkeyPatch, removed: int
) -> None:
    # Prepare: the coupling of issue 14 put back into the model's sampler
    items_tab, state = _tables()
    train = _user(300)
    monkeypatch.setattr(mf, "keyed_negatives", _positional)
    # Execute
    result = sensitivity_audit(CFG, items_tab, state, train, clip_norm=CLIP, seed=7,
                               removals=[removed])  # fmt: skip
    # Assert: removing one interaction moves later units' negatives: above C
    assert not result.within and result.ratio > 1.0


def test_the_audit_reads_the_clipped_sum_at_its_true_scale() -> None:
    # Prepare: two interactions, both clipped to C, and each alone
    items_tab, state = _tables()
    train = _user(2)
    # Execute
    both = clipped_sum(CFG, items_tab, state, train, clip_norm=CLIP, seed=5)
    first = sensitivity_audit(CFG, items_tab, state, train, clip_norm=CLIP, seed=5)
    # Assert: the sum of two clipped units has norm <= 2C, each removal changes it by C
    assert np.linalg.norm(both) <= 2 * CLIP
    assert first.max_change == pytest.approx(CLIP, rel=1e-4)


def test_bad_input_is_refused() -> None:
    items_tab, state = _tables()
    with pytest.raises(ValueError, match="at least 2"):
        sensitivity_audit(CFG, items_tab, state, _user(1), clip_norm=CLIP, seed=0)
    with pytest.raises(ValueError, match="phase"):
        clipped_sum(CFG, items_tab, state, _user(3), clip_norm=CLIP, seed=0, phase="x")


def test_the_result_serializes() -> None:
    out = Sensitivity(2.0, 2.5, 0, 3).to_json()
    assert out["ratio"] == 1.25 and out["within_clip_norm"] is False
    assert sensitivity.TOLERANCE == 1e-6


@pytest.mark.slow
def test_every_neighbour_of_a_1000_interaction_user_is_within_the_clip_norm() -> None:
    # Prepare
    items_tab, state = _tables(seed=2)
    train = _user(1000, seed=3)
    # Execute: each of the 1,000 interactions removed in turn
    result = sensitivity_audit(CFG, items_tab, state, train, clip_norm=CLIP, seed=11, key=KEY)
    # Assert
    assert result.removed == 1000 and result.within


@pytest.mark.parametrize("mode", ["local", "central"])
def test_fedrec_audit_reports_the_unit_sensitivity_of_local_mf(mode: str) -> None:
    # Prepare: the audit's target of a small private run (as tests/test_audit.py builds it)
    from fedrec.audit.results import AuditOptions
    from fedrec.audit.runner import unit_sensitivity
    from fedrec.privacy.config import PrivacyConfig
    from tests.test_audit import _target

    target, train, _ = _target(PrivacyConfig(mode=mode, target_epsilon=2.0, delta=1e-4))
    # Execute
    result = unit_sensitivity(target, train, AuditOptions(seed=0), removals=6)
    # Assert: local MF is audited (within the clip norm), central's unit is the user
    if mode == "central":
        assert result is None
    else:
        assert result is not None and result.within and result.removed >= 3
        assert result.clip_norm == target.privacy.clip_norm
