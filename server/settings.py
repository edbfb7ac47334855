"""One frozen record of a federated run's settings, and its flat (kebab-case) form.

Design rule: configuration flows one way. ``fedrec simulate`` or
``[tool.flwr.app.config]`` -> :class:`RunSettings` (validated once) -> typed
arguments. The flat form (:meth:`RunSettings.to_flat`) is what ``config.json`` stores
and what ``flwr run`` passes as ``run_config``; :meth:`RunSettings.client_config` is
the part a client needs, sent in every message's ``ConfigRecord`` (the simulation
engine's ``run_simulation`` cannot pass a run config to the ``ClientApp``). Flat keys:
``data``, ``model``, ``strategy``, ``num-server-rounds``, ... at the top level, and
``model.<field>``, ``train.<field>``, ``server.<field>`` (fields in kebab-case) for the
model, local-training and server-optimizer dataclasses.
"""

from __future__ import annotations

import dataclasses
import difflib
import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from fedrec.errors import ConfigError, DataError
from fedrec.federated.aggregation import ServerConfig
from fedrec.federated.presets import default_rounds, federated_preset
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.config import PrivacyConfig

if TYPE_CHECKING:  # data and models load where used: the CLI parser reads the defaults
    from fedrec.data.split import Split

Scalar = bool | int | float | str
FEDPROX_DEFAULT_MU = 0.01
_TOP = {
    "data": "data",
    "min-rating": "min_rating",
    "k-core": "k_core",
    "split": "split",
    "test-fraction": "test_fraction",
    "validation-fraction": "validation_fraction",
    "num-server-rounds": "rounds",
    "clients-per-round": "clients_per_round",
    "seed": "seed",
    "eval-every": "eval_every",
    "eval-clients": "eval_clients",
    "final-eval-all": "final_eval_all",
    "run-dir": "run_dir",
    "round-timeout": "round_timeout",
    "noop": "noop",
    "fail-users": "fail_users",
}
_CLIENT_TOP = (
    "data",
    "min-rating",
    "k-core",
    "split",
    "test-fraction",
    "validation-fraction",
    "seed",
    "noop",
    "fail-users",
)


@dataclass(frozen=True)
class RunSettings:
    """Everything that decides a federated run's result.

    ``final_eval_all=False`` ends the run with the seeded ``eval_clients`` sample instead
    of every test user (scale runs: 100k evaluations cost more than the training).
    ``noop`` (clients echo the global arrays; for timing the Flower overhead) and
    ``fail_users`` (these users' clients raise) are TEST-ONLY switches.
    ``validation_fraction`` (``fedrec tune``'s trials): train on the protocol train set
    minus a per-user validation holdout of this fraction, and score on that holdout
    only (:func:`fedrec.data.split.validation_split`); the test items are in neither.
    """

    data: str = "synthetic"
    min_rating: float | None = None
    k_core: int | None = None
    split: str = "random"
    test_fraction: float = 0.2
    validation_fraction: float | None = None
    model: ModelConfig = field(default_factory=ModelConfig)
    train: LocalTrainConfig = field(default_factory=LocalTrainConfig)
    server: ServerConfig = field(default_factory=ServerConfig)
    rounds: int = 20
    clients_per_round: int = 100
    seed: int = 0
    eval_every: int = 0
    eval_clients: int = 100
    final_eval_all: bool = True
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    run_dir: str = "runs/flwr"
    round_timeout: float = 600.0
    noop: bool = False
    fail_users: tuple[int, ...] = ()

    def __post_init__(self) -> None:
        for name in ("rounds", "clients_per_round"):
            if getattr(self, name) < 1:
                raise ConfigError(f"must be >= 1, got {getattr(self, name)}", where=name)
        if self.eval_every < 0:
            raise ConfigError(f"must be >= 0, got {self.eval_every}", where="eval-every")
        if self.split not in ("random", "temporal"):
            raise ConfigError(f"unknown split {self.split!r}", where="split", fix="random|temporal")
        vf = self.validation_fraction
        if vf is not None and not 0.0 < float(vf) < 1.0:
            raise ConfigError(
                f"must be strictly between 0 and 1, got {vf}",
                where="validation-fraction",
                fix="use e.g. 0.2 (or leave it out: the run is scored on the test items)",
            )

    def to_flat(self) -> dict[str, Scalar]:
        """The flat kebab-case form (``config.json``, ``run_config``); ``None`` is left out."""
        flat: dict[str, Scalar] = {}
        for key, name in _TOP.items():
            value = getattr(self, name)
            if name == "fail_users":
                value = ",".join(str(u) for u in value)
            if value is not None:
                flat[key] = value
        flat["model"], flat["strategy"] = self.model.kind, self.server.strategy
        flat["privacy"] = self.privacy.mode
        for prefix, obj in self._parts():
            for f in dataclasses.fields(obj):
                value = getattr(obj, f.name)
                if f.name not in ("kind", "strategy", "mode") and value is not None:
                    flat[f"{prefix}.{f.name.replace('_', '-')}"] = value
        return flat

    def _parts(self) -> tuple[tuple[str, Any], ...]:
        return (
            ("model", self.model),
            ("train", self.train),
            ("server", self.server),
            ("privacy", self.privacy),
        )

    def client_config(self) -> dict[str, Scalar]:
        """What a client needs: data and split spec, seed, model and training settings."""
        flat = self.to_flat()
        keep = {
            k: v
            for k, v in flat.items()
            if k in _CLIENT_TOP or k.startswith(("model", "train.", "privacy"))
        }
        keep["weighted"] = self.server.weighted
        keep["store-dir"] = str(self.run_dir).rstrip("/") + "/clients"
        return keep

    @classmethod
    def from_run_config(cls, config: Mapping[str, Any]) -> RunSettings:
        """Build from a flat mapping; unknown keys are a :class:`ConfigError`."""
        top: dict[str, Any] = {}
        parts: dict[str, dict[str, Any]] = {"model": {}, "train": {}, "server": {}, "privacy": {}}
        for key, value in config.items():
            prefix, _, rest = key.partition(".")
            if key == "model":
                parts["model"]["kind"] = value
            elif key == "strategy":
                parts["server"]["strategy"] = value
            elif key == "privacy":
                parts["privacy"]["mode"] = value
            elif rest and prefix in parts:
                parts[prefix][rest.replace("-", "_")] = value
            elif key in _TOP:
                top[_TOP[key]] = value
            else:
                raise unknown_setting(key)
        _check_fields(parts)
        if isinstance(top.get("fail_users"), str):
            text = top["fail_users"].strip()
            top["fail_users"] = tuple(int(u) for u in text.split(",")) if text else ()
        try:
            preset_model, preset_train, preset_server = federated_preset(
                str(parts["model"].get("kind", ModelConfig().kind)),
                parts["server"].get("strategy"),
                str(parts["privacy"].get("mode", "none")),
            )
            model = dataclasses.replace(preset_model, **parts["model"])
            train = dataclasses.replace(preset_train, **parts["train"])
            strategy = parts["server"].get("strategy", preset_server.strategy)
            base_server = preset_server if strategy == preset_server.strategy else ServerConfig()
            server = dataclasses.replace(base_server, **parts["server"])
            privacy = PrivacyConfig(**parts["privacy"])
        except TypeError as err:
            raise ConfigError(str(err), where="run config", fix="check the field names") from err
        from fedrec.models.registry import refuse_local_dp

        refuse_local_dp(model.kind, privacy.mode)  # iALS, NCF: no local-DP mechanism
        top.setdefault("rounds", default_rounds(model.kind, privacy.mode))  # as the CLI
        if server.strategy == "fedprox" and train.proximal_mu == 0.0:
            train = dataclasses.replace(train, proximal_mu=FEDPROX_DEFAULT_MU)
        return cls(model=model, train=train, server=server, privacy=privacy, **top)


