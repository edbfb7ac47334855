"""A user's scores on a model's global item arrays, importing torch only where needed.

Design rule: serving a model file (``fedrec recommend``, an app that embeds fedrec)
computes exactly what the user's device and the run's evaluation compute,
:func:`fedrec.federated.client.client_scores`, but pays for the training stack (torch,
about 3.5 s of CPU per process) only for a model that needs it. A kind in
:data:`fedrec.models.torch_free.TORCH_FREE` is scored by its torch-free twin (MF: the
refit of :mod:`fedrec.training.mf_fast` with torch's draws made by
:class:`fedrec.training.torch_stream.TorchCpuStream`; iALS: the closed-form user vector),
which returns the same array; every other kind, or an MF configuration without the fast
path, goes through ``client_scores``.

An app embedding the device library (:mod:`clients.device`) opens, records and
recommends on such a kind without torch too: :func:`refit_state` is the serving refit
(MF: :func:`fedrec.training.mf_fast.refit` from the serving state; iALS: the
closed-form vector) and :func:`item_bias` the popularity fallback, both read from the
held item arrays.
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING, Any

import numpy as np
import numpy.typing as npt

from fedrec.models.torch_free import TORCH_FREE

if TYPE_CHECKING:
    from fedrec.models.base import Arrays
    from fedrec.models.config import LocalTrainConfig, ModelConfig

FloatArray = npt.NDArray[np.float64]
UserState = dict[str, npt.NDArray[np.float32]]


def user_scores(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
) -> FloatArray:
    """``client_scores(...)`` as float64 ``[n_items]``, without torch where the kind allows."""
    light = TORCH_FREE.get(model_cfg.kind)
    if light is not None:
        scores = _twin(light.SCORES)(
            model_cfg, train_cfg, global_items, user_state, train_items, seed=seed, torch_free=True
        )
        if scores is not None:
            out: FloatArray = np.asarray(scores, dtype=np.float32).astype(np.float64)
            return out
    from fedrec.federated.client import client_scores

    tensor = client_scores(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed)
    full: FloatArray = tensor.double().numpy()
    return full


def refit_state(
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    global_items: Arrays,
    user_state: UserState | None,
    train_items: npt.NDArray[np.int64],
    *,
    seed: int,
    init_seed: int,
) -> UserState | None:
    """The user state after a device's serving refit, without torch; ``None``: no twin.

    The refit is :func:`fedrec.training.local.refit_user` on a one-user model holding
    ``global_items`` and ``user_state`` (``None``: the fresh user of
    ``build_model(model_cfg, n_items, 1, seed=init_seed)``), its generator seeded with
    ``seed``, public negatives. For MF it is :func:`fedrec.training.mf_fast.refit`, the
    refit evaluation and :func:`fedrec.federated.client.client_scores` run (equal to
    the autograd refit to float rounding, ``tests/test_mf_fast.py``); for iALS the
    closed-form vector. ``None`` for any other kind or an MF config without the fast
    path: the caller runs ``refit_user`` (torch).
    """
    light = TORCH_FREE.get(model_cfg.kind)
    if light is None:
        return None
    state: UserState | None = _twin(light.REFIT)(
        model_cfg, train_cfg, global_items, user_state, train_items, seed=seed,
        init_seed=init_seed,
    )  # fmt: skip
    return state


def item_bias(kind: str, global_items: Arrays) -> npt.NDArray[np.float32] | None:
    """The learned item bias ``[n_items]`` (the kind's ``ITEM_BIAS``; zeros without
    one) from the item-side arrays of a torch-free kind; ``None`` for another kind."""
    light = TORCH_FREE.get(kind)
    if light is None:
        return None
    n_items = int(global_items[0].shape[0])
    if light.ITEM_BIAS is None:
        return np.zeros(n_items, dtype=np.float32)
    values = global_items[light.ITEM_SIDE.index(light.ITEM_BIAS)]
    bias: npt.NDArray[np.float32] = np.asarray(values, dtype=np.float32).reshape(n_items).copy()
    return bias


def _twin(path: str) -> Any:
    """The function ``"module:function"`` (a torch-free twin), imported."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)
