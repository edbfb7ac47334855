"""A Flower-free reference federated loop: the ground truth the Flower apps match.

Design rule: the loop only wires the pure functions the Flower apps also call:
:func:`~fedrec.federated.aggregation.sample_clients` picks a Poisson cohort,
:func:`~fedrec.federated.client.client_fit` runs on each sampled user with the seed
``derive_seed(seed, user, round)``, the server optimizer aggregates, and user states
stay in a dict standing in for the devices' local stores. Evaluation follows the
protocol's federated rule: each user ranks with its own (refitted) state and the global
items, and the metrics are averaged uniformly over users.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field

import numpy as np
import numpy.typing as npt

from fedrec.data.sequences import user_train_items
from fedrec.data.split import Split
from fedrec.federated.aggregation import ServerConfig, build_server_optimizer, sample_clients
from fedrec.federated.client import UserState, client_evaluate, client_fit, derive_seed
from fedrec.federated.private import LocalPrivacy, PrivateFit, private_round
from fedrec.federated.seeds import EVAL_ROUND as EVAL_ROUND
from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.registry import init_item_arrays
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.central import DPFedAvg
from fedrec.privacy.ledger import MemoryLedgerStore, PrivacyLedger
from fedrec.training.threads import single_threaded


@dataclass
class FederatedResult:
    """Final global items, device states, per-round history and final metrics."""

    item_arrays: Arrays
    user_states: dict[int, UserState]
    history: list[dict[str, float]] = field(default_factory=list)
    metrics: dict[str, float | int | None] = field(default_factory=dict)
    ledgers: dict[int, PrivacyLedger] = field(default_factory=dict)
    """Local DP: each device's ledger (in memory: the stand-in of its durable store)."""

    @property
    def accounts(self) -> dict[int, PrivacyAccount]:
        """Local DP: each device's composed releases."""
        return {user: ledger.account for user, ledger in self.ledgers.items()}


def evaluate_federated(
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    item_arrays: Arrays,
    user_states: dict[int, UserState],
    *,
    seed: int,
    users: npt.NDArray[np.int64] | None = None,
) -> dict[str, float | int | None]:
    """Every test user evaluates on its device; metrics averaged uniformly over users."""
    from fedrec.metrics.evaluate import aggregate

    chosen = split.test_users() if users is None else users
    ordered = _reads_order(model_cfg)
    per_user, tops = [], []
    for u in chosen:
        metrics, top = client_evaluate(
            model_cfg,
            train_cfg,
            item_arrays,
            user_states.get(int(u)),
            user_train_items(split, int(u), ordered=ordered),
            split.test_items(int(u)),
            seed=derive_seed(seed, int(u), EVAL_ROUND),
        )
        per_user.append(metrics)
        tops.append(top)
    return aggregate(per_user, tops, split)


