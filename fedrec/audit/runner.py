"""The audit of one run: every attack its threat model allows, with their bounds.

Design rule: each attack targets what that mode's adversary sees. In ``none`` and
``local`` modes the server sees every upload: item inference scores the rows of one
client's (regenerated) update, and a canary test (Jagielski et al. 2020; Nasr et al.
2021) bounds epsilon for the privacy unit: one interaction ``c`` of a user, the
mechanism run once on ``D_u`` and once on ``D_u - {c}`` with fresh noise, the
statistic being the attack's score of row ``c``. In ``central`` mode the adversary
sees releases only: item inference reads the noisy mean of a cohort holding the
user, and the user-level canary test asks whether a release contains the user (who
joins with probability ``q``, as in the run), projecting the release onto the user's
clipped update (an adversary that knows the user's data and everyone else's
contribution: the DP adversary). Every mode also gets a membership test on the
released global model (train vs held-out interactions of the same users).
"""

from __future__ import annotations

import math
from collections.abc import Callable

import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import (
    FloatArray,
    alignment_scores,
    bias_change_scores,
    logistic_scores,
    roc_auc,
    row_features,
    row_norm_scores,
)
from fedrec.audit.lower_bound import epsilon_lower_bound
from fedrec.audit.membership import global_membership
from fedrec.audit.one_run import one_run_bound
from fedrec.audit.regenerate import (
    AuditTarget,
    central_release,
    client_update,
    clipped_direction,
    project,
)
from fedrec.audit.results import (
    AUDIT_ROUND,
    AttackResult,
    AuditOptions,
    Items,
    item_inference,
)
from fedrec.audit.sensitivity import Sensitivity, default_removals, sensitivity_audit
from fedrec.audit.shadow import popularity_proxy, shadow_profiles, train_row_classifier
from fedrec.federated.client import derive_seed
from fedrec.models.base import Arrays
from fedrec.models.registry import model_class
from fedrec.privacy.noise import secure_rng

ONE_RUN_CANARIES_PER_USER = 10
"""Canary clients of the one-run audit per audited user (they cost no training)."""


def audit_uploads(
    target: AuditTarget, train: Items, eps_accounted: float | None, opts: AuditOptions
) -> list[AttackResult]:
    """Item inference and the interaction canary on uploads (modes ``none``, ``local``)."""
    rng = np.random.default_rng([opts.seed, 1])
    popularity = popularity_proxy(target.global_items)
    sizes = [int(k) for k in rng.choice([len(v) for v in train.values()], opts.shadow_clients)]
    weights = train_row_classifier(target, shadow_profiles(popularity, sizes, rng), seed=opts.seed)
    n = target.n_items
    attacks: dict[str, Callable[[Arrays], FloatArray]] = {
        "row_norm": lambda d: row_norm_scores(d, n),
        "alignment": lambda d: alignment_scores(d, n),
        "bias_change": lambda d: bias_change_scores(d, n),
        "shadow_classifier": lambda d: logistic_scores(weights, row_features(d, n, popularity)),
    }
    scored: dict[str, list[tuple[FloatArray, npt.NDArray[np.int64]]]] = {a: [] for a in attacks}
    canary: dict[str, tuple[list[float], list[float]]] = {a: ([], []) for a in attacks}
    for user, items in train.items():
        seed = derive_seed(opts.seed, user, AUDIT_ROUND)
        member = client_update(target, items, seed=seed)
        c = int(rng.choice(items))
        without = client_update(target, items[items != c], seed=seed)
        for name, attack in attacks.items():
            s = attack(member)
            scored[name].append((s, items))
            canary[name][0].append(float(s[c]))
            canary[name][1].append(float(attack(without)[c]))
    return [
        _upload_result(target, name, scored[name], canary[name], train, eps_accounted, opts)
        for name in attacks
    ]


def _item_is_unit(target: AuditTarget) -> bool:
    """Whether the model's local-DP unit is one interaction (MF), not the whole vector."""
    return model_class(target.model.kind).LOCAL_DP_UNIT == "interaction"


