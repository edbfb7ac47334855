"""Federated EASE under ``--privacy distributed``: the Gram sum by SecAgg+ with Skellam noise.

Design rule: this module only wires. The server plans the mechanism
(:func:`fedrec.privacy.distributed.plan_distributed`: ring bits, scale, per-device
noise for the declared minimum of survivors), runs :func:`server.secagg.secure_sum`
with every eligible device (each encodes its normalized Gram contribution with its own
noise share, :mod:`clients.gram_secagg`), refuses to release if fewer than the
minimum survived, and decodes the noisy sum. The server never sees an individual
contribution, nor the noise-free sum.
"""

from __future__ import annotations

import dataclasses
import json
import secrets
from typing import Any

import numpy as np
import numpy.typing as npt
from flwr.serverapp import Grid

from fedrec.data.split import Split
from fedrec.federated.gram import packed_size
from fedrec.privacy.distributed import DistributedPlan, decode, plan_distributed, privacy_record
from fedrec.privacy.report import NOT_PROTECTED, UNITS
from fedrec.secagg.config import SecAggConfig
from server.gram_settings import GramSettings
from server.privacy_run import eligible_users
from server.secagg import secure_sum

PLAN_KEY = "secagg.plan"
DROP_KEY = "secagg.drop-users"
MIN_KEY = "secagg.min-survivors-count"


@dataclasses.dataclass
class DistributedRelease:
    """What the distributed round released."""

    packed: npt.NDArray[np.float64]
    noise_std: float
    """Std of the noise on each released packed coordinate (the denoiser's ``z``)."""
    added: list[int]
    failed: dict[int, str]
    record: dict[str, Any]
    """``privacy.json``'s ``distributed`` section (plan, survivors, epsilon, cost)."""


def plan_for(
    secagg: SecAggConfig, n_items: int, devices: int, target_epsilon: float, delta: float
) -> DistributedPlan:
    """The mechanism for ``devices`` devices on an ``n_items`` catalog."""
    return plan_distributed(
        target_epsilon=target_epsilon,
        delta=delta,
        dim=packed_size(n_items),
        devices=devices,
        min_survivors=secagg.survivors_needed(devices),
        bits=secagg.bits,
        rotation_seed=secrets.randbits(63),
    )


def collect_distributed(
    grid: Grid,
    client_config: dict[str, Any],
    secagg: SecAggConfig,
    split: Split,
    nodes: dict[int, int],
    *,
    target_epsilon: float,
    delta: float,
    stream: Any,
    timeout: float,
) -> DistributedRelease:
    """Plan, run SecAgg+ over every eligible user's device, check survivors, decode."""
    users = [int(u) for u in eligible_users(split)]
    user_of = {nodes[u]: u for u in users if u in nodes}
    plan = plan_for(secagg, split.n_items, len(user_of), target_epsilon, delta)
    config = {**client_config, "server-round": 1, PLAN_KEY: json.dumps(plan.to_json()),
              MIN_KEY: plan.min_survivors}  # fmt: skip
    if secagg.drop_users:
        config[DROP_KEY] = secagg.drop_users
    result = secure_sum(
        grid, user_of, config, secagg, length=plan.padded, stream=stream, timeout=timeout,
        check_survivors=plan.check_survivors,  # before unmasking: too little noise
    )  # fmt: skip
    survivors = len(result.survivors)
    packed = decode(result.total, plan)
    del result.total
    failed = {u: "no node" for u in users if u not in nodes}
    failed.update(result.failed)
    record = privacy_record(plan, survivors)
    record["secagg"] = {
        "protocol": "SecAgg+ (Bell et al., CCS 2020)",
        "devices": len(user_of),
        "degree": result.degree,
        "threshold": result.params.threshold,
        "bits": result.params.bits,
        "coordinates": result.params.length,
        "survivors": survivors,
        "upload_bytes_per_device": result.upload_bytes,
        "upload_bytes_total_per_device": sum(result.upload_bytes.values()),
        "seconds": result.seconds,
    }
    return DistributedRelease(
        packed=packed,
        noise_std=plan.release_noise_std(survivors),
        added=result.survivors,
        failed=dict(sorted(failed.items())),
        record=record,
    )


def collect_gram(
    grid: Grid, settings: GramSettings, split: Split, nodes: dict[int, int], stream: Any
) -> DistributedRelease:
    """:func:`collect_distributed` with a run's settings (``settings`` resolved)."""
    privacy = settings.base.privacy
    assert privacy.target_epsilon is not None and privacy.delta is not None
    return collect_distributed(
        grid,
        settings.client_config(),
        settings.secagg,
        split,
        nodes,
        target_epsilon=privacy.target_epsilon,
        delta=privacy.delta,
        stream=stream,
        timeout=settings.base.round_timeout,
    )


SERVER_SEES = (
    "devices are trusted to clip (normalize) their own contribution and to add their "
    "noise share honestly: a malicious device is out of scope"
)


def distributed_report(settings: GramSettings, release: DistributedRelease) -> dict[str, Any]:
    """``privacy.json`` of a distributed run (epsilon recomputable from ``distributed``)."""
    record = release.record
    return {
        "format": "fedrec-privacy",
        "version": 1,
        "mode": "distributed",
        "delta": record["plan"]["delta"],
        "accountant": "skellam-rdp (Agarwal, Kairouz & Liu 2021) + Opacus RDP->DP conversion",
        "unit": UNITS["central"],
        "epsilon": record["epsilon"],
        "target_epsilon": settings.base.privacy.target_epsilon,
        "history": [],
        "clients": {},
        "other_releases": [],
        "mechanism": "secure sum (SecAgg+) of row-normalized Gram contributions, each "
        "rotated, scaled, conditionally rounded and carrying a Skellam noise share",
        "distributed": record,
        "not_protected": [*NOT_PROTECTED, SERVER_SEES],
    }


__all__ = [
    "DistributedRelease",
    "collect_distributed",
    "collect_gram",
    "distributed_report",
    "plan_for",
]
