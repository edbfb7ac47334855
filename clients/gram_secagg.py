"""The device side of federated EASE under ``--privacy distributed``.

Design rule: this module only wires. The SecAgg+ stages are
:mod:`clients.secagg_client`'s; the device's input is its row-normalized Gram
contribution (:func:`fedrec.federated.gram.client_contribution`, Frobenius norm 1)
encoded by :func:`fedrec.privacy.distributed.encode` (rotation, scaling, conditional
rounding, its Skellam noise share, all from a secret generator) under the plan the
server sent (``secagg.plan``, JSON). The device checks that the plan is for its ring
and length and that it meets its stated target at the plan's minimum of survivors.
"""

from __future__ import annotations

import json

import numpy as np
import numpy.typing as npt
from flwr.app import Context, Message

from clients import secagg_client
from clients.client_config import load_split
from fedrec.errors import ConfigError
from fedrec.federated.gram import client_contribution
from fedrec.privacy.distributed import DistributedPlan, encode
from fedrec.privacy.noise import secure_rng
from fedrec.secagg.protocol import SecAggParams

PLAN_KEY = "secagg.plan"


def _encode(msg: Message, context: Context, params: SecAggParams) -> npt.NDArray[np.uint64]:
    config = msg.content.config_records["config"]
    plan = DistributedPlan.from_json(json.loads(str(config[PLAN_KEY])))
    if plan.padded != params.length or plan.bits != params.bits:
        raise ConfigError("the DP plan does not match the SecAgg ring", where=PLAN_KEY)
    if plan.epsilon(plan.min_survivors) > plan.target_epsilon * 1.001:
        raise ConfigError(
            f"the DP plan spends more than its target epsilon {plan.target_epsilon}",
            where=PLAN_KEY,
        )
    user = int(context.node_config["partition-id"])
    split = load_split(config)
    contribution = client_contribution(split.train_items(user), split.n_items, normalize=True)
    return encode(contribution, plan, secure_rng())


def train(msg: Message, context: Context) -> Message:
    """One SecAgg+ stage of the distributed Gram sum; any other request is refused."""
    if not secagg_client.handles(msg):
        raise ConfigError(
            "under --privacy distributed a device uploads only masked SecAgg+ inputs",
            where="train message without secagg.stage",
        )
    return secagg_client.handle(msg, context, _encode)


handles = secagg_client.handles

__all__ = ["PLAN_KEY", "handles", "train"]
