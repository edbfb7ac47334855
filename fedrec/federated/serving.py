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
"""

from __future__ import annotations

from importlib import import_module
from typing import TYPE_CHECKING

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
        module, _, name = light.SCORES.partition(":")
        twin = getattr(import_module(module), name)
        scores = twin(
            model_cfg, train_cfg, global_items, user_state, train_items, seed=seed, torch_free=True
        )
        if scores is not None:
            out: FloatArray = np.asarray(scores, dtype=np.float32).astype(np.float64)
            return out
    from fedrec.federated.client import client_scores

    tensor = client_scores(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed)
    full: FloatArray = tensor.double().numpy()
    return full
