"""Settings of a one-shot federated-EASE run (:mod:`server.gram_app`).

The shared :class:`server.settings.RunSettings` plus
:class:`fedrec.federated.gram.GramConfig`, read from and written to the flat
kebab-case form (``model = "ease"``, ``ease.*`` keys) that ``config.json`` stores.
Runs written before ``ease.denoise`` existed used the ridge-only rule; they read back
with today's defaults (serving them needs only their checkpoint).
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Any

from fedrec.federated import gram
from fedrec.secagg.config import SecAggConfig
from server.settings import RunSettings, read_flat

MODEL_KIND = "ease"
_EASE_KEYS = {
    "ease.lambda": "ease_lambda",
    "ease.denoise": "denoise",
    "ease.tau": "tau",
    "ease.c": "lambda_c",
    "ease.a": "lambda_a",
    "ease.b": "lambda_b",
    "ease.max-items": "max_items",
}
_SECAGG_KEYS = {
    "secagg.neighbours": "neighbours",
    "secagg.threshold": "threshold",
    "secagg.bits": "bits",
    "secagg.min-survivors": "min_survivors",
    "secagg.drop-users": "drop_users",
}
"""``--privacy distributed`` (:mod:`server.gram_secagg`, docs/SECAGG.md)."""


@dataclasses.dataclass(frozen=True)
class GramSettings:
    """A federated-EASE run: the shared run settings plus :class:`GramConfig`."""

    base: RunSettings
    ease: gram.GramConfig = dataclasses.field(default_factory=gram.GramConfig)
    secagg: SecAggConfig = dataclasses.field(default_factory=SecAggConfig)

    @classmethod
    def from_flat(cls, flat: dict[str, Any]) -> GramSettings:
        """From flat kebab-case settings with ``model = "ease"`` and ``ease.*`` keys."""
        rest = {k: v for k, v in flat.items() if k != "model" and k not in _EASE_KEYS}
        rest = {k: v for k, v in rest.items() if not k.startswith(("model.", "train."))}
        rest = {k: v for k, v in rest.items() if k not in _SECAGG_KEYS}
        ease = {_EASE_KEYS[k]: v for k, v in flat.items() if k in _EASE_KEYS}
        secagg = {_SECAGG_KEYS[k]: v for k, v in flat.items() if k in _SECAGG_KEYS}
        rest["num-server-rounds"] = 1
        return cls(
            RunSettings.from_run_config(rest), gram.GramConfig(**ease), SecAggConfig(**secagg)
        )

    def to_flat(self) -> dict[str, Any]:
        """The flat form ``config.json`` stores (``from_flat`` reads it back)."""
        flat = {
            k: v
            for k, v in self.base.to_flat().items()
            if not k.startswith(("model.", "train.", "server.")) and k != "strategy"
        }
        flat["model"] = MODEL_KIND
        flat.update({k: getattr(self.ease, f) for k, f in _EASE_KEYS.items()})
        flat.update({k: getattr(self.secagg, f) for k, f in _SECAGG_KEYS.items()})
        return flat

    def client_config(self) -> dict[str, Any]:
        """What a device needs: data and split spec, seed, privacy mode, model kind."""
        keep = {
            k: v
            for k, v in self.base.client_config().items()
            if not k.startswith(("model.", "train.")) and k != "weighted"
        }
        keep["model"] = MODEL_KIND
        return keep

    def config_payload(self, payload: dict[str, Any]) -> dict[str, Any]:
        """``config.json`` from the shared one (:func:`simulations.run_dir.config_payload`)."""
        out = {k: v for k, v in payload.items() if k not in ("train", "server")}
        out["model"] = {"kind": MODEL_KIND, **dataclasses.asdict(self.ease)}
        if self.base.privacy.mode == "distributed":
            out["secagg"] = dataclasses.asdict(self.secagg)
        out["strategy"] = "one-shot Gram sum"
        out["rounds"], out["settings"] = 1, self.to_flat()
        return out


def is_gram_run(run_dir: Path) -> bool:
    """Whether ``run_dir`` holds a federated-EASE run (``model = "ease"``)."""
    return read_flat(run_dir).get("model") == MODEL_KIND


__all__ = ["MODEL_KIND", "GramSettings", "is_gram_run"]
