"""Defaults from the data's shape: what a run needs that depends on the data (issue 17).

A preset (:mod:`fedrec.federated.presets`) fixes a model's loss and optimizers. How long
to train, how many devices join a round and how strongly to regularize depend on the
data instead: on the number of users ``N`` who can be sampled, of items ``n`` and of
train interactions per user ``s``. :func:`shaped_defaults` turns a :class:`DataShape`
into those settings, each with its reason; :func:`server.shaped.apply_shaped_defaults`
applies them to what a run leaves unset (``fedrec simulate``, ``flwr run``'s run config,
``fedrec tune``'s first trial) and ``simulate`` prints the reasons. Measured on ml-100k,
ml-1m, a sparse and a dense cut of ml-1m and a 10,000-item synthetic set
(``docs/RESULTS.md``, "Defaults from the data's shape"); the rules were set on
validation splits only: rounds and ``alpha0`` on ml-100k's, ml-1m's and the two cuts',
the dense-data server rate on the dense cut's.

The rules cover iALS (the scalable model they were measured for), the rounds of
LightGCN (:func:`passes_defaults`; measured on ml-1m's validation split), SASRec's
rounds and cohort (:func:`sasrec_shaped_defaults`) and NCF's rounds at 5 passes
(:meth:`fedrec.models.ncf.NeuMF.shaped_defaults`). Other kinds keep their presets'
rounds and 100 devices per round.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

import numpy as np

if TYPE_CHECKING:  # SciPy loads in of_train: the CLI parser reads this module's constants
    import scipy.sparse as sp

PASSES = 10
"""Expected participations of each user over the run, ``rounds x K / N``. Each round is
one server Adam step on the mean gradient of about ``K`` users, so the work a run needs
grows with the users it must see, not with a fixed round count. On the validation
splits, federated iALS at 10 passes: ml-100k 0.2668 NDCG@10 (94 rounds; 150 rounds, 16
passes, gave 0.2592: past 10 passes it overfits), ml-1m 0.2541 (600 rounds; 150 rounds,
2.5 passes, gave 0.2473 and was still climbing)."""
CLIENTS_PER_ROUND = 100
"""Devices per round while the rounds stay within :data:`MAX_ROUNDS`: the mean of about
100 users' gradients is the minibatch the presets were tuned with (ml-100k), and a round
through Flower costs time per device."""
MIN_ROUNDS = 50
"""At least this many server steps: Adam at the preset's rate moves the item factors
from their initial scale to a trained one in about 30-50 steps (ml-100k validation
NDCG@10 0.236 / 0.262 / 0.274 at rounds 10 / 20 / 30), whatever the number of users."""
MAX_ROUNDS = 1000
"""Beyond this many rounds a larger set takes more devices per round instead (each round
has a fixed cost: sampling, messages, the server step), keeping :data:`PASSES`."""
IALS_ALPHA0_AT = (0.3, 6040)
"""iALS's unobserved weight ``alpha0 = 0.3 sqrt(6040 / N)``: 0.3 at ml-1m's 6,040 users,
larger for fewer users. In each item's loss the all-unobserved term ``alpha0 sum_u
(p_u.q_i)^2`` and its regularization ``lam alpha0 N ||q_i||^2`` grow with the number of
users ``N``; too large a weight shrinks the factors towards zero (ml-1m at ``alpha0 = 1``:
0.19 validation NDCG@10 against 0.25 at 0.3). The ALS twin's best ``alpha0`` on the
validation splits (d = 64, ``lam = 0.01``): ml-100k (943 users) 1.0 of 0.3 / 1.0; ml-1m
(6,040) 0.3 of 0.3 / 1.0; ml-1m's sparse cut (6,040 users, 26 train items each) 0.3 of
0.03 / 0.1 / 0.3; its dense cut (605 users, 400 train items each) 1.0 of 1.0 / 3.0
(federated at 0.3 it peaked at 0.366 and fell: too little regularization). The density
``s / n`` does not order them (the sparse cut and ml-1m share their best), the number of
users does, and ``1 / sqrt(N)`` fits all four (0.76 / 0.3 / 0.3 / 0.95), where ``1 / N``
overshoots the dense cut (3.0: 0.356 against 0.389 at 1.0). A fit to four sets, not a
law: ``fedrec tune`` searches ``alpha0`` (``docs/RESULTS.md``)."""
IALS_ALPHA0_RANGE = (0.1, 3.0)
"""Bounds of the shaped ``alpha0`` from the number of users (the range measured); the
growth cap below may set it lower."""
IALS_MIN_GROWTH = 0.02
"""Least growth rate ``g = sigma_1^2 / (N lam (s + alpha0 n))`` that the shaped ``alpha0``
keeps (issue 20). Near ``Q = 0`` a user's closed-form vector is about ``Q_S^T 1 / (lam (s +
alpha0 n))``, so the mean item gradient is ``-(2 / N) X^T X Q / (lam (s + alpha0 n)) + 2 lam
alpha0 Q``: the factors grow along the data's leading direction at rate ``2 (g - lam
alpha0)`` and shrink to zero (every ranking random) when ``g < lam alpha0``. With
``nu = 1`` the user's regularization grows with the catalog (``alpha0 n``) while
``sigma_1^2``, the leading eigenvalue of ``X^T X``, does not: on the books shape's
validation split (105,000 users, 340,000 items, 7.4 train items each, ``sigma_1 = 95.6``)
the user rule's ``alpha0`` 0.1 has ``g`` 0.00025 < ``lam alpha0`` 0.001 and federated iALS
collapsed (20 rounds of 100: validation NDCG@10 0.00003, test 0.00003); at ``alpha0``
0.01 / 0.003 / 0.001 / 0.0003 (``g`` 0.0026 / 0.0085 / 0.025 / 0.080) it reached 0.0002 /
0.015 / 0.033 / 0.036. Every set measured before keeps its ``alpha0``: ``g`` 0.94 (ml-100k),
1.4 (ml-1m), 0.025 on the 10,000-item synthetic set, the smallest that trained well
(1.002x EASE, ``docs/RESULTS.md``). A fit of the threshold, on a derivation of the rate."""
IALS_ALPHA0_FLOOR = 1e-4
"""The least shaped ``alpha0`` (the all-unobserved term is kept, however weak)."""
DENSE_PER_USER = 200
"""Above this many train interactions per user, iALS's server rate is scaled by
``DENSE_PER_USER / s`` and its passes by ``s / DENSE_PER_USER`` (the same rate x rounds,
the distance Adam moves each coordinate). Server Adam moves each coordinate by about
the rate per round whatever the gradient's size; on ml-1m's dense cut (605 users, 403
train items each on its validation split) the preset's 0.02 overshoots mid-run:
validation NDCG@10 0.375 at round 20, 0.347 at round 40, back to 0.381 only after the
step decay (61 rounds; test: 0.711 at round 40, final 0.778, a range of 0.057 over the
last 30% of the rounds). At the scaled rate 0.00993 and 122 rounds validation rises to
0.387 and varies by 0.004 over the last 30% (test: 0.786, 0.997x EASE, range 0.006);
halving the rate without more rounds under-trains (0.0079, 61 rounds: 0.377). The
threshold sits between ml-1m (132 per user, stable at 0.02: test range 0.003) and the
dense cut; ml-100k (84), ml-1m's sparse cut
(26) and the 10,000-item synthetic set (32) are below it and unchanged. One set above
the threshold, on its validation split: a fit, not a law (``docs/RESULTS.md``)."""


@dataclass(frozen=True)
class DataShape:
    """What the defaults read from the data: users, items, train interactions."""

    users: int
    """Users with at least one train interaction (those a round can sample)."""
    items: int
    interactions: int
    """Train interactions."""
    leading_eigenvalue: float | None = None
    """``sigma_1^2``, the largest eigenvalue of ``X^T X`` for the 0/1 train matrix ``X``
    (:func:`leading_eigenvalue`; ``None`` when not read from the data)."""

    @property
    def per_user(self) -> float:
        """Mean train interactions per sampled user, ``s``."""
        return self.interactions / max(self.users, 1)

    @classmethod
    def of_train(cls, train: sp.spmatrix | sp.sparray) -> DataShape:
        """The shape of a ``users x items`` train matrix."""
        import scipy.sparse as sp

        csr = sp.csr_matrix(train)
        counts = np.diff(csr.indptr)
        users, items = int((counts > 0).sum()), int(csr.shape[1])
        return cls(users, items, int(csr.nnz), leading_eigenvalue(csr))


def leading_eigenvalue(train: sp.spmatrix | sp.sparray, iterations: int = 200) -> float:
    """``sigma_1^2`` of the 0/1 matrix of ``train``'s non-zeros: power iteration on ``X^T X``
    from the all-ones vector (deterministic; ``X^T X`` is non-negative, so the start is not
    orthogonal to the leading vector), to a relative change below ``1e-7``."""
    import scipy.sparse as sp

    x = sp.csr_matrix(train, dtype=np.float64, copy=True)
    if not x.nnz:
        return 0.0
    x.data[:] = 1.0
    xt = sp.csr_matrix(x.T)
    v = np.ones(x.shape[1]) / np.sqrt(x.shape[1])
    value = 0.0
    for _ in range(iterations):
        w = xt @ (x @ v)
        new = float(np.linalg.norm(w))
        v = w / new
        if abs(new - value) <= 1e-7 * new:
            return new
        value = new
    return value


@dataclass(frozen=True)
class ShapedDefaults:
    """Settings of a run derived from its data's shape, each with its reason."""

    rounds: int
    clients_per_round: int
    model: dict[str, float] = field(default_factory=dict)
    """``ModelConfig`` fields to set (e.g. ``{"alpha0": 0.3}``)."""
    reasons: tuple[str, ...] = ()
    """The rounds' reason first, then one per ``model`` field, then one per ``server``
    field, in their order."""
    server: dict[str, float] = field(default_factory=dict)
    """``ServerConfig`` fields to set (e.g. ``{"server_lr": 0.01}``)."""
    passes: float = PASSES
    """Participations per user the rounds are for (at a cohort size given instead)."""
    own_cohort: int | None = None
    """The model's own devices per round, kept when a run gives only its rounds (SASRec's
    33); ``None``: such a run keeps the run's default cohort size."""

    def reason(self, part: str, name: str) -> str:
        """The reason of ``model`` or ``server`` field ``name``."""
        names = [("model", n) for n in self.model] + [("server", n) for n in self.server]
        return self.reasons[1 + names.index((part, name))]


