"""What the adversary sees, regenerated from a run's own client and server code.

Design rule: a run directory does not store client uploads, so the audit does not
replay them. It *regenerates* them: for an audited user it runs one round of the
run's own client code path (:func:`fedrec.federated.client.client_fit`, or
:func:`fedrec.federated.private.client_fit_private` in local mode) with the run's
recorded model, training and privacy settings, starting from the run's final global
item arrays, as at the user's first participation (no stored user state). The DP
noise and sampling are fresh, from :func:`fedrec.privacy.noise.secure_rng`, never
the noise the run drew; a regenerated upload therefore has exactly the distribution
of an upload the server could have received from that user at that model. In central
mode the adversary sees only releases: :func:`central_release` feeds regenerated
updates to the run's own DP-FedAvg mechanism (:func:`make_dp_fedavg`).
"""

from __future__ import annotations

import copy
import dataclasses
import functools
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from fedrec.audit.attacks import update_of
from fedrec.federated.client import client_fit
from fedrec.federated.private import LocalPrivacy, client_fit_private, planned_releases
from fedrec.models.base import Arrays
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.accounting import PrivacyAccount
from fedrec.privacy.central import DPFedAvg
from fedrec.privacy.central_setup import make_dp_fedavg
from fedrec.privacy.config import PrivacyConfig


@dataclass(frozen=True)
class AuditTarget:
    """The audited run: settings as recorded, and its released global item arrays.

    Attributes
    ----------
    privacy
        The run's *resolved* privacy settings (delta and ``z`` filled in).
    n_clients, clients_per_round
        ``N`` (users with train items) and ``K``: central mode's ``q = K / N``.
    """

    model: ModelConfig
    train: LocalTrainConfig
    privacy: PrivacyConfig
    global_items: Arrays
    n_clients: int
    clients_per_round: int

    @property
    def mode(self) -> str:
        return self.privacy.mode

    @property
    def n_items(self) -> int:
        return int(self.global_items[0].shape[0])

    def local_privacy(self) -> LocalPrivacy:
        """The devices' DP-SGD settings, with fresh secret noise (never a test seed)."""
        assert self.privacy.noise_multiplier is not None, "resolve the privacy settings first"
        privacy = dataclasses.replace(self.privacy, insecure_noise_seed=None)
        local = LocalPrivacy.from_config(
            privacy, self.model, noise_multiplier=self.privacy.noise_multiplier
        )
        return dataclasses.replace(local, epsilon_budget=None)

    def release_epsilon(self, n_train: int) -> float | None:
        """Epsilon of the one regenerated release of a user with ``n_train`` items."""
        if self.mode == "none" or self.privacy.delta is None:
            return None
        account = PrivacyAccount(accountant=self.privacy.accountant)
        if self.mode == "local":
            z = float(self.privacy.noise_multiplier or 0.0)
            for release in planned_releases(self.model, self.train, z, n_train, first=True):
                account.record_release(release)
        else:
            account.record_release(self.mechanism().release)
        return account.epsilon(self.privacy.delta)

    def mechanism(self) -> DPFedAvg:
        """A fresh instance of the run's DP-FedAvg mechanism (central mode)."""
        return copy.deepcopy(self._mechanism)

    @functools.cached_property
    def _mechanism(self) -> DPFedAvg:
        """Built once (:func:`make_dp_fedavg` builds a model); :meth:`mechanism` copies it."""
        return make_dp_fedavg(
            self.privacy,
            self.model,
            n_clients=self.n_clients,
            clients_per_round=self.clients_per_round,
        )

    @property
    def sample_rate(self) -> float:
        return min(1.0, self.clients_per_round / self.n_clients)


def client_update(target: AuditTarget, train_items: npt.NDArray[np.int64], *, seed: int) -> Arrays:
    """``upload - global`` of one regenerated client round (see the module docstring)."""
    if target.mode == "local":
        fit = client_fit_private(
            target.model,
            target.train,
            target.local_privacy(),
            target.global_items,
            None,
            train_items,
            seed=seed,
        )
        return update_of(fit.item_arrays, target.global_items)
    plain = client_fit(
        target.model, target.train, target.global_items, None, train_items, seed=seed
    )
    return update_of(plain.item_arrays, target.global_items)


def central_release(
    target: AuditTarget, cohort: Sequence[Arrays], rng: np.random.Generator
) -> Arrays:
    """One DP-FedAvg release (the noisy mean update) of the updates in ``cohort``.

    ``rng`` must be secret (:func:`fedrec.privacy.noise.secure_rng`): it draws the noise.
    """
    mechanism = target.mechanism()
    clients = [[g + d for g, d in zip(target.global_items, u, strict=True)] for u in cohort]
    return mechanism.aggregate(target.global_items, clients, rng)


def clipped_direction(target: AuditTarget, update: Arrays) -> list[npt.NDArray[np.float64]]:
    """The unit vector of a client's clipped, scaled update (the canary direction).

    Returned in the release's (unscaled) coordinates multiplied back by the scales,
    so that ``sum <release_j * s_j, direction_j>`` projects the scaled noisy sum.
    """
    scales = target.mechanism().array_scales or [1.0] * len(update)
    scaled = [np.asarray(a, np.float64) * s for a, s in zip(update, scales, strict=True)]
    norm = float(np.sqrt(sum(float(np.sum(a**2)) for a in scaled))) or 1.0
    return [a / norm * s for a, s in zip(scaled, scales, strict=True)]


def project(release: Arrays, direction: Sequence[npt.NDArray[np.float64]]) -> float:
    """``sum_j <release_j, direction_j>``."""
    return float(
        sum(np.sum(np.asarray(r, np.float64) * d) for r, d in zip(release, direction, strict=True))
    )
