"""What every fedrec model shares: one explicit item-side / user-side split.

Design rule: a model declares, in two class attributes, which of its parameters are
*item-side* (shared with the server and aggregated) and which are *user-side* (kept
on the device, never uploaded). :func:`item_side` and :func:`user_side` are the only
functions that read that split; the federated client, the privacy mechanism and the
tests all go through them. A parameter that is in neither list is a bug, caught by
:func:`check_split` when the model is built.

The same module serves centralized training (``n_users`` user slots) and a device
(one slot), so every federated result has its centralized twin.

Every other fact about a model is a class attribute too (bias parameters, item vectors,
local-DP unit or refusal; presets, twin and fast path in
:class:`fedrec.models.trainable.TrainableRecommender`), read from the class without
building a model (:func:`fedrec.models.registry.model_class`) and checked by
:func:`check_facts`. How to add a model: ``docs/MODELS.md``.
"""

from __future__ import annotations

from abc import abstractmethod
from typing import ClassVar, Literal

import numpy as np
import numpy.typing as npt
import torch
from torch import nn

Arrays = list[npt.NDArray[np.float32]]
LocalUnit = Literal["interaction", "user"]
"""What DP-SGD protects on a device: one interaction (its example rows grouped by
:meth:`~fedrec.models.trainable.TrainableRecommender.example_units`) or the user's whole
interaction vector (one example per user)."""


class Recommender(nn.Module):
    """A recommender whose parameters split into item-side and user-side.

    Subclasses set :attr:`kind`, :attr:`ITEM_SIDE` (parameter names in upload order),
    :attr:`USER_SIDE`, :attr:`ITEM_VECTORS`, :attr:`LOCAL_DP_UNIT` and, where they apply,
    the other facts below, and implement :meth:`score`.
    """

    kind: ClassVar[str]
    """The registry key (``fedrec.models.kinds.MODEL_CLASSES``)."""
    ITEM_SIDE: ClassVar[tuple[str, ...]]
    """Item-side parameter names (shared, aggregated) in upload order; the first one's
    first dimension is the catalogue size."""
    USER_SIDE: ClassVar[tuple[str, ...]]
    """User-side parameter names (kept on the device, never uploaded); ``()`` if none."""
    BIAS_PARAMETERS: ClassVar[tuple[str, ...]] = ()
    """Item-side bias parameters: central DP scales their clip share by ``bias_scale``."""
    ITEM_BIAS: ClassVar[str | None] = None
    """The per-item output bias (``[n_items]`` or ``[n_items, 1]``), the model's learned
    popularity (serving, model export); ``None`` if the model has none."""
    ITEM_VECTORS: ClassVar[str]
    """The item-side array whose row ``i`` is item ``i``'s vector ``[n_items, d]``
    (similar items, explanations, diversity)."""
    USER_VECTOR: ClassVar[str | None] = None
    """A user-side ``p_u`` ``[1, d]`` such that the scores are ``ITEM_VECTORS @ p_u``
    (plus :attr:`ITEM_BIAS`): a device serves them without the model. ``None``: serve
    through :meth:`score`."""
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None]
    """What ``--privacy local`` protects (:data:`LocalUnit`); ``None`` when refused."""
    LOCAL_DP_REFUSAL: ClassVar[str | None] = None
    """Why ``--privacy local`` is refused for this model; ``None`` when it is supported."""
    ORDERED: ClassVar[bool] = False
    """Whether the model reads the order of a user's history (a sequential model): its
    callers pass the user's train items in time order (:mod:`fedrec.data.sequences`)."""

    def __init__(self, n_items: int, n_users: int) -> None:
        super().__init__()
        self.n_items = n_items
        self.n_users = n_users

    @abstractmethod
    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Score every item for a batch of users.

        Parameters
        ----------
        users
            User slots, int64 ``[b]`` (always ``0`` on a device).
        history
            The users' binary train interactions, float ``[b, n_items]``.

        Returns
        -------
        torch.Tensor
            Scores ``[b, n_items]``; higher is better.
        """


def _named(model: Recommender, names: tuple[str, ...]) -> dict[str, nn.Parameter]:
    params = dict(model.named_parameters())
    return {name: params[name] for name in names}


def item_side(model: Recommender) -> dict[str, nn.Parameter]:
    """The item-side parameters of ``model`` (uploaded, aggregated), in upload order."""
    return _named(model, model.ITEM_SIDE)


def user_side(model: Recommender) -> dict[str, nn.Parameter]:
    """The user-side parameters of ``model`` (kept on the device, never uploaded)."""
    return _named(model, model.USER_SIDE)


def check_split(model: Recommender) -> None:
    """Raise if the declared split does not cover every parameter exactly once."""
    declared = list(model.ITEM_SIDE) + list(model.USER_SIDE)
    actual = [name for name, _ in model.named_parameters()]
    if sorted(declared) != sorted(actual) or len(set(declared)) != len(declared):
        raise TypeError(
            f"{type(model).__name__}: ITEM_SIDE + USER_SIDE = {declared} must list every "
            f"parameter exactly once; the module has {actual}"
        )


def check_facts(cls: type[Recommender]) -> None:
    """Raise if the class's facts contradict each other (run by the contract tests)."""
    problems = []
    item, user = set(cls.ITEM_SIDE), set(cls.USER_SIDE)
    if not cls.ITEM_SIDE or item & user:
        problems.append("ITEM_SIDE must be non-empty and disjoint from USER_SIDE")
    if not set(cls.BIAS_PARAMETERS) <= item:
        problems.append(f"BIAS_PARAMETERS {cls.BIAS_PARAMETERS} must be item-side")
    for name in (cls.ITEM_BIAS, cls.ITEM_VECTORS):
        if name is not None and name not in item:
            problems.append(f"{name!r} must be in ITEM_SIDE")
    if cls.USER_VECTOR is not None and cls.USER_VECTOR not in user:
        problems.append(f"USER_VECTOR {cls.USER_VECTOR!r} must be in USER_SIDE")
    if (cls.LOCAL_DP_UNIT is None) == (cls.LOCAL_DP_REFUSAL is None):
        problems.append("exactly one of LOCAL_DP_UNIT and LOCAL_DP_REFUSAL must be set")
    if problems:
        raise TypeError(f"{cls.__name__}: " + "; ".join(problems))


