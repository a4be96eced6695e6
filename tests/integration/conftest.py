"""Fixtures for integration tests: one real sandbox fleet (3 dockerd engines, scenario acgs-1) per session.

- ``sandbox`` (session): the shared fleet in $ACGS_TEST_SANDBOX_DIR or /var/lib/acgs-t (read-only tests).
- ``remote_sandbox`` (session): another 3-host fleet whose engines are also reached over ssh:// (a real sshd)
  and tcp:// with TLS, in $ACGS_TEST_SANDBOX_DIR + "x" (test_remote.py; the rest of the suite keeps unix://).
- ``fresh_sandbox`` (function): the same fleet, put back to the freshly seeded state after the test, for
  tests that change hosts (a reseed takes a few seconds per host).

Integration tests FAIL (they are not skipped) when the machine cannot run engines: not root, no dockerd.
Set ACGS_TEST_KEEP_SANDBOX=1 to leave the fleet running after the session (the next session reuses it).
"""

from __future__ import annotations

import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from acgs_remediate.errors import RemediateError
from acgs_remediate.sandbox import Sandbox, check_environment

TEST_SANDBOX_ENV = "ACGS_TEST_SANDBOX_DIR"
KEEP_ENV = "ACGS_TEST_KEEP_SANDBOX"
TEST_HOSTS = 3
TEST_SCENARIO = "acgs-1"

# A fresh_sandbox test that failed to reseed leaves the fleet dirty: the next one reseeds first.
_dirty = False


def _log(message: str) -> None:
    sys.stderr.write(f"[sandbox] {message}\n")


def require_engines() -> None:
    """Fail the test (not skip) with a clear message when this machine cannot run sandbox engines."""
    try:
        check_environment()
    except RemediateError as exc:
        pytest.fail(f"integration tests need real Docker engines: {exc.message} ({exc.hint})", pytrace=False)


def shared_sandbox_dir() -> Path:
    """Return the directory of the session's shared fleet."""
    return Path(os.environ.get(TEST_SANDBOX_ENV) or "/var/lib/acgs-t")


def reseed(sb: Sandbox) -> None:
    """Reseed ``sb``, once more when it fails: on a machine loaded by many fleets a seeded service can answer
    its health check only after the scenario's 30 s (the second try finds the host's caches warm)."""
    try:
        sb.reseed(log=_log)
    except RemediateError as exc:
        _log(f"reseed failed ({exc.message}); trying once more")
        sb.reseed(log=_log)


@pytest.fixture(scope="session")
def engines_available() -> None:
    """Fail (not skip) the tests that need engines when this machine cannot run them."""
    require_engines()


@pytest.fixture(scope="session")
def sandbox() -> Iterator[Sandbox]:
    """Return the session's shared 3-host acgs-1 fleet (brought up once, seeded, down at the end)."""
    require_engines()
    sb = Sandbox(shared_sandbox_dir())
    was_up = sb.status().up
    t0 = time.monotonic()
    try:
        sb.up(TEST_HOSTS, TEST_SCENARIO, log=_log)
        if was_up:
            # Reused from a kept session: it may have been changed since; start from the seeded state.
            reseed(sb)
    except RemediateError as exc:
        pytest.fail(f"sandbox up failed: {exc.message} ({exc.hint or 'see the dockerd logs'})", pytrace=False)
    _log(f"fleet ready in {time.monotonic() - t0:.1f} s: {sb.inventory_path}")
    yield sb
    if not os.environ.get(KEEP_ENV):
        sb.down(log=_log)


@pytest.fixture(scope="session")
def remote_sandbox() -> Iterator[Sandbox]:
    """Return a 3-host acgs-1 fleet reachable over ssh://, tcp+TLS and unix:// (inventory-<transport>.yml)."""
    require_engines()
    sb = Sandbox(Path(f"{shared_sandbox_dir()}x"))
    was_up = sb.status().up
    try:
        sb.up(TEST_HOSTS, TEST_SCENARIO, log=_log, transport="ssh,tls,unix")
        if was_up:
            sb.reseed(log=_log)
    except RemediateError as exc:
        pytest.fail(f"sandbox up failed: {exc.message} ({exc.hint or 'see the logs'})", pytrace=False)
    yield sb
    if not os.environ.get(KEEP_ENV):
        sb.down(log=_log)


@pytest.fixture
def fresh_sandbox(sandbox: Sandbox) -> Iterator[Sandbox]:
    """Return the shared fleet in its freshly seeded state; it is put back after the test."""
    global _dirty
    if _dirty:
        reseed(sandbox)
        _dirty = False
    _dirty = True
    yield sandbox
    reseed(sandbox)
    _dirty = False
