"""What a deployed device may answer to an evaluation request: never a list.

Design rule: in a deployment the server may only learn an aggregate of clipped
per-user metrics with Gaussian noise (:mod:`fedrec.metrics.private`). The device
computes its metrics and its top-10 on its own data, keeps the list, and answers:

- mode ``none``: its per-user metrics (no DP, but no list either);
- mode ``central``: its metric vector clamped to ``[0, 1]`` and clipped to norm ``C``;
  the trusted server adds the noise to the sum and accounts for it;
- mode ``local``: that clipped vector plus ``N(0, (z sqrt(2) C)^2)`` drawn on the
  device from secret randomness, after ``PrivacyLedger.would_exceed`` said the release
  fits the budget and ``PrivacyLedger.reserve`` wrote it durably (write before send,
  never refund: docs/PRIVACY.md, "Ledgers"). A device whose budget would be exceeded
  answers with its status only.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from fedrec.errors import ConfigError
from fedrec.federated.private import LocalPrivacy
from fedrec.metrics.private import PrivateEvaluation
from fedrec.privacy.ledger import PrivacyLedger
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.record import BUDGET_EXHAUSTED

OK = "ok"

EVAL_NOISE_SEED_OFFSET = 1_000_033
"""TESTS ONLY: the evaluation noise of an insecure seed ``s`` is seeded ``s + offset``."""


@dataclasses.dataclass(frozen=True)
class EvalReport:
    """A device's evaluation answer as it may leave the device.

    ``status`` is ``"ok"`` (``values`` set) or ``"budget_exhausted"`` (``values`` is
    ``None``: nothing computed was released, nothing spent).
    """

    status: str
    values: dict[str, float] | None = None


def report_metrics(
    metrics: Mapping[str, float],
    *,
    mode: str,
    mechanism: PrivateEvaluation | None,
    ledger: PrivacyLedger | None = None,
    privacy: LocalPrivacy | None = None,
    round: int = 0,
) -> EvalReport:
    """The device's answer for its per-user ``metrics`` in privacy ``mode``.

    Local mode spends ``mechanism.release`` from ``ledger`` (checked against
    ``privacy.epsilon_budget``) before the noisy vector is returned.

    Raises
    ------
    ConfigError
        A private mode without a mechanism (no ``privacy.eval-epsilon``), or local mode
        without a ledger.
    """
    if mode == "none":
        return EvalReport(OK, {k: float(v) for k, v in metrics.items()})
    if mechanism is None:
        raise ConfigError(
            f"an evaluation request in privacy mode {mode!r} without a DP mechanism",
            where="config privacy.eval-epsilon",
            fix="a private deployment evaluates only with privacy.eval-epsilon set",
        )
    if mode == "central":
        return EvalReport(OK, mechanism.as_metrics(mechanism.clip(metrics)))
    if ledger is None or privacy is None:
        raise ConfigError("local DP evaluation needs the device's ledger", where="evaluation")
    release = mechanism.release
    budget = privacy.epsilon_budget
    if budget is not None and ledger.would_exceed(budget, None, release):
        return EvalReport(BUDGET_EXHAUSTED)
    ledger.reserve(release, round=round, budget_epsilon=budget)  # durable before the reply
    seed = privacy.insecure_noise_seed
    rng = secure_rng(None if seed is None else seed + EVAL_NOISE_SEED_OFFSET)
    return EvalReport(OK, mechanism.privatize(metrics, rng))


__all__ = ["BUDGET_EXHAUSTED", "OK", "EvalReport", "report_metrics"]
