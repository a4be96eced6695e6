"""Shared by unit and integration tests: keep the tool's caches out of the user's home.

The CLI caches the loaded inventory and image layer chains under ~/.cache/acgs-remediate; a test run
gets its own cache directory instead (the processes the tests start inherit it), unless the caller set
ACGS_REMEDIATE_CACHE_DIR on purpose.
"""

from __future__ import annotations

import os
import shutil
import tempfile

import pytest

CACHE_ENV = "ACGS_REMEDIATE_CACHE_DIR"
_created: list[str] = []


def pytest_configure(config: pytest.Config) -> None:
    if not os.environ.get(CACHE_ENV):
        path = tempfile.mkdtemp(prefix="acgs-test-cache-")
        _created.append(path)
        os.environ[CACHE_ENV] = path


def pytest_unconfigure(config: pytest.Config) -> None:
    for path in _created:
        shutil.rmtree(path, ignore_errors=True)
