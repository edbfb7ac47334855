"""Local DP on the device: DP-SGD (Abadi et al., CCS 2016), Opacus-calibrated.

Design rule: the server is not trusted, so everything a device uploads, and everything
its upload depends on (the user-side state included), is trained by :func:`dp_train`:
Poisson sampling of privacy units with secret randomness, per-unit gradients clipped
over **all** trainable parameters jointly, Gaussian noise on **every** coordinate
(every item row, dense), and only then the optimizer step. Rows the user never touched
move too, so which rows changed reveals nothing beyond the DP guarantee.

Two interchangeable clipping paths compute the same clipped noisy sum (tested equal,
noise draws included): ``fast=True`` (default) uses ghost clipping for the Linear and
Embedding layers fedrec's models are made of (:mod:`fedrec.privacy.fast_dp`), without
per-example gradients (for MF with the BCE loss in closed form,
:mod:`fedrec.privacy.mf_clip`); ``fast=False`` is the reference, Opacus's
``GradSampleModule`` and ``DPOptimizer``, which materializes ``[batch, items, dim]``
per-example gradients for an item table. Both use Opacus's clip factor, noise std
``z C`` and division by the expected batch size, and the same accounting
(:class:`Release`). With plain SGD the fast path also defers the noise of an embedding
table row by row until the row is read again or training ends
(:mod:`fedrec.privacy.lazy_noise`): the trained parameters have exactly the
distribution of per-step dense noise, from far fewer draws.

Privacy unit: a *unit* groups example rows. MF (BCE) builds one positive row plus
``negatives`` negative rows per interaction; all of them form the interaction's unit
(:func:`interaction_units`), so removing one interaction removes exactly one unit. The
negatives are drawn uniformly from all items, keyed by the interaction's own item, the
device key and the epoch (:mod:`fedrec.training.negatives`), never by position, so the
other units stay unchanged; :mod:`fedrec.audit.sensitivity` measures it. For the
autoencoders the only example is the user's whole vector: one unit, ``q = 1``, and the
guarantee is user-level for that device (see docs/PRIVACY.md).

The FedProx proximal gradient (Li et al., MLSys 2020) depends only on the current and
global parameters, so it is added *after* the noise step, to the privatized gradient.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping
from typing import Protocol

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from fedrec.errors import ConfigError
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.privacy import mf_clip
from fedrec.privacy.accounting import Release
from fedrec.privacy.fast_dp import GhostDPStep, noise_like, optimizer_params
from fedrec.privacy.mf_clip import MFClipper
from fedrec.privacy.noise import poisson_mask


class GradientTerm(Protocol):
    """A data-independent gradient addition (e.g. ``fedrec.training.local.Proximal``)."""

    mu: float

    def add_grad(self) -> None: ...


class DPStep(Protocol):
    """One DP-SGD step on a sampled batch (``None``: no unit sampled)."""

    def __call__(self, batch: Examples | None, units: torch.Tensor) -> None: ...

    def flush(self) -> None:
        """Add any noise still owed (lazy tables); the parameters are then final."""

    def close(self) -> None: ...


class _SecretNoiseDPOptimizer(DPOptimizer):
    """Opacus's ``DPOptimizer`` drawing its noise from a secret NumPy generator.

    torch's CPU generator keeps only 32 bits of its seed (see
    :mod:`fedrec.privacy.noise`); everything else is Opacus's clip/accumulate/scale.
    The draws are :func:`fedrec.privacy.fast_dp.noise_like`'s, as on the fast path.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, rng: np.random.Generator, **kw: object):
        super().__init__(optimizer, **kw)
        self.rng = rng

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        summed = [p.summed_grad for p in self.params]
        for p, noise in zip(self.params, noise_like(summed, std, self.rng), strict=True):
            _check_processed_flag(p.summed_grad)
            p.grad = (p.summed_grad + noise).view_as(p)
            _mark_as_processed(p.summed_grad)


