"""`acgs-remediate verify`: the report's five success criteria, per host and fleet-wide, as a gate."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Annotated, Any

import typer
from rich.markup import escape
from rich.table import Table

from ..criteria import CriterionResult, Status, evaluate, overall, rollup, unreachable_results
from ..errors import EXIT_FAILED, EXIT_OK, EXIT_PARTIAL, UsageError
from . import app
from .common import (
    ForksOpt,
    FormatOpt,
    HostsOpt,
    InventoryOpt,
    OutputFormat,
    StateOpt,
    check_output_path,
    err,
    out,
    print_json,
    print_table,
    state_path,
)

# Causes shown per cell in the table and Markdown; JSON and JUnit always carry all of them.
_MAX_CAUSES_SHOWN = 6
_VERDICT_STYLE = {Status.passed: "bold green", Status.failed: "bold red", Status.not_verified: "bold yellow"}
_VERDICT_TEXT = {Status.passed: "pass", Status.failed: "FAIL", Status.not_verified: "not verified"}


@app.command()
def verify(
    inventory: InventoryOpt = None,
    hosts: HostsOpt = "all",
    state: StateOpt = None,
    fmt: FormatOpt = OutputFormat.table,
    junit: Annotated[
        Path | None,
        typer.Option(
            "--junit", help="Also write JUnit XML here: one test case per host and criterion (for CI)."
        ),
    ] = None,
    forks: ForksOpt = 5,
) -> None:
    """Check the report's five success criteria on each host and fleet-wide.

    Exit 0: all pass; 1: a criterion fails or is not verified; 3: a host is unreachable.
    """
    from ..facts import collect_many
    from ..inventory import load_fleet
    from ..junit import write_junit

    if junit is not None:
        check_output_path(junit, "--junit")
    fleet = load_fleet(inventory, hosts)
    # Validate every host's policy before touching any engine: a bad policy is a usage error (exit 2).
    policies = {h.name: fleet.policy(h) for h in fleet.hosts}
    store_path = state_path(state)
    baselines, records = _read_state(store_path, [h.name for h in fleet.hosts])

    human = err if fmt is OutputFormat.json else out
    if fmt is OutputFormat.table:
        human.print(
            f"[dim]verifying {len(fleet.hosts)} host(s) from {escape(str(fleet.source))}; "
            f"state {escape(str(store_path))}[/]"
        )
    snapshots, unreachable = collect_many(fleet.hosts, forks=forks, parents=False)  # no planning here
    down = {u.host: u.reason for u in unreachable}

    per_host: dict[str, list[CriterionResult]] = {}
    for h in fleet.hosts:
        if h.name in snapshots:
            per_host[h.name] = evaluate(
                h.name, baselines.get(h.name), snapshots[h.name], records.get(h.name, []), policies[h.name]
            )
        else:
            per_host[h.name] = unreachable_results(
                next(u for u in unreachable if u.host == h.name), policies[h.name]
            )
    fleet_results = rollup(per_host)
    verdict = overall(fleet_results)
    code = EXIT_PARTIAL if down else (EXIT_OK if verdict is Status.passed else EXIT_FAILED)

    if junit is not None:
        try:
            write_junit(junit, per_host, down)
        except OSError as exc:
            raise UsageError(
                f"cannot write the JUnit file {junit}: {exc.strerror or exc}",
                hint="pass --junit with a writable path",
            ) from None
    if fmt is OutputFormat.json:
        print_json(report_dict(per_host, fleet_results, down, verdict, code, store_path))
    elif fmt is OutputFormat.markdown:
        out.print(to_markdown(per_host, fleet_results, down, verdict), markup=False, highlight=False)
    else:
        _print_tables(per_host, fleet_results, down, verdict, code)
    if junit is not None and fmt is not OutputFormat.json:
        err.print(f"[dim]JUnit XML written to {escape(str(junit))}[/]")
    raise typer.Exit(code)


def _read_state(path: Path, hosts: Sequence[str]) -> tuple[dict[str, Any], dict[str, list[Any]]]:
    """Return baselines and build records of ``hosts``; empty when no state store exists yet.

    verify only reads: it does not create a state store that is not there.
    """
    if not path.exists():
        return {}, {}
    from ..state import StateStore

    store = StateStore(path)
    try:
        baselines = {h: b for h in hosts if (b := store.baseline(h)) is not None}
        records = {h: store.build_records(h) for h in hosts}
    finally:
        store.close()
    return baselines, records


def report_dict(
    per_host: Mapping[str, Sequence[CriterionResult]],
    fleet_results: Sequence[CriterionResult],
    down: Mapping[str, str],
    verdict: Status,
    code: int,
    store_path: Path,
) -> dict[str, Any]:
    """Return the JSON document of a verify run."""
    return {
        "verdict": verdict.value,
        "exit_code": code,
        "state": str(store_path),
        "fleet": [r.model_dump(mode="json") for r in fleet_results],
        "hosts": {h: [r.model_dump(mode="json") for r in rs] for h, rs in per_host.items()},
        "unreachable": [{"host": h, "reason": why} for h, why in down.items()],
    }


def _shown_causes(r: CriterionResult) -> list[str]:
    shown = r.causes[:_MAX_CAUSES_SHOWN]
    if len(r.causes) > _MAX_CAUSES_SHOWN:
        shown.append(f"… and {len(r.causes) - _MAX_CAUSES_SHOWN} more (see --format json)")
    return shown


def _table(title: str, results: Sequence[CriterionResult]) -> Table:
    table = Table(title=title, title_justify="left", show_lines=True, expand=False)
    table.add_column("criterion", style="bold", max_width=34)
    table.add_column("measured")
    table.add_column("threshold")
    table.add_column("verdict")
    table.add_column("cause")
    for r in results:
        table.add_row(
            escape(r.title),
            escape(r.measured),
            escape(r.threshold),
            f"[{_VERDICT_STYLE[r.status]}]{_VERDICT_TEXT[r.status]}[/]",
            escape("\n".join(_shown_causes(r))),
        )
    return table


def _print_tables(
    per_host: Mapping[str, Sequence[CriterionResult]],
    fleet_results: Sequence[CriterionResult],
    down: Mapping[str, str],
    verdict: Status,
    code: int,
) -> None:
    for host, results in per_host.items():
        if host in down:
            out.print(f"[bold red]{escape(host)}: unreachable[/] — {escape(down[host])}")
            continue
        print_table(out, _table(f"{host}", results))
    if len(per_host) > 1 or down:
        print_table(out, _table(f"fleet ({len(per_host)} hosts)", fleet_results))
    word = {
        Status.passed: "all criteria pass",
        Status.failed: "criteria FAIL",
        Status.not_verified: "criteria not verified",
    }[verdict]
    suffix = f"; {len(down)} host(s) unreachable" if down else ""
    out.print(f"[{_VERDICT_STYLE[verdict]}]verify: {word}{suffix}[/] (exit {code})")


def _md_cell(text: str) -> str:
    return text.replace("|", "\\|").replace("\n", "<br>")


def _md_table(results: Sequence[CriterionResult]) -> list[str]:
    lines = ["| Criterion | Measured | Threshold | Verdict | Cause |", "|---|---|---|---|---|"]
    for r in results:
        mark = {Status.passed: "✅ pass", Status.failed: "❌ fail", Status.not_verified: "⚠️ not verified"}[
            r.status
        ]
        lines.append(
            "| "
            + " | ".join(
                _md_cell(x) for x in (r.title, r.measured, r.threshold, mark, "\n".join(_shown_causes(r)))
            )
            + " |"
        )
    return lines


def to_markdown(
    per_host: Mapping[str, Sequence[CriterionResult]],
    fleet_results: Sequence[CriterionResult],
    down: Mapping[str, str],
    verdict: Status,
) -> str:
    """Return the verify report as Markdown (the report's "Success Criteria" section, measured)."""
    lines = ["## ✅ Success Criteria", "", f"**Verdict**: {verdict.value} ({len(per_host)} hosts)", ""]
    lines += ["### Fleet", "", *_md_table(fleet_results), ""]
    for host, results in per_host.items():
        lines.append(f"### {host}")
        lines.append("")
        if host in down:
            lines += [f"Unreachable: {_md_cell(down[host])}", ""]
            continue
        lines += [*_md_table(results), ""]
    return "\n".join(lines)