def get_item_arrays(model: Recommender) -> Arrays:
    """Copy the item-side parameters out as float32 numpy arrays (upload order)."""
    return [
        p.detach().cpu().numpy().astype(np.float32, copy=True) for p in item_side(model).values()
    ]


def set_item_arrays(model: Recommender, arrays: Arrays) -> None:
    """Load item-side parameters from arrays given in upload order, checking shapes."""
    params = item_side(model)
    if len(arrays) != len(params):
        raise ValueError(f"expected {len(params)} item-side arrays, got {len(arrays)}")
    with torch.no_grad():
        for (name, p), a in zip(params.items(), arrays, strict=True):
            if tuple(a.shape) != tuple(p.shape):
                raise ValueError(f"item-side {name}: shape {a.shape} != model {tuple(p.shape)}")
            p.copy_(torch.as_tensor(a, dtype=p.dtype))


def get_user_state(model: Recommender) -> dict[str, npt.NDArray[np.float32]]:
    """Copy the user-side parameters out (for the device's local store)."""
    return {
        n: p.detach().cpu().numpy().astype(np.float32, copy=True)
        for n, p in user_side(model).items()
    }


def set_user_state(model: Recommender, state: dict[str, npt.NDArray[np.float32]]) -> None:
    """Load user-side parameters saved by :func:`get_user_state`."""
    with torch.no_grad():
        for name, p in user_side(model).items():
            p.copy_(torch.as_tensor(state[name], dtype=p.dtype))
