"""Shared fixtures. ``tests/`` is on sys.path (pytest rootdir-relative imports), so test files
import the builders in ``factories.py`` directly."""

import pytest
from factories import torch_threads


@pytest.fixture(scope="module")
def single_thread():
    """One intra-op thread for a module of tiny-model tests (see ``factories.torch_threads``);
    opt in with ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    with torch_threads(1):
        yield
