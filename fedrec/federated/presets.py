"""Per-model federated defaults: what ``fedrec simulate --model KIND`` uses unless told.

Design rule: one place says which local training and server optimizer suit each user
model, because they differ by orders of magnitude. MF trains many interaction
examples per client with local SGD (a per-client mean loss, so item rows need a large
step) and FedAdam on the server. An autoencoder client holds one example, its row, so
the presets make federated training the centralized twin's minibatch Adam in federated
form (FedSGD, McMahan et al. 2017, with server Adam, Reddi et al. 2021): each device
takes one SGD step of rate 1 (its upload is minus the gradient of its loss at the
global model, weight decay included), and the server's Adam, at the twin's rate 1e-3,
steps on the cohort mean, a minibatch of about ``clients_per_round`` users. It is
FedAdam as Reddi et al. write it, without Adam's bias correction, so with ``b2 = 0.999``
and a steady gradient its early steps are up to 6.6x the twin's
(:class:`fedrec.federated.aggregation.FedAdam`). The twin's architecture and weight
decay come from :data:`fedrec.training.autoencoder.PRESETS`.
Numbers measured with these presets are in ``docs/RESULTS.md``. The server step decays
late in the run (``lr_schedule="step"``), which averages out the sampled cohorts' noise.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from importlib import import_module

from fedrec.federated.aggregation import ServerConfig
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.torch_free import TORCH_FREE

AE_FEDSGD = LocalTrainConfig(epochs=1, lr=1.0, optimizer="sgd", refit_steps=0, user_lr=1e-3)
"""One local SGD step of rate 1; CDAE's user vector ``v_u`` (never seen by the server's
optimizer) takes its own step of 1e-3, about what the twin's Adam moves it. No user-side
refit: 5 refit epochs of Adam 0.1 overfit ``v_u`` (federated CDAE then peaked at 0.33
and declined). Replaces "3 local Adam epochs + FedAdam 0.03" (CDAE 0.384 after 300
rounds, Mult-VAE 0.265 after 150)."""
AE_LOCAL_AVG = LocalTrainConfig(epochs=3, lr=0.01, optimizer="adam", refit_steps=0)
"""With FedAvg / FedProx (plain model averaging), and in private runs, the devices take
a few adaptive steps themselves: 3 local Adam epochs of rate 0.01 (the autoencoders'
preset before FedSGD; non-private CDAE 0.384 after 300 rounds with
:data:`AE_SERVER_FEW`), which moves the model within a few rounds."""
AE_SERVER_FEW = ServerConfig(strategy="fedadam", server_lr=0.03, lr_schedule="step")
AE_SERVER = ServerConfig(
    strategy="fedadam", server_lr=1e-3, beta2=0.999, tau=1e-8, lr_schedule="step"
)
"""Adam's own constants (the twin's), stepping on the cohort's mean gradient. On
ml-100k with 100 clients per round: CDAE 0.446 after 300 rounds with the late step
decay (at a constant rate it peaks at 0.437 and falls to 0.419 by round 700), Mult-VAE
0.427 after 400 (twins 0.443 and 0.416). Each round is one Adam step on ~100 users, so
a larger user base needs proportionally more rounds to see each user as often."""
MULTVAE_ANNEAL_ROUNDS = 350
"""Mult-VAE's KL weight rises from 0 to ``beta`` over the first rounds, as the twin
anneals it over the first half of its steps (Liang et al. 2018)."""
MF_LOCAL = LocalTrainConfig(warm_refit_steps=5)
"""A returning user refits its vector for 5 epochs instead of 20 before its update:
the same NDCG@10 on ml-100k (0.4259 vs 0.4255, mean of seeds 0 and 1, 150 rounds of
100 clients) at a quarter of the refit cost. Evaluation still refits for 20."""
MF_SERVER = ServerConfig(strategy="fedadam", lr_schedule="step")
"""FedAdam with its step cut to 0.3x for the last 30% of the rounds: +0.007 and +0.011
NDCG@10 over a constant rate on ml-100k (100 clients per round, 150 rounds, seeds 0, 1)."""


IALS_LOCAL = LocalTrainConfig(epochs=1, lr=1.0, optimizer="sgd", refit_steps=0, batch_size=1 << 30)
"""iALS devices: the user vector is solved in closed form (no refit epochs, no user-side
SGD) and the upload is ``Q - 1 * grad``, minus the dense gradient of the device's share
of the loss (:mod:`fedrec.training.ials`), the autoencoders' FedSGD convention. One
batch holds the whole user (the autograd reference path)."""
IALS_MODEL = ModelConfig(kind="ials", dim=64, alpha0=0.3, l2=0.01)
"""iALS's loss settings (Rendle et al. 2022's parameterization at ``nu = 1``), chosen on
the validation splits of ml-100k *and* ml-1m with the centralized twin: the ml-100k
optimum (``alpha0 = 1``) over-regularizes ml-1m (0.19 vs EASE 0.25 on its validation
split), ``alpha0 = 0.3`` is within 4% of EASE on both (``docs/RESULTS.md``)."""
IALS_SERVER = ServerConfig(strategy="fedadam", server_lr=0.02, lr_schedule="step")
"""Adam on the cohort's mean gradient (FedAdam, Reddi et al. 2021) with the late step
decay of the MF preset; rate 0.02 maximizes the worse of the two validation ratios to
EASE (0.01 suits ml-100k, 0.03 ml-1m)."""


NCF_MODEL = ModelConfig(kind="ncf", dim=32, negatives=4, l2=0.001)
"""NeuMF (He et al. 2017) with ``d = 32`` per tower (MLP ``64 -> 32 -> 16``), MF's 4
keyed negatives per positive and a light per-example L2 on the embedding rows."""
NCF_LOCAL = LocalTrainConfig(
    epochs=1,
    lr=1.0,
    optimizer="sgd",
    refit_steps=5,
    warm_refit_steps=2,
    batch_size=1 << 30,
    user_lr=1e-3,
)
"""FedSGD (McMahan et al. 2017), as the autoencoder, iALS and SASRec presets: a device
refits its two user vectors on the global item side (Adam 0.1, 5 epochs before a first
update and for evaluation, 2 for a returning user), then takes one SGD step of rate 1
on its whole data, so its upload is the global item side minus the gradient of its mean
loss (item tables and the shared tower alike); the user vectors, already refitted, take
a step of 1e-3. Replaces 2 epochs of local Adam 0.01 with FedAdam 0.1
(:data:`NCF_LOCAL_FEW`), whose averaged towers kept little beyond popularity on ml-1m
(test NDCG@10 0.1933 against the twin's 0.3089; ``docs/RESULTS.md``)."""
NCF_SERVER = ServerConfig(
    strategy="fedadam",
    server_lr=3e-3,
    beta2=0.999,
    tau=1e-8,
    lr_schedule="step",
    weighted=True,
)
"""Server Adam on the cohort's mean gradient (FedAdam, Reddi et al. 2021) with Adam's
constants and the late step decay: each round is one Adam step on a minibatch of about
``clients_per_round`` users, the twin's minibatch Adam (0.002 on 1,024 rows) in
federated form with a cohort of ~40-60x the twin's rows, hence the larger rate (chosen
on the validation splits of ml-100k and ml-1m). Uploads are weighted by the device's
train count (McMahan et al. 2017), so the step is the gradient of the twin's loss over
rows rather than a mean over devices: ml-1m validation 0.1937 against 0.1867 unweighted,
ml-100k a tie (0.2049 / 0.2050; docs/RESULTS.md, NCF). Only this non-private preset
weights; the server learns each cohort device's count (PRIVACY.md)."""
NCF_PASSES = 5
"""Participations per user (``rounds x K / N``) of a non-private NCF run: on the
validation splits federated NCF peaks at about 5 passes (ml-100k: round 50 of 100
clients; ml-1m: round 300), as its twin peaks at 4-6 epochs and then overfits."""
NCF_LOCAL_FEW = LocalTrainConfig(
    epochs=2, lr=0.01, optimizer="adam", refit_steps=5, warm_refit_steps=2, batch_size=1024
)
"""With FedAvg / FedProx and under a privacy mode (20 rounds by default, each spending
budget): 2 epochs of local Adam 0.01 (the first NCF preset; it learns the contract
tests' planted blocks in 10 rounds, where one server step per round does not)."""
NCF_SERVER_FEW = ServerConfig(strategy="fedadam", lr_schedule="step")
"""FedAdam 0.1 with MF's late step decay, for :data:`NCF_LOCAL_FEW`."""


def federated_preset(
    kind: str, strategy: str | None = None, privacy: str = "none"
) -> tuple[ModelConfig, LocalTrainConfig, ServerConfig]:
    """Model, local-training and server settings for a federated run of ``kind``.

    ``strategy``: the server strategy the run will use (``None``: the preset's). The
    autoencoders' FedSGD preset needs the server's Adam and hundreds of rounds; with
    FedAvg or FedProx, or under a privacy mode (20 rounds by default, each spending
    budget), they train locally with :data:`AE_LOCAL_AVG` and :data:`AE_SERVER_FEW`.

    Each model class names its preset (``federated_preset`` classmethod, one of the
    functions below). Under a privacy mode the server never weights uploads by count
    (a count is not released there; DP-FedAvg's sensitivity assumes uniform weights),
    whatever the model's non-private preset does.
    """
    model, local, server = _class_preset(kind)(strategy, privacy)
    if privacy != "none" and server.weighted:
        server = replace(server, weighted=False)
    return model, local, server


Preset = tuple[ModelConfig, LocalTrainConfig, ServerConfig]


def _class_preset(kind: str) -> Callable[[str | None, str], Preset]:
    """The class's ``federated_preset``; for a kind served without torch the function at
    its ``PRESET`` (:data:`fedrec.models.torch_free.TORCH_FREE`; no class import)."""
    light = TORCH_FREE.get(kind)
    if light is None:
        from fedrec.models.registry import model_class

        return model_class(kind).federated_preset
    module, _, name = light.PRESET.partition(":")
    preset: Callable[[str | None, str], Preset] = getattr(import_module(module), name)
    return preset


def mf_preset(strategy: str | None, privacy: str) -> Preset:
    """MF: local SGD with the warm refit, FedAdam with the late step decay."""
    del strategy, privacy
    return ModelConfig(kind="mf"), MF_LOCAL, MF_SERVER


def _autoencoder_preset(
    kind: str, strategy: str | None, privacy: str, anneal_rounds: int
) -> Preset:
    from fedrec.training.autoencoder import PRESETS

    model, twin = PRESETS[kind]
    if strategy not in (None, AE_SERVER.strategy) or privacy != "none":
        return model, AE_LOCAL_AVG, AE_SERVER_FEW
    local = replace(AE_FEDSGD, weight_decay=twin.weight_decay)
    model = replace(model, anneal_rounds=anneal_rounds) if anneal_rounds else model
    return model, local, AE_SERVER


def cdae_preset(strategy: str | None, privacy: str) -> Preset:
    """CDAE: FedSGD with server Adam (or local Adam with FedAvg / under privacy)."""
    return _autoencoder_preset("cdae", strategy, privacy, 0)


def multvae_preset(strategy: str | None, privacy: str) -> Preset:
    """Mult-VAE: as CDAE, with the KL weight annealed over :data:`MULTVAE_ANNEAL_ROUNDS`."""
    return _autoencoder_preset("multvae", strategy, privacy, MULTVAE_ANNEAL_ROUNDS)


IALS_CENTRAL_SERVER = replace(IALS_SERVER, server_lr=0.04)
"""Under central DP-FedAvg (``--privacy central``): FedAdam at twice the non-private
rate, on the noisy mean of every user's clipped gradient (:data:`CENTRAL_EVERY_USER`).
On ml-100k at epsilon 8, delta 1e-4, 20 rounds: 0.3307 NDCG@10 at 0.04 against 0.3211
at 0.02 (one noise draw each; docs/RESULTS.md, "DP-FedAvg MF")."""
CENTRAL_EVERY_USER = frozenset({"ials"})
"""Kinds whose central-DP runs put every user in every round unless
``--clients-per-round`` is given (``q = 1``; :func:`central_clients_per_round`)."""


def central_clients_per_round(kind: str, n_clients: int) -> int | None:
    """The cohort size of a ``--privacy central`` run of ``kind`` given none, or ``None``
    (the run's default applies).

    iALS: all ``n_clients`` users every round. Each DP-FedAvg round adds noise of std
    ``z S`` to the sum of the clipped updates and divides by ``q N``; at ``q = 1`` the
    noise on the mean is ``z S / N``, and the ``z`` that 20 rounds at ``q = 1`` need for
    epsilon 8 (2.43 at delta 1e-4, PRV) is small against ``N``. iALS's device update is
    a full gradient (no local epochs, no sampling), so each round is one full-batch step
    of server Adam: on ml-100k 0.33 NDCG@10 at epsilon 8 (docs/RESULTS.md), against
    0.20 for MF with every user and 0.14 with 100 users per round. No amplification by
    sampling is claimed or needed: the amplified and the worst-case epsilon coincide.
    """
    return n_clients if kind in CENTRAL_EVERY_USER else None


def ials_preset(strategy: str | None, privacy: str) -> Preset:
    """iALS: closed-form user solve, dense item gradient, FedAdam (a larger server
    step under central DP, :data:`IALS_CENTRAL_SERVER`)."""
    del strategy
    server = IALS_CENTRAL_SERVER if privacy == "central" else IALS_SERVER
    return IALS_MODEL, IALS_LOCAL, server


def ncf_preset(strategy: str | None, privacy: str) -> Preset:
    """NeuMF: FedSGD with server Adam (local Adam with FedAvg / FedProx or under
    privacy, :data:`NCF_LOCAL_FEW`)."""
    if strategy not in (None, NCF_SERVER.strategy) or privacy != "none":
        return NCF_MODEL, NCF_LOCAL_FEW, NCF_SERVER_FEW
    return NCF_MODEL, NCF_LOCAL, NCF_SERVER


LIGHTGCN_MODEL = ModelConfig(kind="lightgcn", dim=32)
"""LightGCN on the device's star (:mod:`fedrec.models.lightgcn`) with MF's loss: BCE, 4
keyed negatives, per-example L2 0.01, an item bias."""
LIGHTGCN_LOCAL = LocalTrainConfig(epochs=2, refit_steps=5, warm_refit_steps=1)
"""MF's local SGD at rate 3, for 2 epochs (an autograd device update: MF's 5 epochs and
20 refit epochs would cost 25 passes); the user vector is refitted for 5 epochs before a
first update and for evaluation, 1 for a returning user: the message ``m_u`` already
places a new user, so ``p_u`` needs fewer refit epochs than MF's."""
LIGHTGCN_SERVER = ServerConfig(strategy="fedadam", lr_schedule="step")
"""FedAdam (Reddi et al. 2021) with MF's late step decay."""


def lightgcn_preset(strategy: str | None, privacy: str) -> Preset:
    """LightGCN on the device's star: MF's local SGD with fewer refit epochs, FedAdam."""
    del strategy, privacy
    return LIGHTGCN_MODEL, LIGHTGCN_LOCAL, LIGHTGCN_SERVER


SASREC_MODEL = ModelConfig(kind="sasrec", dim=64, init_std=0.05, dropout=0.2, max_len=50, blocks=2)
"""SASRec (:mod:`fedrec.models.sasrec`): ``d = 64``, 2 blocks, the 50 most recent items,
dropout 0.2 (Kang & McAuley's ml-1m settings but ``L = 50``), full-catalog cross-entropy."""
SASREC_LOCAL = LocalTrainConfig(
    epochs=1, lr=1.0, optimizer="sgd", refit_steps=0, batch_size=1 << 30
)
"""FedSGD (McMahan et al. 2017), the autoencoders' convention: each device takes one SGD
step of rate 1 on all its windows, so its upload is the global model minus the gradient
of its mean next-item loss; there is no user state to refit."""
SASREC_SERVER = ServerConfig(
    strategy="fedadam",
    server_lr=1e-3,
    beta2=0.999,
    tau=1e-8,
    lr_schedule="step",
    weighted=True,
)
"""Server Adam at the twin's rate and constants on the cohort's mean gradient (FedAdam,
Reddi et al. 2021): each round is one Adam step on a minibatch of about
``clients_per_round`` users, the twin's minibatch Adam in federated form. Each upload is
weighted by the device's train count (McMahan et al. 2017's FedAvg weights), so the step
is the mean next-item gradient over positions, the twin's loss, instead of over devices,
where a long history counted as much as a short one. Chosen on ml-100k's temporal
validation split (0.2230 against 0.2062 unweighted); ml-1m temporal test 0.2594 against
0.2548 (docs/RESULTS.md, SASRec). The server learns each cohort device's count
(PRIVACY.md); private modes keep uniform weights (:func:`federated_preset`)."""


def sasrec_preset(strategy: str | None, privacy: str) -> Preset:
    """SASRec: FedSGD with server Adam, every parameter item-side (no user state),
    count-weighted uploads (uniform under privacy: :func:`federated_preset`)."""
    del strategy, privacy
    return SASREC_MODEL, SASREC_LOCAL, SASREC_SERVER


def default_rounds(kind: str, privacy: str = "none") -> int:
    """Rounds of ``fedrec simulate`` when none are given.

    With 100 clients per round on ml-100k: MF needs about 150 rounds, CDAE 300 and
    Mult-VAE 400 (its KL weight reaches ``beta`` at round 351); see ``docs/RESULTS.md``.
    Under DP every round spends budget, so private runs default to 20.
    """
    if privacy != "none":
        return 20
    rounds = {
        "mf": 150,
        "cdae": 300,
        "multvae": 400,
        "ials": 150,
        "ncf": 50,
        "lightgcn": 150,
        "sasrec": 600,  # one server Adam step per round (docs/RESULTS.md, SASRec)
    }
    return rounds.get(kind, 20)