def interaction_units(model: TrainableRecommender, n_interactions: int) -> torch.Tensor | None:
    """The unit (interaction index) of each row of ``model.make_examples``'s output.

    ``None`` means one row per unit (autoencoders: one row per user). The layout is the
    model's own (:meth:`~fedrec.models.trainable.TrainableRecommender.example_units`;
    tested against :class:`fedrec.models.mf.MatrixFactorization`'s rows).
    """
    return model.example_units(n_interactions)


def _check_args(
    noise_multiplier: float, max_grad_norm: float, batch_size: int, epochs: int
) -> None:
    for value, field in ((noise_multiplier, "noise_multiplier"), (max_grad_norm, "clip_norm")):
        if not (math.isfinite(value) and value > 0):
            raise ConfigError(f"must be finite and > 0, got {value}", where=f"privacy.{field}")
    if batch_size < 1 or epochs < 0:
        raise ConfigError(
            f"need batch_size >= 1 and epochs >= 0, got {batch_size}, {epochs}", where="train"
        )


def _to(batch: Examples, device: torch.device) -> Examples:
    if batch.target.device == device:
        return batch
    return Examples(tuple(t.to(device) for t in batch.inputs), batch.target.to(device))


def _device(model: nn.Module) -> torch.device:
    return next(model.parameters()).device


class _GhostStep:
    """:class:`DPStep` by ghost clipping (:class:`fedrec.privacy.fast_dp.GhostDPStep`).

    ``loss_for(batch)`` gives the step's ``loss_of``: by default the model's loss
    (recorded by hooks); for MF :meth:`fedrec.privacy.mf_clip.MFClipper.loss_of`.
    """

    def __init__(
        self,
        model: TrainableRecommender,
        step: GhostDPStep,
        loss_for: Callable[[Examples], Callable[[], torch.Tensor]] | None = None,
    ) -> None:
        self.model, self.step, self.device = model, step, _device(model)
        self.loss_for = loss_for or self._model_loss

    def _model_loss(self, b: Examples) -> Callable[[], torch.Tensor]:
        return lambda: self.model.loss(self.model(*b.inputs), b.target)

    def __call__(self, batch: Examples | None, units: torch.Tensor) -> None:
        if batch is None:
            self.step(None, units)
            return
        units = units if units.device == self.device else units.to(self.device)
        self.step(self.loss_for(_to(batch, self.device)), units)

    def flush(self) -> None:
        self.step.flush()

    def close(self) -> None:
        self.step.close()
        for p in self.model.parameters():
            p.grad = None


class _OpacusStep:
    """The reference :class:`DPStep`: Opacus per-sample gradients, grouped into units."""

    def __init__(
        self,
        model: TrainableRecommender,
        dp_opt: _SecretNoiseDPOptimizer,
        named: Mapping[str, nn.Parameter],
        weights: Mapping[str, float],
        proximal: GradientTerm | None,
    ) -> None:
        self.model, self.dp_opt, self.named, self.weights = model, dp_opt, named, weights
        self.proximal, self.device = proximal, _device(model)
        self.params = [p for p in named.values()]
        self.gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)

    def __call__(self, batch: Examples | None, units: torch.Tensor) -> None:
        self.dp_opt.zero_grad(set_to_none=True)
        if batch is None:
            for p in self.params:
                p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype, device=p.device)
        else:
            b = _to(batch, self.device)
            with warnings.catch_warnings():
                # Embedding inputs are indices: Opacus's full backward hooks fire on outputs.
                warnings.filterwarnings("ignore", message="Full backward hook is firing")
                self.model.loss(self.gsm(*b.inputs), b.target).backward()
            _group_grad_samples(self.params, units.to(self.device))
        _weight_grad_samples(self.named, self.weights, inverse=False)
        if self.dp_opt.pre_step():
            _weight_grad_samples(self.named, self.weights, inverse=True)
            if self.proximal is not None and self.proximal.mu > 0:
                self.proximal.add_grad()
            self.dp_opt.original_optimizer.step()

    def flush(self) -> None:
        """Nothing is owed: the reference noises every coordinate at every step."""

    def close(self) -> None:
        self.gsm._close()
        for p in self.model.parameters():
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None


