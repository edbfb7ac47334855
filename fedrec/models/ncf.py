"""NeuMF (Neural Collaborative Filtering), split for federated training.

NeuMF (He et al., "Neural Collaborative Filtering", WWW 2017) fuses two towers:

- GMF: ``p_u^G * q_i^G`` (elementwise product, ``dim`` wide);
- MLP: ``[p_u^M ; q_i^M]`` (``2 dim`` wide) through ReLU layers ``2d -> d -> d/2``
  (the paper's halving tower; ``dim = 32`` gives the ``[64, 32, 16]`` tower);

and a final linear layer ``h^T [gmf ; mlp] + b`` gives the logit.

Federated split (the FedNCF / FedFast designs: Perifanis & Efraimidis 2022; Muhammad
et al., KDD 2020): the two user embeddings ``p_u^G``, ``p_u^M`` are user-side and never
leave the device. Everything else is item-side and aggregated: the two item tables
(item-indexed rows) *and* the MLP tower and output layer. The tower and output layer
are not item-indexed: they are shared weights that every device's update changes,
uploaded dense like the item tables (they cannot hide anything by being sparse; what
they reveal without DP is stated in docs/PRIVACY.md).

Loss: BCE with ``negatives`` sampled negatives per positive, drawn exactly as MF draws
them (:func:`fedrec.training.negatives.keyed_negatives`: keyed per interaction), plus
MF's per-example L2 penalty ``l2 * (||q_i||^2 + ||p_u||^2 / rows)`` over the embedding
rows the example uses (both towers' rows). Only ``nn.Embedding``, ``nn.Linear`` and
elementwise operations are used.

Federated training (:func:`fedrec.federated.presets.ncf_preset`): FedSGD devices (refit
the user vectors, upload the global item side minus the gradient of the device's mean
loss) and server Adam, for :data:`fedrec.federated.presets.NCF_PASSES` passes over the
users (:meth:`NeuMF.shaped_defaults`).

``--privacy local`` is refused for this model (:data:`LOCAL_DP_REFUSAL`).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, ClassVar

import numpy as np
import numpy.typing as npt
import torch
from torch import nn
from torch.nn import functional as F

from fedrec.models.base import LocalUnit
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.models.trainable import Examples, ScoreFn, TrainableRecommender

if TYPE_CHECKING:
    from fedrec.data.split import Split
    from fedrec.federated.shape import DataShape, ShapedDefaults
from fedrec.training.negatives import keyed_negatives

LOCAL_DP_REFUSAL = (
    "--model ncf has no audited local-DP mechanism: DP-SGD's clipping would cover its "
    "Linear and Embedding layers, but fedrec's one-interaction unit (the grouping of a "
    "positive with its negatives, the ledger's unit and the sensitivity audit that "
    "attacks it) is wired and tested for MF only, so no local guarantee is claimed for NCF"
)
USER_INIT_STREAM = 0x4E4346
"""Stream of a device's fresh user vectors (NumPy PCG64 seeded with ``(seed, stream)``)."""


