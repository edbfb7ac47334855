"""Local DP-SGD: per-unit clipping over all parameters, dense noise, secret noise, FedProx."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
import torch

from fedrec.models.config import ModelConfig
from fedrec.models.registry import build_model
from fedrec.models.trainable import Examples, TrainableRecommender
from fedrec.privacy import local_dp
from fedrec.privacy.local_dp import dp_train, interaction_units
from fedrec.privacy.noise import secure_rng
from fedrec.training.local import Proximal, user_examples

N_ITEMS = 40
ITEMS = np.array([1, 3, 5, 7, 9, 11, 13], dtype=np.int64)


def _mf(loss: str = "bce") -> TrainableRecommender:
    return build_model(ModelConfig(kind="mf", dim=4, loss=loss), N_ITEMS, 1, seed=0)


def _train(model: TrainableRecommender, rng_seed: int | None = None, **kw: Any) -> Any:
    args: dict[str, Any] = dict(noise_multiplier=1.0, max_grad_norm=0.5, batch_size=4, epochs=2)
    args.update(kw)
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.1)
    return dp_train(model, user_examples(model, ITEMS), optimizer=opt,
                    generator=torch.Generator().manual_seed(0), rng=secure_rng(rng_seed),
                    units=interaction_units(model, len(ITEMS)), **args)  # fmt: skip


@pytest.mark.parametrize("loss", ["bce", "bpr"])
def test_units_match_the_mf_row_layout(loss: str) -> None:
    # Prepare
    model = _mf(loss)
    ex = user_examples(model, ITEMS)(torch.Generator().manual_seed(0))
    # Execute
    units = interaction_units(model, len(ITEMS))
    # Assert: every unit holds its positive, and 1 + negatives rows (BCE) / negatives (BPR)
    assert units is not None and len(units) == len(ex)
    items = ex.inputs[1]
    positives = items[:, 0] if loss == "bpr" else items[ex.target == 1]
    unit_of_pos = units if loss == "bpr" else units[ex.target == 1]
    assert torch.equal(positives, torch.as_tensor(ITEMS)[unit_of_pos])
    assert torch.bincount(units).tolist() == [len(ex) // len(ITEMS)] * len(ITEMS)


def test_release_counts_poisson_rate_and_steps() -> None:
    release = _train(_mf(), epochs=3)
    assert release.sample_rate == pytest.approx(4 / 7)
    assert release.steps == 3 * 2  # ceil(7 / 4) steps per epoch


def test_each_unit_contribution_is_clipped_jointly(monkeypatch: pytest.MonkeyPatch) -> None:
    # Prepare: capture per-unit gradients and the clipped sum at the noise step
    seen: list[tuple[list[torch.Tensor], list[torch.Tensor]]] = []
    original = local_dp._SecretNoiseDPOptimizer.add_noise

    def spy(self: Any) -> None:
        seen.append(([p.grad_sample.clone() for p in self.params],
                     [p.summed_grad.clone() for p in self.params]))  # fmt: skip
        original(self)

    monkeypatch.setattr(local_dp._SecretNoiseDPOptimizer, "add_noise", spy)
    clip = 0.05
    # Execute (the reference Opacus path; the fast path: tests/test_fast_dp.py)
    _train(_mf(), rng_seed=0, max_grad_norm=clip, fast=False)
    # Assert
    assert seen
    clipped_any = False
    for samples, summed in seen:
        if len(samples[0]) == 0:
            continue
        norms = torch.stack([g.flatten(1).norm(dim=1) for g in samples], 1).norm(dim=1)
        factors = (clip / (norms + 1e-6)).clamp(max=1.0)
        contributions = [torch.einsum("i,i...->i...", factors, g) for g in samples]
        joint = torch.stack([c.flatten(1).norm(dim=1) for c in contributions], 1).norm(dim=1)
        assert bool((joint <= clip * (1 + 1e-4)).all())
        for c, s in zip(contributions, summed, strict=True):
            torch.testing.assert_close(c.sum(0), s)
        clipped_any |= bool((norms > clip).any())
        assert len(samples) == 3  # user, item and bias tables all clipped together
    assert clipped_any


def test_noise_reaches_every_item_row() -> None:
    model = _mf()
    before = model.item_emb.weight.detach().clone(), model.item_bias.weight.detach().clone()
    _train(model)
    untouched = torch.ones(N_ITEMS, dtype=torch.bool)
    untouched[torch.as_tensor(ITEMS)] = False
    assert bool((model.item_emb.weight.detach() != before[0]).all(dim=1)[untouched].all())
    assert bool((model.item_bias.weight.detach() != before[1]).all(dim=1).all())
    assert not hasattr(model.item_emb.weight, "grad_sample")  # Opacus detached


def test_secure_runs_differ_insecure_seed_matches() -> None:
    a, b, c, d = _mf(), _mf(), _mf(), _mf()
    _train(a), _train(b), _train(c, rng_seed=5), _train(d, rng_seed=5)
    assert not torch.equal(a.item_emb.weight, b.item_emb.weight)
    assert torch.equal(c.item_emb.weight, d.item_emb.weight)


def test_proximal_gradient_survives_opacus() -> None:
    # Prepare: one full-batch step (q = 1), anchors 1 away from the start, same noise
    # (a proximal term makes the noise eager, so the plain run must draw it eagerly too)
    plain, prox = _mf(), _mf()
    params = [prox.item_emb.weight]
    term = Proximal(params, [p.detach().clone() + 1.0 for p in params], mu=0.5)
    # Execute
    _train(plain, rng_seed=3, batch_size=100, epochs=1, lazy_noise=False)
    _train(prox, rng_seed=3, batch_size=100, epochs=1, proximal=term)
    # Assert: w_prox = w_plain - lr * mu * (w0 - anchor) = w_plain + 0.1 * 0.5
    diff = prox.item_emb.weight.detach() - plain.item_emb.weight.detach()
    torch.testing.assert_close(diff, torch.full_like(diff, 0.05))


class _TinyAE(TrainableRecommender):
    kind = "tiny-ae"
    ITEM_SIDE = ("enc.weight", "dec.weight")
    USER_SIDE = ()

    def __init__(self) -> None:
        super().__init__(N_ITEMS, 1)
        self.enc = torch.nn.Linear(N_ITEMS, 3, bias=False)
        self.dec = torch.nn.Linear(3, N_ITEMS, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.dec(torch.tanh(self.enc(x)))

    def make_examples(self, users: Any, items: Any, *, generator: torch.Generator) -> Examples:
        row = torch.zeros(1, N_ITEMS)
        row[0, torch.as_tensor(items)] = 1.0
        return Examples((row,), row)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        return torch.nn.functional.binary_cross_entropy_with_logits(output, target)

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        return self(history)


def test_autoencoder_user_is_one_unit() -> None:
    model = _TinyAE()
    opt = torch.optim.SGD(model.parameters(), lr=0.1)
    release = dp_train(model, user_examples(model, ITEMS), noise_multiplier=1.0,
                       max_grad_norm=1.0, batch_size=8, epochs=3, optimizer=opt,
                       generator=torch.Generator(), rng=secure_rng(0))  # fmt: skip
    assert (release.sample_rate, release.steps) == (1.0, 3)
