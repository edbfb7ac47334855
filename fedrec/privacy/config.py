"""The privacy settings of a run: one frozen, validated record.

Design rule: a run's privacy mode and its parameters are decided once, here, and
flow as typed arguments to the client (local DP-SGD) and the server (DP-FedAvg).
Either ``target_epsilon`` is given, and the noise multiplier is calibrated with an
Opacus accountant for the planned participation, or ``noise_multiplier`` is given
directly (then ``target_epsilon``, if also given, is the budget a client or the
server refuses to exceed).
"""

from __future__ import annotations

from dataclasses import dataclass

from fedrec.errors import ConfigError

PRIVACY_MODES = ("none", "local", "central", "distributed")
"""``distributed``: SecAgg+ with Skellam noise shares, ``--model ease`` only (docs/SECAGG.md)."""

ACCOUNTANTS = ("rdp", "prv")
"""Opacus accountants a run may choose; ``"rdp"`` is the default."""


@dataclass(frozen=True)
class PrivacyConfig:
    """Privacy settings of a federated run.

    Attributes
    ----------
    mode
        ``"none"``, ``"local"`` (DP-SGD on each device, Opacus; one interaction is the
        unit for MF, one user's row for the autoencoders) or ``"central"`` (user-level
        DP-FedAvg, McMahan et al. ICLR 2018, on the server).
    target_epsilon
        Budget: per client (local) or for the run (central). ``None`` with a given
        ``noise_multiplier`` means no budget is enforced.
    delta
        ``None`` means :func:`fedrec.privacy.accounting.default_delta` of the number of
        users.
    noise_multiplier
        Gaussian noise std / clipping norm; ``None`` = calibrate to ``target_epsilon``.
    clip_norm
        Per-example (local) or per-client-update (central) L2 clipping bound.
    accountant
        ``"rdp"`` (default) or ``"prv"``: the Opacus accountant.
    adaptive_clipping
        Central mode only: adapt ``clip_norm`` (Andrew et al. 2021).
    bias_scale
        Weight of the item-bias parameters inside the clipped vector: the client's
        update (central) or each example's gradient (local, MF), undone after the
        noise. The biases dominate an MF update's norm; a factor below 1 leaves more
        of the clip budget to the embeddings (and puts proportionally more noise on
        the biases).
    insecure_noise_seed
        TESTS ONLY: seed the DP noise so runs repeat. Recorded in ``config.json`` and
        flagged in the report; the guarantee does not hold with it.
    eval_epsilon
        Deployment only (``local``/``central``): epsilon of *each* DP evaluation (one
        Gaussian release of clipped per-user metrics, :mod:`fedrec.metrics.private`),
        spent on top of training. ``None``: a private deployment requests no
        evaluation. ``fedrec simulate`` measures outside the protocol and ignores it.
    eval_clip_norm
        L2 bound of a user's metric vector in a DP evaluation; ``None`` = ``sqrt(k)``
        for ``k`` metrics (never binds, each metric lies in ``[0, 1]``).
    """

    mode: str = "none"
    target_epsilon: float | None = None
    delta: float | None = None
    noise_multiplier: float | None = None
    clip_norm: float = 1.0
    accountant: str = "rdp"
    adaptive_clipping: bool = False
    bias_scale: float = 1.0
    insecure_noise_seed: int | None = None
    eval_epsilon: float | None = None
    eval_clip_norm: float | None = None

    def __post_init__(self) -> None:
        where = "privacy"
        if self.mode not in PRIVACY_MODES:
            raise ConfigError(
                f"unknown privacy mode {self.mode!r}",
                where=where,
                fix="use none|local|central|distributed",
            )
        if self.accountant not in ACCOUNTANTS:
            raise ConfigError(
                f"unknown accountant {self.accountant!r}",
                where="accountant",
                fix="use " + "|".join(ACCOUNTANTS),
            )
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(f"must be > 0, got {self.target_epsilon}", where="--target-epsilon")
        if self.delta is not None and not 0 < self.delta < 1:
            raise ConfigError(f"must lie in (0, 1), got {self.delta}", where="--delta")
        if self.noise_multiplier is not None and not self.noise_multiplier > 0:
            raise ConfigError(
                f"must be > 0, got {self.noise_multiplier}", where="--noise-multiplier"
            )
        if not self.clip_norm > 0:
            raise ConfigError(f"must be > 0, got {self.clip_norm}", where="--clip-norm")
        for name in ("eval_epsilon", "eval_clip_norm"):
            value = getattr(self, name)
            if value is not None and not value > 0:
                raise ConfigError(
                    f"must be > 0, got {value}", where=f"privacy.{name.replace('_', '-')}"
                )
        if not self.bias_scale > 0:
            raise ConfigError(f"must be > 0, got {self.bias_scale}", where="--bias-scale")
        if self.mode != "none" and self.target_epsilon is None and self.noise_multiplier is None:
            raise ConfigError(
                f"privacy mode {self.mode!r} needs a budget or a noise level",
                where="--privacy",
                fix="give --target-epsilon E (calibrated) or --noise-multiplier Z",
            )
        if self.mode == "distributed" and self.target_epsilon is None:
            raise ConfigError(
                "distributed DP is calibrated to a budget, not a noise multiplier",
                where="--privacy distributed",
                fix="give --target-epsilon E (and --delta D)",
            )
        if self.adaptive_clipping and self.mode != "central":
            raise ConfigError(
                "adaptive clipping applies to central mode only", where="--adaptive-clipping"
            )

    @property
    def enabled(self) -> bool:
        return self.mode != "none"
