"""The `acgs-remediate` command line (typer). The only place that prints and exits."""

from __future__ import annotations

import importlib
import sys
from typing import Annotated, NoReturn

import typer
from rich.markup import escape
from typer import Abort

try:  # typer >= 0.2x carries its own copy of click; older ones use click itself
    from typer._click import ClickException
except ImportError:  # pragma: no cover
    from click import ClickException

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
        from .. import __version__

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


# Command -> the module defining it. Only the module a command needs is imported, so every
# command starts fast (the phase commands pull in the planner, the state store and ansible-runner).
_COMMAND_MODULES = {
    "sandbox": "sandbox",
    "analyze": "analyze",
    "plan": "phases",
    "phase1": "phases",
    "phase2": "phase2",
    "phase3": "deploy",
    "rollback": "deploy",
    "hygiene": "hygiene",
    "status": "phases",
    "verify": "verify",
}


def register(modules: list[str] | None = None) -> typer.Typer:
    """Import command-group modules (all by default) so their commands exist on ``app``; return ``app``."""
    for module in modules or sorted(set(_COMMAND_MODULES.values())):
        importlib.import_module(f"{__name__}.{module}")
    return app


def _fail(message: str, hint: str | None, code: int) -> NoReturn:
    err.print(f"[bold red]error:[/] {escape(message)}", markup=True)
    if hint:
        err.print(f"[dim]hint:[/] {escape(hint)}", markup=True)
    sys.exit(code)


def main(argv: list[str] | None = None) -> None:
    """Run the CLI; turn every error into one line plus a hint and the documented exit code.

    Usage errors click finds (unknown option, bad value, missing argument) read like ours: one ``error:`` line
    and a ``hint:`` line, exit code 2, instead of click's usage block and framed message.
    """
    args = sys.argv[1:] if argv is None else argv
    first = next((a for a in args if not a.startswith("-")), None)
    # A known command needs only its own module; help, version and typos get them all.
    register([_COMMAND_MODULES[first]] if first in _COMMAND_MODULES else None)
    try:
        # Not standalone: click raises its errors to us instead of printing them; typer.Exit(code) comes back
        # as the return value, a command that returns normally as None.
        code = app(args=args, prog_name="acgs-remediate", standalone_mode=False)
    except RemediateError as exc:
        _fail(exc.message, exc.hint, exc.exit_code)
    except ClickException as exc:
        if not exc.format_message():  # a group called without a command: click printed its help already
            sys.exit(exc.exit_code)
        ctx = getattr(exc, "ctx", None)
        where = ctx.command_path if ctx is not None else "acgs-remediate"
        _fail(exc.format_message().replace("Value error, ", ""), f"see '{where} --help'", exc.exit_code)
    except Abort:
        _fail("aborted", None, 1)
    except KeyboardInterrupt:
        err.print("interrupted")
        sys.exit(130)
    sys.exit(code if isinstance(code, int) else 0)