def _group_grad_samples(params: list[nn.Parameter], row_units: torch.Tensor) -> None:
    """Sum per-row gradients into per-unit gradients (``row_units`` indexes ``0..b-1``)."""
    n_units = int(row_units.max()) + 1
    for p in params:
        gs = p.grad_sample
        if gs is None:
            p.grad_sample = torch.zeros((n_units, *p.shape), dtype=p.dtype, device=p.device)
            continue
        out = torch.zeros((n_units, *gs.shape[1:]), dtype=gs.dtype, device=gs.device)
        p.grad_sample = out.index_add_(0, row_units, gs)


def _weight_grad_samples(
    named: Mapping[str, nn.Parameter], weights: Mapping[str, float], *, inverse: bool
) -> None:
    """Scale parameter ``name``'s share of the clipped vector by ``weights[name]``.

    Clipping ``(.., c g_name, ..)`` and dividing the noisy sum by ``c`` afterwards is
    post-processing; ``c < 1`` stops a parameter (e.g. item biases) from eating the
    clip budget, at the price of ``1/c`` times more noise on it.
    """
    for name, c in weights.items():
        p = named[name]
        if inverse:
            p.grad = p.grad / c
        else:
            p.grad_sample = p.grad_sample * c


def make_dp_step(
    model: TrainableRecommender,
    optimizer: torch.optim.Optimizer,
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    expected_batch_size: float,
    rng: np.random.Generator,
    proximal: GradientTerm | None = None,
    clip_weights: Mapping[str, float] | None = None,
    fast: bool = True,
    lazy_noise: bool = True,
) -> DPStep:
    """One DP-SGD step of :func:`dp_train` as an object (also used by ``fedrec.bench``).

    ``fast=True``: ghost clipping (:mod:`fedrec.privacy.fast_dp`), with the noise of
    SGD-trained tables deferred row by row when ``lazy_noise``
    (:mod:`fedrec.privacy.lazy_noise`); ``False``: Opacus's per-sample gradients. Call
    :meth:`DPStep.flush` before reading the parameters and :meth:`DPStep.close` when
    done (settles owed noise, detaches hooks).
    """
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    weights = dict(clip_weights or {})
    if unknown := set(weights) - set(named):
        raise ConfigError(f"clip weights for unknown/frozen {sorted(unknown)}", where="privacy")
    if fast:
        prox = proximal
        closed = MFClipper(model, optimizer_params(optimizer)) if mf_clip.supports(model) else None
        step = GhostDPStep(
            model,
            optimizer,
            noise_multiplier=noise_multiplier,
            max_grad_norm=max_grad_norm,
            expected_batch_size=expected_batch_size,
            rng=rng,
            clip_weights={named[n]: c for n, c in weights.items()},
            proximal=None if prox is None or prox.mu <= 0 else prox.add_grad,
            lazy_noise=lazy_noise,
            clipper=closed,
        )
        return _GhostStep(model, step, None if closed is None else closed.loss_of)
    dp_opt = _SecretNoiseDPOptimizer(
        optimizer,
        rng=rng,
        noise_multiplier=noise_multiplier,
        max_grad_norm=max_grad_norm,
        expected_batch_size=expected_batch_size,
    )
    return _OpacusStep(model, dp_opt, named, weights, proximal)