def _comparison(target: AuditTarget, train: Items) -> tuple[float | None, float]:
    """The epsilon and delta the canary test must respect (max over audited users)."""
    delta = target.privacy.delta or 1e-5
    eps = max((target.release_epsilon(len(v)) or 0.0 for v in train.values()), default=0.0)
    if target.mode == "none":
        return None, delta
    if not _item_is_unit(target):  # unit = whole vector: removing one item is a replacement
        return 2 * eps, (1 + math.exp(eps)) * delta
    return eps, delta


def _upload_result(
    target: AuditTarget,
    name: str,
    per_user: list[tuple[FloatArray, npt.NDArray[np.int64]]],
    canary: tuple[list[float], list[float]],
    train: Items,
    eps_accounted: float | None,
    opts: AuditOptions,
) -> AttackResult:
    auc, prec, scores, labels = item_inference(per_user)
    eps_release, delta = _comparison(target, train)
    bound = epsilon_lower_bound(
        canary[0],
        canary[1],
        delta=delta,
        rng=np.random.default_rng([opts.seed, 2]),
        alpha=opts.alpha,
    )
    return AttackResult(
        attack=f"item_inference/{name}",
        sees="one client's upload (regenerated)",
        auc=auc,
        precision_at_k=prec,
        clients_audited=len(per_user),
        epsilon_accounted=eps_accounted,
        epsilon_lower_bound=bound.epsilon,
        epsilon_release=eps_release,
        bound=bound,
        note="bound: canary test on one interaction (upload with vs without it)",
        scores=scores,
        labels=labels,
    )


def audit_releases(
    target: AuditTarget, train: Items, eps_accounted: float | None, opts: AuditOptions
) -> list[AttackResult]:
    """Item inference on a DP-FedAvg release, and the user-level canary (mode ``central``)."""
    rng = secure_rng()  # draws cohorts, inclusions and noise: the mechanism's secrets
    updates = {
        u: client_update(target, items, seed=derive_seed(opts.seed, u, AUDIT_ROUND))
        for u, items in train.items()
    }
    pool = list(updates.values())
    norm, align, bias = [], [], []
    members: list[float] = []
    nonmembers: list[float] = []
    for user, items in train.items():
        others = rng.binomial(target.n_clients - 1, target.sample_rate)
        cohort = [updates[user]] + [pool[i] for i in rng.integers(0, len(pool), others)]
        release = central_release(target, cohort, rng)
        norm.append((row_norm_scores(release, target.n_items), items))
        align.append((alignment_scores(release, target.n_items), items))
        bias.append((bias_change_scores(release, target.n_items), items))
        direction = clipped_direction(target, updates[user])
        for _ in range(opts.release_trials):
            joined = bool(rng.random() < target.sample_rate)
            members.append(
                project(central_release(target, [updates[user]] if joined else [], rng), direction)
            )
            nonmembers.append(project(central_release(target, [], rng), direction))
    eps_release = target.release_epsilon(0)
    bound = epsilon_lower_bound(
        members, nonmembers, delta=target.privacy.delta or 1e-5,
        rng=np.random.default_rng([opts.seed, 3]), alpha=opts.alpha,
    )  # fmt: skip
    out = []
    for name, per_user in (("row_norm", norm), ("alignment", align), ("bias_change", bias)):
        auc, prec, scores, labels = item_inference(per_user)
        out.append(AttackResult(
            attack=f"item_inference_release/{name}", sees="one DP-FedAvg release holding the user",
            auc=auc, precision_at_k=prec, clients_audited=len(per_user),
            epsilon_accounted=eps_accounted, scores=scores, labels=labels,
            note="the user's items are not the central unit: no bound",
        ))  # fmt: skip
    canaries = ONE_RUN_CANARIES_PER_USER * len(train)
    out.append(one_run_membership(target, canaries, eps_accounted, eps_release, opts, rng))
    labels = np.array([True] * len(members) + [False] * len(nonmembers))
    scores = np.array(members + nonmembers)
    out.append(AttackResult(
        attack="user_membership_release", sees="one DP-FedAvg release (user joins w.p. q)",
        auc=roc_auc(scores, labels), precision_at_k=None, clients_audited=len(train),
        epsilon_accounted=eps_accounted, epsilon_lower_bound=bound.epsilon,
        epsilon_release=eps_release, bound=bound, scores=scores, labels=labels,
        note="bound: user-level canary, adversary knows the user's update and everyone else's",
    ))  # fmt: skip
    return out


