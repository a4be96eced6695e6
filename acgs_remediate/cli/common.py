"""Options and output helpers shared by every command. Only the CLI prints and exits."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import UsageError
from ..tables import console, print_table  # noqa: F401 - print_table is for the commands

STATE_ENV = "ACGS_REMEDIATE_STATE"

# Human output goes to stderr whenever stdout carries JSON, so the two never mix. Without a terminal (a CI
# log) they are $COLUMNS or tables.WIDE wide, not rich's 80 columns that break words inside table cells.
out = console()
err = console(stderr=True)


class OutputFormat(str, Enum):
    """Output formats of data-producing commands."""

    table = "table"
    json = "json"
    markdown = "markdown"


InventoryOpt = Annotated[
    Path | None,
    typer.Option(
        "-i",
        "--inventory",
        help="Ansible inventory (file or directory). Default: $ACGS_REMEDIATE_INVENTORY, else the running sandbox's.",
        show_default=False,
    ),
]
HostsOpt = Annotated[
    str,
    typer.Option(
        "--hosts", "-l", help="Ansible host pattern selecting hosts (like --limit): prod, 'web*', 'prod:!h3'."
    ),
]
StateOpt = Annotated[
    Path | None,
    typer.Option(
        "--state",
        help="State store (SQLite file). Default: $ACGS_REMEDIATE_STATE or ~/.local/state/acgs-remediate/state.db.",
        show_default=False,
    ),
]
FormatOpt = Annotated[OutputFormat, typer.Option("--format", "-f", help="Output format.")]
ForksOpt = Annotated[int, typer.Option("--forks", min=1, max=500, help="Hosts worked on at once.")]
OutputFileOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Write the report to this file (format from --format, or .html/.md/.json suffix).",
    ),
]


def state_path(option: Path | None) -> Path:
    """Return the state store path from the option, the environment, or the XDG default."""
    if option is not None:
        return option.expanduser()
    if os.environ.get(STATE_ENV):
        return Path(os.environ[STATE_ENV]).expanduser()
    base = Path(os.environ.get("XDG_STATE_HOME") or Path.home() / ".local" / "state")
    return base / "acgs-remediate" / "state.db"


def check_output_path(path: Path, option: str) -> None:
    """Raise UsageError unless a file could be written at ``path`` (checked before any work; creates nothing).

    The file's nearest existing ancestor must be a writable directory, and ``path`` itself, if it exists, a
    file: a report written after minutes of work must not be the step that fails.
    """
    hint = f"pass {option} with a writable file path"
    if path.is_dir():
        raise UsageError(f"{option} {path} is a directory, not a file", hint=hint)
    parent = path.absolute().parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise UsageError(f"cannot write {path}: {parent} is not a directory", hint=hint)
    if not os.access(parent, os.W_OK | os.X_OK) or (path.exists() and not os.access(path, os.W_OK)):
        raise UsageError(f"cannot write {path}: permission denied", hint=hint)


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout, alone."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
