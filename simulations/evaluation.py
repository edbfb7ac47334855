"""The experimenter's measurement of a simulation: the harness scores its own devices.

Design rule: evaluation is not part of the federated protocol. ``fedrec simulate``
owns its simulated devices (:mod:`clients.sim_store`: one
:class:`~clients.device.DeviceClient` store per user), so after a round it opens each
evaluated user's store *in the harness process* and ranks the catalog with
:meth:`~clients.device.DeviceClient.evaluate_round` and that round's global item
arrays. No evaluate message is sent: per-user metrics and top-10 lists never cross
the Flower boundary, and the beyond-accuracy metrics (coverage, novelty, Gini,
diversity), which need the lists, exist only here. Users, seeds and the refit are the
ones the evaluate handler used (a seeded sample of test users, every test user at the
end; ``derive_seed(seed, user, EVAL_ROUND)``), so the numbers equal those of the
Flower-free reference loop (:func:`fedrec.federated.loop.evaluate_federated`). A user
never sampled for training has no store: the harness scores what its fresh device
would hold (its train items, no user state) without creating one, so a run directory
keeps the stores of trained users only (105k users, 340k items: the final evaluation
alone created 11k stores, 356 MB).

A deployment has no such harness; there the server may only ask for a DP aggregate
(:mod:`fedrec.metrics.private`, :mod:`server.server_app`).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from typing import Any

import numpy as np
import numpy.typing as npt
import torch

from clients.device_round import RoundConfig
from clients.sim_store import device_path, open_device
from fedrec.data.sequences import user_train_items
from fedrec.data.split import Split
from fedrec.errors import StoreError
from fedrec.federated.client import UserState, client_evaluate, derive_seed
from fedrec.federated.gram import score_user
from fedrec.federated.loop import EVAL_ROUND
from fedrec.metrics import aggregate
from fedrec.metrics.evaluate import ScoreFn, evaluate_scores, evaluate_user
from fedrec.models.base import Arrays
from fedrec.models.registry import model_class
from fedrec.training import ials, lightgcn_fast, mf_fast
from fedrec.training.threads import single_threaded
from server.gram_app import GramEvaluator
from server.sampling import eval_sample
from server.server_app import Evaluator
from server.settings import RunSettings, load_split

log = logging.getLogger("fedrec.simulation")


BATCH_USERS = 128  # users scored together (their scores: BATCH_USERS x n_items floats)


UserVector = Callable[..., npt.NDArray[np.float32]]
"""``(model_cfg, train_cfg, floats, user_state, train_items, *, seed) -> v_u`` (``[d]`` or
``[1, d]``): the vector a device scores ``v_u Q^T + b`` with."""


def _refit_scorer(
    user_vector: UserVector,
    settings: RunSettings,
    split: Split,
    floats: list[npt.NDArray[np.float32]],
    states: dict[int, UserState],
) -> ScoreFn:
    """Each user's vector as its device computes it (``user_vector``, one user at a time,
    cheap), then one ``V Q^T + b`` per batch of users."""
    q, b = floats[0], floats[1].reshape(1, -1)

    def scores(users: npt.NDArray[np.int64]) -> torch.Tensor:
        v = np.stack(
            [
                user_vector(
                    settings.model,
                    settings.train,
                    floats,
                    states.get(int(u)),
                    np.unique(split.train_items(int(u))),
                    seed=derive_seed(settings.seed, int(u), EVAL_ROUND),
                ).reshape(-1)
                for u in users
            ]
        )
        out = v @ q.T  # NumPy's BLAS: on one thread about twice torch's speed here
        out += b
        return torch.from_numpy(out)

    return scores


def _mf_scorer(
    settings: RunSettings,
    split: Split,
    floats: list[npt.NDArray[np.float32]],
    states: dict[int, UserState],
) -> ScoreFn:
    """MF: each user's vector refitted as its device would (:func:`mf_fast.refit`)."""
    return _refit_scorer(mf_fast.refit, settings, split, floats, states)


