"""Shared test fixtures: every test gets its own empty checkpoint cache and a fixed seed.

Property-based tests (hypothesis) run with the ``mcar`` profile: the same examples on every run (CI must not
find a new example at random one day), no example database written into the checkout, no deadline (the
machine is shared). ``HYPOTHESIS_PROFILE=explore`` draws new examples on every run.
"""

import os
import tempfile
from pathlib import Path

import pytest
import torch

try:
    from hypothesis import settings
    from hypothesis.configuration import set_hypothesis_home_dir
except ImportError:  # only the property-based tests need it; they fail on their own import
    settings = None
else:
    set_hypothesis_home_dir(Path(tempfile.gettempdir()) / "mcar-hypothesis")  # not .hypothesis/ in the checkout
    settings.register_profile("mcar", derandomize=True, database=None, deadline=None)
    settings.register_profile("explore", database=None, deadline=None)
    settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "mcar"))


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
