"""`acgs-remediate plan phase1`, `acgs-remediate phase1`, `acgs-remediate status`.

The phase-1 flow (pyinfra's): lock -> collect facts -> plan -> show -> stop if --check (the playbook
runs in check mode and reports what it would do) -> confirm unless --yes -> run the playbook with the
plan as extravars, live per-host progress -> facts again -> per-host summary, recorded in the ledger.
"""

from __future__ import annotations

import sys
import time
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..config import Policy
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, UsageError
from ..inventory import Fleet, Host
from ..plan import PHASE1, PHASES, BuildFileIssue, HostPlan
from ..state import RETRY_STATES, StateStore, new_run_id
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

PLAYBOOK = "phase1_emergency_cleanup.yml"
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


def _styled(status: str, text: str | None = None) -> Text:
    """Return ``text`` (default: the status) styled by ``status``, as literal text (no markup)."""
    return Text(text if text is not None else status, style=_STATUS_STYLE.get(status, ""))


def _inventory_base(fleet: Fleet) -> Path:
    return fleet.source if fleet.source.is_dir() else fleet.source.parent


def _policies(fleet: Fleet) -> dict[str, Policy]:
    # Validate every host's policy before touching any engine: a bad policy is exit 2, nothing changed.
    return {h.name: fleet.policy(h) for h in fleet.hosts}


def _build_file_issues(policies: dict[str, Policy], base: Path) -> dict[str, list[BuildFileIssue]]:
    """Return the missing build files per host (scanned once per distinct policy; sources are shared)."""
    from ..buildfiles import scan

    cache: dict[str, list[BuildFileIssue]] = {}
    result: dict[str, list[BuildFileIssue]] = {}
    for host, policy in policies.items():
        key = policy.model_dump_json()
        if key not in cache:
            cache[key] = scan(policy, base)
        result[host] = cache[key]
    return result


def _make_plans(
    fleet: Fleet,
    hosts: list[Host],
    policies: dict[str, Policy],
    forks: int,
) -> tuple[dict[str, HostPlan], dict[str, Any], list[Any]]:
    """Return (plans, snapshots, unreachable) for ``hosts``."""
    from ..facts import collect_many
    from ..plan import plan_phase1

    snapshots, unreachable = collect_many(hosts, forks=forks)
    issues = _build_file_issues({h: policies[h] for h in snapshots}, _inventory_base(fleet))
    plans = {name: plan_phase1(snap, policies[name], issues[name]) for name, snap in snapshots.items()}
    return plans, snapshots, unreachable


# -- rendering --------------------------------------------------------------------------------------


def _plan_tables(p: HostPlan) -> list[Table]:
    actions = Table(
        title=f"{p.host}: {len(p.actions)} action(s), {human_size(p.predicted_bytes)} predicted",
        title_justify="left",
        show_lines=False,
    )
    for col in ("#", "action", "target", "reason", "predicted"):
        actions.add_column(col, justify="right" if col in ("#", "predicted") else "left")
    for i, a in enumerate(p.actions, 1):
        what = {
            "remove_image": "remove image",
            "prune_build_cache": "prune build cache",
            "repair_build_file": "repair build file",
        }[a.kind]
        predicted = human_size(a.predicted_bytes) if a.kind != "repair_build_file" else "-"
        actions.add_row(str(i), what, escape(a.label), escape(a.reason), predicted)
    kept = Table(title=f"{p.host}: {len(p.protections)} image(s) protected", title_justify="left")
    kept.add_column("image")
    kept.add_column("why it stays")
    for pr in p.protections:
        name = ", ".join(pr.tags) or pr.image_id.removeprefix("sha256:")[:12] + " (dangling)"
        kept.add_row(escape(name), escape("; ".join(pr.reasons)))
    return [actions, kept]


def _plan_markdown(plans: list[HostPlan], unreachable: list[Any]) -> str:
    lines = ["# Phase 1 plan", ""]
    for p in plans:
        lines += [
            f"## {p.host}",
            "",
            f"Predicted: **{human_size(p.predicted_bytes)}** ({p.predicted_bytes} bytes)",
            "",
            "| # | action | target | reason | predicted |",
            "|---|---|---|---|---|",
        ]
        for i, a in enumerate(p.actions, 1):
            lines.append(f"| {i} | {a.kind} | `{a.label}` | {a.reason} | {human_size(a.predicted_bytes)} |")
        lines += ["", "| protected image | why |", "|---|---|"]
        for pr in p.protections:
            lines.append(f"| `{', '.join(pr.tags) or pr.image_id[:19]}` | {'; '.join(pr.reasons)} |")
        lines += [f"- note: {n}" for n in p.notes] + [""]
    for u in unreachable:
        lines.append(f"- **{u.host}: unreachable** — {u.reason}")
    return "\n".join(lines) + "\n"


