"""Shared test fixtures: every test gets its own empty checkpoint cache and a fixed seed."""

import pytest
import torch


@pytest.fixture(autouse=True)
def isolated_cache(tmp_path, monkeypatch):
    """Never touch the user's cache from tests."""
    monkeypatch.setenv("MCAR_CACHE_DIR", str(tmp_path / "mcar-cache"))
    monkeypatch.setenv("MCAR_QUIET", "1")
    yield tmp_path / "mcar-cache"


@pytest.fixture(autouse=True)
def _few_threads():
    torch.set_num_threads(1)
    yield
