"""EASE: embarrassingly shallow autoencoder, closed form.

Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019. The item-item
weights solve ``min_B ||X - X B||^2 + lambda ||B||^2`` subject to ``diag(B) = 0``:

    G = X^T X + lambda I,   P = G^{-1},   B_ij = -P_ij / P_jj,   B_jj = 0,

and a user's scores are ``x_u B``. ``G`` and ``P`` are inverted in float64 and ``B``
kept in float32. Memory is dense in the catalogue: about ``3 * 8 * n_items^2`` bytes
while fitting (``G``, its LU factors, ``P``) and ``4 * n_items^2`` after; 3.7k
items (ml-1m) need ~0.3 GB, 20k items ~10 GB, so beyond some tens of thousands of
items prune the catalogue first.
"""

from __future__ import annotations

from typing import Self

import numpy as np
import numpy.typing as npt
import scipy.sparse as sp
import torch

from fedrec.baselines.base import as_binary_csr, to_scores, user_rows
from fedrec.errors import ConfigError
from fedrec.training.device import current_device


def ease_weights(
    train: sp.csr_matrix, lam: float, device: torch.device | None = None
) -> torch.Tensor:
    """The EASE item-item matrix ``B`` (float32 ``[n_items, n_items]``, zero diagonal).

    Computed on ``device`` (default: the command's ``--device``,
    :func:`fedrec.training.device.current_device`) and left there.
    """
    x = sp.csr_matrix(as_binary_csr(train), dtype=np.float64)
    dev = current_device() if device is None else device
    gram = torch.from_numpy(np.asarray((x.T @ x).toarray(), dtype=np.float64)).to(dev)
    gram.diagonal().add_(lam)
    # LU inverse, as Steck's reference code; torch.cholesky_inverse is ~20x slower on CPU.
    p = torch.linalg.inv(gram)
    del gram
    b = p.div_(-p.diagonal().clone().unsqueeze(0))
    b.diagonal().zero_()
    return b.to(torch.float32)


class EASE:
    """EASE (Steck 2019) with L2 strength ``lam`` (see module doc).

    Parameters
    ----------
    lam
        Ridge penalty lambda (> 0); 500 is this project's reference value.
    """

    name = "ease"

    def __init__(self, lam: float = 500.0) -> None:
        if not lam > 0:
            raise ConfigError(
                f"EASE lambda must be > 0, got {lam}", where="--ease-lambda", fix="use e.g. 500"
            )
        self.lam = float(lam)
        self.train: sp.csr_matrix | None = None
        self.weights: torch.Tensor | None = None

    def fit(self, train: sp.csr_matrix) -> Self:
        self.train = as_binary_csr(train)
        self.weights = ease_weights(self.train, self.lam)
        return self

    def score(self, users: npt.NDArray[np.int64]) -> torch.Tensor:
        rows = user_rows(self.train, users, self.name)
        assert self.weights is not None
        if self.weights.device.type != "cpu":  # --device cuda: the product on the GPU
            return to_scores(rows.toarray()).to(self.weights.device) @ self.weights
        return to_scores(rows @ self.weights.numpy())