def shaped_rounds(
    shape: DataShape,
    passes: float = PASSES,
    *,
    least_clients: int = CLIENTS_PER_ROUND,
    max_rounds: int = MAX_ROUNDS,
) -> tuple[int, int]:
    """``(rounds, clients per round)`` for ``passes`` passes over the users: at least
    ``least_clients`` devices a round, more rather than over ``max_rounds`` rounds."""
    n = max(shape.users, 1)
    k = min(n, max(least_clients, math.ceil(passes * n / max_rounds)))
    return rounds_at(shape, k, passes), k


def rounds_at(shape: DataShape, clients_per_round: int, passes: float = PASSES) -> int:
    """Rounds for ``passes`` passes over the users at ``clients_per_round`` devices a
    round (a run that fixes its cohort size; at least :data:`MIN_ROUNDS`)."""
    n = max(shape.users, 1)
    k = max(1, min(n, clients_per_round))
    return max(MIN_ROUNDS, math.ceil(round(passes * n / k, 6)))


def rounds_reason(
    shape: DataShape, rounds: int, clients_per_round: int, *, given: bool, passes: float = PASSES
) -> str:
    """Why ``rounds`` (``given``: the devices per round were set, not shaped)."""
    k = f"{clients_per_round} devices per round" + (" (given)" if given else "")
    tail = "" if given else f", more devices per round rather than over {MAX_ROUNDS} rounds"
    return (
        f"rounds {rounds} and {k}: each of the {shape.users} users takes part about "
        f"{passes:.3g} times ({rounds} x {clients_per_round} / {shape.users}; at least "
        f"{MIN_ROUNDS} rounds{tail})"
    )


