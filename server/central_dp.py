"""User-level DP-FedAvg as a strategy wrapper (McMahan et al., ICLR 2018).

Design rule: like Flower's ``DifferentialPrivacyServerSideFixedClipping(strategy, ...)``,
:class:`CentralDPStrategy` wraps any fedrec strategy (FedAvg, FedAdam, FedProx of
:mod:`server.strategies`) and leaves its messaging, reply checks and evaluation alone.
It changes two things, both computed by the pure mechanism
:class:`fedrec.privacy.central.DPFedAvg` that the Flower-free loop also calls:

- the cohort: Poisson sampling with rate ``q = K / N`` from a **secret** generator
  (:func:`fedrec.privacy.noise.secure_rng`), never from the run seed, or there would
  be no amplification by sampling;
- the aggregate: each valid upload's update ``client - global`` is clipped to ``S``
  over all item-side arrays, ``N(0, (z S)^2)`` is added to the sum, which is divided
  by ``q N`` (not by the number of replies), and the result is handed to the wrapped
  strategy's server optimizer as one pseudo-upload ``global + noisy mean``.

Unlike Flower's wrapper, the noise goes in *before* the server optimizer, so FedAdam's
moments only ever see privatized updates. Each round costs one release ``(z, q, 1)``,
an empty cohort included; :meth:`CentralDPStrategy.would_exceed` lets the server
refuse a round that would take the run past its target epsilon.

The amplification rests on the cohort staying secret, so nothing the server writes
names it: :class:`server.privacy_run.RunPrivacy` turns each round's outcome into counts
for ``rounds.jsonl``, keeps how many rounds each user joined only in its private
checkpoint state (for the worst-case per-user epsilon), and writes each release ahead
(:func:`server.checkpoint.reserve_release`) before any model computed from it leaves
the server. :class:`server.local_dp.LocalDPStrategy` is the local-DP counterpart.
"""

from __future__ import annotations

from collections.abc import Iterable
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, Message, MetricRecord

from fedrec.errors import ConfigError
from fedrec.privacy.central import DPFedAvg
from server.strategies import (
    FedAdamStrategy,
    FedAvgStrategy,
    FedProxStrategy,
    StrategyWrapper,
)

FedrecStrategy = FedAvgStrategy | FedAdamStrategy | FedProxStrategy


class CentralDPStrategy(StrategyWrapper):
    """Wrap a fedrec ``strategy`` with the DP-FedAvg ``mechanism``.

    Parameters
    ----------
    strategy
        The wrapped strategy; its server optimizer applies the noisy mean.
    mechanism
        Clipping, noise, sampling rate and accounting (its state is checkpointed).
    rng
        The secret generator for the cohort and the noise.
    target_epsilon, delta
        The run's budget (``None``: not enforced) and its delta.
    """

    def __init__(
        self,
        strategy: FedrecStrategy,
        mechanism: DPFedAvg,
        *,
        rng: np.random.Generator,
        target_epsilon: float | None,
        delta: float,
    ) -> None:
        if strategy.plan.weighted:
            raise ConfigError(
                "count weighting leaks the counts and breaks the DP-FedAvg sensitivity",
                where="server.weighted",
                fix="use uniform weights (the default) with --privacy central",
            )
        self.strategy, self.mechanism, self.rng = strategy, mechanism, rng
        self.target_epsilon, self.delta = target_epsilon, delta
        strategy.sampler = self._secret_cohort

    def __repr__(self) -> str:
        return f"CentralDPStrategy({type(self.strategy).__name__}, S={self.mechanism.clip_norm})"

    def _secret_cohort(self, server_round: int) -> npt.NDArray[np.int64]:
        del server_round  # secret, not derived from the round or the seed
        return self.strategy.plan.eligible[self.mechanism.sample(self.rng)]

    def epsilon(self) -> float:
        """The run's epsilon so far at ``delta``."""
        return self.mechanism.account.epsilon(self.delta)

    def would_exceed(self) -> bool:
        """Whether the next round would take the run past ``target_epsilon``."""
        return self.mechanism.would_exceed(self.target_epsilon, self.delta)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Clip, noise the sum, divide by ``q N``; one server-optimizer step on that."""
        good, outcome = self.strategy.collect_train(replies)
        uploads = [arrays for _, arrays in good]  # decoded, each deserialized once
        current = self.strategy.global_arrays
        noisy = self.mechanism.aggregate(current, uploads, self.rng)
        pseudo = [g + d for g, d in zip(current, noisy, strict=True)]
        new = self.strategy.optimizer.step(current, [pseudo])
        self.strategy.last_train = outcome
        counts: dict[str, Any] = {"clients": len(good), "failed": len(outcome.failed)}
        return ArrayRecord(new), MetricRecord(counts)
