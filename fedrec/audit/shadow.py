"""Shadow clients: users the attacker simulates itself to calibrate its attacks.

Design rule: the attacker only uses what it legitimately holds: the released global
item arrays, the run's public settings and the public number of items per user (in
local mode ``n`` is public: it sets the device's sampling rate). It draws synthetic
users whose items follow a popularity proxy read off the global model, runs the same
client code on them (:func:`fedrec.audit.regenerate.client_update`), and, knowing
their ground truth, fits the row classifier of :mod:`fedrec.audit.attacks` (shadow
models of Shokri et al., S&P 2017, applied to FL uploads as in Nasr, Shokri &
Houmansadr, S&P 2019).
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import FloatArray, fit_logistic, item_rows, row_features
from fedrec.audit.regenerate import AuditTarget, client_update
from fedrec.federated.client import derive_seed
from fedrec.models.base import Arrays

SHADOW_SEED_TAG = 0x5AD0
"""Mixed into shadow clients' seeds so they never reuse a real user's seed."""


def popularity_proxy(global_items: Arrays) -> FloatArray:
    """A public per-item popularity signal: the global item biases (MF ``b``, decoder bias).

    Trained items get positive-label gradient, so a learned bias grows with an item's
    popularity. Falls back to the norms of the item rows when the model has no bias.
    """
    n_items = int(global_items[0].shape[0])
    rows, _ = item_rows(global_items, n_items)
    for a in global_items:
        flat = np.asarray(a, np.float64)
        if flat.shape in ((n_items,), (n_items, 1)) and np.any(flat):
            return flat.reshape(n_items)
    return np.asarray(np.sqrt(np.sum(rows**2, axis=1)), dtype=np.float64)


def shadow_profiles(
    popularity: FloatArray, sizes: Sequence[int], rng: np.random.Generator
) -> list[npt.NDArray[np.int64]]:
    """One synthetic user per size: items drawn without replacement, ``p ~ exp(z-score)``."""
    z = (popularity - popularity.mean()) / (popularity.std() or 1.0)
    weights = np.exp(np.clip(z, -10, 10))
    p = weights / weights.sum()
    n_items = len(popularity)
    return [
        np.sort(rng.choice(n_items, size=min(int(k), n_items), replace=False, p=p)).astype(np.int64)
        for k in sizes
    ]


def train_row_classifier(
    target: AuditTarget,
    profiles: Sequence[npt.NDArray[np.int64]],
    *,
    seed: int,
) -> FloatArray:
    """Logistic-regression weights fitted on the shadow clients' regenerated updates."""
    popularity = popularity_proxy(target.global_items)
    xs, ys = [], []
    for j, items in enumerate(profiles):
        update = client_update(target, items, seed=derive_seed(seed, SHADOW_SEED_TAG, j))
        xs.append(row_features(update, target.n_items, popularity))
        label = np.zeros(target.n_items, dtype=bool)
        label[items] = True
        ys.append(label)
    return fit_logistic(np.concatenate(xs), np.concatenate(ys))
