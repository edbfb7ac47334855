"""Distributed DP for a secure sum: the Skellam mechanism (Agarwal, Kairouz & Liu, NeurIPS 2021).

Each device turns its real vector ``x`` (L2 norm at most ``clip``) into integers in the
ring ``Z_{2^bits}`` and adds its own share of the noise, so that the *sum* the server
decodes after secure aggregation (:mod:`fedrec.secagg`) is a Skellam mechanism; no
party ever holds the noise-free sum. Following Kairouz, Liu & Steinke (ICML 2021) and
Agarwal et al. (2021), a device

1. clips ``x`` to L2 norm ``clip`` and zero-pads it to ``D`` coordinates, the smallest
   order ``m 2^k`` of a Hadamard matrix built here (:mod:`fedrec.privacy.hadamard`);
2. rotates it with the public randomized Hadamard transform ``H diag(signs) / sqrt(D)``
   (flattens every coordinate to about ``|x| sqrt(2 ln(D) / D)``, which bounds the
   modular sum; an orthogonal map, so the L2 norm is unchanged; the bound needs only
   entries ``+-1 / sqrt(D)``, which every Hadamard matrix has, not ``D = 2^m``);
3. scales by ``s`` and rounds each coordinate stochastically (unbiased), *conditionally*:
   it redraws the rounding until the integer vector's L2 norm is at most ``gamma``
   (Kairouz et al., "conditional randomized rounding"), so ``gamma`` is the integer
   L2 sensitivity and ``gamma * min(sqrt(D), gamma)`` the L1 sensitivity;
4. adds ``Sk(lam) = Poisson(lam / 2) - Poisson(lam / 2)`` to every coordinate (variance
   ``lam``) from a secret generator, and reduces modulo ``2^bits``.

The Skellam family is closed under sums, so ``n3`` surviving devices give exactly
``Sk(n3 lam)``. Accounting, per user (one device's whole vector, "zero-out"
neighbours: the device still takes part): the protected device's own share is not
counted, so the noise is ``Sk((n3 - 1) lam)``; the mechanism is calibrated for the
declared minimum of survivors ``n_min`` and the server refuses to release with fewer.
Its Renyi DP is Agarwal et al.'s bound (:func:`skellam_rdp`, the one formula written
here), converted to ``(epsilon, delta)`` by Opacus's maintained RDP conversion (Balle et
al. 2020, :func:`opacus.accountants.analysis.rdp.get_privacy_spent`).

Modular wrap-around is a utility matter only (the reduction mod ``2^bits`` is
post-processing of the noisy sum): :func:`wrap_bound` is a bound that holds with
probability at least ``1 - wrap_beta`` on every coordinate of the decoded sum, and the
plan picks the largest scale ``s`` that keeps it below ``2^(bits - 1)``.
"""

from __future__ import annotations

import dataclasses
import math
import warnings
from functools import lru_cache
from typing import Any

import numpy as np
import numpy.typing as npt
from opacus.accountants.analysis.rdp import get_privacy_spent

from fedrec.errors import ConfigError
from fedrec.privacy.hadamard import hadamard_length, transform

F64 = npt.NDArray[np.float64]
U64 = npt.NDArray[np.uint64]
Ring = npt.NDArray[np.unsignedinteger[Any]]
ORDERS: tuple[int, ...] = (*range(2, 129), 160, 192, 256, 384, 512, 1024)
"""Integer RDP orders (the Skellam bound holds for integer ``alpha > 1``)."""
MECHANISM = "skellam"
ROUNDING_BETA = math.exp(-0.5)
"""Kairouz et al.'s choice: each conditional-rounding draw is accepted w.p. >= 1 - beta."""
MAX_ROUNDING_TRIES = 1000


def refuse_for_model(model: str) -> None:
    """Distributed DP covers the one-shot Gram sum of ``--model ease`` only."""
    raise ConfigError(
        f"--privacy distributed is implemented for --model ease only, not {model!r} "
        "(multi-round training under secure aggregation is future work)",
        where="--privacy distributed",
        fix="use --model ease, or --privacy central / local for this model",
    )


def skellam_rdp(alpha: int, l2: float, l1: float, mu: float) -> float:
    """RDP of order ``alpha`` of the Skellam mechanism (Agarwal, Kairouz & Liu, NeurIPS 2021,
    Theorem 3.5 / Corollary 3.6).

    ``eps(alpha) <= alpha l2^2 / (2 mu) + min(((2 alpha - 1) l2^2 + 6 l1) / (4 mu^2),
    3 l1 / (2 mu))`` for integer ``alpha > 1``, integer-valued queries of L2 / L1
    sensitivity ``l2`` / ``l1``, and ``Sk(mu)`` noise (variance ``mu``) per coordinate.
    The first term is the Gaussian mechanism's RDP with variance ``mu``.
    """
    if alpha < 2 or int(alpha) != alpha:
        raise ValueError(f"the Skellam RDP bound needs an integer order > 1, got {alpha}")
    if not (mu > 0 and l2 >= 0 and l1 >= 0):
        raise ValueError("need mu > 0 and non-negative sensitivities")
    a = float(alpha)
    return a * l2**2 / (2 * mu) + min(
        ((2 * a - 1) * l2**2 + 6 * l1) / (4 * mu**2), 3 * l1 / (2 * mu)
    )


