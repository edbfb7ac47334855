"""Per-model federated defaults: what ``fedrec simulate --model KIND`` uses unless told.

Design rule: one place says which local training and server optimizer suit each user
model, because they differ by orders of magnitude. MF trains many interaction
examples per client with local SGD (a per-client mean loss, so item rows need a large
step) and FedAdam on the server; an autoencoder client has one example (its row), and
a few local Adam steps on it followed by server-side Adam (Reddi et al. 2021) learned
fastest among the settings we tried (plain local SGD at lr 1-5 barely moved or
diverged), with the centralized twin's architecture
(:data:`fedrec.training.autoencoder.PRESETS`). Numbers measured with
these presets are in ``docs/RESULTS.md``. MF's server step decays late in the run
(:data:`MF_SERVER`), which averages out the noise of the sampled cohorts.
"""

from __future__ import annotations

from fedrec.federated.aggregation import ServerConfig
from fedrec.models.config import LocalTrainConfig, ModelConfig

AE_LOCAL = LocalTrainConfig(epochs=3, lr=0.01, optimizer="adam", refit_steps=0)
"""No user-side refit for CDAE: 5 refit epochs of Adam 0.1 overfit the user input vector
``v_u`` and made federated CDAE peak at 0.33 (round 10) and then decline; without it
NDCG@10 keeps rising (ml-100k, 100 clients per round: 0.369 at round 150). Mult-VAE has
no user side, so it is unaffected."""
AE_SERVER_LR = 0.03
AE_SERVER = ServerConfig(strategy="fedadam", server_lr=AE_SERVER_LR, lr_schedule="step")
"""CDAE, 300 rounds: 0.384 with the late step decay, 0.355 at a constant rate."""
MF_LOCAL = LocalTrainConfig(warm_refit_steps=5)
"""A returning user refits its vector for 5 epochs instead of 20 before its update:
the same NDCG@10 on ml-100k (0.4259 vs 0.4255, mean of seeds 0 and 1, 150 rounds of
100 clients) at a quarter of the refit cost. Evaluation still refits for 20."""
MF_SERVER = ServerConfig(strategy="fedadam", lr_schedule="step")
"""FedAdam with its step cut to 0.3x for the last 30% of the rounds: +0.007 and +0.011
NDCG@10 over a constant rate on ml-100k (100 clients per round, 150 rounds, seeds 0, 1)."""


def federated_preset(kind: str) -> tuple[ModelConfig, LocalTrainConfig, ServerConfig]:
    """Model, local-training and server settings for a federated run of ``kind``."""
    if kind in ("cdae", "multvae"):
        from fedrec.training.autoencoder import PRESETS

        model, _ = PRESETS[kind]
        return model, AE_LOCAL, AE_SERVER
    return ModelConfig(kind=kind), MF_LOCAL, MF_SERVER


def default_rounds(kind: str, privacy: str = "none") -> int:
    """Rounds of ``fedrec simulate`` when none are given.

    Non-private MF needs about 150 rounds of 100 clients on ml-100k, CDAE about 300 and
    Mult-VAE (not tuned) was still rising at 150 (``docs/RESULTS.md``); under DP every
    round spends budget, so private runs default to 20.
    """
    if privacy != "none":
        return 20
    return {"mf": 150, "cdae": 300, "multvae": 150}.get(kind, 20)
