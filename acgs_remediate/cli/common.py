"""Options and output helpers shared by every command. Only the CLI prints and exits."""

from __future__ import annotations

import json
import os
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.console import Console

STATE_ENV = "ACGS_REMEDIATE_STATE"

# Human output goes to stderr whenever stdout carries JSON, so the two never mix.
out = Console(highlight=False, soft_wrap=True)
err = Console(stderr=True, highlight=False, soft_wrap=True)


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


def print_json(data: Any) -> None:
    """Write ``data`` as JSON to stdout, alone."""
    sys.stdout.write(json.dumps(data, indent=2, default=str, sort_keys=False) + "\n")
    sys.stdout.flush()
