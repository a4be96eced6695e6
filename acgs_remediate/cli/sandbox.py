"""`acgs-remediate sandbox up|status|down`: a local fleet of real Docker engines to try everything on."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated

import typer
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..sandbox import Sandbox, SandboxStatus, purge_golden_cache
from ..sandbox_paths import default_sandbox_dir
from ..units import parse_size
from . import app
from .common import OutputFormat, err, out, print_json, print_table

sandbox_app = typer.Typer(
    name="sandbox",
    help="A local fleet of real, isolated dockerd engines with an inventory and a seeded scenario.",
    no_args_is_help=True,
)
app.add_typer(sandbox_app, name="sandbox")

DirOpt = Annotated[
    Path | None,
    typer.Option(
        "--dir",
        "-d",
        help="Sandbox directory (short: unix socket paths). Default: $ACGS_SANDBOX_DIR or /var/lib/acgs-sb.",
        show_default=False,
    ),
]


def _size(value: str) -> int:
    """Return the bytes of a --small-disk value; raise UsageError (exit 2) when it is not a size."""
    try:
        return parse_size(value)
    except ValueError as exc:
        raise UsageError(f"--small-disk: {exc}") from None


def _dir(option: Path | None) -> Path:
    return (option or default_sandbox_dir()).expanduser()


class _Progress:
    """Progress on stderr: one timestamped line per step under a spinner showing the current one."""

    def __init__(self) -> None:
        self.t0 = time.monotonic()
        self.status = err.status("starting", spinner="dots")

    def __call__(self, message: str) -> None:
        err.print(f"[dim]{time.monotonic() - self.t0:6.1f}s[/] {escape(message)}")
        self.status.update(escape(message))


def _table(st: SandboxStatus) -> Table:
    table = Table(title=f"sandbox {st.directory} — scenario {st.scenario or 'none'}", title_justify="left")
    for col in ("host", "state", "pid", "engine name", "engine id", "images", "containers"):
        table.add_column(col)
    for h in st.hosts:
        table.add_row(
            h.name,
            "[green]up[/]" if h.running else "[red]down[/]",
            str(h.pid or "-"),
            h.engine_name or "-",
            (h.engine_id or "-")[:14],
            "-" if h.images is None else str(h.images),
            "-" if h.containers is None else f"{h.containers} ({h.containers_running} running)",
        )
    return table


@sandbox_app.command("up")
def up(
    hosts: Annotated[int, typer.Option("--hosts", "-n", min=1, max=99, help="Number of engines (hosts).")] = 3,
    scenario: Annotated[
        str,
        typer.Option("--scenario", "-s", help="Scenario to seed: acgs-1, a scenario path, or none (empty engines)."),
    ] = "acgs-1",
    directory: DirOpt = None,
    transport: Annotated[
        str,
        typer.Option(
            "--transport",
            "-t",
            help="How the inventory reaches the engines: unix (sockets), ssh (a real sshd on a 127.x address, "
            "ssh://alias with an ssh config), tls (tcp://127.x:2376, --tlsverify, generated CA), or a comma list "
            "(the first writes inventory.yml; each writes inventory-<transport>.yml).",
        ),
    ] = "unix",
    registry: Annotated[
        bool,
        typer.Option(
            "--registry/--no-registry",
            help="Run a real image registry (docker-registry on 127.0.55.x:5000) that phase 2 ships through; "
            "without it, phase 2 ships images engine to engine.",
        ),
    ] = True,
    small_disk: Annotated[
        str | None,
        typer.Option(
            "--small-disk",
            help="Give the last host a data root of its own of this size (e.g. 400MB; ext4 on a loop device): "
            "an engine whose disk fills up, for fault tests.",
        ),
    ] = None,
) -> None:
    """Start N isolated dockerd engines, write their inventory and seed the scenario (idempotent)."""
    sb = Sandbox(_dir(directory))
    progress = _Progress()
    with progress.status:
        st = sb.up(
            hosts,
            None if scenario == "none" else scenario,
            log=progress,
            registry=registry,
            transport=transport,
            small_disk=None if small_disk is None else _size(small_disk),
        )
    print_table(err, _table(st))
    if st.registry:
        err.print(f"registry: {st.registry} (acgs_policy.registry in the inventory's group_vars)")
    err.print(f"inventory: {sb.inventory_path}")
    for extra in sorted(sb.directory.glob("inventory-*.yml")):
        err.print(f"inventory: {extra}")
    err.print(f"try: acgs-remediate analyze -i {sb.inventory_path}")


@sandbox_app.command("status")
def status(
    directory: DirOpt = None,
    fmt: Annotated[
        OutputFormat, typer.Option("--format", "-f", help="Output format (table or json).")
    ] = OutputFormat.table,
) -> None:
    """Show the sandbox engines: state, engine ID and name, images, containers. Exit 1 if one is down."""
    sb = Sandbox(_dir(directory))
    st = sb.status()
    if fmt is OutputFormat.json:
        print_json(st.to_dict())
    elif not st.exists:
        err.print(f"no sandbox in {st.directory} (start one with 'acgs-remediate sandbox up')")
    elif fmt is OutputFormat.markdown:
        out.print("| host | docker_host | state | engine name | images | containers |")
        out.print("|---|---|---|---|---|---|")
        for h in st.hosts:
            out.print(
                f"| {h.name} | {h.docker_host} | {'up' if h.running else 'down'} | {h.engine_name or '-'} "
                f"| {h.images} | {h.containers} |"
            )
    else:
        print_table(out, _table(st))
    if not st.exists:
        raise typer.Exit(1)
    if not st.up:
        if fmt is not OutputFormat.json:
            err.print("[red]some engines are down[/]: 'acgs-remediate sandbox up' recovers the sandbox")
        raise typer.Exit(1)


@sandbox_app.command("down")
def down(
    directory: DirOpt = None,
    purge_cache: Annotated[
        bool,
        typer.Option("--purge-cache", help="Also delete the cached golden engines (rebuilt on the next up)."),
    ] = False,
) -> None:
    """Stop every engine and remove the sandbox; leaves no process, mount or cgroup behind."""
    sb = Sandbox(_dir(directory))
    progress = _Progress()
    with progress.status:
        sb.down(log=progress)
        if purge_cache:
            purge_golden_cache(log=progress)
