"""`acgs-remediate analyze`: the seed report, generated from live engines, with layer-exact bytes."""

from __future__ import annotations

import json
import os
import sys
from enum import StrEnum
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ..errors import EXIT_OK, EXIT_PARTIAL, UsageError
from . import app
from .common import (
    ForksOpt,
    HostsOpt,
    InventoryOpt,
    OutputFileOpt,
    StateOpt,
    check_output_path,
    err,
    out,
    state_path,
)


class AnalyzeFormat(StrEnum):
    """Forms of the analyze report."""

    table = "table"
    json = "json"
    markdown = "markdown"
    html = "html"


_SUFFIX_FORMATS = {
    ".json": "json",
    ".md": "markdown",
    ".markdown": "markdown",
    ".html": "html",
    ".htm": "html",
    ".txt": "table",
}


def output_format(fmt: AnalyzeFormat | None, output: Path | None) -> str:
    """Return the format to write: --format when given, else the output file's suffix, else table."""
    if fmt is not None:
        return fmt.value
    if output is None:
        return "table"
    inferred = _SUFFIX_FORMATS.get(output.suffix.lower())
    if inferred is None:
        raise UsageError(
            f"cannot tell the report format from {output.name!r}",
            hint="pass --format table|json|markdown|html, or name the file .html, .md or .json",
        )
    return inferred


@app.command()
def analyze(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    fmt: Annotated[
        AnalyzeFormat | None,
        typer.Option(
            "--format",
            "-f",
            help="table, json, markdown or html. Default: table, or from -o's suffix.",
            show_default=False,
        ),
    ] = None,
    output: OutputFileOpt = None,
    forks: ForksOpt = 10,
    timeout: Annotated[
        float | None,
        typer.Option(
            "--timeout",
            min=1,
            help="Seconds per engine request (scaled up for hosts with many images). "
            "Default: the host's docker_timeout, else 60.",
            show_default=False,
        ),
    ] = None,
) -> None:
    """Analyse Docker hosts read-only: oversized and dangling images, reclaimable bytes, builds, baselines.

    The first analyze of a host records its baseline in the state store; later reports show the change.
    Exit 0: analysed; 3: some hosts unreachable (the others are still reported); 2: bad input.
    """
    from concurrent.futures import ThreadPoolExecutor

    from .. import facts
    from ..inventory import load_fleet
    from ..state import StateStore

    kind = output_format(fmt, output)
    if output is not None:
        check_output_path(output, "-o")
    fleet = load_fleet(inventory, hosts)
    # Every policy is validated before any engine is asked: a bad policy is exit 2, nothing read.
    policies = {h.name: fleet.policy(h) for h in fleet.hosts}
    store = StateStore(state_path(state))
    err.print(f"[dim]analysing {len(fleet.hosts)} host(s) from {escape(str(fleet.source))}…[/]")

    # Engines answer while this thread imports the analysis side (~0.1 s of CPU that would otherwise
    # come after the slowest engine's last answer).
    with ThreadPoolExecutor(max_workers=1) as background:
        # Parent links too: the report's candidates are the plan's removals (one decision), and an image a
        # kept classic-built child stands on is protected there.
        collecting = background.submit(facts.collect_many, fleet.hosts, forks=forks, timeout=timeout)
        import dockerfile_parse  # noqa: F401 - the doctor imports it on first use; load it now, while we wait

        from .. import analysis, doctor
        from ..report import (
            HostReport,
            baseline_change,
            build_report,
            host_status,
            optimized_services,
            render,
            render_rich,
        )

        snapshots, unreachable = collecting.result()

    base_dir = fleet.source if fleet.source.is_dir() else fleet.source.parent
    host_reports: list[HostReport] = []
    for h in fleet.hosts:
        snap = snapshots.get(h.name)
        if snap is None:
            continue
        # The ledger: when this tool first saw each image, the last evidence of its arrival ("fresh").
        snap = snapshots[h.name] = store.note_arrivals(snap)
        result = analysis.analyze(snap, policies[h.name])
        recorded = store.record_baseline(analysis.baseline_from(snap))
        baseline = store.baseline(h.name)
        change = baseline_change(baseline, result) if baseline is not None and not recorded else None
        host_reports.append(
            HostReport(
                analysis=result,
                status=host_status(result),
                baseline=baseline,
                baseline_recorded=recorded,
                change=change,
            )
        )

    # The doctor reads the control node's source trees: once per distinct policy, not once per host.
    builds: list[doctor.ServiceDoctor] = []
    done: set[str] = set()
    for h in fleet.hosts:
        policy = policies[h.name]
        key = json.dumps(policy.model_dump(mode="json", include={"services", "sources_root"}), sort_keys=True)
        if key in done or not policy.services:
            continue
        done.add(key)
        builds += doctor.check_services(policy, base=base_dir, snapshot=snapshots.get(h.name))
    # Phase 2's results, once it has run: before -> after per service, from the build records.
    records = {h.name: store.build_records(h.name) for h in fleet.hosts}
    expected = {s.name: s.expected_size for p in policies.values() for s in p.services}
    baseline_sizes: dict[str, int] = {}
    for h in fleet.hosts:
        if (b := store.baseline(h.name)) is not None:
            for ref, size in b.per_image.items():
                baseline_sizes[ref] = max(size, baseline_sizes.get(ref, 0))
    # Phase 3's monitor: the latest sample taken after a rollout, per host (from the ledger).
    from ..monitor import latest as latest_samples

    deployed = latest_samples(store, [h.name for h in fleet.hosts]).values()
    store.close()

    report = build_report(
        host_reports,
        unreachable,
        builds,
        inventory=str(fleet.source),
        pattern=hosts,
        optimized=optimized_services(records, expected, baseline_sizes),
        deployed=deployed,
    )
    if output is not None:
        try:
            output.parent.mkdir(parents=True, exist_ok=True)
            # Owner only (0600), whatever the umask: a report lists the fleet's hosts, images and sources.
            fd = os.open(output, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
            os.fchmod(fd, 0o600)
            with os.fdopen(fd, "w", encoding="utf-8") as fh:
                if kind == "table":
                    render_rich(report, Console(file=fh, width=140, color_system=None, highlight=False))
                else:
                    fh.write(render(report, kind))
        except OSError as exc:
            raise UsageError(
                f"cannot write {output}: {exc.strerror or exc}", hint="pass -o with a writable path"
            ) from None
        err.print(f"wrote the {kind} report to {escape(str(output))}")
    elif kind == "table":
        render_rich(report, out)
    else:
        sys.stdout.write(render(report, kind))
        sys.stdout.flush()
    for u in unreachable:
        err.print(f"[red]unreachable[/]: {escape(u.host)}: {escape(u.reason)}")
    raise typer.Exit(EXIT_PARTIAL if unreachable else EXIT_OK)
