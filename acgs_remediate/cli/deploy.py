"""`acgs-remediate phase3` (deploy phase 2's images, canary and batches, health-gated) and `rollback` (thin).

The flow is ``orchestrate``'s, the phase ``phases.phase3`` and its playbook
``playbooks/phase3_production_deployment.yml``; here: options, and the rollback command's output.
"""

from __future__ import annotations

from typing import Annotated

import typer
from rich.markup import escape

from . import app
from .common import (
    ForksOpt,
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
from .phases import CheckOpt, PlanFileOpt, YesOpt, run_phase_command


@app.command("phase3")
def phase3_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: CheckOpt = False,
    diff: Annotated[bool, typer.Option("--diff", help="Show the compose file's unified diff.")] = False,
    yes: YesOpt = False,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
    plan_file: PlanFileOpt = None,
) -> None:
    """Phase 3, production deployment: pin the compose stack to phase 2's images, roll it out health-gated.

    Canary, then batches (acgs_policy.deploy); a host passes when its services stay healthy through the soak
    window and its one-shots exited 0; a failure rolls back per deploy.failure_policy.
    Exit 0: every host deployed or unchanged; 1: a host failed or was rolled back; 2: bad input/refused
    (nothing changed; also a saved plan whose facts changed); 3: a host unreachable.
    """
    from ..phases.phase3 import Phase3, rollout_json

    spec = Phase3(log=lambda m: err.print(f"[dim]{escape(m)}[/]"))

    def monitor_output(_report: object, out_fmt: OutputFormat) -> None:
        """After the rollout: per host and service, the image, health, restarts, memory and CPU sampled."""
        from ..report import monitor_markdown, monitor_table

        samples = list(spec.monitor.values())
        if not samples:
            return
        if out_fmt is OutputFormat.markdown:
            out.print("\n".join(monitor_markdown(samples)), markup=False)
        else:
            print_table(out, monitor_table(samples))

    run_phase_command(
        spec,
        inventory,
        hosts,
        state,
        fmt,
        check=check,
        diff=diff,
        yes=yes,
        force=False,
        forks=forks,
        plan_file=plan_file,
        json_view=lambda report: rollout_json(spec, report),
        extra_output=monitor_output,
    )


@app.command("rollback")
def rollback_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Return hosts to their recorded rollback unit (compose file, exact image IDs, environment); pull nothing.

    Runs the phase-3 playbook with state=rolled_back. Exit 0: every host back and up; 1: a host has no
    recorded unit or did not come back up.
    """
    from ..inventory import load_fleet
    from ..phases.phase3 import rollback_hosts
    from ..state import StateStore

    fleet = load_fleet(inventory, hosts)
    store = StateStore(state_path(state))
    try:
        results = rollback_hosts(fleet, store, log=lambda m: err.print(f"[dim]{escape(m)}[/]"), forks=forks)
    finally:
        store.close()
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