def skellam_epsilon(l2: float, l1: float, mu: float, delta: float) -> tuple[float, int]:
    """``(epsilon, best order)`` of one Skellam release (Opacus's RDP -> DP conversion)."""
    rdp = [skellam_rdp(a, l2, l1, mu) for a in ORDERS]
    with warnings.catch_warnings():  # an extreme order is expected while calibrating
        warnings.simplefilter("ignore", UserWarning)
        eps, order = get_privacy_spent(orders=list(ORDERS), rdp=rdp, delta=delta)
    return float(eps), int(order)


def rounded_l2_bound(norm: float, dim: int, beta: float = ROUNDING_BETA) -> float:
    """L2 bound ``gamma`` for conditional randomized rounding of a vector of norm ``norm``
    in ``dim`` coordinates (Kairouz, Liu & Steinke 2021): a draw is accepted with
    probability at least ``1 - beta``:
    ``min(norm + sqrt(dim), sqrt(norm^2 + dim / 4 + sqrt(2 ln(1 / beta)) (norm + sqrt(dim) / 2)))``.
    """
    loose = norm + math.sqrt(dim)
    tight = math.sqrt(
        norm**2 + dim / 4 + math.sqrt(2 * math.log(1 / beta)) * (norm + math.sqrt(dim) / 2)
    )
    return min(loose, tight)


def padded_dim(dim: int) -> int:
    """``D``: the smallest order ``m 2^k >= dim`` of a Hadamard matrix
    (:func:`fedrec.privacy.hadamard.hadamard_length`)."""
    return hadamard_length(dim)