_PART_TYPES: dict[str, type[Any]] = {
    "model": ModelConfig,
    "train": LocalTrainConfig,
    "server": ServerConfig,
    "privacy": PrivacyConfig,
}


def _check_fields(parts: Mapping[str, Mapping[str, Any]]) -> None:
    """Refuse an unknown ``model.x`` / ``train.x`` / ... key, listing the valid ones."""
    for prefix, given in parts.items():
        valid = {f.name for f in dataclasses.fields(_PART_TYPES[prefix])}
        unknown = sorted(set(given) - valid)
        if unknown:
            raise unknown_setting(f"{prefix}.{unknown[0].replace('_', '-')}")


def flat_keys() -> list[str]:
    """Every key of the flat form: the top-level ones, then ``model.<field>``, ..."""
    keys = [*_TOP, "model", "strategy", "privacy"]
    for prefix, part in _PART_TYPES.items():
        keys += [f"{prefix}.{f.name.replace('_', '-')}" for f in dataclasses.fields(part)]
    return keys


def unknown_setting(key: str, where: str = "--set / run config") -> ConfigError:
    """The error for a flat key that names no setting: the closest valid key, and the list."""
    valid, prefix = flat_keys(), key.partition(".")[0]
    spelled = key.replace("_", "-")
    close = [k for k in valid if k.endswith(("-" + spelled, "." + spelled))]
    close = close or difflib.get_close_matches(spelled, valid, n=1, cutoff=0.8)
    hint = f"did you mean {close[0]}? " if close and close[0] != key else ""
    if "." in key and prefix in _PART_TYPES:
        names = [k for k in valid if k.startswith(prefix + ".")]
        listed = f"valid {prefix} keys: " + ", ".join(names)
    else:
        tops = [k for k in valid if "." not in k] + [f"{p}.<field>" for p in _PART_TYPES]
        listed = "valid keys: " + ", ".join(tops)
    return ConfigError(f"unknown setting {key}", where=where, fix=hint + listed)


def load_split(settings: RunSettings) -> Split:
    """The protocol split of the run's data (same call as the clients make), or its
    validation split (``validation_fraction``). Read and split once per process while
    the file is unchanged: the cached split is shared and read-only
    (:func:`fedrec.data.split_cache.cached_split`)."""
    from fedrec.data.split_cache import SplitSpec, cached_split

    return cached_split(
        SplitSpec(
            data=settings.data,
            min_rating=settings.min_rating,
            k_core=settings.k_core,
            method=settings.split,
            test_fraction=settings.test_fraction,
            seed=settings.seed,
            validation_fraction=settings.validation_fraction,
        )
    )


def read_flat(run_dir: Path) -> dict[str, Any]:
    """``config.json``'s flat settings of the run in ``run_dir`` (``run-dir`` set to it)."""
    path = run_dir / "config.json"
    if not path.is_file():
        raise DataError(
            "not a fedrec run directory (no config.json)",
            where=str(run_dir),
            fix="pass the --out of an earlier `fedrec simulate`",
        )
    try:
        flat = dict(json.loads(path.read_text(encoding="utf-8"))["settings"])
    except (json.JSONDecodeError, KeyError, TypeError) as err:
        raise DataError(f"unreadable config.json ({err})", where=str(path)) from err
    flat["run-dir"] = str(run_dir)
    return flat
