"""fedavg | fedadam | fedprox as Flower strategies that sample users and aggregate uniformly.

Design rule: each strategy subclasses the Flower strategy of the same name
(``flwr.serverapp.strategy.FedAvg``, ``FedAdam``, ``FedProx``), so Flower's wrappers
(e.g. its differential-privacy strategies) can wrap it, but the four hooks that decide
*who* trains and *how* updates combine are fedrec's own (:class:`_FedrecHooks`):

- ``configure_train`` sends the global arrays to fedrec's seeded Poisson cohort of
  *users* (:func:`server.sampling.train_cohort`), not to Flower's ``random`` sample;
- ``aggregate_train`` averages the uploads **uniformly per client** and applies the
  server optimizer of :mod:`fedrec.federated.aggregation` (FedAvg: McMahan et al. 2017;
  FedAdam: Reddi et al. 2021; FedProx: Li et al. 2020, proximal term on the client),
  whose explicit state the checkpoint saves. Flower's example-weighted mean is never
  used; ``num-examples`` is neither needed nor sent unless count weighting is opted in;
- failures are tolerated: an error reply, a missing reply (timeout, node gone), a
  sampled user without a node, or a reply that is not exactly the declared item-side
  arrays is recorded as failed and left out; the round aggregates what came back;
- ``configure_evaluate``/``aggregate_evaluate`` (deployments only; ``fedrec simulate``
  measures its devices directly, :mod:`simulations.evaluation`) ask a seeded sample of
  test users (or all of them) for their metrics, never a list, and combine them with
  :func:`fedrec.metrics.private.aggregate_replies`: a uniform mean (``none``), a mean of
  the devices' noisy vectors (``local``), or the noisy sum of clipped vectors over the
  users asked (``central``; the release to account is left in ``eval_release``).

The round loop itself lives in :mod:`server.server_app`.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import TypeVar

import numpy as np
import numpy.typing as npt
from flwr.app import ArrayRecord, ConfigRecord, Message, MessageType, MetricRecord, RecordDict
from flwr.serverapp import Grid
from flwr.serverapp.strategy import FedAdam, FedAvg, FedProx, Strategy

from fedrec.data.split import Split
from fedrec.errors import DataError
from fedrec.federated.aggregation import FEDADAM_LR, ServerConfig, ServerOptimizer, UploadMean
from fedrec.federated.compression import UploadCodec, Wire
from fedrec.federated.npy import record_arrays
from fedrec.metrics import USER_METRIC_KEYS
from fedrec.metrics.private import PrivateEvaluation, aggregate_replies
from fedrec.models.base import Arrays
from fedrec.privacy.accounting import Release
from fedrec.privacy.noise import secure_rng
from fedrec.privacy.record import PrivacyRecord
from server.sampling import eval_sample, nodes_of, train_cohort

ARRAYS_KEY = "arrays"
CONFIG_KEY = "config"
METRICS_KEY = "metrics"
TOP_KEY = "top10"
EVAL_ALL_KEY = "eval-all"
NUM_EXAMPLES_KEY = "num-examples"
TRAIN_LOSS_KEY = "train-loss"
PRIVACY_KEY = "privacy"
BUDGET_EXHAUSTED = "budget_exhausted"
REFUSED = "refused: "
_Read = TypeVar("_Read")
"""What a reply check deserialized from a valid reply (an upload's wire arrays)."""


@dataclass(frozen=True)
class RoundPlan:
    """What the hooks need to know about the population (fixed for a run).

    ``catalog`` is the split; ``item_shapes`` are the item arrays' shapes and
    ``upload`` how a device encodes them (float32, or a quantized update:
    :mod:`fedrec.federated.compression`);
    ``evaluation`` is the DP evaluation of a private deployment (``None``: none is
    requested in ``local``/``central``) and ``eval_noise_seed`` its TESTS-ONLY seed.
    """

    eligible: npt.NDArray[np.int64]
    test_users: npt.NDArray[np.int64]
    user_nodes: Mapping[int, int]
    clients_per_round: int
    eval_clients: int
    seed: int
    item_shapes: list[tuple[int, ...]]
    catalog: Split
    weighted: bool = False
    privacy_mode: str = "none"
    evaluation: PrivateEvaluation | None = None
    eval_noise_seed: int | None = None
    upload: UploadCodec = field(default_factory=UploadCodec)


@dataclass
class Outcome:
    """Who answered in the last train or evaluate step, who failed (with why), and
    who refused to train because its privacy budget is spent (local DP)."""

    participants: list[int] = field(default_factory=list)
    failed: dict[int, str] = field(default_factory=dict)
    exhausted: list[int] = field(default_factory=list)
    refused: dict[int, str] = field(default_factory=dict)


class _FedrecHooks:
    """The fedrec overrides shared by the three strategies (put first in the bases)."""

    plan: RoundPlan
    optimizer: ServerOptimizer
    last_train: Outcome
    last_eval: Outcome

    def _init_hooks(self, plan: RoundPlan, optimizer: ServerOptimizer) -> None:
        self.plan, self.optimizer = plan, optimizer
        self.last_train, self.last_eval = Outcome(), Outcome()
        self._global: Arrays = []
        self._sent: dict[int, int] = {}  # node id -> user of the step in flight
        self._asked: list[int] = []
        self.sampler: Callable[[int], npt.NDArray[np.int64]] = self._seeded_cohort
        self.eval_rng = secure_rng(plan.eval_noise_seed)  # central DP evaluation's noise
        self.eval_release: Release | None = None  # central: the last evaluation's release
        # Set by server.local_dp.LocalDPStrategy: reads a train reply's privacy record
        # ('' or why the reply is not an upload) and names the config records it may hold.
        self.reply_hook: Callable[[int, RecordDict], str] | None = None
        self.reply_configs: frozenset[str] = frozenset()

    def _seeded_cohort(self, server_round: int) -> npt.NDArray[np.int64]:
        """fedrec's seeded Poisson cohort (reproducible; no amplification claimed)."""
        return train_cohort(
            self.plan.eligible, self.plan.clients_per_round, server_round, self.plan.seed
        )

    def _messages(
        self, users: npt.NDArray[np.int64], record: RecordDict, kind: str
    ) -> list[Message]:
        pairs = nodes_of(users, self.plan.user_nodes)
        self._asked = [int(u) for u in users]
        self._sent = {node: user for user, node in pairs}
        return [Message(record, node, kind) for _, node in pairs]

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Send the global arrays to the cohort of ``self.sampler`` (seeded Poisson)."""
        self._global = arrays.to_numpy_ndarrays()
        self._extra_train_config(config)
        config["server-round"] = server_round
        cohort = self.sampler(server_round)
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
        return self._messages(cohort, record, MessageType.TRAIN)

    def _extra_train_config(self, config: ConfigRecord) -> None:
        del config

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        """Uniform mean of the valid uploads, then one server-optimizer step.

        Replies are consumed one at a time into one :class:`UploadMean` in user order
        (:meth:`_consume`), so a cohort of dense uploads is never held at once.
        """
        mean = UploadMean()
        losses: list[float] = []

        def take(user: int, msg: Message, wire: Wire) -> None:
            del user
            metrics = msg.content.metric_records.get(METRICS_KEY)
            weight = None
            if self.plan.weighted:
                assert metrics is not None  # checked by _read_upload
                weight = _scalar(metrics[NUM_EXAMPLES_KEY])
            mean.add(self.decode_upload(wire), weight)
            if metrics is not None and TRAIN_LOSS_KEY in metrics:
                losses.append(_scalar(metrics[TRAIN_LOSS_KEY]))

        outcome = _split_refusals(self._consume(replies, self._read_upload, take, uploads=True))
        new = self.optimizer.step(self._global, [mean.mean()] if mean.count else [])
        self.last_train = outcome
        counts: dict[str, int | float | list[int] | list[float]] = {
            "clients": len(outcome.participants),
            "failed": len(outcome.failed),
        }
        if losses:
            counts["train-loss"] = float(np.mean(losses))
        return ArrayRecord(new), MetricRecord(counts)

    @property
    def global_arrays(self) -> Arrays:
        """The global arrays sent in the train step in flight."""
        return self._global

    def decode_upload(self, wire: Wire) -> Arrays:
        """The item arrays a valid upload's wire arrays stand for (a quantized update
        decoded against the global arrays of the step in flight)."""
        return self.plan.upload.decode(wire, self._global)

    def collect_train(self, replies: Iterable[Message]) -> tuple[list[tuple[int, Arrays]], Outcome]:
        """Valid uploads by user, decoded, and the outcome (refusals apart from failures)."""
        good, outcome = self._sort_replies(replies, self._read_upload, uploads=True)
        decoded = [(user, self.decode_upload(wire)) for user, _, wire in good]
        return decoded, _split_refusals(outcome)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        """Ask a seeded sample of test users (every one when ``eval-all``) to evaluate."""
        n = 0 if bool(config.get(EVAL_ALL_KEY, False)) else self.plan.eval_clients
        users = eval_sample(self.plan.test_users, n, server_round, self.plan.seed)
        config["server-round"] = server_round
        record = RecordDict({ARRAYS_KEY: arrays, CONFIG_KEY: config})
        return self._messages(users, record, MessageType.EVALUATE)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        """The deployed evaluation's aggregate (:func:`~fedrec.metrics.private.aggregate_replies`).

        Replies carrying anything but the metric keys (a list, a ledger) are failures;
        a local-DP device out of budget is refused, not failed. In central mode the
        release the noise made is left in :attr:`eval_release` for the run's account.
        """
        good, outcome = self._sort_replies(replies, self._read_eval)
        for user, why in list(outcome.failed.items()):
            if why.startswith(REFUSED):
                del outcome.failed[user]
                outcome.refused[user] = why[len(REFUSED) :]
                outcome.exhausted.append(user)
        self.last_eval = outcome
        values = [
            {k: _scalar(v) for k, v in m.content.metric_records[METRICS_KEY].items()}
            for _, m, _ in good
        ]
        summary, self.eval_release = aggregate_replies(
            self.plan.privacy_mode,
            values,
            mechanism=self.plan.evaluation,
            asked=len(self._asked),
            rng=self.eval_rng,
        )
        return None if summary is None else MetricRecord(dict(summary))

    def _read_eval(self, content: RecordDict) -> tuple[str, None]:
        """Why ``content`` is not an allowed evaluation reply ('' when it is)."""
        return self._check_eval(content), None

    def _check_eval(self, content: RecordDict) -> str:
        """Why ``content`` is not an allowed evaluation reply ('' when it is)."""
        if (
            self.plan.privacy_mode == "local"
            and set(content.keys()) == {PRIVACY_KEY}
            and PRIVACY_KEY in content.config_records
        ):
            try:
                status = PrivacyRecord.from_dict(content.config_records[PRIVACY_KEY]).status
            except DataError as err:
                return f"malformed privacy record ({err})"
            if status != BUDGET_EXHAUSTED:
                return f"an evaluation is refused only for budget, not {status!r}"
            return REFUSED + status
        if set(content.keys()) != {METRICS_KEY} or METRICS_KEY not in content.metric_records:
            return "evaluation reply must hold exactly one MetricRecord 'metrics'"
        record = content.metric_records[METRICS_KEY]
        spec = self.plan.evaluation
        keys = USER_METRIC_KEYS if spec is None else spec.keys
        if set(record) != set(keys):
            return f"evaluation reply keys {sorted(record)} != {sorted(keys)} (never a list)"
        if not all(isinstance(v, int | float) and math.isfinite(v) for v in record.values()):
            return "evaluation reply values must be finite numbers"
        return ""

    def _sort_replies(
        self,
        replies: Iterable[Message],
        read: Callable[[RecordDict], tuple[str, _Read]],
        *,
        uploads: bool = False,
    ) -> tuple[list[tuple[int, Message, _Read]], Outcome]:
        """Valid replies sorted by user (a deterministic sum) with what ``read`` got from
        each, and the failures."""
        good: list[tuple[int, Message, _Read]] = []

        def take(user: int, msg: Message, got: _Read) -> None:
            good.append((user, msg, got))

        return good, self._consume(replies, read, take, uploads=uploads)

    def _consume(
        self,
        replies: Iterable[Message],
        read: Callable[[RecordDict], tuple[str, _Read]],
        take: Callable[[int, Message, _Read], None],
        *,
        uploads: bool = False,
    ) -> Outcome:
        """Hand each valid reply, with what ``read`` got from it, to ``take`` in ascending
        user order; the outcome.

        ``read`` checks a reply and returns why it is refused ('' when it is valid) and
        what it deserialized (an upload's wire arrays), so a reply is deserialized once,
        right before ``take``. With ``uploads``, :attr:`reply_hook` (local DP) has its
        say on each train reply. Replies are read once, as they come (the in-process grid
        trains a client per reply read); one that arrives before an earlier user's is
        answered waits, still serialized, so ``take`` sees the same order whatever the
        arrival order, and only replies that came early are held.
        """
        outcome = Outcome()
        order = sorted(set(self._sent.values()))
        pending: dict[int, Message] = {}
        nxt = 0

        def settle(user: int, msg: Message) -> None:
            problem, got = read(msg.content)
            if self.reply_hook is not None and uploads:
                problem = self.reply_hook(user, msg.content) or problem
            if problem:
                outcome.failed[user] = problem
            else:
                take(user, msg, got)
                outcome.participants.append(user)

        def release(upto_all: bool) -> None:
            nonlocal nxt
            while nxt < len(order):
                user = order[nxt]
                if user in pending:
                    settle(user, pending.pop(user))
                elif user not in outcome.failed and not upto_all:
                    return
                nxt += 1

        for msg in replies:
            user = self._sent.get(msg.metadata.src_node_id)
            if user is None:
                continue  # not a reply to this step
            if msg.has_error():
                outcome.failed[user] = _reason(msg.error.reason or "error")
            else:
                pending[user] = msg
            release(upto_all=False)
        release(upto_all=True)
        answered = set(outcome.participants) | set(outcome.failed)
        for user in self._asked:
            if user not in answered:
                reason = "no node" if user not in self.plan.user_nodes else "no reply"
                outcome.failed[user] = reason
        outcome.failed = dict(sorted(outcome.failed.items()))
        return outcome

    def _read_upload(self, content: RecordDict) -> tuple[str, Wire]:
        """Why ``content`` is not a valid upload ('' when it is), and its wire arrays,
        deserialized here once ([] when it is refused before they are read)."""
        allowed_metrics = {NUM_EXAMPLES_KEY} if self.plan.weighted else set()
        if self.plan.privacy_mode != "local":
            # A locally private device never reports its loss (it describes its data).
            allowed_metrics.add(TRAIN_LOSS_KEY)
        if set(content.array_records) != {ARRAYS_KEY} or set(content.config_records) - (
            self.reply_configs
        ):
            return "reply must hold exactly one ArrayRecord 'arrays'", []
        if any(set(r) - allowed_metrics for r in content.metric_records.values()):
            return "reply carries metrics that are not allowed", []
        metrics = content.metric_records.get(METRICS_KEY)
        if self.plan.weighted and (metrics is None or NUM_EXAMPLES_KEY not in metrics):
            return "count weighting is on but the reply has no num-examples", []
        arrays = record_arrays(content.array_records[ARRAYS_KEY].values())  # headers parsed once
        shapes = [tuple(a.shape) for a in arrays]
        declared = self.plan.upload.wire_shapes(self.plan.item_shapes)
        if shapes != declared:
            return f"upload shapes {shapes} != declared {declared}", arrays
        return self.plan.upload.check_wire(arrays), arrays


def _split_refusals(outcome: Outcome) -> Outcome:
    """Move refusals (``REFUSED`` reasons) from ``failed`` to ``refused``/``exhausted``."""
    for user, why in list(outcome.failed.items()):
        if why.startswith(REFUSED):
            del outcome.failed[user]
            outcome.refused[user] = why[len(REFUSED) :]
            if outcome.refused[user] == BUDGET_EXHAUSTED:
                outcome.exhausted.append(user)
    return outcome


def _reason(text: str) -> str:
    """The client's own error message out of the engine's wrapped traceback."""
    marker = "Message: "
    if marker in text:
        text = text.rsplit(marker, 1)[1]
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    return (lines[0] if lines else "error")[:200].rstrip("'>")


def _scalar(value: object) -> float:
    if not isinstance(value, int | float):
        raise TypeError(f"expected a number in a reply, got {type(value).__name__}")
    return float(value)


class FedAvgStrategy(_FedrecHooks, FedAvg):
    """FedAvg (McMahan et al. 2017) with fedrec's user sampling and uniform mean."""

    def __init__(self, plan: RoundPlan, optimizer: ServerOptimizer) -> None:
        FedAvg.__init__(self, min_train_nodes=0, min_evaluate_nodes=0, min_available_nodes=0)
        self._init_hooks(plan, optimizer)


class FedAdamStrategy(_FedrecHooks, FedAdam):
    """FedAdam (Reddi et al., ICLR 2021, Alg. 2) on the uniform mean; moments checkpointed.

    The step is :class:`fedrec.federated.aggregation.FedAdam`'s, the paper's, with no
    bias correction (``aggregate_train`` of :class:`_FedrecHooks`). Flower's
    ``FedAdam`` is a base class only so that Flower's wrappers accept the strategy; its
    own ``aggregate_train``, which scales ``eta`` by a bias correction in Flower 1.42, is
    never called, and the ``eta``/``beta``/``tau`` given to it are not used to step.
    """

    def __init__(self, plan: RoundPlan, optimizer: ServerOptimizer, cfg: ServerConfig) -> None:
        FedAdam.__init__(
            self,
            min_train_nodes=0,
            min_evaluate_nodes=0,
            min_available_nodes=0,
            eta=FEDADAM_LR if cfg.server_lr is None else cfg.server_lr,
            beta_1=cfg.beta1,
            beta_2=cfg.beta2,
            tau=cfg.tau,
        )
        self._init_hooks(plan, optimizer)


class FedProxStrategy(_FedrecHooks, FedProx):
    """FedProx (Li et al., MLSys 2020): FedAvg server, proximal term ``mu`` on clients."""

    def __init__(self, plan: RoundPlan, optimizer: ServerOptimizer, proximal_mu: float) -> None:
        FedProx.__init__(
            self,
            min_train_nodes=0,
            min_evaluate_nodes=0,
            min_available_nodes=0,
            proximal_mu=proximal_mu,
        )
        self._init_hooks(plan, optimizer)

    def _extra_train_config(self, config: ConfigRecord) -> None:
        config["train.proximal-mu"] = float(self.proximal_mu)


def build_strategy(
    cfg: ServerConfig, plan: RoundPlan, optimizer: ServerOptimizer, *, proximal_mu: float
) -> FedAvgStrategy | FedAdamStrategy | FedProxStrategy:
    """The strategy named by ``cfg.strategy`` around the fedrec server ``optimizer``."""
    if cfg.strategy == "fedadam":
        return FedAdamStrategy(plan, optimizer, cfg)
    if cfg.strategy == "fedprox":
        return FedProxStrategy(plan, optimizer, proximal_mu)
    return FedAvgStrategy(plan, optimizer)


class StrategyWrapper(Strategy):
    """A privacy wrapper around a fedrec strategy (after Flower's DP wrappers).

    Delegates every hook to ``self.strategy``; :class:`server.central_dp.CentralDPStrategy`
    and :class:`server.local_dp.LocalDPStrategy` override only what their mode changes.
    """

    strategy: FedAvgStrategy | FedAdamStrategy | FedProxStrategy

    @property
    def last_train(self) -> Outcome:
        return self.strategy.last_train

    @property
    def last_eval(self) -> Outcome:
        return self.strategy.last_eval

    def configure_train(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_train(server_round, arrays, config, grid)

    def aggregate_train(
        self, server_round: int, replies: Iterable[Message]
    ) -> tuple[ArrayRecord | None, MetricRecord | None]:
        return self.strategy.aggregate_train(server_round, replies)

    def configure_evaluate(
        self, server_round: int, arrays: ArrayRecord, config: ConfigRecord, grid: Grid
    ) -> Iterable[Message]:
        return self.strategy.configure_evaluate(server_round, arrays, config, grid)

    def aggregate_evaluate(
        self, server_round: int, replies: Iterable[Message]
    ) -> MetricRecord | None:
        return self.strategy.aggregate_evaluate(server_round, replies)

    def summary(self) -> None:
        self.strategy.summary()
