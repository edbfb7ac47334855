"""EASE's solve from the released Gram matrix: denoising, regularization, closed form.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019):
``P = (G + lam I)^-1, B = -P / diag(P), diag(B) = 0``. Everything here runs on the
server after the Gaussian release (:mod:`fedrec.federated.gram`) and is post-processing.

**Denoising the release.** The released matrix is ``G_hat = G + E`` with ``E`` a
symmetric Gaussian (Wigner) matrix, off-diagonal std ``sigma = z / sqrt 2``, whose
eigenvalues fill the semicircle ``[-noise_scale, noise_scale]``, ``noise_scale = 2 sigma
sqrt(I)`` (Wigner's semicircle law). As in Analyze Gauss (Dwork, Talwar, Thakurta &
Zhang, "Analyze Gauss: Optimal Bounds for Privacy-Preserving Principal Component
Analysis", STOC 2014), the signal is read off the top eigenspace: the server keeps the
eigenpairs of ``G_hat`` above ``tau * noise_scale`` (always the top one) and solves
EASE on that low-rank ``G_k = V_k diag(w_k) V_k^T`` with a small ``lam = c *
noise_scale``; ``(G_k + lam I)^-1 = I / lam + V_k diag(1 / (w_k + lam) - 1 / lam) V_k^T``
exactly, so no ``I x I`` inverse is needed. Without it, EASE's ridge alone (the rule
``lam = a mean(diag G_hat) + b noise_scale``, ``ease.denoise = none``) must pay for the
noise's eigenvalues with a ``lam`` above the bulk edge, which also flattens the signal.
``tau = 0.9`` and ``c = 0.1`` were chosen on ml-100k's validation split and hold on
ml-1m's (docs/GRAM_EASE.md). Without privacy the rows are not normalized and ``lam`` is
the EASE baseline's, so the result *is* EASE.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
SQRT2 = math.sqrt(2.0)
MAX_GRAM_ITEMS = 5000
"""Default catalog limit: 5,000 items is 12.5 M floats (50 MB) uploaded per device."""
DENOISERS = ("spectral", "none")


@dataclass(frozen=True)
class GramConfig:
    """Settings of federated EASE.

    Attributes
    ----------
    ease_lambda
        Non-private ``lam`` (the EASE baseline's reference value).
    denoise
        Private post-processing: ``"spectral"`` (eigenvalue thresholding, then EASE with
        ``lam = c * noise_scale``) or ``"none"`` (ridge only, ``lam = a * mean(diag(G_hat))
        + b * noise_scale``).
    tau, lambda_c
        The spectral method's threshold (in units of ``noise_scale``) and ``lam`` factor.
    lambda_a, lambda_b
        The ridge-only rule (``denoise = "none"``).
    max_items
        Largest catalog accepted: each device uploads ``I (I + 1) / 2`` floats.
    """

    ease_lambda: float = 500.0
    denoise: str = "spectral"
    tau: float = 0.9
    lambda_c: float = 0.1
    lambda_a: float = 15.0
    lambda_b: float = 6.0
    max_items: int = MAX_GRAM_ITEMS

    def __post_init__(self) -> None:
        if self.denoise not in DENOISERS:
            raise ConfigError(
                f"unknown denoiser {self.denoise!r}", where="ease.denoise", fix="use spectral|none"
            )
        if not (self.tau > 0 and self.lambda_c > 0):
            raise ConfigError(
                f"need ease.tau > 0 and ease.c > 0, got {self.tau}, {self.lambda_c}",
                where="ease",
                fix="use e.g. ease.tau=0.9, ease.c=0.1",
            )
        if not (self.ease_lambda > 0 and self.lambda_a >= 0 and self.lambda_b >= 0):
            raise ConfigError(
                f"need ease.lambda > 0 and ease.a, ease.b >= 0, got "
                f"{self.ease_lambda}, {self.lambda_a}, {self.lambda_b}",
                where="ease",
                fix="use e.g. ease.lambda=500, ease.a=15, ease.b=6",
            )
        if self.max_items < 1:
            raise ConfigError(f"must be >= 1, got {self.max_items}", where="ease.max-items")


def noise_scale(noise_multiplier: float, n_items: int) -> float:
    """Spectral edge ``2 (z / sqrt 2) sqrt(I)`` of the released symmetric noise."""
    return 2.0 * noise_multiplier / SQRT2 * math.sqrt(n_items)


def regularization(gram: F64, noise_multiplier: float | None, config: GramConfig) -> float:
    """``lam`` of the solve: the baseline's without noise, else the chosen denoiser's.

    ``"spectral"``: ``c * noise_scale``; ``"none"``: ``a mean(diag G) + b noise_scale``.
    """
    if noise_multiplier is None:
        return config.ease_lambda
    scale = noise_scale(noise_multiplier, len(gram))
    if config.denoise == "spectral":
        return max(config.lambda_c * scale, 1e-6)
    mean_diag = float(np.mean(np.diag(gram)))
    return max(config.lambda_a * mean_diag + config.lambda_b * scale, 1e-6)


def spectral_denoise(gram: F64, noise_multiplier: float, tau: float) -> tuple[F64, F64]:
    """Eigenpairs ``(w_k, V_k)`` of the released ``G_hat`` above ``tau * noise_scale``.

    Analyze Gauss (Dwork, Talwar, Thakurta & Zhang, STOC 2014) releases ``G + E`` and
    reads the signal off its top eigenspace; ``E``'s eigenvalues fill the semicircle
    ``[-noise_scale, noise_scale]`` (Wigner), so eigenpairs inside it are mostly noise.
    The top eigenpair is always kept (the popularity direction). Post-processing only.
    """
    import torch  # here: reading a released B (serving) needs no torch

    w, v = torch.linalg.eigh(torch.from_numpy(np.asarray(gram, dtype=np.float64)))
    keep = w > tau * noise_scale(noise_multiplier, len(gram))
    keep[-1] = True
    values: F64 = w[keep].numpy()
    vectors: F64 = v[:, keep].contiguous().numpy()
    return values, vectors


def ease_from_spectrum(values: F64, vectors: F64, lam: float) -> F32:
    """EASE's ``B`` for the low-rank ``G_k = V diag(w) V^T`` (Steck 2019), float32.

    ``P = (G_k + lam I)^-1 = I / lam + V diag(1 / (w + lam) - 1 / lam) V^T`` exactly
    (``V`` has orthonormal columns), so the cost is ``O(I^2 k)``, no inverse.
    """
    import torch

    v = torch.from_numpy(vectors)
    d = torch.from_numpy(1.0 / (values + lam) - 1.0 / lam)
    p = (v * d) @ v.T
    p.diagonal().add_(1.0 / lam)
    b = p.div_(-p.diagonal().clone().unsqueeze(0))
    b.diagonal().zero_()
    out: F32 = b.to(torch.float32).numpy()
    return out


def solve_release(
    gram: F64, noise_multiplier: float | None, config: GramConfig
) -> tuple[F32, float, int]:
    """``(B, lam, rank)`` from the (released) Gram matrix: what the server sends devices.

    Without noise: exact EASE (``rank = I``). Private: the configured denoiser, then
    EASE; ``rank`` is the number of eigenpairs kept (``I`` for ``denoise = "none"``).
    """
    lam = regularization(gram, noise_multiplier, config)
    if noise_multiplier is None or config.denoise == "none":
        return ease_from_gram(gram, lam), lam, len(gram)
    values, vectors = spectral_denoise(gram, noise_multiplier, config.tau)
    return ease_from_spectrum(values, vectors, lam), lam, len(values)


def ease_from_gram(gram: F64, lam: float) -> F32:
    """EASE's closed form (Steck 2019) from a (released) Gram matrix; float32 ``B``."""
    import torch

    g = torch.from_numpy(np.array(gram, dtype=np.float64))
    g.diagonal().add_(lam)
    p = torch.linalg.inv(g)  # LU, as fedrec.baselines.ease
    del g
    b = p.div_(-p.diagonal().clone().unsqueeze(0))
    b.diagonal().zero_()
    out: F32 = b.to(torch.float32).numpy()
    return out


__all__ = [
    "DENOISERS",
    "MAX_GRAM_ITEMS",
    "GramConfig",
    "ease_from_gram",
    "ease_from_spectrum",
    "noise_scale",
    "regularization",
    "solve_release",
    "spectral_denoise",
]