def run_federated(
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    server_cfg: ServerConfig,
    *,
    rounds: int,
    clients_per_round: int,
    seed: int,
    eval_every: int = 0,
    on_round: Callable[[dict[str, float]], None] | None = None,
    central: DPFedAvg | None = None,
    noise_rng: np.random.Generator | None = None,
    local_dp: LocalPrivacy | None = None,
) -> FederatedResult:
    """Run ``rounds`` rounds in process and evaluate the final model.

    Parameters
    ----------
    clients_per_round
        Expected cohort size ``K``; each user with train items joins with ``q = K / N``.
    eval_every
        Also evaluate every this many rounds (0 = only at the end); adds ``ndcg@10``
        to the round's history entry.
    on_round
        Called with each round's history entry (progress bars, logging).
    central, noise_rng
        User-level DP-FedAvg (:class:`fedrec.privacy.central.DPFedAvg`, over the users
        with train items) with its secret generator: the cohort, the clipping, the
        noise and the accounting are the mechanism's, exactly as in the Flower wrapper.
    local_dp
        Local DP-SGD on every device with the devices' own private round
        (:func:`fedrec.federated.private.private_round`) over one in-memory ledger per
        device in ``result.ledgers``; a device whose round would exceed
        ``local_dp.epsilon_budget`` does not train (counted in the round's
        ``refused``). No training loss is reported.
    """
    eligible = np.flatnonzero(np.diff(split.train.indptr) > 0).astype(np.int64)
    ordered = _reads_order(model_cfg)
    items = init_item_arrays(model_cfg, split.n_items, seed=seed)
    server = build_server_optimizer(server_cfg, rounds)
    states: dict[int, UserState] = {}
    result = FederatedResult(items, states)
    with single_threaded():  # many tiny models: thread start-up costs more than it saves
        for rnd in range(rounds):
            start = time.perf_counter()
            if central is not None:
                assert noise_rng is not None, "central DP needs a secret noise_rng"
                cohort = eligible[central.sample(noise_rng)]
            else:
                cohort = eligible[sample_clients(len(eligible), clients_per_round, rnd, seed)]
            uploads, weights, losses = [], [], []
            refused = 0
            round_model = model_cfg.at_round(rnd + 1)  # Mult-VAE's annealed KL weight
            for u in cohort:
                if local_dp is not None:
                    private = _fit_private(
                        local_dp, result.ledgers, split, round_model, train_cfg, items, states,
                        int(u), round=rnd + 1, seed=derive_seed(seed, int(u), rnd),
                    )  # fmt: skip
                    if private is None:
                        refused += 1
                        continue
                    states[int(u)] = private.user_state
                    uploads.append(private.item_arrays)
                    weights.append(float(len(split.train_items(int(u)))))
                    continue
                fit = client_fit(
                    round_model,
                    train_cfg,
                    items,
                    states.get(int(u)),
                    user_train_items(split, int(u), ordered=ordered),
                    seed=derive_seed(seed, int(u), rnd),
                )
                states[int(u)] = fit.user_state
                uploads.append(fit.item_arrays)
                weights.append(float(fit.num_examples))
                losses.append(fit.train_loss)
            if central is not None:
                assert noise_rng is not None
                noisy = central.aggregate(items, uploads, noise_rng)
                items = server.step(items, [[g + d for g, d in zip(items, noisy, strict=True)]])
            else:
                items = server.step(items, uploads, weights if server_cfg.weighted else None)
            entry = {
                "round": float(rnd),
                "clients": float(len(cohort)),
                "train_loss": float(np.mean(losses)) if losses else float("nan"),
                "seconds": time.perf_counter() - start,
            }
            if local_dp is not None:
                entry["refused"] = float(refused)
                entry["epsilon_max"] = max(
                    (led.spent().epsilon for led in result.ledgers.values()), default=0.0
                )
            if eval_every and (rnd + 1) % eval_every == 0 and rnd + 1 < rounds:
                m = evaluate_federated(split, model_cfg, train_cfg, items, states, seed=seed)
                entry["ndcg@10"] = float(m["ndcg@10"] or 0.0)
            result.history.append(entry)
            if on_round is not None:
                on_round(entry)
        result.item_arrays = items
        result.metrics = evaluate_federated(split, model_cfg, train_cfg, items, states, seed=seed)
    return result


def _fit_private(
    privacy: LocalPrivacy,
    ledgers: dict[int, PrivacyLedger],
    split: Split,
    model_cfg: ModelConfig,
    train_cfg: LocalTrainConfig,
    items: Arrays,
    states: dict[int, UserState],
    user: int,
    *,
    round: int,
    seed: int,
) -> PrivateFit | None:
    """A device's private round (``None``: refused at its budget, nothing spent)."""
    if user not in ledgers:
        store = MemoryLedgerStore()
        ledgers[user] = PrivacyLedger(
            store, accountant=privacy.accountant, delta=privacy.delta, unit=privacy.unit
        )
    outcome = private_round(
        ledgers[user], model_cfg, train_cfg, privacy, items, states.get(user),
        user_train_items(split, user, ordered=_reads_order(model_cfg)), round=round, seed=seed,
    )  # fmt: skip
    return outcome.fit


def _reads_order(model_cfg: ModelConfig) -> bool:
    """A sequential model gets each user's train items in time order, others sorted."""
    from fedrec.training.sequential import reads_order

    return reads_order(model_cfg.kind)