def tower_widths(dim: int) -> tuple[int, ...]:
    """The MLP tower's widths ``(2d, d, max(1, d // 2))``: input, hidden, output."""
    return (2 * dim, dim, max(1, dim // 2))


class NeuMF(TrainableRecommender):
    """NeuMF: GMF and MLP towers with separate embeddings, fused by a linear layer.

    Upload order starts with ``item_gmf.weight`` ``[n_items, dim]`` (the first
    item-side array's first dimension is the catalogue size). One example is one
    (user, item, label) row, as MF's BCE: ``forward`` returns ``[b, 2]`` (logit,
    L2 penalty).
    """

    kind: ClassVar[str] = "ncf"
    PRESET: ClassVar[str] = "fedrec.federated.presets:ncf_preset"
    SKIPS_ITEM_INIT: ClassVar[bool] = True
    ITEM_SIDE: ClassVar[tuple[str, ...]] = (
        "item_gmf.weight",
        "item_mlp.weight",
        "tower.0.weight",
        "tower.0.bias",
        "tower.2.weight",
        "tower.2.bias",
        "output.weight",
        "output.bias",
    )
    USER_SIDE: ClassVar[tuple[str, ...]] = ("user_gmf.weight", "user_mlp.weight")
    TOWER_PARAMETERS: ClassVar[tuple[str, ...]] = ITEM_SIDE[2:]
    """Item-side but not item-indexed: shared weights, uploaded dense."""
    BIAS_PARAMETERS: ClassVar[tuple[str, ...]] = ("tower.0.bias", "tower.2.bias", "output.bias")
    ITEM_VECTORS: ClassVar[str] = "item_gmf.weight"  # the GMF tower's item vectors
    LOCAL_DP_UNIT: ClassVar[LocalUnit | None] = None
    LOCAL_DP_REFUSAL: ClassVar[str | None] = LOCAL_DP_REFUSAL

    def __init__(
        self, cfg: ModelConfig, n_items: int, n_users: int = 1, *, item_init: bool = True
    ) -> None:
        super().__init__(n_items, n_users)
        self.cfg = cfg
        d = cfg.dim

        def item_table() -> nn.Embedding:  # item_init=False: left for the caller to load
            if item_init:
                return nn.Embedding(n_items, d)
            return nn.Embedding(n_items, d, _weight=torch.empty(n_items, d))

        self.user_gmf = nn.Embedding(n_users, d)
        self.user_mlp = nn.Embedding(n_users, d)
        self.item_gmf = item_table()
        self.item_mlp = item_table()
        w_in, w_mid, w_out = tower_widths(d)
        self.tower = nn.Sequential(
            nn.Linear(w_in, w_mid), nn.ReLU(), nn.Linear(w_mid, w_out), nn.ReLU()
        )
        self.output = nn.Linear(d + w_out, 1)
        tables = (self.user_gmf, self.user_mlp, self.item_gmf, self.item_mlp)
        for table in tables if item_init else tables[:2]:
            nn.init.normal_(table.weight, std=cfg.init_std)
        if item_init:
            for layer in (self.tower[0], self.tower[2], self.output):
                assert isinstance(layer, nn.Linear)
                nn.init.xavier_uniform_(layer.weight)  # Glorot, as He et al.'s MLP
                nn.init.zeros_(layer.bias)

    def seed_device_user(self, seed: int) -> None:
        """A device's fresh ``p_u^G``, ``p_u^M`` ``~ N(0, init_std^2)``, from ``seed`` alone
        (NumPy's PCG64 at ``(seed, USER_INIT_STREAM)``): the same whether the device model
        initialized its item side or not (it skips it: the global arrays overwrite it)."""
        rng = np.random.default_rng([seed % 2**64, USER_INIT_STREAM])
        fresh = rng.standard_normal((2, self.cfg.dim)) * self.cfg.init_std
        with torch.no_grad():
            self.user_gmf.weight[0] = torch.from_numpy(fresh[0].astype(np.float32))
            self.user_mlp.weight[0] = torch.from_numpy(fresh[1].astype(np.float32))

    @classmethod
    def shaped_defaults(cls, shape: DataShape) -> ShapedDefaults:
        """Rounds for :data:`fedrec.federated.presets.NCF_PASSES` passes over the users
        at 100 devices per round (at least 50 rounds): ml-100k 50, ml-1m 302."""
        from fedrec.federated.presets import NCF_PASSES
        from fedrec.federated.shape import ShapedDefaults, rounds_reason, shaped_rounds

        rounds, k = shaped_rounds(shape, NCF_PASSES)
        reason = rounds_reason(shape, rounds, k, given=False, passes=NCF_PASSES)
        return ShapedDefaults(rounds, k, {}, (reason,), passes=NCF_PASSES)

    @classmethod
    def twin_preset(cls) -> tuple[ModelConfig, LocalTrainConfig]:
        """The federated model and loss; He et al.'s Adam on minibatches."""
        from fedrec.federated.presets import NCF_MODEL
        from fedrec.training.centralized import NCF_CENTRAL_TRAIN

        return NCF_MODEL, NCF_CENTRAL_TRAIN

    @classmethod
    def train_twin(
        cls,
        model_cfg: ModelConfig,
        train_cfg: LocalTrainConfig,
        split: Split,
        *,
        seed: int,
        epochs: int | None,
    ) -> ScoreFn:
        """The generic twin, for :data:`fedrec.training.centralized.NCF_CENTRAL_EPOCHS`
        epochs unless told (it overfits)."""
        from fedrec.training.centralized import NCF_CENTRAL_EPOCHS, train_generic

        epochs = NCF_CENTRAL_EPOCHS if epochs is None else epochs
        return train_generic(model_cfg, train_cfg, split, seed=seed, epochs=epochs)

    def _logits(
        self, pg: torch.Tensor, pm: torch.Tensor, qg: torch.Tensor, qm: torch.Tensor
    ) -> torch.Tensor:
        """Logits from user vectors and item vectors that broadcast against each other."""
        pm = pm.expand(*qm.shape[:-1], pm.shape[-1])
        mlp = self.tower(torch.cat([pm, qm], dim=-1))
        return self.output(torch.cat([pg * qg, mlp], dim=-1)).squeeze(-1)

    def forward(self, users: torch.Tensor, items: torch.Tensor) -> torch.Tensor:
        """``[b, 2]``: the logit and the example's squared embedding norms
        ``||q_i^G||^2 + ||q_i^M||^2 + ||p_u^G||^2 + ||p_u^M||^2``."""
        pg, pm = self.user_gmf(users), self.user_mlp(users)
        qg, qm = self.item_gmf(items), self.item_mlp(items)
        logits = self._logits(pg, pm, qg, qm)
        penalty = (qg * qg).sum(-1) + (qm * qm).sum(-1) + (pg * pg).sum(-1) + (pm * pm).sum(-1)
        return torch.stack([logits, penalty], dim=-1)

    def make_examples(
        self,
        users: npt.NDArray[np.int64],
        items: npt.NDArray[np.int64],
        *,
        generator: torch.Generator,
        key: bytes | None = None,
    ) -> Examples:
        """Positives with ``cfg.negatives`` keyed uniform negatives each (MF's BCE rows:
        positives first, then the negatives of each positive in turn)."""
        u = torch.as_tensor(np.asarray(users, dtype=np.int64))
        i = torch.as_tensor(np.asarray(items, dtype=np.int64))
        k = self.cfg.negatives
        drawn = keyed_negatives(generator, key, u.numpy(), i.numpy(), k, self.n_items)
        neg = torch.from_numpy(drawn.reshape(-1))
        users_all = torch.cat([u, u.repeat_interleave(k)])
        labels = torch.cat([torch.ones(len(i)), torch.zeros(len(neg))])
        return Examples((users_all, torch.cat([i, neg])), labels)

    def loss(self, output: torch.Tensor, target: torch.Tensor) -> torch.Tensor:
        """Mean BCE over the rows plus ``cfg.l2`` times the mean penalty."""
        logits, penalty = output[..., 0], output[..., 1]
        data = F.binary_cross_entropy_with_logits(logits, target, reduction="mean")
        if self.cfg.l2 == 0:
            return data
        return data + self.cfg.l2 * penalty.mean()

    def score(self, users: torch.Tensor, history: torch.Tensor) -> torch.Tensor:
        """Logits ``[b, n_items]`` of every item; ``history`` is unused."""
        del history
        pg = self.user_gmf(users).unsqueeze(1)  # [b, 1, d]
        pm = self.user_mlp(users).unsqueeze(1)
        qg = self.item_gmf.weight.unsqueeze(0)  # [1, n, d]
        qm = self.item_mlp.weight.unsqueeze(0).expand(len(users), -1, -1)
        return self._logits(pg, pm, qg, qm)
