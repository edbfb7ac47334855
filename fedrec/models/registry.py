"""Find any fedrec model's class by kind; build it and its global item-side initialization.

Design rule: :data:`fedrec.models.kinds.MODEL_CLASSES` maps a kind to ``"module:Class"``,
one line per model; :func:`model_class` imports the class lazily (importing the registry
does not import every model), and every fact about a model is read from its class
(``model_class(kind).ITEM_SIDE``, ``.LOCAL_DP_REFUSAL``, ``.federated_preset(...)``), never
from a ``kind == ...`` branch. The global item-side initialization is a pure function of
``(cfg, n_items, seed)``: the server and the centralized twin start from the same point.
"""

from __future__ import annotations

import importlib
import importlib.util
from functools import cache
from typing import TYPE_CHECKING

from fedrec.errors import ConfigError
from fedrec.models.config import ModelConfig
from fedrec.models.kinds import MODEL_CLASSES

if TYPE_CHECKING:  # torch: imported with the first model class, not with the registry
    from fedrec.models.base import Arrays
    from fedrec.models.trainable import TrainableRecommender


def _available() -> tuple[str, ...]:
    """Kinds whose module is importable."""
    modules = {kind: path.partition(":")[0] for kind, path in MODEL_CLASSES.items()}
    return tuple(k for k, m in modules.items() if importlib.util.find_spec(m) is not None)


MODEL_KINDS: tuple[str, ...] = _available()
"""Kinds that can be built in this installation (tests parametrize over it)."""


@cache
def model_class(kind: str) -> type[TrainableRecommender]:
    """The class of model ``kind``, imported on first use; every model fact is on it."""
    if kind not in MODEL_KINDS:
        raise ConfigError(
            f"model kind {kind!r} is not available",
            where="model.kind",
            fix=f"use one of {', '.join(MODEL_KINDS)}",
        )
    from fedrec.models.trainable import TrainableRecommender

    module, _, name = MODEL_CLASSES[kind].partition(":")
    cls = getattr(importlib.import_module(module), name)
    if not (isinstance(cls, type) and issubclass(cls, TrainableRecommender)) or cls.kind != kind:
        raise TypeError(f"{MODEL_CLASSES[kind]} is not the TrainableRecommender of {kind!r}")
    return cls


def local_dp_kinds() -> tuple[str, ...]:
    """The kinds that support ``--privacy local`` (no :attr:`LOCAL_DP_REFUSAL`)."""
    return tuple(k for k in MODEL_KINDS if model_class(k).LOCAL_DP_REFUSAL is None)


def build_model(
    cfg: ModelConfig, n_items: int, n_users: int = 1, *, seed: int, item_init: bool = True
) -> TrainableRecommender:
    """Build a model of ``cfg.kind``, initialized from ``seed``.

    Parameters
    ----------
    cfg
        The model configuration.
    n_items
        Catalog size.
    n_users
        User slots: ``1`` on a device, the number of users for the centralized twin.
    seed
        Seeds the initialization of every parameter (item-side and user-side); a
        one-user model's user state then comes from
        :meth:`~fedrec.models.trainable.TrainableRecommender.seed_device_user`.
    item_init
        ``False``: leave the autoencoders' item-side layers uninitialized, for a caller
        that overwrites them at once (a device loading the global arrays: Xavier
        initialization was 40% of a Mult-VAE client update). User-side values are the
        same either way.
    """
    import torch

    from fedrec.models.base import check_split

    cls = model_class(cfg.kind)
    if n_items < 1 or n_users < 1:
        raise ConfigError(
            f"need n_items >= 1 and n_users >= 1, got {n_items} and {n_users}",
            where="build_model",
            fix="check the data set is not empty",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = cls.build(cfg, n_items, n_users, item_init=item_init)
    if n_users == 1:  # a device's model: its fresh user state
        model.seed_device_user(seed)
    check_split(model)
    return model


def init_item_arrays(cfg: ModelConfig, n_items: int, *, seed: int) -> Arrays:
    """The global item-side starting point for ``seed`` (same on every run)."""
    from fedrec.models.base import get_item_arrays

    return get_item_arrays(build_model(cfg, n_items, 1, seed=seed))


def item_array_shapes(cfg: ModelConfig, n_items: int) -> list[tuple[int, ...]]:
    """Shapes of the item-side arrays in upload order."""
    return [tuple(a.shape) for a in init_item_arrays(cfg, n_items, seed=0)]


def refuse_local_dp(kind: str, mode: str) -> None:
    """Raise :class:`ConfigError` when model ``kind`` has no local-DP mechanism.

    The reason is the model class's ``LOCAL_DP_REFUSAL``.
    """
    reason = model_class(kind).LOCAL_DP_REFUSAL if mode == "local" else None
    if reason is None:
        return
    raise ConfigError(
        reason,
        where=f"--model {kind} --privacy local",
        fix="use --privacy central (user-level DP-FedAvg on the clipped uploads), "
        f"or --model {' / '.join(local_dp_kinds())} for local DP",
    )
