"""`acgs-remediate hygiene`: the scheduled run (cron, systemd timer, AWX schedule) through the shared flow.

Safe to run from a scheduler: an overlapping run exits at once with exit code 4 and one line naming the
run that holds the host, having changed nothing; a run killed midway leaves its hosts "interrupted" in the
ledger and the next run finishes the work. ``--metrics-file`` writes node_exporter textfile metrics.
"""

from __future__ import annotations

import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Annotated, Any

import typer

from ..errors import EXIT_LOCKED, LockedError, UsageError
from ..plan import HYGIENE
from . import app
from .common import ForksOpt, FormatOpt, HostsOpt, InventoryOpt, OutputFormat, StateOpt, err, state_path
from .phases import CheckOpt, DiffOpt, PlanFileOpt, YesOpt, run_phase_command

MetricsOpt = Annotated[
    Path | None,
    typer.Option(
        "--metrics-file",
        help="Write Prometheus metrics of the run here (node_exporter textfile collector; atomic temp + rename).",
        show_default=False,
    ),
]


@app.command("hygiene")
def hygiene_cmd(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    check: CheckOpt = False,
    diff: DiffOpt = False,
    yes: YesOpt = False,
    forks: ForksOpt = 5,
    fmt: FormatOpt = OutputFormat.table,
    plan_file: PlanFileOpt = None,
    metrics_file: MetricsOpt = None,
) -> None:
    """Keep every host under its watermarks: old dangling images, build cache over budget, then LRU unused images.

    Exit 0: done; 1: a host failed; 2: bad input/refused (nothing changed); 3: a host unreachable;
    4: another run holds a host (an overlapping run: this one changed nothing).
    """
    if metrics_file is not None and not metrics_file.expanduser().parent.is_dir():
        raise UsageError(
            f"cannot write metrics to {metrics_file}: {metrics_file.expanduser().parent} is not a directory",
            hint="point --metrics-file into node_exporter's textfile directory",
        )
    t0 = time.monotonic()
    reports: list[Any] = []
    try:
        run_phase_command(
            HYGIENE,
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
            on_report=reports.append,
        )
    except LockedError as exc:
        raise LockedError(
            f"another hygiene run is still going: {exc.message}; this run changed nothing",
            hint="runs overlap when one takes longer than the schedule's interval; the next run catches up",
            exit_code=EXIT_LOCKED,
        ) from None
    finally:
        if metrics_file is not None and reports and not check:
            _write_metrics(metrics_file, reports[0], state_path(state), time.monotonic() - t0)


def _write_metrics(path: Path, report: Any, state: Path, seconds: float) -> None:
    from ..metrics import HostMetrics, render, write_atomically
    from ..state import StateStore

    store = StateStore(state)
    try:
        latest: dict[str, datetime] = {}
        for entry in store.history(phase=HYGIENE, limit=100_000):  # newest first
            if entry.status == "succeeded" and entry.finished_at is not None:
                latest.setdefault(entry.host, entry.finished_at)
    finally:
        store.close()
    hosts: list[HostMetrics] = []
    for row in report.rows:
        mark = row.get("watermark") or {}
        reclaimed = row.get("predicted_by_category") or {}
        used = {k: v - reclaimed.get(k, 0) for k, v in (row.get("used_before") or {}).items()}
        if row.get("bytes_after") is not None:
            used["total"] = row["bytes_after"]
        hosts.append(
            HostMetrics(
                host=row["host"],
                ok=row["status"] == "succeeded",
                used_bytes=used,
                reclaimed_bytes=reclaimed,
                reclaimed_measured=row.get("measured_freed"),
                removed=row.get("removed_by_category") or {},
                watermark={k: mark.get(f"{k}_bytes") for k in ("used", "high", "low")},
                watermark_basis=mark.get("basis", ""),
                above_high={"above_high": 1, "below_high": 0}.get(mark.get("state", ""), -1),
                last_success=latest.get(row["host"]),
            )
        )
    hosts += [HostMetrics(host=u.host, ok=False) for u in report.unreachable]
    write_atomically(path, render(hosts, datetime.now(UTC), seconds))
    err.print(f"[dim]metrics written to {path}[/]")
