"""Cheap DP-SGD pieces: per-unit clipping without per-example gradients, fast secret noise.

Design rule: the clipped sum of DP-SGD (Abadi et al., CCS 2016) never needs the
per-example gradient *tensors*, only their norms, and for the layers fedrec's models
are made of both the norms and the clipped sum follow from what a backward pass
already holds: a layer's input and the gradient of the loss at its output.

- ``nn.Linear`` with one input vector ``a`` per row: the row's weight gradient is the
  outer product ``g a^T``, whose norm is ``||g|| ||a||`` (ghost clipping: Goodfellow
  2015; Li et al., ICLR 2022). Rows grouped into one privacy unit use the Gram form
  ``||sum_r g_r a_r^T||^2 = sum_{r,s} (g_r . g_s)(a_r . a_s)``.
- ``nn.Embedding``: a row's gradient touches only the looked-up table rows, so a unit's
  norm sums the squared norms of its per-(unit, index) row sums.

The clipped sum is then one ``addmm`` / ``index_add`` of the clip-scaled output
gradients, written straight into the noise buffer: the book-keeping trick of Bu et
al. ("Differentially private optimization on large model at small cost", ICML 2023).
Nothing of size ``[batch, items, dim]`` is ever built. Results equal Opacus's
``GradSampleModule`` + ``DPOptimizer`` clipping (same ``loss_reduction="mean"``
rescaling, same clip factor ``min(1, C / (norm + 1e-6))``; tested).

:func:`secret_normal` draws the Gaussian noise from the secret NumPy generator of
:mod:`fedrec.privacy.noise` (its raw 64-bit words are the only entropy), turned into
normals by Box-Muller in torch on the parameter's device: about 3x faster than
NumPy's float64 ziggurat, and the radius uses 63-bit uniforms so the tails reach
9.4 standard deviations (float32 ``torch.randn`` stops at 5.8, which costs delta).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from torch import nn

from fedrec.errors import ConfigError

_MASK63 = (1 << 63) - 1
_MASK24 = (1 << 24) - 1


def secret_normal(
    numel: int,
    std: float,
    rng: np.random.Generator,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``numel`` i.i.d. ``N(0, std**2)`` draws, flat, from the secret ``rng``.

    Box-Muller (1958): per pair, a 63-bit uniform ``u`` in ``(0, 1]`` gives the radius
    ``sqrt(-2 ln u)`` and a 24-bit uniform the angle. ``rng`` supplies every random bit
    (:func:`fedrec.privacy.noise.secure_rng`), so an insecure test seed reproduces the
    draws exactly; the transform runs on ``device``.
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    pairs = (numel + 1) // 2
    raw = rng.bit_generator.random_raw(pairs + (pairs + 1) // 2)
    words = torch.from_numpy(np.asarray(raw).view(np.int64)).to(device)
    work = torch.float64 if dtype == torch.float64 else torch.float32
    u = (words[:pairs] & _MASK63).to(work).add_(0.5).mul_(2.0**-63)
    radius = u.log_().mul_(-2.0).sqrt_()
    angle_bits = words[pairs:].view(torch.int32)[:pairs] & _MASK24
    angle = angle_bits.to(work).mul_(2.0 * math.pi * 2.0**-24)
    out = torch.view_as_real(torch.polar(radius, angle)).flatten()[:numel]
    return out.mul_(std).to(dtype)


@dataclass(frozen=True)
class _Trace:
    """One layer's recorded rows: inputs, per-row output gradients, example row ids."""

    inputs: torch.Tensor  # Linear: activations [r, in]; Embedding: indices [r]
    grads: torch.Tensor  # d(per-row loss) / d(output), [r, out]
    rows: torch.Tensor  # example row of each recorded row, int64 [r]


def _check_layer(name: str, module: nn.Module) -> None:
    if isinstance(module, nn.Linear):
        return
    if isinstance(module, nn.Embedding):
        if (
            module.padding_idx is None
            and module.max_norm is None
            and not module.scale_grad_by_freq
            and not module.sparse
        ):
            return
        what = f"nn.Embedding {name!r} uses padding_idx/max_norm/scale_grad_by_freq/sparse"
    else:
        what = f"layer {name!r} ({type(module).__name__}) has trainable parameters"
    raise ConfigError(
        f"{what}: fast DP clipping supports plain nn.Linear and nn.Embedding only",
        where="dp_train(fast=True)",
        fix="use dp_train(..., fast=False) (Opacus per-sample gradients)",
    )


