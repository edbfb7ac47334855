"""Fast (ghost-clipping) DP-SGD equals the Opacus reference, clips per unit, noises densely."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch
from opacus import GradSampleModule
from scipy import stats

from fedrec.bench.dp_overhead import dp_overhead
from fedrec.errors import ConfigError
from fedrec.models.config import ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.privacy import local_dp
from fedrec.privacy.fast_dp import (
    SMALL_DRAW,
    GhostClipper,
    GhostDPStep,
    box_muller_radius,
    secret_normal,
)
from fedrec.privacy.local_dp import dp_train, interaction_units
from fedrec.privacy.mf_clip import MFClipper
from fedrec.privacy.noise import secure_rng
from fedrec.training.local import Proximal, freeze_except, user_examples

N_ITEMS = 30
ITEMS = np.array([0, 2, 3, 7, 11, 19, 23, 29], dtype=np.int64)
CONFIGS = {
    "mf-bce": ModelConfig(kind="mf", dim=4, negatives=3),
    "mf-bpr": ModelConfig(kind="mf", dim=4, loss="bpr", negatives=2),
    "cdae": ModelConfig(kind="cdae", dim=5, dropout=0.3),
    "multvae": ModelConfig(kind="multvae", dim=3, hidden=6, dropout=0.3),
}


def _model(name: str, n_users: int = 1) -> TrainableRecommender:
    return build_model(CONFIGS[name], N_ITEMS, n_users, seed=1)


def _users_examples(model: TrainableRecommender) -> Any:
    """Three users' rows (autoencoders: one row per user), as a central trainer has them."""
    users = np.array([0, 0, 0, 1, 1, 2, 2, 2], dtype=np.int64)

    def build(generator: torch.Generator) -> Examples:
        return model.make_examples(users, ITEMS, generator=generator)

    return build


def _run(model: TrainableRecommender, fast: bool, **kw: Any) -> Any:
    """``dp_train`` with a binding clip (0.05 < every unit's norm) unless overridden.

    Eager noise unless ``lazy_noise=True`` is passed: the reference draws dense noise
    at every step, so only then are the draws themselves the same.
    """
    args: dict[str, Any] = dict(noise_multiplier=0.7, max_grad_norm=0.05, batch_size=3,
                                epochs=2, lazy_noise=False)  # fmt: skip
    args.update(kw)
    examples = args.pop("examples", user_examples(model, ITEMS))
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.5)
    return dp_train(model, examples, optimizer=opt, generator=torch.Generator().manual_seed(4),
                    rng=secure_rng(11), fast=fast, **args)  # fmt: skip


def _assert_same_params(a: torch.nn.Module, b: torch.nn.Module) -> None:
    for (name, p), q in zip(a.named_parameters(), b.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=1e-5, atol=1e-6, msg=name)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_fast_training_equals_opacus_with_the_same_noise(name: str) -> None:
    # Prepare: same init, examples, Poisson draws and noise draws (insecure test seed)
    fast, ref, start = _model(name), _model(name), _model(name)
    units = interaction_units(fast, len(ITEMS))
    # Execute
    rel_fast = _run(fast, True, units=units)
    rel_ref = _run(ref, False, units=units)
    # Assert: identical releases and parameters (user-side included), and training moved
    assert rel_fast == rel_ref
    _assert_same_params(fast, ref)
    assert not torch.equal(next(fast.parameters()), next(start.parameters()))


@pytest.mark.parametrize("name", ["cdae", "multvae"])
@pytest.mark.parametrize("grouped", [False, True])
def test_autoencoders_over_several_users_and_grouped_units(name: str, grouped: bool) -> None:
    # Prepare: 3 user rows; grouped=True puts users 0 and 1 in one unit (Gram path)
    fast, ref = _model(name, n_users=3), _model(name, n_users=3)
    units = torch.tensor([0, 0, 1]) if grouped else None
    # Execute
    _run(fast, True, examples=_users_examples(fast), units=units, batch_size=2)
    _run(ref, False, examples=_users_examples(ref), units=units, batch_size=2)
    # Assert
    _assert_same_params(fast, ref)


