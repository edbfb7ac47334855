"""Read a train/evaluate message's flat ``ConfigRecord`` into fedrec's typed settings.

Design rule: configuration flows one way; the flat kebab-case keys of
:meth:`server.settings.RunSettings.client_config` become the same frozen dataclasses
the server validated (``model.*`` -> :class:`ModelConfig`, ``train.*`` ->
:class:`LocalTrainConfig`, ``privacy`` / ``privacy.*`` -> :class:`PrivacyConfig`), and
the simulation's split is loaded once per process.
"""

from __future__ import annotations

import dataclasses
import threading
from collections.abc import Callable
from typing import Any, TypeVar

from flwr.app import ConfigRecord

from fedrec.data import resolve_data
from fedrec.data.split import Split, random_split, temporal_split, validation_split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.config import PrivacyConfig

_SPLITS: dict[tuple[Any, ...], Split] = {}
_LOCK = threading.Lock()


def fail_users(config: ConfigRecord, key: str) -> set[int]:
    """TEST-ONLY: the users listed (comma-separated) under ``key``."""
    text = str(config.get(key, "")).strip()
    return {int(u) for u in text.split(",")} if text else set()


def load_split(config: ConfigRecord) -> Split:
    """The split named by ``config``, loaded once per process and cached."""
    key = tuple(
        config.get(k) for k in ("data", "min-rating", "k-core", "split", "test-fraction", "seed")
    )
    fraction = config.get("validation-fraction")
    if fraction is not None:  # fedrec tune's trials: the validation split (server.settings)
        with _LOCK:
            vkey = (*key, float(fraction))  # type: ignore[arg-type]
            if vkey in _SPLITS:
                return _SPLITS[vkey]
        protocol = load_split_protocol(key)
        split = validation_split(protocol, seed=int(key[5]), test_fraction=float(fraction))  # type: ignore[arg-type]
        with _LOCK:
            return _SPLITS.setdefault(vkey, split)
    return load_split_protocol(key)


def load_split_protocol(key: tuple[Any, ...]) -> Split:
    """The protocol split named by ``key`` (data, min-rating, k-core, split, fraction, seed)."""
    with _LOCK:
        if key not in _SPLITS:
            data, min_rating, k_core, method, fraction, seed = key
            log = resolve_data(
                str(data),
                min_rating=None if min_rating is None else float(min_rating),  # type: ignore[arg-type]
                k_core=None if k_core is None else int(k_core),  # type: ignore[arg-type]
            )
            if method == "temporal":
                _SPLITS[key] = temporal_split(log, test_fraction=float(fraction))  # type: ignore[arg-type]
            else:
                _SPLITS[key] = random_split(log, test_fraction=float(fraction), seed=int(seed))  # type: ignore[arg-type]
        return _SPLITS[key]


def _fields(config: ConfigRecord, prefix: str, cls: type[Any]) -> dict[str, Any]:
    known = {f.name for f in dataclasses.fields(cls)}
    out = {k[len(prefix) :].replace("-", "_"): v for k, v in config.items() if k.startswith(prefix)}
    return {k: v for k, v in out.items() if k in known}


def model_config(config: ConfigRecord) -> ModelConfig:
    """``model`` (kind) and ``model.*``."""
    return _parsed(config, _model_config)


def train_config(config: ConfigRecord) -> LocalTrainConfig:
    """``train.*`` (unknown keys ignored)."""
    return _parsed(config, _train_config)


def privacy_config(config: ConfigRecord) -> PrivacyConfig:
    """``privacy`` (mode) and ``privacy.*``; mode ``none`` when absent."""
    return _parsed(config, _privacy_config)


_Parsed = TypeVar("_Parsed")
_PARSED: dict[tuple[Any, ...], Any] = {}
"""``(reader, the config's items with their types) -> what the reader made of them``."""


def _parsed(config: ConfigRecord, read: Callable[[ConfigRecord], _Parsed]) -> _Parsed:
    """``read(config)``, once per distinct config (the settings are frozen dataclasses):
    every message of a round carries the same config, and reading its 40 keys into the
    dataclasses cost more per message than a device's store open."""
    try:
        key = (read, tuple(config.items()), tuple(map(type, config.values())))
        found = _PARSED.get(key)
    except TypeError:  # a list value: not hashable
        return read(config)
    if found is None:
        found = read(config)
        with _LOCK:
            if len(_PARSED) >= 64:
                _PARSED.clear()
            _PARSED[key] = found
    return found


def _model_config(config: ConfigRecord) -> ModelConfig:
    fields = _fields(config, "model.", ModelConfig)
    fields.pop("kind", None)
    return ModelConfig(kind=str(config["model"]), **fields)


def _train_config(config: ConfigRecord) -> LocalTrainConfig:
    return LocalTrainConfig(**_fields(config, "train.", LocalTrainConfig))


def _privacy_config(config: ConfigRecord) -> PrivacyConfig:
    fields = _fields(config, "privacy.", PrivacyConfig)
    fields.pop("mode", None)
    return PrivacyConfig(mode=str(config.get("privacy", "none")), **fields)
