"""Sensitivity audit: how far one privacy unit moves a device's clipped sum.

Design rule: DP-SGD's guarantee (Abadi et al., CCS 2016) rests on one fact about the
device's code, that adding or removing one privacy unit changes the clipped sum of a
step by at most the clip norm ``C``; the accountant takes that for granted. This
instrument measures it on the device's own update code instead of trusting it: for
neighbouring inputs ``D`` and ``D - {j}`` (each interaction ``j`` removed in turn,
first, middle and last included) it runs one DP-SGD step of
:func:`fedrec.privacy.local_dp.dp_train` from the same state, with the same examples
builder (:func:`fedrec.training.local.user_examples`: MF's keyed negatives), the same
unit map (:func:`fedrec.privacy.local_dp.interaction_units`), the same clipper (the
closed-form MF clipper, or the ghost clipper) and the same public seed and device key
as :func:`fedrec.federated.private.client_fit_private`, and reads the clipped sum off
the step, before any optimizer scaling, with the noise off. The largest
``||S(D) - S(D - {j})||`` over ``j``, divided by ``C``, is the *sensitivity ratio*: at
most ``1`` (up to float rounding) if the unit is what the accountant assumes. A
coupling between units (e.g. negatives handed out by position, which shift when an
earlier interaction is removed) shows as a ratio above 1.

How the sum is read: the step runs in float64 with plain SGD at learning rate 1, one
epoch with every unit sampled (``q = 1``: one step, ``E = n`` expected units) and
noise multiplier ``1e-300`` (the noise, below ``1e-298``, vanishes in float64
rounding of any non-zero parameter), so each parameter moves by exactly ``-S / E``.
The optimizer, learning rates and epochs of the run do not enter the sensitivity of
a step; the phase does (the reconstruction clips the user side only, the update all
parameters), so both can be audited.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt
import torch

from fedrec.federated.client import UserState, load_device_model
from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.local_dp import dp_train, interaction_units
from fedrec.privacy.noise import secure_rng
from fedrec.training.local import freeze_except, make_optimizer, user_examples

NO_NOISE = 1e-300
"""The noise multiplier of the audited step: DP-SGD's checks want ``z > 0``."""

TOLERANCE = 1e-6
"""Relative slack of :attr:`Sensitivity.within`: Opacus's clip factor
``C / (norm + 1e-6)`` and float64 rounding stay far below it."""


@dataclass(frozen=True)
class Sensitivity:
    """The outcome of :func:`sensitivity_audit`.

    Attributes
    ----------
    clip_norm
        ``C``.
    max_change
        Largest ``||S(D) - S(D - {j})||`` over the removed interactions.
    worst_removed
        Position (in the device's interaction order) of the interaction that gave it.
    removed
        How many neighbours were compared.
    """

    clip_norm: float
    max_change: float
    worst_removed: int
    removed: int

    @property
    def ratio(self) -> float:
        """``max_change / C``: at most 1 when one unit is one interaction."""
        return self.max_change / self.clip_norm

    @property
    def within(self) -> bool:
        """Whether ``max_change <= C (1 + TOLERANCE)``."""
        return self.max_change <= self.clip_norm * (1 + TOLERANCE)

    def to_json(self) -> dict[str, float | int | bool]:
        return {
            "clip_norm": self.clip_norm,
            "max_change": self.max_change,
            "ratio": self.ratio,
            "within_clip_norm": self.within,
            "worst_removed": self.worst_removed,
            "neighbours": self.removed,
        }


@contextmanager
def _float64() -> Iterator[None]:
    before = torch.get_default_dtype()
    torch.set_default_dtype(torch.float64)
    try:
        yield
    finally:
        torch.set_default_dtype(before)


def clipped_sum(
    model_cfg: ModelConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    clip_norm: float,
    seed: int,
    key: bytes | None = None,
    phase: str = "update",
) -> npt.NDArray[np.float64]:
    """The noiseless clipped sum of one full-batch DP-SGD step, flat, in float64.

    ``phase="update"`` clips over every trainable parameter (the local update);
    ``"reconstruction"`` over the user side only (the refit of a first participation).
    ``seed`` and ``key`` are the call's public seed and the device key, as in
    :func:`fedrec.federated.private.client_fit_private`.
    """
    if phase not in ("update", "reconstruction"):
        raise ValueError(f"phase must be 'update' or 'reconstruction', got {phase!r}")
    items = np.asarray(train_items, dtype=np.int64)
    with _float64():
        model = load_device_model(model_cfg, global_items, user_state, seed=seed)
        if phase == "reconstruction":
            freeze_except(model, model.USER_SIDE)
        params = [p for p in model.parameters() if p.requires_grad]
        before = [p.detach().clone() for p in params]
        n = len(items)
        optimizer = make_optimizer(params, LocalTrainConfig(optimizer="sgd", lr=1.0))
        dp_train(
            model,
            user_examples(model, items, key=key),
            noise_multiplier=NO_NOISE,
            max_grad_norm=clip_norm,
            batch_size=n,  # q = 1: one step over every unit
            epochs=1,
            optimizer=optimizer,
            generator=torch.Generator().manual_seed(seed),
            rng=secure_rng(0),  # the noise is off; the sampling at q = 1 takes every unit
            units=interaction_units(model, n),
        )
        # SGD at lr 1: p <- p - S_p / E, with E = q n = n expected units
        moved = [(b - p.detach()).reshape(-1) * n for b, p in zip(before, params, strict=True)]
        out: npt.NDArray[np.float64] = torch.cat(moved).numpy().astype(np.float64)
        return out


def default_removals(n: int, count: int | None) -> list[int]:
    """Positions to remove: all ``n``, or ``count`` spread evenly (first, last included)."""
    if count is None or count >= n:
        return list(range(n))
    return sorted({int(x) for x in np.rint(np.linspace(0, n - 1, max(count, 3)))})


def sensitivity_audit(
    model_cfg: ModelConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    clip_norm: float,
    seed: int,
    key: bytes | None = None,
    phase: str = "update",
    removals: Sequence[int] | None = None,
) -> Sensitivity:
    """Largest change of the clipped sum over neighbours ``D - {j}`` (see the module).

    Parameters
    ----------
    removals
        Positions ``j`` of ``train_items`` to remove in turn (default: every one).
    """
    items = np.asarray(train_items, dtype=np.int64)
    if len(items) < 2:
        raise ValueError("the audit needs a device with at least 2 interactions")
    full = clipped_sum(model_cfg, global_items, user_state, items, clip_norm=clip_norm,
                       seed=seed, key=key, phase=phase)  # fmt: skip
    worst, worst_j = -1.0, -1
    positions = list(range(len(items))) if removals is None else list(removals)
    for j in positions:
        rest = np.delete(items, j)
        other = clipped_sum(model_cfg, global_items, user_state, rest, clip_norm=clip_norm,
                            seed=seed, key=key, phase=phase)  # fmt: skip
        change = float(np.linalg.norm(full - other))
        if change > worst:
            worst, worst_j = change, j
    return Sensitivity(clip_norm, worst, worst_j, len(positions))
