"""`acgs-remediate plan PHASE`, `acgs-remediate phase1`, `acgs-remediate status`: thin commands over the flow.

The flow itself (lock -> facts -> plan -> show -> check/confirm -> run -> measure -> ledger, saved plans)
is ``acgs_remediate.orchestrate``; each phase is a PhaseSpec in ``acgs_remediate.phases``. Here: options,
the terminal side of the flow (showing plans, asking, live progress) and printing what it returns.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..errors import EXIT_PARTIAL, UsageError
from ..phases import PHASE_NAMES, get_spec
from ..plan import PHASE1
from ..state import StateStore
from ..units import human_duration, human_size
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

if TYPE_CHECKING:
    from ..execute import HostEvent
    from ..orchestrate import PhaseSpec, Planned, RunReport

_STATUS_STYLE = {
    "succeeded": "green",
    "failed": "bold red",
    "interrupted": "yellow",
    "running": "cyan",
    "pending": "dim",
    "changed": "yellow",
    "ok": "green",
    "unreachable": "bold red",
}

SavePlanOpt = Annotated[
    Path | None,
    typer.Option(
        "-o",
        "--output",
        help="Also save the plan, with the facts it depends on, to this file (JSON); "
        "`PHASE --plan FILE` then applies exactly it.",
        show_default=False,
    ),
]
PlanFileOpt = Annotated[
    Path | None,
    typer.Option(
        "--plan",
        help="Apply this saved plan (from `plan PHASE -o FILE`) exactly; refused (exit 2, nothing changed) "
        "when the facts it depends on changed since.",
        show_default=False,
    ),
]


def _styled(status: str, text: str | None = None) -> Text:
    """Return ``text`` (default: the status) styled by ``status``, as literal text (no markup)."""
    return Text(text if text is not None else status, style=_STATUS_STYLE.get(status, ""))


# -- showing plans ----------------------------------------------------------------------------------


def _plan_markdown(planned: Planned) -> str:
    lines = [f"# {planned.spec.title}", ""]
    for p in planned.ordered:
        lines += planned.spec.plan_markdown(p)
        lines += [f"- note: {n}" for n in p.notes] + [""]
    for u in planned.unreachable:
        lines.append(f"- **{u.host}: unreachable** — {u.reason}")
    return "\n".join(lines) + "\n"


def _show_plans(planned: Planned, fmt: OutputFormat, run: bool = False) -> None:
    ordered = planned.ordered
    if fmt is OutputFormat.json:
        print_json(
            {
                "phase": planned.spec.name,
                "plans": [p.model_dump(mode="json") for p in ordered],
                "unreachable": [u.model_dump() for u in planned.unreachable],
                "skipped_done": planned.skipped_done,
            }
        )
        return
    if fmt is OutputFormat.markdown:
        out.print(_plan_markdown(planned), markup=False, end="")
        return
    if planned.saved_plan is not None:
        err.print(f"[bold]applying the saved plan {escape(str(planned.saved_plan))}[/] (its facts still hold)")
    for p in ordered:
        for table in planned.spec.run_tables(p) if run else planned.spec.plan_tables(p):
            print_table(err, table)
        for note in p.notes:
            err.print(f"  [dim]note:[/] {escape(note)}")
    for u in planned.unreachable:
        err.print(f"[bold red]{escape(u.host)}: unreachable[/] — {escape(u.reason)}")
    total = sum(p.predicted_bytes for p in ordered)
    err.print(f"[bold]{len(ordered)} host(s), {planned.action_count()} action(s), {human_size(total)} predicted[/]")


@app.command("plan")
def plan_cmd(
    phase: Annotated[str, typer.Argument(help=f"The phase to plan: {', '.join(PHASE_NAMES)}.")],
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    forks: ForksOpt = 5,
    output: SavePlanOpt = None,
) -> None:
    """Show per host exactly what a phase would do (reason, predicted bytes) and what stays and why."""
    from ..orchestrate import plan_phase

    spec = get_spec(phase)
    planned = plan_phase(spec, inventory, hosts, state_path(state), forks, save_to=output)
    if planned.skipped_done and fmt is not OutputFormat.json:
        err.print(
            f"[dim]already finished {phase} (a run skips them unless --force): {', '.join(planned.skipped_done)}[/]"
        )
    _show_plans(planned, fmt)
    if output is not None:
        err.print(
            f"plan saved to {escape(str(output))}; apply exactly it with: "
            f"acgs-remediate {phase} --plan {escape(str(output))}"
        )
    if planned.unreachable:
        raise typer.Exit(EXIT_PARTIAL)


# -- running a phase --------------------------------------------------------------------------------


class _Progress:
    """Live per-host progress (rich) on stderr; plain lines when stderr is not a terminal."""

    def __init__(self, phase: str, hosts: list[str]) -> None:
        self.phase = phase
        self.state = {h: ("waiting", "") for h in hosts}
        self.live: Live | None = None
        self.t0 = time.monotonic()

    def table(self) -> Table:
        t = Table(title=f"{self.phase} — {human_duration(time.monotonic() - self.t0)}", title_justify="left")
        t.add_column("host")
        t.add_column("state")
        t.add_column("task / result")
        for host, (st, task) in sorted(self.state.items()):
            t.add_row(host, _styled(st), Text(task))
        return t

    def __enter__(self) -> _Progress:
        if err.is_terminal:
            self.live = Live(self.table(), console=err, refresh_per_second=8, transient=True)
            self.live.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.live is not None:
            self.live.__exit__(None, None, None)

    def __call__(self, ev: HostEvent) -> None:
        if ev.event == "task_start":
            self.state[ev.host] = ("running", ev.task)
        else:
            st = {"runner_on_failed": "failed", "runner_on_unreachable": "unreachable"}.get(
                ev.event, "changed" if ev.changed else "ok"
            )
            prev = self.state.get(ev.host, ("", ""))[0]
            if prev in ("failed", "unreachable"):
                st = prev
            self.state[ev.host] = (st, ev.msg or ev.task)
            if self.live is None:
                err.print(f"  {ev.host}: {st} — {escape(ev.msg or ev.task)}")
        if self.live is not None:
            self.live.update(self.table())


class _Terminal:
    """The terminal side of the flow (``orchestrate.Interaction``): show, ask, live progress."""

    def __init__(self, phase: str, fmt: OutputFormat) -> None:
        self.phase = phase
        self.fmt = fmt

    def reconciled(self, host: str, phase: str) -> None:
        err.print(f"[yellow]{host}: the {phase} run that had it ended without a result; marked interrupted[/]")

    def skipping(self, phase: str, hosts: list[str]) -> None:
        if self.fmt is not OutputFormat.json:
            err.print(
                f"[dim]skipping {len(hosts)} host(s) that finished {phase} (use --force to re-run): "
                f"{', '.join(hosts)}[/]"
            )

    def show(self, planned: Planned) -> None:
        # With JSON output stdout carries only the run's result: the plan goes to stderr as tables.
        _show_plans(planned, OutputFormat.table if self.fmt is OutputFormat.json else self.fmt, run=True)

    def confirm(self, planned: Planned) -> None:
        phase = planned.spec.name
        if not sys.stdin.isatty():
            raise UsageError(
                "refusing to change hosts without confirmation: stdin is not a terminal",
                hint=f"review `acgs-remediate plan {phase}`, then pass --yes",
            )
        question = f"Apply {planned.action_count()} action(s) on {len(planned.plans)} host(s)?"
        if not typer.confirm(question, default=False, err=True):
            raise UsageError("cancelled; nothing changed")

    @contextmanager
    def progress(self, hosts: list[str]) -> Iterator[Callable[[HostEvent], None]]:
        with _Progress(self.phase, hosts) as progress:
            yield progress


def _emit_summary(spec: PhaseSpec[Any], report: RunReport, fmt: OutputFormat) -> None:
    if fmt is OutputFormat.json:
        print_json(report.to_json())
        return
    check, phase = report.check, report.phase
    title = f"{phase} --check: what would be done" if check else f"{phase} {report.status or ''}"
    extra = spec.summary_columns
    t = Table(title=f"{title} ({human_duration(report.seconds)})", title_justify="left")
    numeric = {"changed", *extra, "predicted", "measured freed"}
    for col in ("host", "status", "changed", *extra, "predicted", "measured freed", "notes"):
        t.add_column(col, justify="right" if col in numeric else "left")
    dashes = ["-"] * len(extra)
    for r in report.rows:
        t.add_row(
            r["host"],
            _styled(r["status"]),
            str(r["changed"]),
            *report.cells.get(r["host"], ()),
            human_size(r["predicted_bytes"]),
            human_size(r["measured_freed"]),
            escape("; ".join(report.notes.get(r["host"], []))),
        )
    for u in report.unreachable:
        t.add_row(u.host, "[bold red]unreachable[/]", "-", *dashes, "-", "-", escape(u.reason))
    if fmt is OutputFormat.markdown:
        cols = ["host", "status", "changed", *extra, "predicted", "measured freed"]
        lines = [f"## {title}", "", "| " + " | ".join(cols) + " |", "|" + "---|" * len(cols)]
        lines += [
            f"| {r['host']} | {r['status']} | {r['changed']} | "
            + "".join(f"{c} | " for c in report.cells.get(r["host"], ()))
            + f"{human_size(r['predicted_bytes'])} | {human_size(r['measured_freed'])} |"
            for r in report.rows
        ]
        lines += [f"| {u.host} | unreachable | - | " + "- | " * len(extra) + "- | - |" for u in report.unreachable]
        out.print("\n".join(lines), markup=False)
        return
    print_table(out, t)


def run_phase_command(
    phase: str | PhaseSpec[Any],
    inventory: Path | None,
    hosts: str,
    state: Path | None,
    fmt: OutputFormat,
    *,
    check: bool,
    diff: bool,
    yes: bool,
    force: bool,
    forks: int,
    plan_file: Path | None,
    extra_output: Callable[[RunReport, OutputFormat], None] | None = None,
    on_report: Callable[[RunReport], None] | None = None,
    json_view: Callable[[RunReport], dict[str, Any]] | None = None,
) -> None:
    """Run ``phase`` through the shared flow, print its result, exit with its code (every phase command).

    ``phase``: a phase name, or a PhaseSpec instance when the command configures it (a phase-specific
    option such as phase 2's ``--write`` becomes a field of its spec).

    ``extra_output(report, fmt)`` prints a phase's own result section after the summary (not for JSON: the
    rows carry it). ``on_report`` receives the run's report before the command exits (hygiene writes its
    metrics from it). ``json_view(report)``: the phase's own JSON document instead of the run's rows (phase 3
    keeps its rollout's per-host shape).
    """
    from ..orchestrate import RunOptions, run_phase

    spec = get_spec(phase) if isinstance(phase, str) else phase
    phase = spec.name
    ui = _Terminal(phase, fmt)
    options = RunOptions(check=check, diff=diff, yes=yes, force=force, forks=forks, saved_plan=plan_file)
    report = run_phase(spec, inventory, hosts, state_path(state), options, ui)
    if on_report is not None:
        on_report(report)
    if report.nothing_to_do:
        if fmt is OutputFormat.json:
            print_json({"phase": phase, "check": check, "hosts": [], "skipped_done": report.skipped_done})
        else:
            err.print(f"nothing to do: every selected host finished {phase}")
        raise typer.Exit(0)
    for style, line in report.diff:
        err.print(Text(line, style=style))
    if json_view is not None and fmt is OutputFormat.json:
        print_json(json_view(report))
    else:
        _emit_summary(spec, report, fmt)
    if extra_output is not None and fmt is not OutputFormat.json:
        extra_output(report, fmt)
    code = report.exit_code()
    if code:
        raise typer.Exit(code)


CheckOpt = Annotated[
    bool,
    typer.Option("--check", help="Show what would be done (the playbook runs in check mode); change nothing."),
]
DiffOpt = Annotated[bool, typer.Option("--diff", help="Show the changes (images before/after, files).")]
YesOpt = Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")]


@app.command("phase1")
def phase1_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: CheckOpt = False,
    diff: DiffOpt = False,
    yes: YesOpt = False,
    force: Annotated[bool, typer.Option("--force", help="Also re-run hosts that already finished phase1.")] = False,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
    plan_file: PlanFileOpt = None,
) -> None:
    """Phase 1, emergency cleanup: remove oversized unused and old dangling images, prune cache, repair files.

    Exit 0: done; 1: a host failed; 2: bad input/refused (nothing changed; also a saved plan whose facts
    changed); 3: a host unreachable.
    """
    run_phase_command(
        PHASE1,
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
    )


@app.command("status")
def status_cmd(
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    history: Annotated[bool, typer.Option("--history", help="Also list the ledger's latest entries.")] = False,
) -> None:
    """Show hosts x phases from the state store: status, when, bytes before/after."""
    path = state_path(state)
    if not path.exists():
        if fmt is OutputFormat.json:
            print_json({"state": str(path), "hosts": {}, "runs": []})
        else:
            err.print(f"no state store at {path} yet: no phase has run")
        return
    store = StateStore(path)
    try:
        store.reconcile()
        records = store.all_status()
        runs = store.runs(10)
        entries = store.history(limit=30) if history else []
        from ..monitor import latest as latest_samples

        samples = latest_samples(store, sorted({r.host for r in records}))
    finally:
        store.close()
    phases = sorted({r.phase for r in records} | set(PHASE_NAMES))
    by_host: dict[str, dict[str, Any]] = {}
    for r in records:
        by_host.setdefault(r.host, {})[r.phase] = r
    if fmt is OutputFormat.json:
        print_json(
            {
                "state": str(path),
                "hosts": {h: {p: r.to_dict() for p, r in ph.items()} for h, ph in sorted(by_host.items())},
                "runs": [
                    {
                        "run_id": r.run_id,
                        "phase": r.phase,
                        "status": r.status,
                        "check": r.check_mode,
                        "started_at": r.started_at.isoformat(),
                        "hosts": r.hosts,
                    }
                    for r in runs
                ],
                "history": [e.to_dict() for e in entries],
                "monitor": {h: m.model_dump(mode="json") for h, m in samples.items()},
            }
        )
        return

    def cell(r: Any) -> str:
        if r is None:
            return "-"
        when = r.finished_at or r.started_at
        freed = f", freed {human_size(r.bytes_freed)}" if r.bytes_freed is not None else ""
        stamp = when.strftime("%Y-%m-%d %H:%M") if when else ""
        return f"{r.status} ({stamp}{freed})"

    if fmt is OutputFormat.markdown:
        lines = ["| host | " + " | ".join(phases) + " |", "|---|" + "---|" * len(phases)]
        lines += [f"| {h} | " + " | ".join(cell(ph.get(p)) for p in phases) + " |" for h, ph in sorted(by_host.items())]
        if samples:
            from ..report import monitor_markdown

            lines += ["", *monitor_markdown(list(samples.values()))]
        out.print("\n".join(lines), markup=False)
        return
    t = Table(title=f"state: {path}", title_justify="left")
    t.add_column("host")
    for p in phases:
        t.add_column(p)
    for h, ph in sorted(by_host.items()):
        t.add_row(
            h,
            *[_styled(ph[p].status, cell(ph[p])) if p in ph else "-" for p in phases],
        )
    print_table(out, t)
    if samples:
        from ..report import monitor_table

        print_table(out, monitor_table(list(samples.values())))
    for e in entries:
        out.print(
            f"  {e.finished_at:%Y-%m-%d %H:%M:%S} {e.host} {e.phase} {e.status} {e.run_id or ''} "
            f"{escape(e.detail or '')}"
        )
