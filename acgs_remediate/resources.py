"""Where the shipped playbooks, roles, scenarios and example inventory live."""

from __future__ import annotations

from pathlib import Path

_PACKAGE = Path(__file__).resolve().parent


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