def test_user_side_refit_clip_weights_and_proximal_match() -> None:
    # Prepare: refit only p_u (frozen item side), then a full step with weights and FedProx
    models = {fast: _model("mf-bce") for fast in (True, False)}
    for fast, model in models.items():
        flags = freeze_except(model, model.USER_SIDE)
        _run(model, fast, units=interaction_units(model, len(ITEMS)))
        for n, p in model.named_parameters():
            p.requires_grad_(flags[n])
        term = Proximal.around([model.item_emb.weight], mu=0.3)
        # Execute
        _run(model, fast, units=interaction_units(model, len(ITEMS)), proximal=term,
             clip_weights={"item_bias.weight": 0.2})  # fmt: skip
    # Assert
    _assert_same_params(models[True], models[False])


def _opacus_unit_grads(model: TrainableRecommender, ex: Examples, units: torch.Tensor
                       ) -> list[torch.Tensor]:  # fmt: skip
    """Reference per-unit gradients ``[units, *shape]`` per parameter, from Opacus."""
    gsm = GradSampleModule(model, batch_first=True, loss_reduction="mean", strict=True)
    params = list(model.parameters())
    try:
        model.loss(gsm(*ex.inputs), ex.target).backward()
        local_dp._group_grad_samples(params, units)
        return [p.grad_sample.clone() for p in params]
    finally:
        gsm._close()
        for p in params:
            p.grad = None


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize(
    ("name", "n_users", "grouping"),
    [("mf-bce", 1, None), ("mf-bpr", 1, None), ("cdae", 3, [0, 1, 2]), ("cdae", 3, [0, 0, 1]),
     ("multvae", 3, [0, 1, 2]), ("multvae", 3, [1, 0, 1])],
)  # fmt: skip
def test_unit_norms_and_weighted_sums_equal_opacus_per_sample_gradients(
    name: str, n_users: int, grouping: list[int] | None
) -> None:
    # Prepare: per-unit gradients from Opacus, arbitrary per-unit scales (noise off)
    model = _model(name, n_users)
    build = user_examples(model, ITEMS) if n_users == 1 else _users_examples(model)
    ex = build(torch.Generator().manual_seed(2))
    units = interaction_units(model, len(ITEMS)) if grouping is None else torch.tensor(grouping)
    assert units is not None
    n_units = int(units.max()) + 1
    expected = _opacus_unit_grads(model, ex, units)
    scale = torch.rand(n_units, generator=torch.Generator().manual_seed(0)) + 0.5
    weights = {model.get_parameter(n): 0.3 for n in model.ITEM_SIDE[:1]}
    params = list(model.parameters())
    # Execute
    clipper = GhostClipper(model, params)
    clipper.backward(lambda: model.loss(model(*ex.inputs), ex.target))
    norms = clipper.unit_norms(units, n_units, weights)
    sums = [torch.zeros_like(p) for p in params]
    for p, out in zip(params, sums, strict=True):
        clipper.add_clipped_(p, out, scale, units)
    # Assert
    c = [weights.get(p, 1.0) for p in params]
    ref_norms = torch.stack(
        [w * g.flatten(1).norm(dim=1) for w, g in zip(c, expected, strict=True)], 1
    )
    torch.testing.assert_close(norms, ref_norms.norm(dim=1))
    for out, g in zip(sums, expected, strict=True):
        torch.testing.assert_close(out, torch.einsum("u,u...->...", scale, g))


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
@pytest.mark.parametrize("trainable", ["all", "user"])
def test_mf_closed_form_clipper_equals_opacus_per_sample_gradients(trainable: str) -> None:
    # Prepare: MF rows in interaction units (negatives may repeat an item in a unit)
    model = _model("mf-bce")
    ex = user_examples(model, ITEMS)(torch.Generator().manual_seed(2))
    units = interaction_units(model, len(ITEMS))
    assert units is not None
    n_units = int(units.max()) + 1
    expected = _opacus_unit_grads(model, ex, units)
    scale = torch.rand(n_units, generator=torch.Generator().manual_seed(0)) + 0.5
    params = list(model.parameters())
    clipped = params if trainable == "all" else [model.user_emb.weight]
    weights = {model.item_bias.weight: 0.3}
    # Execute
    clipper = MFClipper(model, clipped)
    clipper.backward(clipper.loss_of(ex))
    norms = clipper.unit_norms(units, n_units, weights)
    sums = [torch.zeros_like(p) for p in params]
    for p, out in zip(params, sums, strict=True):
        clipper.add_clipped_(p, out, scale, units)
    # Assert: the norms over the clipped parameters, the clipped sums of those only
    chosen = [any(p is q for q in clipped) for p in params]
    picked = [(p, g) for p, g, c in zip(params, expected, chosen, strict=True) if c]
    ref = torch.stack([weights.get(p, 1.0) * g.flatten(1).norm(dim=1) for p, g in picked], 1)
    torch.testing.assert_close(norms, ref.norm(dim=1))
    for out, g, c in zip(sums, expected, chosen, strict=True):
        want = torch.einsum("u,u...->...", scale, g) if c else torch.zeros_like(out)
        torch.testing.assert_close(out, want)


