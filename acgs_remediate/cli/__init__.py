"""The `acgs-remediate` command line (typer). The only place that prints and exits."""

from __future__ import annotations

import sys
from typing import Annotated

import typer
from rich.markup import escape

from .. import __version__
from ..errors import RemediateError
from .common import err

app = typer.Typer(
    name="acgs-remediate",
    help="Plan, run and verify Docker image-bloat remediation across a fleet of Docker hosts.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"acgs-remediate {__version__}")
        raise typer.Exit(0)


@app.callback()
def _root(
    version: Annotated[
        bool,
        typer.Option("--version", "-V", callback=_version, is_eager=True, help="Show the version and exit."),
    ] = False,
) -> None:
    """Plan, run and verify Docker image-bloat remediation across a fleet of Docker hosts."""


def _register() -> None:
    # Each command group lives in its own module; importing it registers its commands on `app`.
    from . import analyze, phases, sandbox, verify  # noqa: F401


_register()


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn our errors into one line plus a hint and the documented exit code.

    Usage errors (unknown option, bad value) are click's: one message, exit code 2.
    """
    try:
        app(args=argv, prog_name="acgs-remediate")
    except RemediateError as exc:
        err.print(f"[bold red]error:[/] {escape(exc.message)}", markup=True)
        if exc.hint:
            err.print(f"[dim]hint:[/] {escape(exc.hint)}", markup=True)
        sys.exit(exc.exit_code)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
