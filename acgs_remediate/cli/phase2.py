"""`acgs-remediate phase2`: optimized images built once, gated, shipped, release-tagged (thin over the flow).

The flow is ``orchestrate``'s, the phase ``phases.phase2``; here: options, ``--write``/``--diff`` of the
generated build definitions, and the per-service before/after table after the run.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Annotated

import typer
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..phases.phase2 import Phase2, services_table_rows
from . import app
from .common import ForksOpt, FormatOpt, HostsOpt, InventoryOpt, OutputFormat, StateOpt, err, out, state_path
from .phases import CheckOpt, DiffOpt, PlanFileOpt, YesOpt, run_phase_command

if TYPE_CHECKING:
    from ..orchestrate import RunReport

_HEADERS = ["service", "before", "after", "shrink", "build time", "release", "gates"]


def _fleet_rows(report: RunReport) -> list[dict]:  # type: ignore[type-arg]
    """Return one row per service: the builder's, else the first host's that has one."""
    rows: dict[str, dict] = {}  # type: ignore[type-arg]
    for host in sorted(report.rows, key=lambda r: r.get("builder") != r["host"]):
        for r in host.get("services") or []:
            rows.setdefault(r["service"], r)
    return list(rows.values())


def print_services(report: RunReport, fmt: OutputFormat) -> None:
    """Print the per-service before -> after table of a phase 2 run (rich, or Markdown)."""
    rows = services_table_rows(_fleet_rows(report))
    if not rows or report.check:
        return
    if fmt is OutputFormat.markdown:
        lines = ["## Phase 2: service images before -> after", ""]
        lines += ["| " + " | ".join(_HEADERS) + " |", "|---|" + "---:|" * 4 + "---|---|"]
        lines += ["| " + " | ".join(c.replace("|", "\\|") for c in row) + " |" for row in rows]
        out.print("\n".join(lines), markup=False)
        return
    t = Table(title="phase 2: service images before -> after", title_justify="left")
    for i, col in enumerate(_HEADERS):
        t.add_column(col, justify="right" if 1 <= i <= 4 else "left")
    for row in rows:
        t.add_row(*[escape(c) for c in row])
    out.print(t)


@app.command("phase2")
def phase2_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: CheckOpt = False,
    diff: DiffOpt = False,
    write: Annotated[
        bool,
        typer.Option(
            "--write",
            help="Also write each generated Dockerfile.optimized and its .dockerignore next to the original "
            "(never over a hand-edited file; with --diff the change is shown; with --check nothing is written).",
        ),
    ] = False,
    yes: YesOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Also re-run hosts that already finished phase2.")] = False,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
    plan_file: PlanFileOpt = None,
) -> None:
    """Phase 2, service optimization: build each service's optimized image once, gate it, ship it, tag it.

    Exit 0: done; 1: a host or service failed (a gate, a build, a service not understood); 2: bad
    input/refused (nothing changed); 3: a host unreachable.
    """
    if write or diff:
        _write(inventory, hosts, dry_run=check or not write, show=diff)
    run_phase_command(
        Phase2(state=state_path(state), inventory=inventory),
        inventory,
        hosts,
        state,
        fmt,
        check=check,
        diff=diff,
        yes=yes,
        force=force,
        forks=forks,
        plan_file=plan_file,
        extra_output=print_services,
    )


def _write(inventory: Path | None, hosts: str, *, dry_run: bool, show: bool) -> None:
    """Write (or only diff) the generated definitions; print the diff when ``show``."""
    from ..inventory import load_fleet
    from ..orchestrate import policies_of

    fleet = load_fleet(inventory, hosts)
    base = fleet.source if fleet.source.is_dir() else fleet.source.parent
    results = Phase2.write_definitions(policies_of(fleet), base, dry_run=dry_run)
    for res in results:
        if show:
            for line in res.diff.splitlines():
                style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
                err.print(Text(line, style=style))
        for path in res.written:
            err.print(f"{res.service}: wrote {escape(path)}")
    if not dry_run and not any(r.written for r in results):
        err.print("every generated build definition is already in the source tree")