class _TwoCalls(TrainableRecommender):
    """Calls one Linear and one Embedding twice per row (shared weights)."""

    kind = "two-calls"
    ITEM_SIDE = ("lin.weight", "lin.bias", "emb.weight")
    USER_SIDE = ()

    def __init__(self) -> None:
        super().__init__(N_ITEMS, 1)
        self.lin = torch.nn.Linear(3, 3)
        self.emb = torch.nn.Embedding(N_ITEMS, 3)

    def forward(self, x: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        h = self.lin(torch.tanh(self.lin(x)))
        return (h * self.emb(items[:, 0]) * self.emb(items[:, 1:]).sum(1)).sum(1)

    def make_examples(self, users: Any, items: Any, *, generator: torch.Generator) -> Examples:
        x = torch.randn(len(items), 3, generator=generator)
        pairs = torch.randint(0, N_ITEMS, (len(items), 3), generator=generator)
        return Examples((x, pairs), torch.randn(len(items), generator=generator))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((output - target) ** 2).mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return history


@pytest.mark.filterwarnings("ignore:Full backward hook is firing")
def test_layers_called_twice_sum_their_rows_like_opacus() -> None:
    # Prepare: 8 rows in 3 units
    model = _TwoCalls()
    ex = model.make_examples(None, ITEMS, generator=torch.Generator().manual_seed(5))
    units = torch.tensor([0, 1, 2, 0, 1, 2, 2, 0])
    expected = _opacus_unit_grads(model, ex, units)
    params = list(model.parameters())
    # Execute
    clipper = GhostClipper(model, params)
    clipper.backward(lambda: model.loss(model(*ex.inputs), ex.target))
    norms = clipper.unit_norms(units, 3, {})
    sums = [torch.zeros_like(p) for p in params]
    for p, out in zip(params, sums, strict=True):
        clipper.add_clipped_(p, out, torch.ones(3), units)
    # Assert
    ref = torch.stack([g.flatten(1).norm(dim=1) for g in expected], 1).norm(dim=1)
    torch.testing.assert_close(norms, ref)
    for out, g in zip(sums, expected, strict=True):
        torch.testing.assert_close(out, g.sum(0))


def _unit_contributions(model: TrainableRecommender, ex: Examples, units: torch.Tensor,
                        clip: float) -> list[torch.Tensor]:  # fmt: skip
    """Each unit's clipped gradient (flattened over all parameters), alone in a batch."""
    params = list(model.parameters())
    clipper = GhostClipper(model, params)
    out = []
    for u in range(int(units.max()) + 1):
        batch = ex.take(torch.nonzero(units == u).flatten())
        clipper.backward(lambda b=batch: model.loss(model(*b.inputs), b.target))
        one = torch.zeros(len(batch), dtype=torch.int64)
        norm = clipper.unit_norms(one, 1, {})
        scale = (clip / (norm + 1e-6)).clamp(max=1.0)
        parts = [torch.zeros_like(p) for p in params]
        for p, part in zip(params, parts, strict=True):
            clipper.add_clipped_(p, part, scale, one)
        out.append(torch.cat([p.flatten() for p in parts]))
    return out


def test_each_unit_contribution_is_clipped_and_they_sum_to_the_batch() -> None:
    # Prepare
    model, clip = _model("mf-bce"), 0.05
    ex = user_examples(model, ITEMS)(torch.Generator().manual_seed(0))
    units = interaction_units(model, len(ITEMS))
    assert units is not None
    params = list(model.parameters())
    # Execute
    alone = _unit_contributions(model, ex, units, clip)
    clipper = GhostClipper(model, params)
    clipper.backward(lambda: model.loss(model(*ex.inputs), ex.target))
    norms = clipper.unit_norms(units, len(ITEMS), {})
    scale = (clip / (norms + 1e-6)).clamp(max=1.0)
    parts = [torch.zeros_like(p) for p in params]
    for p, part in zip(params, parts, strict=True):
        clipper.add_clipped_(p, part, scale, units)
    # Assert: joint norm <= C, clipping bound, and grouping adds up
    norms_alone = torch.stack([c.norm() for c in alone])
    assert bool((norms_alone <= clip * (1 + 1e-5)).all()) and bool((norms > clip).any())
    torch.testing.assert_close(torch.cat([p.flatten() for p in parts]), sum(alone))


def test_noise_is_dense_calibrated_and_scaled_by_the_expected_batch() -> None:
    # Prepare: an empty batch, so the gradient is pure noise / expected batch size
    model = build_model(ModelConfig(kind="mf", dim=8), 5000, 1, seed=0)
    opt = torch.optim.SGD(model.parameters(), lr=0.0)
    step = GhostDPStep(model, opt, noise_multiplier=1.5, max_grad_norm=2.0,
                       expected_batch_size=4.0, rng=secure_rng(0), lazy_noise=False)  # fmt: skip
    # Execute
    step(None, torch.zeros(0, dtype=torch.int64))
    # Assert: every coordinate of every parameter noised, std = z C / B
    for p in model.parameters():
        assert p.grad is not None and p.grad.shape == p.shape and bool((p.grad != 0).all())
    grad = model.item_emb.weight.grad
    assert grad is not None
    assert float(grad.std()) == pytest.approx(1.5 * 2.0 / 4.0, rel=0.02)


@pytest.mark.parametrize("name", ["mf-bce", "mf-bpr"])
def test_lazy_noise_trains_like_the_reference_when_the_noise_is_negligible(name: str) -> None:
    # Prepare: plain SGD (lazy tables), noise too small to matter, every unit sampled
    # (the secret generator also draws the Poisson sample, at other stream positions)
    lazy, ref = _model(name), _model(name)
    units = interaction_units(lazy, len(ITEMS))
    args = dict(units=units, noise_multiplier=1e-9, batch_size=len(ITEMS), epochs=3)
    # Execute
    _run(lazy, True, lazy_noise=True, **args)
    _run(ref, False, **args)
    # Assert: the same clipped steps, the lazy tables settled
    _assert_same_params(lazy, ref)


def _lazy_step(model: TrainableRecommender, opt: torch.optim.Optimizer) -> GhostDPStep:
    return GhostDPStep(model, opt, noise_multiplier=1.5, max_grad_norm=2.0,
                       expected_batch_size=4.0, rng=secure_rng(5))  # fmt: skip


def test_lazy_noise_owes_each_row_the_eager_variance_until_it_is_read() -> None:
    # Prepare: plain SGD on MF; each empty step owes N(0, (lr z C / E)^2) per coordinate
    model = build_model(ModelConfig(kind="mf", dim=8), 6000, 1, seed=0)
    start = model.item_emb.weight.detach().clone()
    step = _lazy_step(model, torch.optim.SGD(model.parameters(), lr=0.4))
    per_step = 0.4 * 1.5 * 2.0 / 4.0
    assert [[model.item_emb.weight, model.item_bias.weight]] == [ps for ps, _ in step.lazy]
    # Execute: 3 empty steps, a lookup of rows 0..2999, 2 more steps, the flush
    for _ in range(3):
        step(None, torch.zeros(0, dtype=torch.int64))
    untouched = torch.equal(model.item_emb.weight, start)
    model.item_emb(torch.arange(3000).repeat(2))
    after_read = model.item_emb.weight.detach().clone()
    for _ in range(2):
        step(None, torch.zeros(0, dtype=torch.int64))
    step.close()
    end = model.item_emb.weight.detach()
    # Assert: nothing drawn before a read; the read rows got 3 steps' noise, the rest none;
    # at the end every row has had 5 steps' worth, Gaussian
    assert untouched
    read = (after_read - start)[:3000].flatten()
    assert torch.equal(after_read[3000:], start[3000:])
    assert float(read.std()) == pytest.approx(per_step * 3**0.5, rel=0.03)
    late = (end - after_read)[:3000].flatten()
    assert float(late.std()) == pytest.approx(per_step * 2**0.5, rel=0.03)
    total = (end - start)[3000:].flatten()
    assert float(total.std()) == pytest.approx(per_step * 5**0.5, rel=0.03)
    assert stats.kstest((total / (per_step * 5**0.5)).numpy(), "norm").pvalue > 1e-3
    bias = model.item_bias.weight.detach().flatten()
    assert float(bias.std()) == pytest.approx(per_step * 5**0.5, rel=0.05)


@pytest.mark.parametrize(
    "make",
    [lambda ps: torch.optim.Adam(ps, lr=0.1), lambda ps: torch.optim.SGD(ps, lr=0.1, momentum=0.9),
     lambda ps: torch.optim.SGD(ps, lr=0.1, weight_decay=0.01)],
)  # fmt: skip
def test_noise_is_eager_unless_the_optimizer_is_plain_sgd(make: Any) -> None:
    # Prepare
    model = build_model(ModelConfig(kind="mf", dim=4), 50, 1, seed=0)
    # Execute
    step = _lazy_step(model, make(list(model.parameters())))
    # Assert: Adam, momentum or weight decay pass the noise through non-linearly or decay it
    assert step.lazy == []


def test_secret_normal_is_standard_normal_and_reproducible_only_with_a_seed() -> None:
    # Execute
    x = secret_normal(200_001, 1.0, secure_rng(3))
    same = secret_normal(200_001, 1.0, secure_rng(3))
    other = secret_normal(200_001, 1.0, secure_rng())
    wide = secret_normal(10, 3.0, secure_rng(3), dtype=torch.float64)
    # Assert
    assert x.shape == (200_001,) and x.dtype == torch.float32 and wide.dtype == torch.float64
    assert stats.kstest(x.numpy(), "norm").pvalue > 1e-3
    assert torch.equal(x, same) and not torch.equal(x, other)
    torch.testing.assert_close(
        wide, 3.0 * secret_normal(10, 1.0, secure_rng(3), dtype=torch.float64)
    )


class _WorstUniforms:
    """A stand-in generator whose 53-bit uniforms all lie in ``[2**-53, 2**-26]``: every
    Box-Muller ``1 - u`` is within ``2**-26`` of 1, where a float32 cast rounds to 1."""

    def random(self, n: int, dtype: type = np.float64) -> np.ndarray:
        if dtype == np.float32:
            return np.full(n, 0.25, dtype=np.float32)
        return np.geomspace(2.0**-53, 2.0**-26, n)


def test_box_muller_radius_of_a_uniform_near_one_is_not_zero() -> None:
    # Prepare: the worst case of the float32 cast, and the smallest uniform
    u = np.array([1.0 - 2.0**-30, 1.0 - 2.0**-52, 2.0**-53])
    # Execute
    radius = box_muller_radius(u, 1.0)
    # Assert: finite, non-zero, and the float64 value cast once
    expected = np.sqrt(-2.0 * np.log(u)).astype(np.float32)
    assert radius.dtype == torch.float32 and bool((radius > 0).all())
    np.testing.assert_allclose(radius.numpy(), expected, rtol=1e-6)
    assert float(radius[2]) == pytest.approx(8.57, abs=0.01)  # the 53-bit tail


def test_secret_normal_has_no_exact_zero_from_uniforms_near_one() -> None:
    # Execute: a large draw (Box-Muller path) from the worst-case uniforms
    x = secret_normal(2 * SMALL_DRAW + 2, 1.0, _WorstUniforms())  # type: ignore[arg-type]
    # Assert: a float32 cast of u before the log would make every draw exactly 0
    assert bool((x != 0).all()) and bool(torch.isfinite(x).all())


class _Normed(TrainableRecommender):
    kind = "normed"
    ITEM_SIDE = ("lin.weight", "norm.weight", "norm.bias")
    USER_SIDE = ()

    def __init__(self) -> None:
        super().__init__(N_ITEMS, 1)
        self.lin = torch.nn.Linear(N_ITEMS, 4)
        self.norm = torch.nn.LayerNorm(4)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.norm(self.lin(x))

    def make_examples(self, users: Any, items: Any, *, generator: torch.Generator) -> Examples:
        return Examples((torch.ones(1, N_ITEMS),), torch.zeros(1, 4))

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return ((output - target) ** 2).mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return history


def test_unsupported_layers_are_refused_with_the_reference_as_fix() -> None:
    with pytest.raises(ConfigError, match="fast=False"):
        _run(_Normed(), True)


def test_dp_overhead_quick_reports_a_ratio() -> None:
    out = dp_overhead("mf", 200, quick=True)
    assert out["dp_overhead"] > 0 and out["plain_ms"] > 0 and out["n_items"] == 200
