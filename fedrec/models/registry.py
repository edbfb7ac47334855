"""Build any fedrec model by kind, and its global item-side initialization.

Design rule: :data:`MODEL_KINDS` maps a kind to a builder
``(cfg, n_items, n_users) -> TrainableRecommender``. A model module registers itself
by adding one line to :func:`_builders` (kept lazy so importing the registry does not
import every model). The global item-side initialization is a pure function of
``(cfg, n_items, seed)``: the server and the centralized twin start from the same point.
"""

from __future__ import annotations

from collections.abc import Callable

import torch

from fedrec.errors import ConfigError
from fedrec.models.base import Arrays, check_split, get_item_arrays
from fedrec.models.config import ModelConfig
from fedrec.models.trainable import TrainableRecommender

Builder = Callable[[ModelConfig, int, int, bool], TrainableRecommender]


def _build_mf(
    cfg: ModelConfig, n_items: int, n_users: int, item_init: bool
) -> TrainableRecommender:
    from fedrec.models.mf import MatrixFactorization

    del item_init  # MF's item tables are cheap to initialize; its RNG order stays fixed
    return MatrixFactorization(cfg, n_items, n_users)


def _build_cdae(
    cfg: ModelConfig, n_items: int, n_users: int, item_init: bool
) -> TrainableRecommender:
    from fedrec.models.cdae import CDAE  # registration point: the CDAE module

    return CDAE(cfg, n_items, n_users, item_init=item_init)


def _build_multvae(
    cfg: ModelConfig, n_items: int, n_users: int, item_init: bool
) -> TrainableRecommender:
    from fedrec.models.multvae import MultVAE  # registration point: the Mult-VAE module

    return MultVAE(cfg, n_items, n_users, item_init=item_init)


def _build_ials(
    cfg: ModelConfig, n_items: int, n_users: int, item_init: bool
) -> TrainableRecommender:
    from fedrec.models.ials import IALS  # registration point: the iALS module

    del item_init  # one embedding table, cheap to initialize
    return IALS(cfg, n_items, n_users)


def _build_ncf(
    cfg: ModelConfig, n_items: int, n_users: int, item_init: bool
) -> TrainableRecommender:
    from fedrec.models.ncf import NeuMF  # registration point: the NeuMF module

    del item_init  # small tables and tower, cheap to initialize
    return NeuMF(cfg, n_items, n_users)


def _builders() -> dict[str, Builder]:
    builders = {"mf": _build_mf, "cdae": _build_cdae, "multvae": _build_multvae}
    return {**builders, "ials": _build_ials, "ncf": _build_ncf}


def _available() -> tuple[str, ...]:
    """Kinds whose module is importable (the AE modules may not exist yet)."""
    import importlib.util

    modules = {"mf": "fedrec.models.mf", "cdae": "fedrec.models.cdae"}
    modules["multvae"] = "fedrec.models.multvae"
    modules["ials"] = "fedrec.models.ials"
    modules["ncf"] = "fedrec.models.ncf"
    return tuple(k for k, m in modules.items() if importlib.util.find_spec(m) is not None)


MODEL_KINDS: tuple[str, ...] = _available()
"""Kinds that can be built in this installation (tests parametrize over it)."""


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
        Seeds the initialization of every parameter (item-side and user-side).
    item_init
        ``False``: leave the autoencoders' item-side layers uninitialized, for a caller
        that overwrites them at once (a device loading the global arrays: Xavier
        initialization was 40% of a Mult-VAE client update). User-side values are the
        same either way.
    """
    if cfg.kind not in MODEL_KINDS:
        raise ConfigError(
            f"model kind {cfg.kind!r} is not available",
            where="model.kind",
            fix=f"use one of {', '.join(MODEL_KINDS)}",
        )
    if n_items < 1 or n_users < 1:
        raise ConfigError(
            f"need n_items >= 1 and n_users >= 1, got {n_items} and {n_users}",
            where="build_model",
            fix="check the data set is not empty",
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = _builders()[cfg.kind](cfg, n_items, n_users, item_init)
    check_split(model)
    return model


def init_item_arrays(cfg: ModelConfig, n_items: int, *, seed: int) -> Arrays:
    """The global item-side starting point for ``seed`` (same on every run)."""
    return get_item_arrays(build_model(cfg, n_items, 1, seed=seed))


def item_array_shapes(cfg: ModelConfig, n_items: int) -> list[tuple[int, ...]]:
    """Shapes of the item-side arrays in upload order."""
    return [tuple(a.shape) for a in init_item_arrays(cfg, n_items, seed=0)]


def refuse_local_dp(kind: str, mode: str) -> None:
    """Raise :class:`ConfigError` when model ``kind`` has no local-DP mechanism.

    Each such model states its reason as ``LOCAL_DP_REFUSAL`` in its own module.
    """
    if mode != "local" or kind not in ("ials", "ncf"):
        return
    from fedrec.models import ials, ncf

    reason = {"ials": ials.LOCAL_DP_REFUSAL, "ncf": ncf.LOCAL_DP_REFUSAL}[kind]
    raise ConfigError(
        reason,
        where=f"--model {kind} --privacy local",
        fix="use --privacy central (user-level DP-FedAvg on the clipped uploads), "
        "or --model mf / cdae / multvae for local DP",
    )
