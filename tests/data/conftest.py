"""Shared fixtures for the data tests: the small data fixture and a private parse cache."""

from pathlib import Path

import pytest

FIXTURE_ROOT = Path(__file__).resolve().parents[1] / "fixtures" / "data"


@pytest.fixture
def root():
    return FIXTURE_ROOT


@pytest.fixture(autouse=True)
def private_cache(tmp_path, monkeypatch):
    """Every data test gets its own empty parse cache (SYCOJAX_DATA_CACHE_DIR)."""
    cache = tmp_path / "cache"
    monkeypatch.delenv("SYCOJAX_CACHE", raising=False)
    monkeypatch.setenv("SYCOJAX_DATA_CACHE_DIR", str(cache))
    return cache
