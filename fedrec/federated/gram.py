"""One-shot federated EASE: every device uploads its Gram contribution, once.

EASE (Steck, "Embarrassingly Shallow Autoencoders for Sparse Data", WWW 2019) needs
only the item Gram matrix ``G = X^T X = sum_u x_u x_u^T``: its closed form
``P = (G + lam I)^-1, B = -P / diag(P), diag(B) = 0`` is a function of ``G`` alone. So
each device uploads ``x_u x_u^T`` (item side, no user state), the server sums, solves
once and sends ``B`` back; a device scores ``x_u B`` locally.

Design rules kept here:

- **What the server sees: each user's exact item set.** A contribution is the *packed
  upper triangle* (diagonal included, row-major, ``I (I + 1) / 2`` float32 values), a
  dense vector of the same length for every user, with off-diagonal entries multiplied
  by ``sqrt(2)``: an isometric packing, the vector's L2 norm equals the Frobenius norm of
  the matrix (:func:`unpack` undoes it). Dense does **not** hide the items: the upload
  is a deterministic function of the item set, and its diagonal names it. Without
  privacy the diagonal is ``x`` itself; in central mode it is ``x / |x|^2``, which also
  gives the count ``|x|^2`` (tested: ``tests/test_gram_upload_exposure.py``). Central
  mode therefore trusts the server with every user's full item set; only what the
  server *releases* is protected. Dense fixed-length vectors are kept because they sum
  coordinate-wise, which secure aggregation (issue 16) needs to hide the uploads.
- **User-level central DP** (the Gaussian mechanism on a Gram matrix with row
  normalization, as in Dwork, Talwar, Thakurta & Zhang, "Analyze Gauss", STOC 2014).
  A private device uploads ``x x^T / |x|^2``, whose Frobenius norm is exactly 1: the
  sensitivity of the sum to adding or removing one user is 1 with no clipping (the
  server still clips to 1 with :func:`fedrec.privacy.central.clip_update`). The server
  adds ``N(0, z^2)`` to every packed coordinate of the *sum* from a secret generator
  (:func:`fedrec.privacy.noise.secure_rng`); in matrix form the noise is symmetric,
  std ``z`` on the diagonal and ``z / sqrt(2)`` off it. That is one Gaussian mechanism
  with every user included (``q = 1``): history ``[[z, 1.0, 1]]``, its ``z`` calibrated
  with the tighter of Opacus's accountants (:mod:`fedrec.privacy.calibration`). EASE's
  solve, the regularization rule and the devices' scoring are post-processing. The
  guarantee holds against everyone who sees the release, not against the server.
- **Denoising before the solve** (post-processing; :mod:`fedrec.federated.gram_solve`):
  as in Analyze Gauss, keep the eigenpairs of the released matrix above the edge of the
  noise's Wigner semicircle, ``tau * 2 (z / sqrt 2) sqrt(I)``, and solve EASE on that
  low-rank matrix with a small ``lam``; ``tau``, ``lam`` chosen on validation splits.
- Local DP is refused: per-device noise on an ``I x I`` matrix is far too noisy.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING

import numpy as np
import numpy.typing as npt

from fedrec.errors import ConfigError
from fedrec.federated.gram_solve import (
    DENOISERS,
    MAX_GRAM_ITEMS,
    GramConfig,
    ease_from_gram,
    ease_from_spectrum,
    noise_scale,
    regularization,
    solve_release,
    spectral_denoise,
)

if TYPE_CHECKING:  # the privacy stack imports Opacus: only the release needs it, not serving
    from fedrec.privacy.accounting import Release
    from fedrec.privacy.calibration import OneShot

F32 = npt.NDArray[np.float32]
F64 = npt.NDArray[np.float64]
SQRT2 = math.sqrt(2.0)


def packed_size(n_items: int) -> int:
    """Length ``I (I + 1) / 2`` of a packed upper triangle."""
    return n_items * (n_items + 1) // 2


def check_catalog(n_items: int, max_items: int = MAX_GRAM_ITEMS) -> None:
    """Refuse a catalog whose per-device upload would be too large."""
    if n_items > max_items:
        mb = 4 * packed_size(n_items) / 1e6
        raise ConfigError(
            f"{n_items} items: federated EASE uploads I(I+1)/2 = {packed_size(n_items):,} "
            f"floats ({mb:,.0f} MB) per client, above the limit of {max_items} items",
            where="--model ease",
            fix="prune the catalog (e.g. --k-core), raise ease.max-items, or use --model mf",
        )


def check_privacy_mode(mode: str) -> None:
    """Refuse local DP: per-device noise on an ``I x I`` matrix drowns the signal."""
    if mode == "local":
        raise ConfigError(
            "local DP is not offered for federated EASE: each device would have to noise "
            "its own I x I Gram matrix, and the sum of all devices' noise is far too large",
            where="--privacy local --model ease",
            fix="use --privacy central (user-level, trusted server) or --privacy none",
        )


def _offsets(n_items: int) -> npt.NDArray[np.int64]:
    i = np.arange(n_items, dtype=np.int64)
    return i * n_items - i * (i - 1) // 2


def client_contribution(train_items: npt.ArrayLike, n_items: int, *, normalize: bool) -> F32:
    """A device's dense upload: the packed upper triangle of ``x x^T`` (float32).

    The upload names the user's items: its diagonal is ``x`` (``normalize=False``) or
    ``x / |x|^2`` (``normalize=True``), so whoever receives it learns the item set and
    its size. Only the noisy sum of all uploads is protected.

    Parameters
    ----------
    train_items
        Indices of the user's train items (duplicates ignored).
    n_items
        Catalog size ``I``; the result has length ``I (I + 1) / 2``.
    normalize
        Central DP: use ``x / |x|_2``, so the contribution's L2 (= Frobenius) norm is
        exactly 1, the mechanism's sensitivity. Off: plain counts (exact EASE).
    """
    items = np.unique(np.asarray(train_items, dtype=np.int64))
    out = np.zeros(packed_size(n_items), dtype=np.float32)
    if items.size == 0:
        return out
    a, b = np.triu_indices(items.size)
    rows, cols = items[a], items[b]
    value = 1.0 / items.size if normalize else 1.0
    out[_offsets(n_items)[rows] + cols - rows] = np.where(rows == cols, value, value * SQRT2)
    if normalize:  # float32 rounding must never take the norm above the sensitivity
        while float(np.linalg.norm(out.astype(np.float64))) > 1.0:
            out *= np.float32(1.0 - 2.0**-20)
    return out


class GramSum:
    """The server's running sum of contributions (float64); replies are dropped as added.

    Parameters
    ----------
    n_items
        Catalog size.
    clip
        Central DP: clip each contribution to L2 norm 1 (a no-op for honest devices).
    """

    def __init__(self, n_items: int, *, clip: bool) -> None:
        self.n_items, self.clip, self.count = n_items, clip, 0
        self.total = np.zeros(packed_size(n_items), dtype=np.float64)

    def add(self, upload: npt.NDArray[np.floating]) -> None:
        """Add one device's packed contribution (shape checked)."""
        if upload.shape != self.total.shape:
            raise ValueError(f"upload shape {upload.shape} != declared {self.total.shape}")
        from fedrec.privacy.central import clip_update

        self.total += clip_update([upload], 1.0)[0][0] if self.clip else upload
        self.count += 1