def _show_plans(
    plans: dict[str, HostPlan], unreachable: list[Any], fmt: OutputFormat, skipped: list[str] | None = None
) -> None:
    ordered = [plans[h] for h in sorted(plans)]
    if fmt is OutputFormat.json:
        print_json(
            {
                "phase": PHASE1,
                "plans": [p.model_dump(mode="json") for p in ordered],
                "unreachable": [u.model_dump() for u in unreachable],
                "skipped_done": skipped or [],
            }
        )
        return
    if fmt is OutputFormat.markdown:
        out.print(_plan_markdown(ordered, unreachable), markup=False, end="")
        return
    for p in ordered:
        for table in _plan_tables(p):
            print_table(err, table)
        for note in p.notes:
            err.print(f"  [dim]note:[/] {escape(note)}")
    for u in unreachable:
        err.print(f"[bold red]{escape(u.host)}: unreachable[/] — {escape(u.reason)}")
    total = sum(p.predicted_bytes for p in ordered)
    err.print(
        f"[bold]{len(ordered)} host(s), {sum(len(p.actions) for p in ordered)} action(s), "
        f"{human_size(total)} predicted[/]"
    )


# -- commands ---------------------------------------------------------------------------------------


@app.command("plan")
def plan_cmd(
    phase: Annotated[str, typer.Argument(help="The phase to plan: phase1.")],
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    forks: ForksOpt = 5,
) -> None:
    """Show per host exactly what a phase would do (reason, predicted bytes) and what stays and why."""
    from ..inventory import load_fleet

    if phase not in PHASES:
        raise UsageError(f"unknown phase {phase!r}", hint=f"plannable phases: {', '.join(PHASES)}")
    fleet = load_fleet(inventory, hosts)
    policies = _policies(fleet)
    plans, _, unreachable = _make_plans(fleet, fleet.hosts, policies, forks)
    done: list[str] = []
    path = state_path(state)
    if path.exists():
        store = StateStore(path)
        done = [
            h.name
            for h in fleet.hosts
            if (r := store.phase_status(h.name, phase)) and r.status == "succeeded"
        ]
        store.close()
        if done and fmt is not OutputFormat.json:
            err.print(
                f"[dim]already finished {phase} (a run skips them unless --force): {', '.join(done)}[/]"
            )
    _show_plans(plans, unreachable, fmt, done)
    if unreachable:
        raise typer.Exit(EXIT_PARTIAL)


class _Progress:
    """Live per-host progress (rich) on stderr; plain lines when stderr is not a terminal."""

    def __init__(self, hosts: list[str]) -> None:
        self.state = {h: ("waiting", "") for h in hosts}
        self.live: Live | None = None
        self.t0 = time.monotonic()

    def table(self) -> Table:
        t = Table(title=f"phase1 — {human_duration(time.monotonic() - self.t0)}", title_justify="left")
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

    def __call__(self, ev: Any) -> None:
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


def _confirm(n_hosts: int, n_actions: int) -> None:
    if not sys.stdin.isatty():
        raise UsageError(
            "refusing to change hosts without confirmation: stdin is not a terminal",
            hint="review `acgs-remediate plan phase1`, then pass --yes",
        )
    if not typer.confirm(f"Apply {n_actions} action(s) on {n_hosts} host(s)?", default=False, err=True):
        raise UsageError("cancelled; nothing changed")


