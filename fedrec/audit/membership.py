"""Membership inference on the released global model: train vs held-out interactions.

Design rule: the adversary holds the final global item arrays and, for a user, a set
of candidate interactions (the user's train and held-out test items; the split is
uniformly random per user, so the two kinds are exchangeable *a priori*). It fits the
user vector on all candidates alike (Federated Reconstruction's refit,
:func:`fedrec.federated.client.client_scores`), scores each candidate with the
global model, standardizes the scores within the user, and calls a candidate a
member above a threshold chosen on *shadow users*: half of the audited users, whose
membership the adversary is assumed to know (Shokri et al., S&P 2017; Yeom et al.,
CSF 2018). Rates are measured on the other half.

Caveat on the bound: the trials come from one training run and are not independent,
and a member and a non-member of the same user differ by a *swap* of two interactions.
The epsilon it reports is indicative only (Steinke, Nasr & Jagielski, NeurIPS 2023
give the rigorous one-run analysis); the canary tests of :mod:`fedrec.audit.runner`
give the rigorous bounds.
"""

from __future__ import annotations

import numpy as np

from fedrec.audit.attacks import FloatArray, precision_at_k, roc_auc
from fedrec.audit.lower_bound import best_threshold, bound_at_threshold
from fedrec.audit.regenerate import AuditTarget
from fedrec.audit.results import AUDIT_ROUND, AttackResult, AuditOptions, Items
from fedrec.federated.client import client_scores, derive_seed


def candidate_scores(
    target: AuditTarget, user: int, train: Items, test: Items, *, seed: int
) -> tuple[FloatArray, FloatArray]:
    """Standardized global-model scores of the user's train and test candidates."""
    tr, te = train[user], test[user]
    candidates = np.concatenate([tr, te])
    scores = client_scores(
        target.model, target.train, target.global_items, None, candidates,
        seed=derive_seed(seed, user, AUDIT_ROUND),
    ).numpy().astype(np.float64)[candidates]  # fmt: skip
    z = (scores - scores.mean()) / (scores.std() or 1.0)
    return z[: len(tr)], z[len(tr) :]


def global_membership(
    target: AuditTarget,
    train: Items,
    test: Items,
    *,
    eps_accounted: float | None,
    opts: AuditOptions,
) -> AttackResult:
    """The shadow-calibrated threshold attack on (user, item) pairs (module docstring)."""
    users = [u for u in train if len(test.get(u, ())) > 0]
    order = np.random.default_rng([opts.seed, 4]).permutation(len(users))
    half = len(users) // 2
    shadow, attacked = [users[i] for i in order[:half]], [users[i] for i in order[half:]]
    pairs = {u: candidate_scores(target, u, train, test, seed=opts.seed) for u in users}
    delta = target.privacy.delta or 1e-5
    threshold = best_threshold(
        np.concatenate([pairs[u][0] for u in shadow]),
        np.concatenate([pairs[u][1] for u in shadow]),
        delta=delta,
        alpha=opts.alpha,
    )
    mem = np.concatenate([pairs[u][0] for u in attacked])
    non = np.concatenate([pairs[u][1] for u in attacked])
    bound = bound_at_threshold(mem, non, threshold, delta=delta, alpha=opts.alpha)
    precision = [
        precision_at_k(np.concatenate(pairs[u]), _labels(pairs[u]), len(pairs[u][0]))
        for u in attacked
    ]
    labels = np.concatenate([np.ones(len(mem), bool), np.zeros(len(non), bool)])
    scores = np.concatenate([mem, non])
    return AttackResult(
        attack="membership/global_model",
        sees="the released global model",
        auc=roc_auc(scores, labels),
        precision_at_k=float(np.mean(precision)),
        clients_audited=len(attacked),
        epsilon_accounted=eps_accounted,
        epsilon_lower_bound=bound.epsilon,
        bound=bound,
        note="indicative bound: one training run, dependent trials (see fedrec.audit.membership)",
        scores=scores,
        labels=labels,
    )


def _labels(pair: tuple[FloatArray, FloatArray]) -> np.ndarray:
    return np.concatenate([np.ones(len(pair[0]), bool), np.zeros(len(pair[1]), bool)])