def release(total: F64, *, noise_multiplier: float, rng: np.random.Generator) -> F64:
    """The Gaussian mechanism: ``total + N(0, z^2)`` on every packed coordinate.

    ``rng`` must be secret (:func:`fedrec.privacy.noise.secure_rng`).
    """
    from fedrec.privacy.noise import gaussian

    return total + gaussian(total.shape, noise_multiplier, rng)


def unpack(packed: npt.NDArray[np.floating], n_items: int) -> F64:
    """The symmetric ``I x I`` matrix of a packed (isometric) upper triangle."""
    out = np.zeros((n_items, n_items), dtype=np.float64)
    out[np.triu_indices(n_items)] = packed
    diag = out.diagonal().copy()
    out /= SQRT2
    out += out.T
    np.fill_diagonal(out, diag)
    return out


def score_user(weights: F32, train_items: npt.ArrayLike) -> F32:
    """A device's scores ``x_u B`` (sum of ``B``'s rows of its train items)."""
    items = np.unique(np.asarray(train_items, dtype=np.int64))
    out: F32 = weights[items].sum(axis=0, dtype=np.float32)
    return out


def explain(
    weights: F32, history: npt.ArrayLike, items: npt.ArrayLike, *, top: int = 3
) -> list[list[tuple[int, float]]]:
    """Exact "because" citations of EASE recommendations (Steck 2019's linear scorer).

    The score of item ``j`` is ``s_j = sum_{i in H} B_ij`` (:func:`score_user`), so
    ``B_ij`` is at once ``i``'s contribution, its leave-one-out effect and its Shapley
    value: removing the cited set ``C`` lowers ``s_j`` by exactly ``sum_{i in C} B_ij``.
    Each item cites its history items with the ``top`` largest ``B_ij > 0`` (ties by
    lower index).
    """
    seen = np.unique(np.asarray(history, dtype=np.int64))
    out: list[list[tuple[int, float]]] = []
    for j in np.asarray(items, dtype=np.int64).reshape(-1):
        row = weights[seen, j].astype(np.float64)
        order = np.lexsort((seen, -row))[: max(top, 0)]
        out.append([(int(seen[r]), float(row[r])) for r in order if row[r] > 0])
    return out


