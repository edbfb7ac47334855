"""The training contract every fedrec model implements, on a device and centrally.

Design rule: one *example* is the unit a minibatch is made of and, later, the unit
DP-SGD protects (Opacus clips one gradient per example). A model turns interaction
pairs into :class:`Examples` (``inputs`` fed to ``forward``, ``target`` fed to
:meth:`TrainableRecommender.loss`), so the local loop is the canonical
``loss = model.loss(model(*inputs), target)`` that Opacus' ``GradSampleModule`` and
``DPOptimizer`` wrap without changes. Losses use ``reduction="mean"``, as Opacus assumes.

- MF: one example = one (user, item, label) triple, a positive or a sampled negative
  (BCE), or one (user, positive, negative) triple (BPR).
- Autoencoders: one example = one user's whole interaction vector.
"""

from __future__ import annotations

from abc import abstractmethod
from collections.abc import Callable
from dataclasses import dataclass
from importlib import import_module
from types import ModuleType
from typing import TYPE_CHECKING, ClassVar, Protocol, Self, cast

import numpy as np
import numpy.typing as npt
import torch

from fedrec.models.base import Arrays, Recommender
from fedrec.models.config import LocalTrainConfig, ModelConfig

if TYPE_CHECKING:
    from fedrec.data.split import Split
    from fedrec.federated.aggregation import ServerConfig
    from fedrec.federated.shape import DataShape, ShapedDefaults

UserState = dict[str, npt.NDArray[np.float32]]
ScoreFn = Callable[[npt.NDArray[np.int64]], torch.Tensor]
"""``score_fn(users) -> [b, n_items]``: a centralized twin's scorer."""


class FastUpdate(Protocol):
    """What a model's :meth:`TrainableRecommender.fast_fit` returns."""

    @property
    def item_arrays(self) -> Arrays: ...

    @property
    def user_state(self) -> UserState: ...

    @property
    def train_loss(self) -> float: ...


@dataclass(frozen=True)
class Examples:
    """A set of training examples; every tensor's first dimension indexes examples.

    Attributes
    ----------
    inputs
        Positional arguments of the model's ``forward``.
    target
        Second argument of the model's ``loss``.
    """

    inputs: tuple[torch.Tensor, ...]
    target: torch.Tensor

    def __len__(self) -> int:
        return int(self.target.shape[0])

    def take(self, index: torch.Tensor) -> Examples:
        """The examples at ``index`` (int64 positions)."""
        return Examples(tuple(t[index] for t in self.inputs), self.target[index])


Preset = tuple[ModelConfig, LocalTrainConfig, "ServerConfig"]
"""A model's federated defaults: model, device training and server configurations."""


def _resolve(path: str) -> object:
    """The object at ``"package.module:name"``, imported now."""
    module, _, name = path.partition(":")
    return getattr(import_module(module), name)


