"""Where the shipped playbooks, roles, scenarios and example inventory live."""

from __future__ import annotations

import os
from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent
CACHE_ENV = "ACGS_REMEDIATE_CACHE_DIR"  # a directory, or off/0/no/false to disable every cache
_CACHE_OFF = ("off", "0", "no", "false")


def cache_dir(name: str, flat_if_set: bool = False) -> Path | None:
    """Return the directory of the tool's cache ``name``, or None when caching is off (or no home is found).

    Default: ``$XDG_CACHE_HOME`` (else ~/.cache) ``/acgs-remediate/<name>``. With $ACGS_REMEDIATE_CACHE_DIR
    set: ``$ACGS_REMEDIATE_CACHE_DIR/<name>``, or the directory itself for ``flat_if_set`` (the layer
    cache, which has always lived at its top).
    """
    setting = os.environ.get(CACHE_ENV, "")
    if setting.lower() in _CACHE_OFF:
        return None
    if setting:
        return Path(setting) if flat_if_set else Path(setting) / name
    try:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache")
    except RuntimeError:  # no home directory to be found
        return None
    return base / "acgs-remediate" / name


def data_root() -> Path:
    """Return the directory holding playbooks/, roles/, scenarios/ and inventory/.

    An installed wheel carries them under ``acgs_remediate/_data``; a source checkout has them
    at the repository root, next to the package.
    """
    bundled = _PACKAGE / "_data"
    if (bundled / "playbooks").is_dir():
        return bundled
    return _PACKAGE.parent


def playbooks_dir() -> Path:
    """Return the directory of the shipped playbooks."""
    return data_root() / "playbooks"


def roles_dir() -> Path:
    """Return the directory of the shipped roles."""
    return data_root() / "roles"


def scenarios_dir() -> Path:
    """Return the directory of the shipped sandbox scenarios."""
    return data_root() / "scenarios"