def ials_dense_scale(shape: DataShape) -> float:
    """``s / DENSE_PER_USER`` above :data:`DENSE_PER_USER` interactions per user, else 1:
    the factor dividing iALS's server rate and multiplying its passes."""
    return max(1.0, shape.per_user / DENSE_PER_USER)


def ials_alpha0(shape: DataShape) -> float:
    """``alpha0 = 0.3 sqrt(6040 / N)`` within :data:`IALS_ALPHA0_RANGE`, lowered to
    :func:`ials_alpha0_cap` where that is smaller (3 digits)."""
    low, high = IALS_ALPHA0_RANGE
    at, users = IALS_ALPHA0_AT
    value = min(high, max(low, at * math.sqrt(users / max(shape.users, 1))))
    cap = ials_alpha0_cap(shape)
    if cap is not None and cap < value:
        value = max(IALS_ALPHA0_FLOOR, cap)
    return float(f"{value:.3g}")


def ials_growth(shape: DataShape, alpha0: float) -> float | None:
    """``g = sigma_1^2 / (N lam (s + alpha0 n))`` at the preset's ``lam``
    (:data:`IALS_MIN_GROWTH`); ``None`` without the leading eigenvalue."""
    from fedrec.federated.presets import IALS_MODEL

    if shape.leading_eigenvalue is None:
        return None
    user_reg = IALS_MODEL.l2 * (shape.per_user + alpha0 * shape.items)
    return shape.leading_eigenvalue / (max(shape.users, 1) * user_reg)