@app.command("phase1")
def phase1_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: Annotated[
        bool,
        typer.Option(
            "--check", help="Show what would be done (the playbook runs in check mode); change nothing."
        ),
    ] = False,
    diff: Annotated[
        bool, typer.Option("--diff", help="Show the changes (images before/after, files).")
    ] = False,
    yes: Annotated[bool, typer.Option("--yes", "-y", help="Do not ask for confirmation.")] = False,
    force: Annotated[
        bool, typer.Option("--force", help="Also re-run hosts that already finished phase1.")
    ] = False,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
) -> None:
    """Phase 1, emergency cleanup: remove oversized unused and old dangling images, prune cache, repair files.

    Exit 0: done; 1: a host failed; 2: bad input/refused (nothing changed); 3: a host unreachable.
    """
    from ..execute import run_playbook
    from ..inventory import load_fleet
    from ..resources import playbooks_dir

    fleet = load_fleet(inventory, hosts)
    policies = _policies(fleet)
    _build_file_issues(policies, _inventory_base(fleet))  # a Dockerfile that does not parse: exit 2, nothing written
    store = StateStore(state_path(state))
    for host, phase in store.reconcile():
        err.print(
            f"[yellow]{host}: the {phase} run that had it ended without a result; marked interrupted[/]"
        )
    todo: list[Host] = []
    done: list[str] = []
    for h in fleet.hosts:
        rec = store.phase_status(h.name, PHASE1)
        if rec is not None and rec.status == "succeeded" and not force:
            done.append(h.name)
        elif rec is None or rec.status in RETRY_STATES or force or rec.status == "running":
            todo.append(h)
    if done and fmt is not OutputFormat.json:
        err.print(
            f"[dim]skipping {len(done)} host(s) that finished phase1 (use --force to re-run): "
            f"{', '.join(done)}[/]"
        )
    if not todo:
        if fmt is OutputFormat.json:
            print_json({"phase": PHASE1, "check": check, "hosts": [], "skipped_done": done})
        else:
            err.print("nothing to do: every selected host finished phase1")
        raise typer.Exit(EXIT_OK)

    run_id = new_run_id(PHASE1)
    locks = None if check else store.lock_hosts([h.name for h in todo], run_id)
    try:
        clock = time.monotonic()
        plans, before, unreachable = _make_plans(fleet, todo, policies, forks)
        timings = {"facts_and_plan": round(time.monotonic() - clock, 2)}
        _show_plans(plans, unreachable, OutputFormat.table if fmt is OutputFormat.json else fmt)
        if not plans:
            _finish_unreachable(store, run_id, unreachable, check)
            _emit_summary(fmt, check, [], unreachable, done, {})
            raise typer.Exit(EXIT_PARTIAL)
        if not check and not yes:
            _confirm(len(plans), sum(len(p.actions) for p in plans.values()))
        targets = sorted(plans)
        if not check:
            store.begin_run(run_id, PHASE1, targets + [u.host for u in unreachable])
            for name in targets:
                store.mark_running(name, PHASE1, run_id, bytes_before=_snapshot_bytes(before[name]))
            _finish_unreachable(store, run_id, unreachable, check)
        extravars = {
            "acgs_phase1_plan": {n: p.for_run() for n, p in plans.items()},
            "acgs_phase1_build_files": sorted(
                {
                    a.path
                    for p in plans.values()
                    for a in p.actions
                    if a.kind == "repair_build_file" and a.path
                }
            ),
        }
        try:
            with _Progress(targets) as progress:
                result = run_playbook(
                    playbooks_dir() / PLAYBOOK,
                    fleet.source,
                    targets,
                    extravars=extravars,
                    check=check,
                    diff=diff,
                    forks=forks,
                    on_event=progress,
                )
        except BaseException:
            if not check:
                for name in targets:
                    store.finish_host(
                        name, PHASE1, run_id, "interrupted", detail="the orchestrator was interrupted"
                    )
                store.finish_run(run_id, "interrupted")
            raise
        timings["playbook"] = round(result.seconds, 2)
        clock = time.monotonic()
        after: dict[str, Any] = {}
        if not check:
            # Every host whose image cleanup ran is measured, even when the run failed elsewhere.
            reached = [fleet.host(n) for n in targets if _cleanup_ran(result.hosts[n])]
            after = _measure(reached, forks)
        timings["measure_after"] = round(time.monotonic() - clock, 2)
        if diff:
            _print_diff(result)
        rows = _summarise(store, run_id, plans, before, after, result, check)
        if not check:
            store.finish_run(run_id, result.status)
    finally:
        if locks is not None:
            locks.release()
        store.close()
    _emit_summary(
        fmt,
        check,
        rows,
        unreachable,
        done,
        {"run_id": run_id, "status": result.status, "seconds": round(result.seconds, 2), "timings": timings},
    )
    failed = any(r["status"] in ("failed", "interrupted") for r in rows)
    if failed:
        raise typer.Exit(EXIT_FAILED)
    if unreachable or any(r["status"] == "unreachable" for r in rows):
        raise typer.Exit(EXIT_PARTIAL)