def _ials_scorer(settings: RunSettings, split: Split, floats: Arrays) -> ScoreFn:
    """iALS: each user's closed-form vector (:func:`fedrec.training.ials.solve_user`, the
    Gramian computed once), then one ``Q P^T`` per batch of users (float64, as a device)."""
    q64 = np.asarray(floats[0], dtype=np.float64)
    gram = ials.gramian(q64)
    cfg = settings.model

    def scores(users: npt.NDArray[np.int64]) -> torch.Tensor:
        p = np.stack(
            [
                ials.solve_user(
                    q64,
                    np.unique(split.train_items(int(u))),
                    alpha0=cfg.alpha0,
                    lam=cfg.l2,
                    gram=gram,
                )
                for u in users
            ]
        )
        return torch.from_numpy((p @ q64.T).astype(np.float32))

    return scores


def _lightgcn_scorer(
    settings: RunSettings,
    split: Split,
    floats: list[npt.NDArray[np.float32]],
    states: dict[int, UserState],
) -> ScoreFn:
    """LightGCN: each user's ``e_u = (p_u + m_u) / 2`` as its device computes it
    (:func:`fedrec.training.lightgcn_fast.user_vector`: ``p_u`` refitted, the message over
    its train items)."""
    return _refit_scorer(lightgcn_fast.user_vector, settings, split, floats, states)


def batched_kind(settings: RunSettings) -> bool:
    """Whether the harness scores ``settings``' model in batches of users: MF on its fast
    path, iALS and LightGCN (whose devices always score on the fast path), whose user
    vectors come from the item arrays, the user's train items and (MF, LightGCN) its
    stored vector. Other models are scored one device at a time."""
    kind = settings.model.kind
    return kind in ("ials", "lightgcn") or (
        kind == "mf" and mf_fast.supports(settings.model, settings.train)
    )