def ials_alpha0_cap(shape: DataShape) -> float | None:
    """The largest ``alpha0`` whose :func:`ials_growth` is :data:`IALS_MIN_GROWTH`
    (``None`` without the leading eigenvalue)."""
    from fedrec.federated.presets import IALS_MODEL

    if shape.leading_eigenvalue is None:
        return None
    most = shape.leading_eigenvalue / (max(shape.users, 1) * IALS_MODEL.l2 * IALS_MIN_GROWTH)
    return (most - shape.per_user) / max(shape.items, 1)


def shaped_defaults(kind: str, shape: DataShape) -> ShapedDefaults | None:
    """The shaped settings of model ``kind`` (its class's ``shaped_defaults``; ``None``:
    the preset's)."""
    from fedrec.models.registry import MODEL_KINDS, model_class

    return model_class(kind).shaped_defaults(shape) if kind in MODEL_KINDS else None


def passes_defaults(shape: DataShape) -> ShapedDefaults:
    """Only :func:`shaped_rounds`, with its reason: the shaped defaults of a model whose
    other settings do not depend on the data (LightGCN)."""
    rounds, k = shaped_rounds(shape)
    return ShapedDefaults(rounds, k, {}, (rounds_reason(shape, rounds, k, given=False),))


def ials_shaped_defaults(shape: DataShape) -> ShapedDefaults:
    """iALS's shaped rounds, devices per round, ``alpha0`` and (dense data) server rate,
    each with its reason."""
    from fedrec.federated.presets import IALS_SERVER

    preset_lr = float(IALS_SERVER.server_lr or 0.0)
    scale = ials_dense_scale(shape)
    passes = PASSES * scale
    rounds, k = shaped_rounds(shape, passes)
    alpha0 = ials_alpha0(shape)
    by_users = (
        f"the unobserved term of each item's loss grows with the {shape.users} users "
        f"(0.3 x sqrt(6040 / {shape.users}), 0.3 at ml-1m's 6,040 users, within "
        f"{IALS_ALPHA0_RANGE[0]:g}-{IALS_ALPHA0_RANGE[1]:g})"
    )
    cap = ials_alpha0_cap(shape)
    if cap is not None and cap < IALS_ALPHA0_RANGE[0] and alpha0 < IALS_ALPHA0_RANGE[0]:
        by_users = (
            f"lowered so that the factors can grow from their start: each user's "
            f"regularization lam (s + alpha0 n) grows with the {shape.items} items, and "
            f"above this alpha0 the data's leading direction (sigma_1^2 "
            f"{shape.leading_eigenvalue:.4g}) grows slower than {IALS_MIN_GROWTH:g} per user "
            "and unit of regularization: federated iALS then stays near zero (issue 20)"
        )
    reasons = [
        rounds_reason(shape, rounds, k, given=False, passes=passes),
        f"alpha0 {alpha0:g}: {by_users}",
    ]
    server: dict[str, float] = {}
    if scale > 1.0:
        server["server_lr"] = float(f"{preset_lr / scale:.3g}")
        reasons.append(
            f"server rate {server['server_lr']:g} and {passes:.3g} passes: "
            f"{shape.per_user:.0f} train items per user, above {DENSE_PER_USER}: the rate "
            f"{preset_lr:g} x {DENSE_PER_USER} / {shape.per_user:.0f} with the rounds "
            "scaled up alike (the preset's rate overshoots mid-run on dense data)"
        )
    return ShapedDefaults(rounds, k, {"alpha0": alpha0}, tuple(reasons), server, passes)


