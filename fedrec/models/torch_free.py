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
    ORDERED: bool = False


TORCH_FREE: dict[str, TorchFreeFacts] = {
    "mf": TorchFreeFacts(
        PRESET="fedrec.federated.presets:mf_preset",
        ITEM_SIDE=("item_emb.weight", "item_bias.weight"),
        USER_SIDE=("user_emb.weight",),
        ITEM_VECTORS="item_emb.weight",
        SCORES="fedrec.training.mf_fast:scores",
    ),
    "ials": TorchFreeFacts(
        PRESET="fedrec.federated.presets:ials_preset",
        ITEM_SIDE=("item_emb.weight",),
        USER_SIDE=("user_emb.weight",),
        ITEM_VECTORS="item_emb.weight",
        SCORES="fedrec.training.ials:scores",
    ),
}
"""Kinds served without torch, and their facts."""


def facts(kind: str) -> TorchFreeFacts | type[TrainableRecommender]:
    """The facts of ``kind``: the copy for a torch-free kind, else its class (torch)."""
    light = TORCH_FREE.get(kind)
    if light is not None:
        return light
    from fedrec.models.registry import model_class

    return model_class(kind)
