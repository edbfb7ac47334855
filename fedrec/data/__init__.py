"""Data: interaction logs, loaders, synthetic data, splits and downloads.

Everything reads and returns :class:`Interactions` (ids remapped once, at load time)
and :class:`Split` (the per-user holdout of ``docs/PROTOCOL.md``).
"""

from __future__ import annotations

from fedrec.data.archives import download
from fedrec.data.ids import to_original_ids
from fedrec.data.interactions import Interactions
from fedrec.data.loaders import load_interactions
from fedrec.data.resolve import KNOWN_DATASETS, default_data_dir, resolve_data
from fedrec.data.split import Split, random_split, temporal_split, validation_split
from fedrec.data.split_files import read_split, write_split
from fedrec.data.synthetic import synthetic

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
