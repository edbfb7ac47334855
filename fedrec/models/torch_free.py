"""Facts of the model kinds served without torch, read without importing their classes.

Design rule: every fact about a model lives on its class (:mod:`fedrec.models.kinds`),
but a class is an ``nn.Module``: reading one imports torch (about 3.5 s of CPU per
process). Serving an MF or iALS model file (``fedrec recommend``, an app embedding
fedrec) needs NumPy only, so the few facts that serving and reading a run's settings
use are copied here for those kinds, with the torch-free twin of the class's
``fast_scores`` (:func:`fedrec.federated.serving.user_scores`). :func:`facts` returns the
copy for such a kind and the class for any other; ``tests/test_light_serving.py``
checks every copied fact against the class and every twin against ``fast_scores``.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from fedrec.models.config import ModelConfig
    from fedrec.models.trainable import TrainableRecommender


@dataclass(frozen=True)
class TorchFreeFacts:
    """The class facts of a torch-free kind (same names as on the class) and its scorer."""

    PRESET: str
    ITEM_SIDE: tuple[str, ...]
    USER_SIDE: tuple[str, ...]
    ITEM_VECTORS: str
    SCORES: str
    """``"module:function"``: the class's ``fast_scores`` without torch (same arguments
    plus ``torch_free=True``; a float32 ``[n_items]`` array, or ``None`` where the fast
    path does not apply)."""
    REFIT: str
    """``"module:function"``: the device's serving refit without torch
    (:func:`fedrec.federated.serving.refit_state`): ``(model_cfg, train_cfg,
    global_items, user_state, train_items, *, seed, init_seed)`` to the user state after
    :func:`fedrec.training.local.refit_user` from ``user_state`` (``None``: the fresh
    user of ``build_model(..., seed=init_seed)``) with ``seed``'s generator, or ``None``
    where no twin applies."""
    SHAPES: tuple[tuple[str, tuple[str | int, ...]], ...]
    """Every parameter's shape on a one-user model, ``"n_items"``/``"dim"`` for those
    sizes (item side in ``ITEM_SIDE`` order; :func:`side_shapes`)."""
    ITEM_BIAS: str | None = None
    USER_VECTOR: str | None = None
    ORDERED: bool = False


TORCH_FREE: dict[str, TorchFreeFacts] = {
    "mf": TorchFreeFacts(
        PRESET="fedrec.federated.presets:mf_preset",
        ITEM_SIDE=("item_emb.weight", "item_bias.weight"),
        USER_SIDE=("user_emb.weight",),
        ITEM_VECTORS="item_emb.weight",
        SCORES="fedrec.training.mf_fast:scores",
        REFIT="fedrec.training.mf_fast:refit_state",
        SHAPES=(
            ("item_emb.weight", ("n_items", "dim")),
            ("item_bias.weight", ("n_items", 1)),
            ("user_emb.weight", (1, "dim")),
        ),
        ITEM_BIAS="item_bias.weight",
        USER_VECTOR="user_emb.weight",
    ),
    "ials": TorchFreeFacts(
        PRESET="fedrec.federated.presets:ials_preset",
        ITEM_SIDE=("item_emb.weight",),
        USER_SIDE=("user_emb.weight",),
        ITEM_VECTORS="item_emb.weight",
        SCORES="fedrec.training.ials:scores",
        REFIT="fedrec.training.ials:refit_state",
        SHAPES=(("item_emb.weight", ("n_items", "dim")), ("user_emb.weight", (1, "dim"))),
        USER_VECTOR="user_emb.weight",
    ),
}
"""Kinds served without torch, and their facts."""


def side_shapes(
    light: TorchFreeFacts, model_cfg: ModelConfig, n_items: int
) -> tuple[tuple[tuple[str, tuple[int, ...]], ...], tuple[tuple[str, tuple[int, ...]], ...]]:
    """Item-side and user-side ``(name, shape)`` of a one-user model of ``light``'s kind
    (what ``item_side`` / ``user_side`` of ``build_model(model_cfg, n_items, 1)`` hold)."""
    sizes = {"n_items": n_items, "dim": model_cfg.dim}
    shapes = {
        n: tuple(sizes[s] if isinstance(s, str) else s for s in dims) for n, dims in light.SHAPES
    }
    return (
        tuple((n, shapes[n]) for n in light.ITEM_SIDE),
        tuple((n, shapes[n]) for n in light.USER_SIDE),
    )


def facts(kind: str) -> TorchFreeFacts | type[TrainableRecommender]:
    """The facts of ``kind``: the copy for a torch-free kind, else its class (torch)."""
    light = TORCH_FREE.get(kind)
    if light is not None:
        return light
    from fedrec.models.registry import model_class

    return model_class(kind)