@dataclasses.dataclass(frozen=True)
class DistributedPlan:
    """Public parameters of one distributed-DP sum; everything needed to recompute epsilon.

    Attributes
    ----------
    dim, padded
        Length of the real vector and of the rotated one (``D = m 2^k``, a Hadamard order).
    bits
        Ring ``Z_{2^bits}`` per coordinate (SecAgg's modulus).
    clip
        L2 bound of every device's real vector.
    scale
        ``s``: integers per unit.
    l2, l1
        Integer L2 / L1 sensitivity (``gamma`` of conditional rounding and
        ``gamma * min(sqrt(D), gamma)``).
    devices, min_survivors
        Devices asked, and the fewest survivors for which the noise meets the target.
    device_variance
        ``lam``: Skellam variance each device adds per coordinate.
    target_epsilon, delta
        The calibration target.
    rotation_seed
        Public seed of the rotation's random signs.
    wrap_beta
        Failure probability of :func:`wrap_bound`.
    """

    dim: int
    padded: int
    bits: int
    clip: float
    scale: float
    l2: float
    l1: float
    devices: int
    min_survivors: int
    device_variance: float
    target_epsilon: float
    delta: float
    rotation_seed: int
    wrap_beta: float = 1e-9

    def noise_variance(self, survivors: int) -> float:
        """Accounted Skellam variance with ``survivors`` devices: all but the protected one's."""
        return max(survivors - 1, 0) * self.device_variance

    def epsilon(self, survivors: int) -> float:
        """Epsilon of the release with ``survivors`` devices (``inf`` below 2)."""
        if survivors < 2:
            return math.inf
        return skellam_epsilon(self.l2, self.l1, self.noise_variance(survivors), self.delta)[0]

    def release_noise_std(self, survivors: int) -> float:
        """Std of the noise on each decoded real coordinate (all survivors' shares)."""
        return math.sqrt(survivors * self.device_variance) / self.scale

    def check_survivors(self, survivors: int) -> None:
        """Refuse to release with fewer survivors than the plan's minimum."""
        if survivors < self.min_survivors:
            raise ConfigError(
                f"{survivors} devices survived secure aggregation, fewer than the "
                f"{self.min_survivors} the noise was calibrated for (epsilon would be "
                f"{self.epsilon(survivors):.3g} > {self.target_epsilon}): nothing is released",
                where="--privacy distributed",
                fix="rerun when more devices are online, or lower secagg.min-survivors",
            )

    def to_json(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> DistributedPlan:
        names = {f.name for f in dataclasses.fields(cls)}
        return cls(**{k: v for k, v in data.items() if k in names})


def wrap_bound(
    *, scale: float, clip: float, devices: int, device_variance: float, padded: int, beta: float
) -> float:
    """With probability ``>= 1 - beta``, every coordinate of the (centred) decoded sum
    of ``devices`` encodings is below this in absolute value.

    Three terms, each at ``beta / 3`` over ``padded`` coordinates (union bound): the
    rotated signal (Hoeffding over the random signs: ``|sum x| <= devices clip``), the
    rounding errors (Hoeffding, each in ``(-1, 1)``, width 1), the Skellam noise
    (Bernstein, variance ``devices * device_variance``, unit jumps).
    """
    log = math.log(6 * padded / beta)
    signal = scale * clip * devices * math.sqrt(2 * log / padded)
    rounding = math.sqrt(devices * log / 2)
    variance = devices * device_variance
    noise = log / 3 + math.sqrt(log**2 / 9 + 2 * log * variance)
    return signal + rounding + noise


def _calibrate_variance(l2: float, l1: float, target: float, delta: float) -> float:
    """The smallest Skellam variance (to 1e-6 relative) with epsilon <= ``target``."""
    lo, hi = l2**2 * 1e-6, l2**2 * 1e6
    if skellam_epsilon(l2, l1, hi, delta)[0] > target:
        raise ConfigError(f"epsilon {target} is out of reach", where="--target-epsilon")
    while hi / lo > 1 + 1e-6:
        mid = math.sqrt(lo * hi)
        if skellam_epsilon(l2, l1, mid, delta)[0] <= target:
            hi = mid
        else:
            lo = mid
    return hi


def plan_distributed(
    *,
    target_epsilon: float,
    delta: float,
    dim: int,
    devices: int,
    min_survivors: int,
    bits: int = 20,
    clip: float = 1.0,
    rotation_seed: int = 0,
    wrap_beta: float = 1e-9,
) -> DistributedPlan:
    """Calibrate the mechanism: the largest scale ``s`` whose :func:`wrap_bound` fits the
    ring, and the per-device variance that meets ``target_epsilon`` with
    ``min_survivors`` devices (so the accounted noise is ``(min_survivors - 1) lam``)."""
    if not 2 <= min_survivors <= devices:
        raise ConfigError(
            f"minimum survivors {min_survivors} must lie in [2, {devices}]",
            where="secagg.min-survivors",
            fix="use a fraction such as 0.9",
        )
    if not 8 <= bits <= 62:
        raise ConfigError(f"bits must lie in [8, 62], got {bits}", where="secagg.bits")
    padded = padded_dim(dim)
    half = 2.0 ** (bits - 1)
    scale = half / (devices * clip * math.sqrt(2 * math.log(6 * padded / wrap_beta) / padded))
    for _ in range(200):
        l2 = rounded_l2_bound(scale * clip, padded)
        l1 = l2 * min(math.sqrt(padded), l2)
        mu = _calibrate_variance(l2, l1, target_epsilon, delta)
        lam = mu / (min_survivors - 1)
        bound = wrap_bound(
            scale=scale,
            clip=clip,
            devices=devices,
            device_variance=lam,
            padded=padded,
            beta=wrap_beta,
        )
        if bound < half:
            return DistributedPlan(
                dim=dim,
                padded=padded,
                bits=bits,
                clip=clip,
                scale=scale,
                l2=l2,
                l1=l1,
                devices=devices,
                min_survivors=min_survivors,
                device_variance=lam,
                target_epsilon=target_epsilon,
                delta=delta,
                rotation_seed=rotation_seed,
                wrap_beta=wrap_beta,
            )
        scale *= 0.97 * half / bound
    raise ConfigError(
        f"no scale fits {devices} devices into {bits} bits",
        where="secagg.bits",
        fix="raise secagg.bits",
    )


def _signs(plan: DistributedPlan) -> F64:
    return _signs_of(plan.rotation_seed, plan.padded)


@lru_cache(maxsize=2)
def _signs_of(seed: int, padded: int) -> F64:
    rng = np.random.default_rng(seed)  # public randomness
    out = rng.integers(0, 2, padded).astype(np.float64) * 2.0 - 1.0
    out.flags.writeable = False
    return out


def rotate(x: npt.ArrayLike, plan: DistributedPlan) -> F64:
    """``H diag(signs) pad(x) / sqrt(D)``: an orthogonal map (public signs; ``H`` a
    Hadamard matrix of order ``D``, :mod:`fedrec.privacy.hadamard`)."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    v = np.zeros(plan.padded, dtype=np.float64)
    np.multiply(arr, _signs(plan)[: arr.size], out=v[: arr.size])
    v = transform(v)
    v *= 1.0 / math.sqrt(plan.padded)
    return v


def unrotate(y: npt.ArrayLike, plan: DistributedPlan) -> F64:
    """The inverse of :func:`rotate`, truncated to ``dim``."""
    v = transform(np.array(y, dtype=np.float64), transpose=True)
    v *= 1.0 / math.sqrt(plan.padded)
    v *= _signs(plan)
    return v[: plan.dim]


def conditional_round(y: F64, bound: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """Unbiased stochastic rounding, redrawn until the L2 norm is at most ``bound``."""
    low = np.floor(y)
    frac = y - low
    for _ in range(MAX_ROUNDING_TRIES):
        out = rng.random(y.size)
        np.less(out, frac, out=out)  # 1.0 where rounded up, w.p. frac
        out += low
        if float(np.dot(out, out)) <= bound**2:  # exact: integers below 2^53
            return out.astype(np.int64)
    raise RuntimeError(f"conditional rounding failed {MAX_ROUNDING_TRIES} times (bound too tight)")


def skellam_noise(size: int, variance: float, rng: np.random.Generator) -> npt.NDArray[np.int64]:
    """``Sk(variance)`` per coordinate: the difference of two ``Poisson(variance / 2)``."""
    out = rng.poisson(variance / 2, size).astype(np.int64, copy=False)
    out -= rng.poisson(variance / 2, size)
    return out


def ring_words(bits: int) -> type[np.unsignedinteger[Any]]:
    """Word type of ``Z_{2^bits}`` residues: ``uint32`` up to 32 bits, else ``uint64``
    (the same as :func:`fedrec.secagg.crypto.ring_dtype`)."""
    return np.uint32 if bits <= 32 else np.uint64


def encode(x: npt.ArrayLike, plan: DistributedPlan, rng: np.random.Generator) -> Ring:
    """A device's ring vector: clip, rotate, scale, round conditionally, add its Skellam
    share, reduce mod ``2^bits`` (words of :func:`ring_words`). ``rng`` must be secret
    (:func:`fedrec.privacy.noise.secure_rng`)."""
    arr = np.asarray(x, dtype=np.float64).reshape(-1)
    if arr.size != plan.dim:
        raise ValueError(f"vector of length {arr.size}, the plan is for {plan.dim}")
    norm = float(np.linalg.norm(arr))
    if norm > plan.clip:
        arr = arr * (plan.clip / norm)
    rotated = rotate(arr, plan)
    rotated *= plan.scale
    ints = conditional_round(rotated, plan.l2, rng)
    del rotated
    ints += skellam_noise(plan.padded, plan.device_variance, rng)
    dtype = ring_words(plan.bits)
    out: Ring = ints.astype(dtype)  # two's complement: the residue mod 2^32 / 2^64
    np.bitwise_and(out, dtype((1 << plan.bits) - 1), out=out)
    return out


def centre(residues: Ring, bits: int) -> npt.NDArray[np.int64]:
    """Residues of ``Z_{2^bits}`` as integers in ``[-2^(bits-1), 2^(bits-1))``."""
    r = np.asarray(residues, dtype=np.uint64).astype(np.int64)
    half = 1 << (bits - 1)
    return np.where(r >= half, r - (1 << bits), r)


def decode(total: Ring, plan: DistributedPlan) -> F64:
    """The released real sum: centre the ring sum, un-rotate, divide by ``s``."""
    return unrotate(centre(total, plan.bits).astype(np.float64), plan) / plan.scale


def privacy_record(plan: DistributedPlan, survivors: int) -> dict[str, Any]:
    """What ``privacy.json`` records so epsilon can be recomputed (:func:`epsilon_from_record`)."""
    mu = plan.noise_variance(survivors)
    eps, order = skellam_epsilon(plan.l2, plan.l1, mu, plan.delta)
    return {
        "mechanism": MECHANISM,
        "survivors": survivors,
        "noise_devices": max(survivors - 1, 0),
        "noise_variance": mu,
        "epsilon": eps,
        "best_order": order,
        "orders": list(ORDERS),
        "plan": plan.to_json(),
        "release_noise_std": plan.release_noise_std(survivors),
    }


def epsilon_from_record(record: dict[str, Any]) -> float:
    """Recompute epsilon from a :func:`privacy_record` (its plan and survivors only)."""
    plan = DistributedPlan.from_json(dict(record["plan"]))
    return plan.epsilon(int(record["survivors"]))


__all__ = [
    "MECHANISM",
    "ORDERS",
    "DistributedPlan",
    "centre",
    "conditional_round",
    "decode",
    "encode",
    "epsilon_from_record",
    "padded_dim",
    "plan_distributed",
    "privacy_record",
    "refuse_for_model",
    "ring_words",
    "rotate",
    "rounded_l2_bound",
    "skellam_epsilon",
    "skellam_noise",
    "skellam_rdp",
    "unrotate",
    "wrap_bound",
]