def similar_items(weights: F32, item: int, *, k: int = 10) -> list[tuple[int, float]]:
    """The ``k`` items with the largest ``B[item, j]``, ``j != item``, best first.

    Row ``item`` of ``B`` is the score vector of a user whose history is ``{item}``:
    the items EASE recommends on the strength of ``item`` alone (ties by lower index).
    """
    if not 0 <= item < len(weights):
        raise ValueError(f"item must be an index in [0, {len(weights)})")
    row = weights[item].astype(np.float64)
    order = np.lexsort((np.arange(len(row)), -row))
    return [(int(j), float(row[j])) for j in order[order != item][: max(k, 0)]]


def gram_calibration(
    delta: float, *, target_epsilon: float | None = None, noise_multiplier: float | None = None
) -> OneShot:
    """The Gram release's ``z`` and accountant: one Gaussian release, every user (``q = 1``).

    Exactly one of ``target_epsilon`` (``z`` calibrated with the accountant needing the
    least noise) and ``noise_multiplier`` (the accountant certifying the smaller epsilon
    is chosen); see :mod:`fedrec.privacy.calibration`.
    """
    if (target_epsilon is None) == (noise_multiplier is None):
        raise ConfigError(
            "give exactly one of target_epsilon and noise_multiplier",
            where="gram_calibration",
            fix="pass --target-epsilon E to calibrate, or --noise-multiplier Z",
        )
    from fedrec.privacy.calibration import calibrate_one_shot, one_shot_epsilon

    if target_epsilon is not None:
        return calibrate_one_shot(float(target_epsilon), float(delta))
    assert noise_multiplier is not None
    return one_shot_epsilon(float(noise_multiplier), float(delta))


def gram_release(noise_multiplier: float) -> Release:
    """What the release spends: ``(z, 1.0, 1)``."""
    from fedrec.privacy.central import central_release

    return central_release(noise_multiplier, 1.0)


__all__ = [
    "DENOISERS",
    "MAX_GRAM_ITEMS",
    "GramConfig",
    "GramSum",
    "check_catalog",
    "check_privacy_mode",
    "client_contribution",
    "ease_from_gram",
    "ease_from_spectrum",
    "explain",
    "gram_calibration",
    "gram_release",
    "noise_scale",
    "packed_size",
    "regularization",
    "release",
    "score_user",
    "similar_items",
    "solve_release",
    "spectral_denoise",
    "unpack",
]