def _snapshot_bytes(snapshot: Any) -> int:
    """Return image layers (the engine's own LayersSize, shared layers once) + build cache, in bytes."""
    from ..analysis import storage_bytes

    storage = storage_bytes(snapshot)
    layers = snapshot.df_layers_size if snapshot.df_layers_size is not None else storage["images"]
    return int(layers) + int(storage["build_cache"])


def _measure(hosts: list[Host], forks: int) -> dict[str, int]:
    """Return the bytes of ``_snapshot_bytes`` per host, measured with one /system/df call each."""
    from concurrent.futures import ThreadPoolExecutor

    from ..facts import disk_usage

    def one(host: Host) -> tuple[str, int | None]:
        try:
            df = disk_usage(host)
        except Exception:  # a host that went away after its run: its bytes are simply unknown
            return host.name, None
        cache = sum(int(b.get("Size") or 0) for b in df.get("BuildCache") or [] if not b.get("Shared"))
        return host.name, int(df.get("LayersSize") or 0) + cache

    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        return {name: value for name, value in pool.map(one, hosts) if value is not None}


def _finish_unreachable(store: StateStore, run_id: str, unreachable: list[Any], check: bool) -> None:
    if check:
        return
    for u in unreachable:
        store.finish_host(u.host, PHASE1, run_id, "failed", detail=f"unreachable: {u.reason}")


def _predicted(snapshot: Any, removed: list[dict[str, Any]], cache: dict[str, Any], check: bool) -> int:
    """Return the bytes the plan predicted for what was actually removed (layers shared among them once)."""
    from ..analysis import reclaimable_bytes

    total = reclaimable_bytes(snapshot, [r["id"] for r in removed]) if removed else 0
    if cache.get("planned") and (check or cache.get("reclaimed_bytes")):
        total += int(cache.get("predicted_bytes") or 0)
    return total


def _print_diff(result: Any) -> None:
    """Print what each host's run changed (or would change): images before/after and files written."""
    for name, hr in sorted(result.hosts.items()):
        diff = (hr.results.get("acgs_image_cleanup") or {}).get("diff") or {}
        gone = sorted(set(diff.get("before", "").splitlines()) - set(diff.get("after", "").splitlines()))
        for line in gone:
            err.print(Text(f"{name}: - image {line}", style="red"))
        files = hr.results.get("acgs_build_files") or {}
        for entry in files.get("diff") or []:
            err.print(Text(f"{name}: + file {entry.get('after_header')}", style="green"))
            for line in str(entry.get("after", "")).splitlines():
                err.print(Text(f"    + {line}", style="green"))


def _cleanup_ran(hr: Any) -> bool:
    """Return whether ``hr``'s image cleanup ran to its end (whatever else failed in the run)."""
    res = hr.results.get("acgs_image_cleanup")
    return res is not None and not res.get("failed") and hr.status != "unreachable"


def _shared_repair_failure(result: Any) -> str | None:
    """Return why the (run-once) build-file repair failed, or None when it did not fail."""
    for hr in result.hosts.values():
        res = hr.results.get("acgs_build_files") or {}
        if res.get("failed"):
            return str(res.get("msg") or "failed").strip().splitlines()[0]
    return None


