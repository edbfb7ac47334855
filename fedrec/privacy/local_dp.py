"""Local DP on the device: DP-SGD (Abadi et al., CCS 2016) with Opacus.

Design rule: the server is not trusted, so everything a device uploads, and everything
its upload depends on (the user-side state included), is trained by :func:`dp_train`:
Poisson sampling of privacy units with secret randomness, per-unit gradients from
Opacus's ``GradSampleModule``, clipping of each unit's gradient over **all** trainable
parameters jointly, Gaussian noise on **every** coordinate (every item row, dense), and
only then the optimizer step. Rows the user never touched move too, so which rows
changed reveals nothing beyond the DP guarantee.

Privacy unit: a *unit* groups example rows. MF (BCE) builds one positive row plus
``negatives`` negative rows per interaction; all of them form the interaction's unit
(:func:`interaction_units`), so removing one interaction removes exactly one unit. The
negatives are drawn uniformly from all items independently of the user's data. For the
autoencoders the only example is the user's whole vector: one unit, ``q = 1``, and the
guarantee is user-level for that device (see docs/PRIVACY.md).

The FedProx proximal gradient (Li et al., MLSys 2020) depends only on the current and
global parameters, so it is added *after* the noise step, to the privatized gradient.
"""

from __future__ import annotations

import math
import warnings
from collections.abc import Callable, Mapping, Sequence
from typing import Protocol

import numpy as np
import torch
from opacus import GradSampleModule
from opacus.optimizers import DPOptimizer
from opacus.optimizers.optimizer import _check_processed_flag, _mark_as_processed
from torch import nn

from fedrec.errors import ConfigError
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.privacy.accounting import Release
from fedrec.privacy.noise import gaussian, poisson_mask


class GradientTerm(Protocol):
    """A data-independent gradient addition (e.g. ``fedrec.training.local.Proximal``)."""

    mu: float

    def add_grad(self) -> None: ...


class _SecretNoiseDPOptimizer(DPOptimizer):
    """Opacus's ``DPOptimizer`` drawing its noise from a secret NumPy generator.

    torch's CPU generator keeps only 32 bits of its seed (see
    :mod:`fedrec.privacy.noise`); everything else is Opacus's clip/accumulate/scale.
    """

    def __init__(self, optimizer: torch.optim.Optimizer, *, rng: np.random.Generator, **kw: object):
        super().__init__(optimizer, **kw)
        self.rng = rng

    def add_noise(self) -> None:
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            _check_processed_flag(p.summed_grad)
            noise = gaussian(tuple(p.summed_grad.shape), std, self.rng)
            p.grad = (p.summed_grad + torch.from_numpy(noise).to(p.summed_grad)).view_as(p)
            _mark_as_processed(p.summed_grad)


def interaction_units(model: TrainableRecommender, n_interactions: int) -> torch.Tensor | None:
    """The unit (interaction index) of each row of ``model.make_examples``'s output.

    ``None`` means one row per unit (autoencoders: one row per user). Tested against
    :class:`fedrec.models.mf.MatrixFactorization`'s row layout.
    """
    if model.kind != "mf":
        return None
    cfg = model.cfg
    base = torch.arange(n_interactions)
    if cfg.loss == "bpr":
        return base.repeat_interleave(cfg.negatives)
    return torch.cat([base, base.repeat_interleave(cfg.negatives)])


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


