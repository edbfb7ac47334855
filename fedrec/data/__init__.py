"""Data: interaction logs, loaders, synthetic data, splits and downloads.

Everything reads and returns :class:`Interactions` (ids remapped once, at load time)
and :class:`Split` (the per-user holdout of ``docs/PROTOCOL.md``). The names below load
lazily: importing a light submodule (``fedrec.data.atomic``, the CLI parser's) must not
pay for pandas and SciPy.
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

# Eager: the function has its module's name, which the import system would otherwise
# bind here (as the module) as soon as anything imports fedrec.data.synthetic. NumPy only.
from fedrec.data.synthetic import synthetic

if TYPE_CHECKING:
    from fedrec.data.archives import download
    from fedrec.data.ids import to_original_ids
    from fedrec.data.interactions import Interactions
    from fedrec.data.loaders import load_interactions
    from fedrec.data.resolve import KNOWN_DATASETS, default_data_dir, resolve_data
    from fedrec.data.split import Split, random_split, temporal_split, validation_split
    from fedrec.data.split_files import read_split, write_split

_EXPORTS = {
    "download": "fedrec.data.archives",
    "to_original_ids": "fedrec.data.ids",
    "Interactions": "fedrec.data.interactions",
    "load_interactions": "fedrec.data.loaders",
    "KNOWN_DATASETS": "fedrec.data.resolve",
    "default_data_dir": "fedrec.data.resolve",
    "resolve_data": "fedrec.data.resolve",
    "Split": "fedrec.data.split",
    "random_split": "fedrec.data.split",
    "temporal_split": "fedrec.data.split",
    "validation_split": "fedrec.data.split",
    "read_split": "fedrec.data.split_files",
    "write_split": "fedrec.data.split_files",
}

__all__ = [
    "KNOWN_DATASETS",
    "Interactions",
    "Split",
    "default_data_dir",
    "download",
    "load_interactions",
    "random_split",
    "read_split",
    "resolve_data",
    "synthetic",
    "temporal_split",
    "to_original_ids",
    "validation_split",
    "write_split",
]


def __getattr__(name: str) -> Any:
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # once: later lookups skip this function
        return value
    raise AttributeError(f"module 'fedrec.data' has no attribute {name!r}")
