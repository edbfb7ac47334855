"""How many users per second full-ranking evaluation handles (Krichene & Rendle 2020).

Design rule: the figure is the throughput of :func:`fedrec.metrics.evaluate_scores`
alone (masking train items, ranking every item, metrics), not of the scorer: the MF
scores ``U @ V.T`` of every user are computed once, before the clock starts, and the
scorer only slices them. The split is a synthetic log of ml-1m's shape (6,040 users x
3,706 items) by default, so no MovieLens file is needed.
"""

from __future__ import annotations

import time

import numpy as np
import numpy.typing as npt
import torch

from fedrec.data import random_split, synthetic
from fedrec.metrics import evaluate_scores


def eval_users_per_s(
    n_users: int = 6040,
    n_items: int = 3706,
    *,
    dim: int = 32,
    mean_interactions: int = 165,
    repeats: int = 3,
    device: str = "cpu",
    seed: int = 0,
) -> dict[str, float]:
    """Users evaluated per second by full ranking of MF scores (best of ``repeats``).

    Parameters
    ----------
    n_users, n_items, mean_interactions
        Shape of the synthetic log (default: ml-1m's 6,040 x 3,706, ~165 per user).
    dim
        Rank of the random MF factors that make the scores.
    repeats
        Timed evaluations; the fastest is reported (the least disturbed by other load).
    device
        Where scores live and ranking runs.

    Returns
    -------
    dict
        ``users_per_s``, ``seconds`` (fastest pass), ``users`` (evaluated per pass),
        ``n_items``.
    """
    split = random_split(
        synthetic(n_users, n_items, mean_interactions=mean_interactions, seed=seed), seed=seed
    )
    gen = torch.Generator().manual_seed(seed)
    scores = torch.randn(n_users, dim, generator=gen) @ torch.randn(n_items, dim, generator=gen).T
    scores = scores.to(device)

    def score_fn(users: npt.NDArray[np.int64]) -> torch.Tensor:
        return scores[torch.from_numpy(users).to(device)]

    best, evaluated = float("inf"), 0
    for _ in range(max(1, repeats)):
        start = time.perf_counter()
        metrics = evaluate_scores(score_fn, split, device=device)
        if device.startswith("cuda"):
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
        evaluated = int(metrics["users_evaluated"] or 0)
    return {
        "users_per_s": evaluated / best,
        "seconds": best,
        "users": float(evaluated),
        "n_items": float(n_items),
    }