def _group_grad_samples(params: Sequence[nn.Parameter], row_units: torch.Tensor) -> None:
    """Sum per-row gradients into per-unit gradients (``row_units`` indexes ``0..b-1``)."""
    n_units = int(row_units.max()) + 1
    for p in params:
        gs = p.grad_sample
        if gs is None:
            p.grad_sample = torch.zeros((n_units, *p.shape), dtype=p.dtype)
            continue
        out = torch.zeros((n_units, *gs.shape[1:]), dtype=gs.dtype)
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
) -> Release:
    """Train ``model`` in place with DP-SGD over privacy units; return what was spent.

    Parameters
    ----------
    model
        The device model; every parameter with ``requires_grad`` is clipped and noised
        (freeze with ``fedrec.training.local.freeze_except`` to refit user-side only).
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

    Returns
    -------
    Release
        ``(noise_multiplier, q, steps)`` for the device's ledger.
    """
    _check_args(noise_multiplier, max_grad_norm, batch_size, epochs)
    named = {n: p for n, p in model.named_parameters() if p.requires_grad}
    weights = dict(clip_weights or {})
    if unknown := set(weights) - set(named):
        raise ConfigError(f"clip weights for unknown/frozen {sorted(unknown)}", where="privacy")
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    try:
        return _run(
            gsm,
            model,
            examples,
            units,
            noise_multiplier,
            max_grad_norm,
            batch_size,
            epochs,
            optimizer,
            generator,
            rng,
            proximal,
            named,
            weights,
        )
    finally:
        gsm._close()
        for p in model.parameters():
            for attr in ("summed_grad", "grad_sample"):
                if hasattr(p, attr):
                    delattr(p, attr)
            p.grad = None


def _run(
    gsm: GradSampleModule,
    model: TrainableRecommender,
    examples: Callable[[torch.Generator], Examples],
    units: torch.Tensor | None,
    noise_multiplier: float,
    max_grad_norm: float,
    batch_size: int,
    epochs: int,
    optimizer: torch.optim.Optimizer,
    generator: torch.Generator,
    rng: np.random.Generator,
    proximal: GradientTerm | None,
    named: dict[str, nn.Parameter],
    weights: dict[str, float],
) -> Release:
    params = list(named.values())
    n_units: int | None = None
    steps = 0
    dp_opt: _SecretNoiseDPOptimizer | None = None
    model.train()
    for _ in range(epochs):
        ex = examples(generator)
        row_units = torch.arange(len(ex)) if units is None else units
        if len(row_units) != len(ex):
            raise ValueError(f"units has {len(row_units)} rows, examples have {len(ex)}")
        n_units = int(row_units.max()) + 1 if len(ex) else 0
        if n_units == 0:
            raise ConfigError("no training examples", where="dp_train", fix="skip this client")
        q = min(1.0, batch_size / n_units)
        if dp_opt is None:
            dp_opt = _SecretNoiseDPOptimizer(
                optimizer,
                rng=rng,
                noise_multiplier=noise_multiplier,
                max_grad_norm=max_grad_norm,
                expected_batch_size=q * n_units,
            )
        for _ in range(math.ceil(1.0 / q)):
            _step(
                gsm,
                model,
                ex,
                row_units,
                poisson_mask(n_units, q, rng),
                params,
                dp_opt,
                optimizer,
                proximal,
                named,
                weights,
            )
            steps += 1
    if n_units is None:
        return Release(noise_multiplier, 1.0, 0)
    return Release(noise_multiplier, min(1.0, batch_size / n_units), steps)


def _step(
    gsm: GradSampleModule,
    model: TrainableRecommender,
    ex: Examples,
    row_units: torch.Tensor,
    sampled: np.ndarray[tuple[int], np.dtype[np.bool_]],
    params: list[nn.Parameter],
    dp_opt: _SecretNoiseDPOptimizer,
    optimizer: torch.optim.Optimizer,
    proximal: GradientTerm | None,
    named: dict[str, nn.Parameter],
    weights: dict[str, float],
) -> None:
    dp_opt.zero_grad(set_to_none=True)
    chosen = torch.from_numpy(sampled)
    rows = torch.nonzero(chosen[row_units]).flatten()
    if len(rows) == 0:
        for p in params:
            p.grad_sample = torch.zeros((0, *p.shape), dtype=p.dtype)
    else:
        batch = ex.take(rows)
        with warnings.catch_warnings():
            # Embedding inputs are indices: Opacus's full backward hooks fire on outputs.
            warnings.filterwarnings("ignore", message="Full backward hook is firing")
            model.loss(gsm(*batch.inputs), batch.target).backward()
        # compact unit ids 0..b-1 of the sampled rows
        _, compact = torch.unique(row_units[rows], return_inverse=True)
        _group_grad_samples(params, compact)
    _weight_grad_samples(named, weights, inverse=False)
    if dp_opt.pre_step():
        _weight_grad_samples(named, weights, inverse=True)
        if proximal is not None and proximal.mu > 0:
            proximal.add_grad()
        optimizer.step()
