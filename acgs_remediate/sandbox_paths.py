"""Where the sandbox fleet lives by default (kept short: unix socket paths max 108 bytes)."""

from __future__ import annotations

import os
from pathlib import Path

SANDBOX_DIR_ENV = "ACGS_SANDBOX_DIR"


def default_sandbox_dir() -> Path:
    """Return the sandbox directory: $ACGS_SANDBOX_DIR or /var/lib/acgs-sb."""
    return Path(os.environ.get(SANDBOX_DIR_ENV) or "/var/lib/acgs-sb")


def default_sandbox_inventory() -> Path:
    """Return the inventory file a running default sandbox writes."""
    return default_sandbox_dir() / "inventory.yml"