SASREC_CLIENTS_PER_ROUND = 33
"""SASRec's devices per round. Its preset is FedSGD with server Adam: a round is one Adam
step on the cohort's mean gradient, the twin's minibatch step in federated form, and at
the same passes over the users a smaller cohort makes more, smaller steps for the same
device work. ml-100k's temporal validation split (each user's last 20% of train by time),
21 passes: 600 rounds of 33 devices 0.2062 NDCG@10 against 198 rounds of 100's 0.1999,
at the same CPU (test: 600 x 33 0.2234 against 400 x 50's 0.2138; ``docs/RESULTS.md``)."""
SASREC_MAX_ROUNDS = 2000
"""Above this many rounds a larger set takes more devices per round instead, keeping the
passes: every round has a fixed cost through Flower. ml-1m's 1,831 rounds of 33 are
below it (test: 0.2548 NDCG@10, 93.9% of the twin); larger sets were not measured."""


def sasrec_shaped_defaults(shape: DataShape) -> ShapedDefaults:
    """SASRec's rounds and devices per round: :data:`PASSES` passes over the users at
    :data:`SASREC_CLIENTS_PER_ROUND` devices a round, and never fewer rounds than the
    preset's (:func:`fedrec.federated.presets.default_rounds`: a small set still needs
    that many server steps). ``passes`` is what the rounds make, so a run that gives its
    own cohort size keeps the device work."""
    from fedrec.federated.presets import default_rounds

    shaped, k = shaped_rounds(
        shape, least_clients=SASREC_CLIENTS_PER_ROUND, max_rounds=SASREC_MAX_ROUNDS
    )
    floor = default_rounds("sasrec")
    rounds = max(floor, shaped)
    passes = rounds * k / max(shape.users, 1)
    reason = (
        f"rounds {rounds} and {k} devices per round: each of the {shape.users} users takes "
        f"part about {passes:.3g} times ({rounds} x {k} / {shape.users}; at least "
        f"{PASSES} passes and the preset's {floor} server steps, more devices per round "
        f"rather than over {SASREC_MAX_ROUNDS} rounds)"
    )
    return ShapedDefaults(rounds, k, {}, (reason,), {}, passes, own_cohort=k)