def _summarise(
    store: StateStore,
    run_id: str,
    plans: dict[str, HostPlan],
    before: dict[str, Any],
    after: dict[str, Any],
    result: Any,
    check: bool,
) -> list[dict[str, Any]]:
    """Return one summary row per host; record each host's outcome in the ledger (not in check mode).

    The build files are repaired once, on the control node, for sources every host's services share: when
    that fails, phase 1 is unfinished on every host of the run (not only on the host Ansible ran it for),
    and a re-run retries them all (their image cleanup is then a no-op).
    """
    shared = _shared_repair_failure(result)
    rows: list[dict[str, Any]] = []
    for name in sorted(plans):
        hr = result.hosts[name]
        mod = hr.results.get("acgs_image_cleanup", {})
        files = hr.results.get("acgs_build_files", {})
        removed = mod.get("would_remove" if check else "removed") or []
        bytes_before = _snapshot_bytes(before[name])
        bytes_after = after.get(name)
        if result.interrupted:
            status = "interrupted"
        elif hr.status in ("ok", "changed"):
            status = ("would change" if hr.changed else "no change") if check else "succeeded"
        else:
            status = hr.status  # failed / unreachable / not_run
        messages = list(hr.messages)
        if shared is not None and not result.interrupted:
            if status in ("succeeded", "would change", "no change"):
                status = "failed"
            if not any(shared in m for m in messages):
                messages.append(f"build files (shared, on the control node): {shared}")
        row = {
            "host": name,
            "status": status,
            "changed": hr.changed,
            "actions": len(plans[name].actions),
            "removed": len(removed),
            "planned_images": [a.image_id for a in plans[name].removals()],
            "removed_images": [{"id": r["id"], "tags": r["tags"]} for r in removed],
            "skipped": mod.get("skipped_images") or [],
            "predicted_bytes": _predicted(before[name], removed, mod.get("build_cache") or {}, check),
            "bytes_before": bytes_before,
            "bytes_after": bytes_after,
            "measured_freed": (bytes_before - bytes_after) if bytes_after is not None else None,
            "files": [f["path"] for f in files.get("repaired") or []],
            "messages": messages,
        }
        rows.append(row)
        if not check:
            ledger_status = {"succeeded": "succeeded", "interrupted": "interrupted"}.get(status, "failed")
            store.finish_host(
                name,
                PHASE1,
                run_id,
                ledger_status,  # type: ignore[arg-type]
                bytes_after=bytes_after,
                bytes_freed=row["measured_freed"],
                removed=[{"id": r["id"], "tags": r["tags"]} for r in removed]
                + [{"file": f} for f in row["files"]],
                detail="; ".join(messages) or None,
            )
            if bytes_after is not None:
                store.add_measurement(
                    name,
                    "phase1",
                    {
                        "bytes_before": bytes_before,
                        "bytes_after": bytes_after,
                        "predicted": row["predicted_bytes"],
                    },
                    run_id=run_id,
                )
    return rows


def _emit_summary(
    fmt: OutputFormat,
    check: bool,
    rows: list[dict[str, Any]],
    unreachable: list[Any],
    done: list[str],
    run: dict[str, Any],
) -> None:
    if fmt is OutputFormat.json:
        print_json(
            {
                "phase": PHASE1,
                "check": check,
                **run,
                "hosts": rows,
                "unreachable": [u.model_dump() for u in unreachable],
                "skipped_done": done,
            }
        )
        return
    title = "phase1 --check: what would be done" if check else f"phase1 {run.get('status', '')}"
    t = Table(title=f"{title} ({human_duration(run.get('seconds'))})", title_justify="left")
    for col in ("host", "status", "changed", "images", "skipped", "predicted", "measured freed", "notes"):
        t.add_column(
            col,
            justify="right"
            if col in ("changed", "images", "skipped", "predicted", "measured freed")
            else "left",
        )
    for r in rows:
        notes = [f"{s['id'].removeprefix('sha256:')[:12]}: {s['reason']}" for s in r["skipped"]]
        notes += [f"wrote {f}" for f in r["files"]] + r["messages"]
        t.add_row(
            r["host"],
            _styled(r["status"]),
            str(r["changed"]),
            str(r["removed"]),
            str(len(r["skipped"])),
            human_size(r["predicted_bytes"]),
            human_size(r["measured_freed"]),
            escape("; ".join(notes)),
        )
    for u in unreachable:
        t.add_row(u.host, "[bold red]unreachable[/]", "-", "-", "-", "-", "-", escape(u.reason))
    target = out if fmt is OutputFormat.table else err
    if fmt is OutputFormat.markdown:
        lines = [
            f"## {title}",
            "",
            "| host | status | changed | images | skipped | predicted | measured freed |",
            "|---|---|---|---|---|---|---|",
        ]
        lines += [
            f"| {r['host']} | {r['status']} | {r['changed']} | {r['removed']} | {len(r['skipped'])} | "
            f"{human_size(r['predicted_bytes'])} | {human_size(r['measured_freed'])} |"
            for r in rows
        ]
        lines += [f"| {u.host} | unreachable | - | - | - | - | - |" for u in unreachable]
        out.print("\n".join(lines), markup=False)
        return
    print_table(target, t)


@app.command("status")
def status_cmd(
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    history: Annotated[
        bool, typer.Option("--history", help="Also list the ledger's latest entries.")
    ] = False,
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
    finally:
        store.close()
    phases = sorted({r.phase for r in records} | {PHASE1})
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
        lines += [
            f"| {h} | " + " | ".join(cell(ph.get(p)) for p in phases) + " |"
            for h, ph in sorted(by_host.items())
        ]
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
    for e in entries:
        out.print(
            f"  {e.finished_at:%Y-%m-%d %H:%M:%S} {e.host} {e.phase} {e.status} {e.run_id or ''} "
            f"{escape(e.detail or '')}"
        )