def dp_train(
    model: TrainableRecommender,
    examples: Callable[[torch.Generator], Examples],
    *,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    rng: np.random.Generator,
    units: torch.Tensor | None = None,
    proximal: GradientTerm | None = None,
    clip_weights: Mapping[str, float] | None = None,
    fast: bool = True,
    lazy_noise: bool = True,
) -> Release:
    """Train ``model`` in place with DP-SGD over privacy units; return what was spent.

    Parameters
    ----------
    model
        The device model; every parameter of ``optimizer`` (with ``requires_grad``) is
        clipped and noised (freeze with ``fedrec.training.local.freeze_except`` to refit
        user-side only).
    examples
        Builds one epoch's example rows from ``generator`` (public randomness: negatives,
        corruption); called once per epoch.
    noise_multiplier, max_grad_norm
        ``z`` and the per-unit clip bound ``C``: noise std ``z C`` on the clipped sum.
    batch_size
        Expected units per step; the Poisson rate is ``q = min(1, batch_size / units)``
        and an epoch is ``ceil(1 / q)`` steps.
    optimizer
        A fresh optimizer over the trainable parameters (weight decay is applied to
        the privatized gradient by the optimizer, at no privacy cost).
    rng
        Secret generator (:func:`fedrec.privacy.noise.secure_rng`) for the sampling and
        the noise.
    units
        Unit index ``0..n-1`` of each example row (:func:`interaction_units`);
        ``None``: one row per unit.
    proximal
        FedProx term, added to the privatized gradient before each optimizer step.
    clip_weights
        Optional per-parameter weights inside the clipped vector (e.g.
        ``{"item_bias.weight": 0.1}``).
    fast
        Ghost clipping (default; Linear and Embedding layers only) or, ``False``, the
        reference Opacus per-sample-gradient path. Same result, same noise draws
        (with ``lazy_noise=False``).
    lazy_noise
        Fast path with plain SGD: draw an embedding row's noise when the row is next
        read or at the end (:mod:`fedrec.privacy.lazy_noise`): the same distribution of
        the trained parameters, in far fewer draws per step for a large catalog.

    Returns
    -------
    Release
        ``(noise_multiplier, q, steps)`` for the device's ledger.
    """
    _check_args(noise_multiplier, max_grad_norm, batch_size, epochs)
    step: DPStep | None = None
    n_units, steps = 0, 0
    model.train()
    try:
        for _ in range(epochs):
            ex = examples(generator)
            row_units = torch.arange(len(ex)) if units is None else units
            n_units = _count_units(ex, row_units)
            q = min(1.0, batch_size / n_units)
            if step is None:
                step = make_dp_step(model, optimizer, noise_multiplier=noise_multiplier,
                                    max_grad_norm=max_grad_norm, expected_batch_size=q * n_units,
                                    rng=rng, proximal=proximal, clip_weights=clip_weights,
                                    fast=fast, lazy_noise=lazy_noise)  # fmt: skip
            for _ in range(math.ceil(1.0 / q)):
                _poisson_step(step, ex, row_units, poisson_mask(n_units, q, rng))
                steps += 1
        if step is not None:
            step.flush()
    finally:
        if step is not None:
            step.close()
    if steps == 0:
        return Release(noise_multiplier, 1.0, 0)
    return Release(noise_multiplier, min(1.0, batch_size / n_units), steps)


def _count_units(ex: Examples, row_units: torch.Tensor) -> int:
    if len(row_units) != len(ex):
        raise ValueError(f"units has {len(row_units)} rows, examples have {len(ex)}")
    if len(ex) == 0:
        raise ConfigError("no training examples", where="dp_train", fix="skip this client")
    return int(row_units.max()) + 1


def _poisson_step(
    step: DPStep,
    ex: Examples,
    row_units: torch.Tensor,
    sampled: np.ndarray[tuple[int], np.dtype[np.bool_]],
) -> None:
    """Run ``step`` on the rows of the sampled units, with compact unit ids ``0..b-1``."""
    rows = torch.nonzero(torch.from_numpy(sampled)[row_units]).flatten()
    if len(rows) == 0:
        step(None, rows)
        return
    _, compact = torch.unique(row_units[rows], return_inverse=True)
    step(ex.take(rows), compact)