class TrainableRecommender(Recommender):
    """A :class:`Recommender` that builds its own examples and loss.

    Subclasses implement ``forward``, :meth:`make_examples`, :meth:`loss` and
    ``score``; :func:`fedrec.training.local.train_epochs` drives them. They also state
    their behaviour facts, read without building a model: the paths :attr:`PRESET`
    (required), :attr:`FAST_MODULE` and :attr:`TWIN_TRAINER`, imported only when the
    classmethods that use them run, :attr:`SKIPS_ITEM_INIT`, and the classmethods
    :meth:`twin_preset` (required), :meth:`build`,
    :meth:`federated_preset`, :meth:`shaped_defaults`, :meth:`train_twin`, :meth:`fast_fit`,
    :meth:`fast_scores` and :meth:`example_units` (defaults: the generic path; overrides
    import trainers lazily inside them).
    """

    PRESET: ClassVar[str]
    """``"module:function"`` of the federated preset, ``function(strategy, privacy) ->``
    :data:`Preset` (e.g. ``"fedrec.federated.presets:mf_preset"``), called by
    :meth:`federated_preset`."""
    FAST_MODULE: ClassVar[str | None] = None
    """Module of the fast path without autograd (e.g. ``"fedrec.training.mf_fast"``);
    ``None``: none. The defaults of :meth:`fast_fit` / :meth:`fast_scores` call its
    ``supports(model_cfg, train_cfg)``, ``fit(..., seed=, key=)`` and
    ``scores(..., seed=)``; a class whose module differs overrides them."""
    TWIN_TRAINER: ClassVar[str] = "fedrec.training.centralized:train_generic"
    """``"module:function"`` that :meth:`train_twin` calls as ``function(model_cfg,
    train_cfg, split, seed=, epochs=) -> ScoreFn``. Default: the generic twin (the same
    model with ``n_users`` slots, its own examples and loss)."""
    SKIPS_ITEM_INIT: ClassVar[bool] = False
    """Whether the constructor takes ``item_init`` (:meth:`build`): ``True`` for a model
    whose item-side initialization is costly; ``False``: it always initializes the item
    side (cheap tables; the RNG order stays fixed)."""

    def seed_device_user(self, seed: int) -> None:
        """Set a one-user model's fresh user state from ``seed`` (default: keep the built one).

        :func:`fedrec.models.registry.build_model` calls it for ``n_users == 1`` (a device);
        a model whose built user state depends on the catalog size's place in the RNG
        stream overrides it (MF: :func:`fedrec.models.mf.initial_user_vector`).
        """
        del seed

    @classmethod
    def build(cls, cfg: ModelConfig, n_items: int, n_users: int, *, item_init: bool) -> Self:
        """A new model (``n_users`` user slots), initialized from torch's global RNG:
        ``cls(cfg, n_items, n_users)``, plus ``item_init=item_init`` if
        :attr:`SKIPS_ITEM_INIT`.

        ``item_init=False``: the caller overwrites the item side at once (a model whose
        item-side initialization is costly may skip it; user-side values must not change).
        """
        make = cast(Callable[..., Self], cls)
        if cls.SKIPS_ITEM_INIT:
            return make(cfg, n_items, n_users, item_init=item_init)
        return make(cfg, n_items, n_users)

    @classmethod
    def federated_preset(cls, strategy: str | None, privacy: str) -> Preset:
        """The federated defaults (:func:`fedrec.federated.presets.federated_preset`):
        the function at :attr:`PRESET`."""
        preset = cast(Callable[[str | None, str], Preset], _resolve(cls.PRESET))
        return preset(strategy, privacy)

    @classmethod
    def fast_module(cls) -> ModuleType | None:
        """:attr:`FAST_MODULE`, imported; ``None`` if the model has no fast path."""
        return None if cls.FAST_MODULE is None else import_module(cls.FAST_MODULE)

    @classmethod
    @abstractmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        """The centralized twin's configuration
        (:func:`fedrec.training.centralized.central_preset`)."""

    @classmethod
    def shaped_defaults(cls, shape: DataShape) -> ShapedDefaults | None:
        """Settings that depend on the data's shape (:mod:`fedrec.federated.shape`), each
        with its reason; ``None``: the preset's (the default)."""
        del shape
        return None

    @classmethod
    def train_twin(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        split: Split,
        *,
        seed: int,
        epochs: int | None,
    ) -> ScoreFn:
        """Train the centralized twin on every user of ``split``; return its scorer:
        the function at :attr:`TWIN_TRAINER`."""
        trainer = cast(Callable[..., ScoreFn], _resolve(cls.TWIN_TRAINER))
        return trainer(model_cfg, train_cfg, split, seed=seed, epochs=epochs)

    @classmethod
    def fast_fit(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        global_items: Arrays,
        user_state: UserState | None,
        train_items: npt.NDArray[np.int64],
        *,
        seed: int,
        key: bytes | None,
    ) -> FastUpdate | None:
        """A device's update without autograd, equal to the autograd path
        (:func:`fedrec.federated.client.client_fit`); ``None``: no fast path for these
        configs. Default: :attr:`FAST_MODULE`'s ``fit`` where its ``supports`` says so."""
        fast = cls.fast_module()
        if fast is None or not fast.supports(model_cfg, train_cfg):
            return None
        return cast(
            FastUpdate,
            fast.fit(
                model_cfg, train_cfg, global_items, user_state, train_items, seed=seed, key=key
            ),
        )

    @classmethod
    def fast_scores(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        global_items: Arrays,
        user_state: UserState | None,
        train_items: npt.NDArray[np.int64],
        *,
        seed: int,
    ) -> torch.Tensor | None:
        """Scores ``[n_items]`` of one user as evaluation computes them
        (:func:`fedrec.federated.client.client_scores`), without autograd; ``None``: no
        fast path. Default: :attr:`FAST_MODULE`'s ``scores`` (for every ``train_cfg``:
        evaluation's refit), ``None`` without a fast module."""
        fast = cls.fast_module()
        if fast is None:
            return None
        return cast(
            torch.Tensor,
            fast.scores(model_cfg, train_cfg, global_items, user_state, train_items, seed=seed),
        )

    def example_units(self, n_interactions: int) -> torch.Tensor | None:
        """The unit (interaction index) of each row of :meth:`make_examples`'s output
        under local DP; ``None``: one row per unit (the default). A model whose
        :attr:`LOCAL_DP_UNIT` is ``"interaction"`` and that makes several rows per
        interaction must override it."""
        del n_interactions
        return None

    @abstractmethod
    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """Examples for one epoch from positive pairs ``(users[j], items[j])``.

        ``users`` are user *slots* of this model (all ``0`` on a device). Any random
        choice (negatives, corruption) draws from ``generator`` only, so a call is
        reproducible; call again each epoch for fresh negatives. ``key``: the device's
        secret key of keyed choices (MF negatives,
        :mod:`fedrec.training.negatives`); ``None`` a public one; other models ignore it.
        """

    @abstractmethod
    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean loss over a minibatch, from ``forward``'s output and the target."""
