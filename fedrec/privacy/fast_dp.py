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
normals by Box-Muller in torch on the parameter's device: about 2x faster than
NumPy's float64 ziggurat on one core (more with threads or a GPU), and the radius
uses 53-bit uniforms, in float64, so the tails reach 8.6 standard deviations (float32
``torch.randn`` stops at 5.8, which would cost delta) and no pair is exactly 0 but
with probability ``2**-53``.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch
from torch import nn

from fedrec.errors import ConfigError

SMALL_DRAW = 4096
"""Up to this many normals, :func:`secret_normal` takes NumPy's float64 ziggurat: one
call instead of a dozen tensor operations, which dominate for a user vector's noise."""

LAZY_MIN_ROWS = 64
"""Smaller tables (a device's own user vector) are noised eagerly: deferring pays only
when a step reads a small part of the table."""


def secret_normal(
    numel: int,
    std: float,
    rng: np.random.Generator,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """``numel`` i.i.d. ``N(0, std**2)`` draws, flat, from the secret ``rng``.

    Up to :data:`SMALL_DRAW` draws come straight from NumPy's float64 ziggurat
    (Marsaglia and Tsang 2000). Beyond, Box-Muller (1958): per pair, a 53-bit uniform
    ``u`` in ``(0, 1]`` (NumPy's float64 ``random``) gives the radius ``sqrt(-2 ln u)``
    (in float64, :func:`box_muller_radius`) and a 24-bit uniform the angle. ``rng``
    supplies every random bit (:func:`fedrec.privacy.noise.secure_rng`), so an
    insecure test seed reproduces the draws exactly; the transform runs on ``device``.
    """
    if std < 0:
        raise ValueError(f"noise std must be >= 0, got {std}")
    if numel <= SMALL_DRAW:  # fewer operations: NumPy's float64 ziggurat, exact tails
        small = torch.from_numpy(rng.standard_normal(numel)).mul_(std)
        return small.to(device, dtype)
    pairs = (numel + 1) // 2
    work = torch.float64 if dtype == torch.float64 else torch.float32
    uniform = rng.random(pairs)
    np.subtract(1.0, uniform, out=uniform)  # (0, 1]: the radius is finite
    turns = rng.random(pairs, dtype=np.float32)
    radius = box_muller_radius(uniform, std, device=device, dtype=work)
    angle = torch.from_numpy(turns)
    if (angle.device, angle.dtype) != (torch.device(device), work):
        angle = angle.to(device, work)
    angle.mul_(2.0 * math.pi)
    out = torch.empty(2 * pairs, dtype=work, device=device)
    torch.cos(angle, out=out[:pairs]).mul_(radius)
    torch.sin(angle, out=out[pairs:]).mul_(radius)
    return out[:numel] if work == dtype else out[:numel].to(dtype)


def box_muller_radius(
    uniform: np.ndarray[tuple[int], np.dtype[np.float64]],
    std: float,
    *,
    device: torch.device | str = "cpu",
    dtype: torch.dtype = torch.float32,
) -> torch.Tensor:
    """Box-Muller's radius ``std sqrt(-2 ln u)`` of 53-bit uniforms ``u`` in ``(0, 1]``.

    Computed in float64 and cast once to ``dtype``: casting ``u`` to float32 first
    would round every ``u > 1 - 2**-25`` to 1 and make a pair exactly 0 with
    probability ``2**-25`` (and truncate the small radii); in float64 only ``u = 1``
    (probability ``2**-53``) gives 0.
    """
    radius = torch.from_numpy(uniform).to(device, torch.float64).log()  # ``uniform`` kept
    radius = radius.mul_(-2.0 * std * std).sqrt_()
    return radius if dtype == torch.float64 else radius.to(dtype)


@dataclass(frozen=True)
class _Trace:
    """One layer's recorded rows: inputs, per-row output gradients, example row ids."""

    layer: nn.Module
    inputs: torch.Tensor  # Linear: activations [r, in]; Embedding: indices [r]
    grads: torch.Tensor  # d(per-row loss) / d(output), [r, out]
    rows: torch.Tensor | None  # example row of each recorded row; None: row r is row r

    def units(self, units: torch.Tensor) -> torch.Tensor:
        """The unit of each recorded row, from the unit of each example row."""
        return units if self.rows is None else units[self.rows]


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


class Clipper(Protocol):
    """What :class:`GhostDPStep` needs of a clipper (:class:`GhostClipper`, or
    :class:`fedrec.privacy.mf_clip.MFClipper` for MF in closed form)."""

    def owner(self, p: nn.Parameter) -> nn.Module: ...

    def backward(self, loss_of: Callable[[], torch.Tensor]) -> torch.Tensor: ...

    def unit_norms(
        self, units: torch.Tensor, n_units: int, weights: Mapping[nn.Parameter, float]
    ) -> torch.Tensor: ...

    def add_clipped_(
        self, p: nn.Parameter, out: torch.Tensor, unit_scale: torch.Tensor, units: torch.Tensor
    ) -> None: ...

    def clear(self) -> None: ...


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
        self._owner: dict[int, nn.Module] = {}
        for name, module in model.named_modules():
            mine = [p for p in module.parameters(recurse=False) if id(p) in wanted]
            if mine:
                _check_layer(name, module)
                self._layers.append(module)
                self._owner |= {id(p): module for p in mine}
        if wanted - set(self._owner):
            raise ConfigError(
                "some parameters to clip are not owned by a module of the model",
                where="dp_train(fast=True)",
                fix="pass an optimizer over the model's own parameters",
            )
        self._traces: dict[int, _Trace] = {}
        self._rows: dict[tuple[int, int], torch.Tensor] = {}

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
        self._traces, self._rows = {}, {}
        if not live:
            return loss.detach()
        grads = torch.autograd.grad(loss, [c[2] for c in live], allow_unused=True)
        for (layer, x, _), grad in zip(live, grads, strict=True):
            if grad is not None:
                self._add_trace(layer, x.detach(), grad.detach() * x.shape[0])
        return loss.detach()

    def _add_trace(self, layer: nn.Module, x: torch.Tensor, grad: torch.Tensor) -> None:
        per_row = grad[0].numel() // grad.shape[-1] if len(grad) else 1
        rows = None
        if per_row > 1:  # one tensor per layout, so layers can share groupings
            key = (len(grad), per_row)
            if key not in self._rows:
                rows = torch.arange(len(grad), device=grad.device).repeat_interleave(per_row)
                self._rows[key] = rows
            rows = self._rows[key]
        flat_x = x.reshape(-1) if isinstance(layer, nn.Embedding) else x.reshape(-1, x.shape[-1])
        trace = _Trace(layer, flat_x, grad.reshape(-1, grad.shape[-1]), rows)
        if (old := self._traces.get(id(layer))) is not None:  # called twice: rows add up
            trace = _concat(old, trace)
        self._traces[id(layer)] = trace

    def owner(self, p: nn.Parameter) -> nn.Module:
        """The layer that owns ``p``."""
        return self._owner[id(p)]

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
        shared: dict[tuple[int | None, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        for trace in self._traces.values():
            parts = _layer_sq_norms(trace, trace.units(units), n_units, shared)
            for p, part in parts.items():
                if id(p) in self._owner:
                    w = weights.get(p, 1.0)
                    sq += part if w == 1.0 else part * w**2
        return sq.sqrt_()

    def add_clipped_(
        self, p: nn.Parameter, out: torch.Tensor, unit_scale: torch.Tensor, units: torch.Tensor
    ) -> None:
        """``out += sum_u unit_scale[u] * grad_u(p)`` (the clipped sum), in place."""
        trace = self._traces.get(id(self._owner[id(p)]))
        if trace is None:
            return
        scaled = trace.grads * unit_scale[trace.units(units)].unsqueeze(1)
        if isinstance(trace.layer, nn.Embedding):
            out.index_add_(0, trace.inputs, scaled)
        elif p is trace.layer.weight:
            out.addmm_(scaled.T, trace.inputs)
        else:
            out.add_(scaled.sum(0))


def _concat(old: _Trace, new: _Trace) -> _Trace:
    """The rows of two calls of one layer, as one trace."""
    rows = [
        t.rows if t.rows is not None else torch.arange(len(t.grads), device=t.grads.device)
        for t in (old, new)
    ]
    return _Trace(
        old.layer,
        torch.cat([old.inputs, new.inputs]),
        torch.cat([old.grads, new.grads]),
        torch.cat(rows),
    )


def _per_unit(values: torch.Tensor, unit: torch.Tensor, n_units: int) -> torch.Tensor:
    """Sum rows of ``values`` ``[r, ...]`` per unit: ``[n_units, ...]``."""
    out = torch.zeros((n_units, *values.shape[1:]), dtype=values.dtype, device=values.device)
    return out.index_add_(0, unit, values)


def _layer_sq_norms(
    trace: _Trace,
    unit: torch.Tensor,
    n_units: int,
    shared: dict[tuple[int | None, ...], tuple[torch.Tensor, torch.Tensor]],
) -> dict[nn.Parameter, torch.Tensor]:
    """Squared norm ``[n_units]`` of each unit's gradient, per parameter of the layer.

    ``shared`` memoizes the (unit, index) grouping of tables looked up with the same
    indices (MF's item vectors and item biases).
    """
    layer, g = trace.layer, trace.grads
    if isinstance(layer, nn.Embedding):
        # a unit's table gradient: one summed row per distinct (unit, index)
        n = layer.num_embeddings
        rows = None if trace.rows is None else trace.rows.data_ptr()
        key = (trace.inputs.data_ptr(), len(trace.inputs), n, rows)
        if key not in shared:
            keys, inverse = torch.unique(unit * n + trace.inputs, return_inverse=True)
            shared[key] = (torch.div(keys, n, rounding_mode="floor"), inverse)
        key_unit, inverse = shared[key]
        row_sums = _per_unit(g, inverse, len(key_unit))
        return {layer.weight: _per_unit(row_sums.square().sum(1), key_unit, n_units)}
    a = trace.inputs
    out: dict[nn.Parameter, torch.Tensor] = {}
    if trace.rows is None and bool((torch.bincount(unit, minlength=n_units) == 1).all()):
        # one row per unit: ||g a^T|| = ||g|| ||a||
        g_sq = g.square().sum(1)
        out[layer.weight] = _per_unit(g_sq * a.square().sum(1), unit, n_units)
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
    lazy_noise
        With plain SGD (no momentum, weight decay or proximal term), owe the noise of
        ``nn.Embedding`` tables row by row and add it when a row is next read or at
        :meth:`flush` (:mod:`fedrec.privacy.lazy_noise`: the same distribution of every
        read value and of the result, in other draws). Call :meth:`flush` or
        :meth:`close` before reading the parameters outside the model's forward.
    clipper
        Per-unit norms and clipped sums; default a :class:`GhostClipper` over the
        optimizer's parameters.
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
        lazy_noise: bool = True,
        clipper: Clipper | None = None,
    ) -> None:
        from fedrec.privacy.lazy_noise import LazyRowNoise, lazy_eligible

        self.params = optimizer_params(optimizer)
        self.clipper: Clipper = clipper or GhostClipper(model, self.params)
        self.optimizer = optimizer
        self.noise_multiplier = noise_multiplier
        self.max_grad_norm = max_grad_norm
        self.expected_batch_size = expected_batch_size
        self.rng = rng
        self.weights = dict(clip_weights or {})
        self.proximal = proximal
        tables: dict[int, list[nn.Embedding]] = {}  # lazy tables grouped by their rows
        self.plain_sgd = lazy_eligible(optimizer, proximal is not None)
        if lazy_noise and self.plain_sgd:
            for p in self.params:
                layer = self.clipper.owner(p)
                if isinstance(layer, nn.Embedding) and layer.num_embeddings >= LAZY_MIN_ROWS:
                    tables.setdefault(layer.num_embeddings, []).append(layer)
        self.lazy = [([t.weight for t in ts], LazyRowNoise(ts, rng)) for ts in tables.values()]
        lazy_ids = {id(t.weight) for ts in tables.values() for t in ts}
        self.eager = [p for p in self.params if id(p) not in lazy_ids]
        self._group = {id(p): g for g in optimizer.param_groups for p in g["params"]}

    def __call__(self, loss_of: Callable[[], torch.Tensor] | None, units: torch.Tensor) -> None:
        """Step on the rows whose losses ``loss_of`` averages; ``None``: an empty batch.

        ``units[r]`` is the unit of row ``r``; every unit ``0..b-1`` has a row.
        """
        self.optimizer.zero_grad(set_to_none=True)
        n_units = 0
        if loss_of is not None and len(units):
            n_units = int(units.max()) + 1
            self.clipper.backward(loss_of)
            norms = self.clipper.unit_norms(units, n_units, self.weights)
            # Opacus's clip factor (DPOptimizer.clip_and_accumulate), and its mean
            scale = (self.max_grad_norm / (norms + 1e-6)).clamp_(max=1.0)
            scale /= self.expected_batch_size
        # (c S + N(0, (z C)^2)) / (E c) = S / E + N(0, (z C / (E c))^2)
        std = self.noise_multiplier * self.max_grad_norm / self.expected_batch_size
        for p, grad in zip(self.eager, noise_like(self.eager, std, self.rng), strict=True):
            if (c := self.weights.get(p, 1.0)) != 1.0:
                grad.div_(c)
            if n_units:
                self.clipper.add_clipped_(p, grad, scale, units)
            p.grad = grad
        for tables, lazy in self.lazy:  # plain SGD: the clipped sum now, noise owed
            rates = [float(self._group[id(p)]["lr"]) for p in tables]
            weights = [self.weights.get(p, 1.0) for p in tables]
            lazy.accrue([r * std / c for r, c in zip(rates, weights, strict=True)])
            if n_units:
                with torch.no_grad():
                    for p, lr in zip(tables, rates, strict=True):
                        self.clipper.add_clipped_(p, p, scale * -lr, units)
        self.clipper.clear()
        if self.proximal is not None:
            self.proximal()
        if self.plain_sgd:  # what SGD.step does, without its per-call bookkeeping
            with torch.no_grad():
                for p in self.eager:
                    p.add_(p.grad, alpha=-float(self._group[id(p)]["lr"]))
        else:
            self.optimizer.step()

    def flush(self) -> None:
        """Add every noise draw still owed (lazy tables); the parameters are then final."""
        for _, lazy in self.lazy:
            lazy.settle()

    def close(self) -> None:
        """:meth:`flush` and detach the lazy tables' hooks."""
        for _, lazy in self.lazy:
            lazy.close()
        self.lazy = []


def noise_like(
    params: Sequence[torch.Tensor], std: float, rng: np.random.Generator
) -> list[torch.Tensor]:
    """Independent ``N(0, std**2)`` tensors shaped like ``params``, from one draw.

    One :func:`secret_normal` call for all of them (fewer small operations); the
    pieces are views of one buffer, in ``params`` order.
    """
    if not params:
        return []
    first = params[0]
    flat = secret_normal(sum(p.numel() for p in params), std, rng, device=first.device,
                         dtype=first.dtype)  # fmt: skip
    pieces = flat.split([p.numel() for p in params])
    return [_like(piece.view_as(p), p) for piece, p in zip(pieces, params, strict=True)]


def _like(t: torch.Tensor, p: torch.Tensor) -> torch.Tensor:
    return t if (t.device, t.dtype) == (p.device, p.dtype) else t.to(p)
