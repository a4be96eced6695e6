"""Phase 3 commands: ``phase3`` (deploy phase 2's images, canary and batches, health-gated) and ``rollback``."""

from __future__ import annotations

from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from . import app
from .common import (
    FormatOpt,
    HostsOpt,
    InventoryOpt,
    OutputFormat,
    StateOpt,
    err,
    out,
    print_json,
    print_table,
    state_path,
)

if TYPE_CHECKING:
    from ..phases.phase3 import Phase3Plan, Phase3Result


def _short(image: str | None) -> str:
    return image.removeprefix("sha256:")[:12] if image else "-"


def show_plan(plan: Phase3Plan) -> None:
    """Print per host which services change (from which image to which) and what stays, on stderr."""
    for host, hp in plan.plans.items():
        table = Table(title=f"{host}: {len(hp.actions)} service(s) change, {len(hp.kept)} stay", title_justify="left")
        for col in ("service", "change", "from", "to", "why"):
            table.add_column(col)
        for c in [*hp.actions, *hp.kept]:
            table.add_row(escape(c.service), c.kind, _short(c.from_image), _short(c.to_image), escape(c.reason))
        err.print(table)
    for note in plan.notes:
        err.print(f"[dim]note: {escape(note)}[/]")
    err.print(
        f"compose file: {escape(str(plan.compose_path))} (project {escape(plan.project)}); "
        f"soak {plan.soak:g} s per batch"
    )


def plan_phase3_command(inventory: Any, hosts: str, state: Any, fmt: OutputFormat) -> None:
    """``plan phase3``: print the plan, change nothing."""
    from ..inventory import load_fleet
    from ..phases.phase3 import plan_phase3
    from ..state import StateStore

    store = StateStore(state_path(state))
    plan = plan_phase3(load_fleet(inventory, hosts), store)
    if fmt is OutputFormat.json:
        print_json(plan.to_json())
    else:
        show_plan(plan)


def _rollout_json(result: Phase3Result) -> dict[str, Any]:
    data = {"phase": "phase3", "run_id": result.run_id, "check": result.check, "plan": result.plan.to_json()}
    if result.rollout is not None:
        data["stopped"] = result.rollout.stopped
        data["hosts"] = {
            h: {
                "status": r.status,
                "reason": r.reason,
                "switched": r.switched,
                "switch_seconds": round(r.switch_seconds, 2),
                "rollback_seconds": r.rollback_seconds,
            }
            for h, r in result.rollout.hosts.items()
        }
        data["monitor"] = {h: m.model_dump(mode="json") for h, m in result.monitor.items()}
    return data


@app.command("phase3")
def phase3_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: Annotated[bool, typer.Option("--check", help="Show the plan; change nothing.")] = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the compose file's unified diff.")] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Phase 3, production deployment: pin the compose stack to phase 2's images, roll it out health-gated.

    Canary, then batches (acgs_policy.deploy); a host passes when its services stay healthy through the soak
    window and its one-shots exited 0; a failure rolls back per deploy.failure_policy.
    Exit 0: every host deployed or unchanged; 1: a host failed or was rolled back; 2: bad input.
    """
    from ..inventory import load_fleet
    from ..phases.phase3 import run_phase3
    from ..state import StateStore

    store = StateStore(state_path(state))
    fleet = load_fleet(inventory, hosts)

    def confirm(plan: Phase3Plan) -> bool:
        if fmt is not OutputFormat.json:
            show_plan(plan)
        if diff:
            text = plan.diff()
            err.print(escape(text) if text else "[dim]compose file unchanged[/]")
        if not any(p.actions for p in plan.plans.values()):
            return True  # nothing to switch: the run records the hosts as unchanged
        if check or yes:
            return not check
        return typer.confirm("Roll this out?", default=False, err=True)

    result = run_phase3(fleet, store, log=lambda m: err.print(f"[dim]{escape(m)}[/]"), confirm=confirm)
    if fmt is OutputFormat.json:
        print_json(_rollout_json(result))
    elif result.rollout is not None:
        table = Table(title="phase3", title_justify="left")
        for col in ("host", "status", "switched", "switch s", "rollback s", "why"):
            table.add_column(col)
        for h, r in result.rollout.hosts.items():
            rb = f"{r.rollback_seconds:.1f}" if r.rollback_seconds is not None else "-"
            table.add_row(h, r.status, ", ".join(r.switched), f"{r.switch_seconds:.1f}", rb, escape(r.reason))
        out.print(table)
        if result.monitor:
            from ..report import monitor_table

            print_table(out, monitor_table(list(result.monitor.values())))
        if result.rollout.stopped:
            err.print(f"[bold red]rollout stopped:[/] {escape(result.rollout.stopped)}")
    raise typer.Exit(result.exit_code)


@app.command("rollback")
def rollback_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Return hosts to their recorded rollback unit (compose file, exact image IDs, environment); pull nothing.

    Exit 0: every host back and up; 1: a host has no recorded unit or did not come back up.
    """
    from ..inventory import load_fleet
    from ..phases.phase3 import rollback_hosts
    from ..state import StateStore

    results = rollback_hosts(
        load_fleet(inventory, hosts), StateStore(state_path(state)), log=lambda m: err.print(f"[dim]{escape(m)}[/]")
    )
    if fmt is OutputFormat.json:
        print_json(
            {
                h: {"status": r.status, "reason": r.reason, "rollback_seconds": r.rollback_seconds}
                for h, r in results.items()
            }
        )
    else:
        for h, r in results.items():
            secs = f" in {r.rollback_seconds:.1f} s" if r.rollback_seconds is not None else ""
            out.print(f"{h}: {r.status}{secs}{' - ' + escape(r.reason) if r.reason else ''}")
    raise typer.Exit(0 if all(r.status == "rolled_back" for r in results.values()) else 1)