def device_evaluator(settings: RunSettings) -> Evaluator:
    """The harness's evaluator for ``settings`` (absolute run dir): score stores directly.

    The returned callable ``(items, round, every_user)`` evaluates the seeded sample of
    ``settings.eval_clients`` test users of that round (every test user when
    ``every_user``) and returns the uniform averages with the beyond-accuracy metrics
    (``None`` values dropped), or ``None`` when nobody could be evaluated. Users of the
    TEST-ONLY ``fail_users`` switch are dead devices: left out, as their replies were.

    MF, iALS and LightGCN (:func:`batched_kind`) are ranked :data:`BATCH_USERS` users at a time
    (:func:`fedrec.metrics.evaluate.evaluate_scores`: the same ranking code, never a
    users x items matrix); each user's vector is the one its device's
    :meth:`~clients.device.DeviceClient.evaluate_round` would compute, so the metrics
    are the per-device ones up to float rounding of the batched product (tested).
    """
    split = load_split(settings)
    store_dir = str(settings.client_config()["store-dir"])
    durable = settings.privacy.mode == "local"  # the ClientApp opens the stores alike
    dead = set(settings.fail_users)

    def stored_states(users: list[int], rnd: int) -> tuple[dict[int, UserState], set[int]]:
        """Stored user states (MF, LightGCN) of the sampled users with a store; users left out."""
        states: dict[int, UserState] = {}
        missing: set[int] = set()
        for user in users:
            if not device_path(store_dir, user).exists():
                continue
            try:
                device = open_device(
                    store_dir,
                    user,
                    user_train_items(split, user, ordered=False),
                    seed=settings.seed,
                    durable=durable,
                )
            except StoreError as err:  # e.g. a straggling client still holds it
                log.warning("evaluation round %d: user %d not evaluated (%s)", rnd, user, err)
                missing.add(user)
                continue
            with device:
                state = device.evaluation_state(rnd)
            if state is not None:
                states[user] = state
        return states, missing

    def batched(
        floats: list[npt.NDArray[np.float32]], rnd: int, users: list[int]
    ) -> dict[str, Any] | None:
        if settings.model.kind == "ials":
            scorer = _ials_scorer(settings, split, floats)
        else:
            states, missing = stored_states(users, rnd)
            users = [u for u in users if u not in missing]
            build = _lightgcn_scorer if settings.model.kind == "lightgcn" else _mf_scorer
            scorer = build(settings, split, floats, states)
        if not users:
            return None
        summary = evaluate_scores(
            scorer,
            split,
            users=np.asarray(users, dtype=np.int64),
            batch_size=BATCH_USERS,
            device="cpu",
        )
        return {k: v for k, v in summary.items() if v is not None}

    def evaluate(items: Arrays, rnd: int, every_user: bool) -> dict[str, Any] | None:
        n = 0 if every_user else settings.eval_clients
        ordered = model_class(settings.model.kind).ORDERED  # a sequential model: time order
        users = eval_sample(split.test_users(), n, rnd, settings.seed)
        alive = [u for u in sorted(int(u) for u in users) if u not in dead]
        per_user: list[dict[str, float]] = []
        tops: list[npt.NDArray[np.int64]] = []
        floats = [np.ascontiguousarray(a, dtype=np.float32) for a in items]  # as a device
        with single_threaded():  # as on a device (and in the reference loop)
            if batched_kind(settings):
                scored = batched(floats, rnd, alive)
                evaluated = 0 if scored is None else int(scored["users_evaluated"])
                if evaluated < len(users):
                    log.warning(
                        "evaluation round %d: %d devices left out", rnd, len(users) - evaluated
                    )
                return scored
            for user in alive:
                config = RoundConfig(
                    model=settings.model,
                    train=settings.train,
                    round=rnd,
                    seed=derive_seed(settings.seed, user, EVAL_ROUND),
                )
                train_items = user_train_items(split, user, ordered=ordered)
                if not device_path(store_dir, user).exists():
                    # never sampled: its device would be created holding its train items
                    # (in time order for a sequential model) and no user state; score
                    # exactly that, without writing a store
                    metrics, top = client_evaluate(
                        settings.model,
                        settings.train,
                        floats,
                        None,
                        train_items if ordered else np.unique(train_items),
                        split.test_items(user),
                        seed=config.seed,
                    )
                    per_user.append(metrics)
                    tops.append(np.asarray(top, dtype=np.int64))
                    continue
                try:
                    device = open_device(
                        store_dir, user, train_items, seed=settings.seed, durable=durable
                    )
                except StoreError as err:  # e.g. a straggling client still holds it
                    log.warning("evaluation round %d: user %d not evaluated (%s)", rnd, user, err)
                    continue
                with device:
                    result = device.evaluate_round(
                        items, config, [int(i) for i in split.test_items(user)]
                    )
                per_user.append(result.metrics)
                tops.append(np.asarray(result.top10, dtype=np.int64))
        skipped = len(users) - len(per_user)
        if skipped:
            log.warning("evaluation round %d: %d devices left out", rnd, skipped)
        if not per_user:
            return None
        summary = aggregate(per_user, tops, split)
        return {k: v for k, v in summary.items() if v is not None}

    return evaluate


def gram_evaluator(settings: RunSettings) -> GramEvaluator:
    """The harness's measurement of federated EASE's weights ``B`` (every test user).

    Each user ranks ``x_u B`` (:func:`fedrec.federated.gram.score_user`) over all items
    but its train items, as a device holding ``B`` would; averages as above.
    """
    split = load_split(settings)
    dead = set(settings.fail_users)

    def evaluate(weights: Any) -> dict[str, Any] | None:
        b = np.asarray(weights, dtype=np.float32)
        per_user: list[dict[str, float]] = []
        tops: list[npt.NDArray[np.int64]] = []
        for user in sorted(int(u) for u in split.test_users()):
            if user in dead:
                continue
            train_items = split.train_items(user)
            scores = torch.from_numpy(score_user(b, train_items))
            metrics, top = evaluate_user(scores, train_items, split.test_items(user))
            per_user.append(metrics)
            tops.append(np.asarray(top, dtype=np.int64))
        if not per_user:
            return None
        summary = aggregate(per_user, tops, split)
        return {k: v for k, v in summary.items() if v is not None}

    return evaluate


__all__ = ["BATCH_USERS", "batched_kind", "device_evaluator", "gram_evaluator"]
