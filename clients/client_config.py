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

from fedrec.data.split import Split
from fedrec.data.split_cache import SplitSpec, cached_split
from fedrec.models.config import LocalTrainConfig, ModelConfig
from fedrec.privacy.config import PrivacyConfig

_LOCK = threading.Lock()


def fail_users(config: ConfigRecord, key: str) -> set[int]:
    """TEST-ONLY: the users listed (comma-separated) under ``key``."""
    text = str(config.get(key, "")).strip()
    return {int(u) for u in text.split(",")} if text else set()


def load_split(config: ConfigRecord) -> Split:
    """The split named by ``config``: read and split once per process, the same shared,
    read-only split the server side of an in-process run gets
    (:func:`fedrec.data.split_cache.cached_split`)."""
    given = {k: config.get(k) for k in _SPLIT_KEYS}
    return cached_split(
        SplitSpec(
            data=str(given["data"]),
            min_rating=given["min-rating"],  # type: ignore[arg-type]
            k_core=given["k-core"],  # type: ignore[arg-type]
            method=str(given["split"] or "random"),
            test_fraction=given["test-fraction"],  # type: ignore[arg-type]
            seed=given["seed"],  # type: ignore[arg-type]
            validation_fraction=given["validation-fraction"],  # type: ignore[arg-type]
        )
    )


_SPLIT_KEYS = (
    "data",
    "min-rating",
    "k-core",
    "split",
    "test-fraction",
    "seed",
    "validation-fraction",
)


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