class GhostClipper:
    """Per-unit gradient norms and clipped sums of a model's Linear/Embedding layers.

    Parameters
    ----------
    model
        The module to trace; every parameter in ``params`` must belong to a plain
        ``nn.Linear`` or ``nn.Embedding`` (else :class:`ConfigError`).
    params
        The parameters to clip (the DP optimizer's parameters).
    """

    def __init__(self, model: nn.Module, params: Sequence[nn.Parameter]) -> None:
        wanted = {id(p) for p in params}
        self._layers: list[nn.Module] = []
        owned: set[int] = set()
        for name, module in model.named_modules():
            if any(id(p) in wanted for p in module.parameters(recurse=False)):
                _check_layer(name, module)
                self._layers.append(module)
                owned |= {id(p) for p in module.parameters(recurse=False)}
        if wanted - owned:
            raise ConfigError(
                "some parameters to clip are not owned by a module of the model",
                where="dp_train(fast=True)",
                fix="pass an optimizer over the model's own parameters",
            )
        self._wanted = wanted
        self._traces: dict[int, tuple[nn.Module, _Trace]] = {}

    def backward(self, loss_of: Callable[[], torch.Tensor]) -> torch.Tensor:
        """Evaluate ``loss_of()`` (a mean over rows) and record per-row layer gradients.

        Only the gradients at the layers' outputs are computed, never the parameters'.
        Like Opacus with ``loss_reduction="mean"``, they are rescaled by the number of
        rows so that row ``r``'s share is the gradient of its own loss.
        """
        calls: list[tuple[nn.Module, torch.Tensor, torch.Tensor]] = []

        def record(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            calls.append((module, args[0], out))

        handles = [layer.register_forward_hook(record) for layer in self._layers]
        try:
            loss = loss_of()
        finally:
            for handle in handles:
                handle.remove()
        live = [c for c in calls if c[2].requires_grad]
        self._traces = {}
        if not live:
            return loss.detach()
        grads = torch.autograd.grad(loss, [c[2] for c in live], allow_unused=True)
        for (layer, x, _), grad in zip(live, grads, strict=True):
            if grad is not None:
                self._add_trace(layer, x, grad * x.shape[0])
        return loss.detach()

    def _add_trace(self, layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        per_row = grad[0].numel() // grad.shape[-1] if len(grad) else 1
        rows = torch.arange(len(grad), device=grad.device).repeat_interleave(per_row)
        flat_x = x.reshape(-1) if isinstance(layer, nn.Embedding) else x.reshape(-1, x.shape[-1])
        trace = _Trace(flat_x.detach(), grad.reshape(-1, grad.shape[-1]).detach(), rows)
        if id(layer) in self._traces:  # a layer called twice: its rows add up
            old = self._traces[id(layer)][1]
            trace = _Trace(
                *(torch.cat([a, b]) for a, b in zip(_fields(old), _fields(trace), strict=True))
            )
        self._traces[id(layer)] = (layer, trace)

    def clear(self) -> None:
        """Drop the recorded rows (activations and output gradients)."""
        self._traces = {}

    def unit_norms(
        self, units: torch.Tensor, n_units: int, weights: Mapping[nn.Parameter, float]
    ) -> torch.Tensor:
        """Norm ``[n_units]`` of each unit's gradient over all clipped parameters jointly.

        ``units[r]`` is the unit (``0..n_units-1``) of example row ``r``; parameter
        ``p``'s share is multiplied by ``weights.get(p, 1)`` (see ``clip_weights``).
        """
        sq = torch.zeros(n_units, device=units.device)
        for layer, trace in self._traces.values():
            unit = units[trace.rows]
            for p, part in _layer_sq_norms(layer, trace, unit, n_units).items():
                if id(p) in self._wanted:
                    sq += part * weights.get(p, 1.0) ** 2
        return sq.sqrt()

    def add_clipped_(
        self, p: nn.Parameter, out: torch.Tensor, unit_scale: torch.Tensor, units: torch.Tensor
    ) -> None:
        """``out += sum_u unit_scale[u] * grad_u(p)`` (the clipped sum), in place."""
        for layer, trace in self._traces.values():
            scaled = trace.grads * unit_scale[units[trace.rows]].unsqueeze(1).to(trace.grads)
            if isinstance(layer, nn.Embedding) and p is layer.weight:
                out.index_add_(0, trace.inputs, scaled)
            elif isinstance(layer, nn.Linear) and p is layer.weight:
                out.addmm_(scaled.T, trace.inputs.to(scaled))
            elif isinstance(layer, nn.Linear) and p is layer.bias:
                out.add_(scaled.sum(0))


def _fields(trace: _Trace) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    return trace.inputs, trace.grads, trace.rows


def _per_unit(values: torch.Tensor, unit: torch.Tensor, n_units: int) -> torch.Tensor:
    """Sum rows of ``values`` ``[r, ...]`` per unit: ``[n_units, ...]``."""
    out = torch.zeros((n_units, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, unit, values)


def _layer_sq_norms(
    layer: nn.Module, trace: _Trace, unit: torch.Tensor, n_units: int
) -> dict[nn.Parameter, torch.Tensor]:
    """Squared norm ``[n_units]`` of each unit's gradient, per parameter of ``layer``."""
    g = trace.grads
    out: dict[nn.Parameter, torch.Tensor] = {}
    if isinstance(layer, nn.Embedding):
        # a unit's table gradient: one summed row per distinct (unit, index)
        keys, inverse = torch.unique(
            unit * layer.num_embeddings + trace.inputs, return_inverse=True
        )
        row_sums = _per_unit(g, inverse, len(keys))
        out[layer.weight] = _per_unit(
            row_sums.square().sum(1), keys // layer.num_embeddings, n_units
        )
        return out
    a = trace.inputs.to(g)
    if len(unit) == 0 or int(torch.bincount(unit).max()) <= 1:
        # one row per unit: ||g a^T|| = ||g|| ||a||
        out[layer.weight] = _per_unit(g.square().sum(1) * a.square().sum(1), unit, n_units)
    else:
        same = unit.unsqueeze(0) == unit.unsqueeze(1)
        gram = (g @ g.T) * (a @ a.T) * same
        out[layer.weight] = _per_unit(gram.sum(1), unit, n_units)
    if layer.bias is not None:
        out[layer.bias] = _per_unit(g, unit, n_units).square().sum(1)
    return out


def optimizer_params(optimizer: torch.optim.Optimizer) -> list[nn.Parameter]:
    """The trainable parameters of ``optimizer``, in Opacus's ``DPOptimizer.params`` order."""
    return [p for g in optimizer.param_groups for p in g["params"] if p.requires_grad]


class GhostDPStep:
    """One DP-SGD step with ghost clipping, equal to Opacus's ``DPOptimizer`` step.

    Clipped sum of the batch's units (each unit's gradient over all of ``optimizer``'s
    parameters clipped to ``max_grad_norm``), plus ``N(0, (z C)^2)`` on every
    coordinate from ``rng`` (drawn in the same order as the reference), divided by
    ``expected_batch_size``; then ``proximal``, then ``optimizer.step()``.

    Parameters
    ----------
    clip_weights
        Per-parameter weight ``c`` inside the clipped vector; the noisy sum of that
        parameter is divided by ``c`` afterwards (post-processing).
    """

    def __init__(
        self,
        model: nn.Module,
        optimizer: torch.optim.Optimizer,
        *,
        noise_multiplier: float,
        max_grad_norm: float,
        expected_batch_size: float,
        rng: np.random.Generator,
        clip_weights: Mapping[nn.Parameter, float] | None = None,
        proximal: Callable[[], None] | None = None,
    ) -> None:
        self.params = optimizer_params(optimizer)
        self.clipper = GhostClipper(model, self.params)
        self.optimizer = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.rng = rng
        self.weights = dict(clip_weights or {})
        self.proximal = proximal

    def __call__(self, loss_of: Callable[[], torch.Tensor] | None, units: torch.Tensor) -> None:
        """Step on the rows whose losses ``loss_of`` averages; ``None``: an empty batch.

        ``units[r]`` is the unit (``0..b-1``) of row ``r``.
        """
        self.optimizer.zero_grad(set_to_none=True)
        n_units = 0
        if loss_of is not None and len(units):
            n_units = int(units.max()) + 1
            self.clipper.backward(loss_of)
            norms = self.clipper.unit_norms(units, n_units, self.weights)
            # Opacus's clip factor (DPOptimizer.clip_and_accumulate)
            scale = (self.max_grad_norm / (norms + 1e-6)).clamp(max=1.0)
        std = self.noise_multiplier * self.max_grad_norm
        for p in self.params:
            c = self.weights.get(p, 1.0)
            grad = secret_normal(p.numel(), std, self.rng, device=p.device, dtype=p.dtype)
            grad = grad.view_as(p)
            if n_units:
                self.clipper.add_clipped_(p, grad, scale * c, units)
            p.grad = grad.div_(self.expected_batch_size * c)
        self.clipper.clear()
        if self.proximal is not None:
            self.proximal()
        self.optimizer.step()
