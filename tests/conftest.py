"""Shared fixtures: a seeded ``rng``, a small planted ``synthetic_data`` set, and
``ml100k_dir`` (the real MovieLens 100K folder, skipped when ``../shared/data`` is absent).
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest

from fedrec.data import Interactions, synthetic

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


@pytest.fixture
def rng() -> np.random.Generator:
    return np.random.default_rng(12345)


@pytest.fixture(scope="session")
def synthetic_data() -> Interactions:
    """100 users, 60 items, planted clusters; every user has at least 5 interactions."""
    return synthetic(n_users=100, n_items=60, dim=4, mean_interactions=15, seed=0)


@pytest.fixture(scope="session")
def ml100k_dir() -> Path:
    path = SHARED_DATA / "ml-100k"
    if not (path / "u.data").is_file():
        pytest.skip(f"MovieLens 100K not found at {path}")
    return path


@pytest.fixture(scope="session")
def ml1m_dir() -> Path:
    path = SHARED_DATA / "ml-1m"
    if not (path / "ratings.dat").is_file():
        pytest.skip(f"MovieLens 1M not found at {path}")
    return path