def one_run_membership(
    target: AuditTarget,
    n_canaries: int,
    eps_accounted: float | None,
    eps_release: float | None,
    opts: AuditOptions,
    rng: np.random.Generator,
) -> AttackResult:
    """Membership of canary clients in ONE release (Steinke, Nasr & Jagielski, NeurIPS 2023).

    Canary clients as in Andrew et al. (ICLR 2024): each update is a random direction
    (public, seeded) ten times the clip norm, so the mechanism clips it to exactly ``S``,
    and random directions are nearly orthogonal in many dimensions. Each canary is
    included with probability 1/2 (then, as in the run, Poisson-sampled with ``q``);
    the run's mechanism releases once; each canary is scored by projecting the release
    onto its own clipped direction.
    """
    gen = np.random.default_rng([opts.seed, 4])
    canaries: list[Arrays] = []
    for _ in range(n_canaries):
        raw = [gen.standard_normal(g.shape) for g in target.global_items]
        norm = float(np.sqrt(sum(float(np.sum(a**2)) for a in raw)))
        canaries.append(
            [(a * (10 * target.privacy.clip_norm / norm)).astype(np.float32) for a in raw]
        )
    coins = rng.random(n_canaries) < 0.5
    joined = [c for c, inside in zip(canaries, coins, strict=True) if inside]
    joined = [c for c in joined if rng.random() < target.sample_rate]
    release = central_release(target, joined, rng)
    scores = np.array([project(release, clipped_direction(target, c)) for c in canaries])
    bound = one_run_bound(scores, coins, delta=target.privacy.delta or 1e-5, beta=opts.alpha)
    return AttackResult(
        attack="one_run/canary_membership_release", sees="one DP-FedAvg release of m canaries",
        auc=roc_auc(scores, coins), precision_at_k=None, clients_audited=n_canaries,
        epsilon_accounted=eps_accounted, epsilon_lower_bound=bound.epsilon,
        epsilon_release=eps_release, scores=scores, labels=coins,
        note=f"one-run audit: {bound.canaries} canary clients, {bound.guesses} guesses, "
        f"{bound.correct} correct, bound at confidence {1 - bound.beta:g}",
    )  # fmt: skip


def popularity_prior(
    target: AuditTarget, train: Items, eps_accounted: float | None
) -> AttackResult:
    """The attacker's prior: items ranked by the public popularity proxy, no upload used.

    An attack on uploads or releases leaks only what it adds above this AUC.
    """
    scores = popularity_proxy(target.global_items)
    auc, prec, pooled, labels = item_inference([(scores, items) for items in train.values()])
    return AttackResult(
        attack="item_inference/popularity_prior",
        sees="the global model only (reference: no upload)",
        auc=auc,
        precision_at_k=prec,
        clients_audited=len(train),
        epsilon_accounted=eps_accounted,
        note="reference: what public popularity alone predicts",
        scores=pooled,
        labels=labels,
    )


def unit_sensitivity(
    target: AuditTarget, train: Items, opts: AuditOptions, *, removals: int = 16
) -> Sensitivity | None:
    """Local-DP MF: the sensitivity audit (:mod:`fedrec.audit.sensitivity`) of the
    audited user with the most interactions, on the run's global items (``None``
    in other modes and models, whose unit is the whole device or user)."""
    if target.mode != "local" or not _item_is_unit(target) or not train:
        return None
    user = max(train, key=lambda u: (len(train[u]), -u))
    items = train[user]
    if len(items) < 2:
        return None
    return sensitivity_audit(
        target.model,
        target.global_items,
        None,
        items,
        clip_norm=target.privacy.clip_norm,
        seed=derive_seed(opts.seed, user, AUDIT_ROUND),
        removals=default_removals(len(items), removals),
    )


def audit_run(
    target: AuditTarget,
    train: Items,
    test: Items,
    *,
    eps_accounted: float | None,
    opts: AuditOptions,
) -> list[AttackResult]:
    """Every attack of the run's threat model (see the module docstring)."""
    if target.mode == "central":
        results = audit_releases(target, train, eps_accounted, opts)
    else:
        results = audit_uploads(target, train, eps_accounted, opts)
    results.append(popularity_prior(target, train, eps_accounted))
    results.append(global_membership(target, train, test, eps_accounted=eps_accounted, opts=opts))
    return results
