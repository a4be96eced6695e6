"""The analyze report from one model: Markdown sections, JSON round trip, self-contained HTML, baselines."""

from __future__ import annotations

import json
import re
import unicodedata
from datetime import UTC, datetime
from pathlib import Path

import pytest

from acgs_remediate import analysis, doctor, report
from acgs_remediate.config import Policy
from acgs_remediate.models import Baseline, HostSnapshot, Unreachable

CASE = Path(__file__).parent / "cases" / "analysis" / "seed_report_host.json"
DOCS = Path(__file__).resolve().parents[2] / "docs" / "report-schema.md"
NOW = datetime(2025, 6, 15, 12, 15, tzinfo=UTC)


def _host(baseline: Baseline | None = None) -> report.HostReport:
    data = json.loads(CASE.read_text())
    snapshot = HostSnapshot.model_validate(data["snapshot"])
    result = analysis.analyze(snapshot, Policy.model_validate(data["policy"]))
    change = report.baseline_change(baseline, result) if baseline else None
    return report.HostReport(
        analysis=result,
        status=report.host_status(result),
        baseline=baseline or analysis.baseline_from(snapshot),
        baseline_recorded=baseline is None,
        change=change,
    )


def _builds(tmp_path: Path) -> list[doctor.ServiceDoctor]:
    ctx = tmp_path / "services/core/policy-governance/pgc_service"
    ctx.mkdir(parents=True)
    (ctx / "Dockerfile").write_text(
        "FROM python:3.11\nCOPY requirements.txt .\nRUN pip install -r requirements.txt\n"
    )
    policy = Policy(
        sources_root=str(tmp_path),
        services=[
            {
                "name": "pgc",
                "image": "acgs-1-pgc_service:latest",
                "context": "services/core/policy-governance/pgc_service",
            }
        ],
    )
    return doctor.check_services(policy)


def _report(tmp_path: Path, baseline: Baseline | None = None) -> report.AnalyzeReport:
    return report.build_report(
        [_host(baseline)],
        [Unreachable(host="docker-prod-02", reason="ssh://deploy@docker-prod-02: timed out")],
        _builds(tmp_path),
        inventory="inventory/hosts.yml",
        pattern="prod",
        generated_at=NOW,
    )


def test_markdown_has_the_seed_reports_sections_and_real_numbers(tmp_path: Path) -> None:
    md = report.to_markdown(_report(tmp_path))
    for section in (
        "## Executive Summary",
        "### 1. Oversized Images",
        "### 2. Dangling Images Waste",
        "## ❌ Build Failures",
        "### 3. Service Image Analysis",
        "## 🔧 Root Cause Analysis",
        "## 📊 Expected Storage Savings",
        "## ⚠️ Risk Assessment",
    ):
        assert section in md, section
    assert "**Status**: 🚨 CRITICAL ISSUES IDENTIFIED" in md
    assert "| **GS Service** |" not in md and "| **gs** | 6.03GB | ~200MB | ❌ 30x oversized |" in md
    assert "| **integrity** | 258MB | ~200MB | ✅ Acceptable |" in md
    assert "Total Dangling Images: 41" in md and "Date Range: 2025-05-31 to 2025-06-11" in md
    assert "- 228-232MB dangling images (21x)" in md
    # Real bytes beside the naive sum: 119GB really freed where summing `docker images` says 140GB.
    assert "| **Remove unused oversized images** | 119GB | 140GB | Immediate |" in md
    assert "ERROR: COPY services/core/policy-governance/pgc_service/requirements.txt" in md
    assert "File not found: requirements.txt" in md
    assert "docker-prod-02" in md and "timed out" in md
    assert "postgres_data" in md  # named volume reported, with the prune warning
    assert "`acgs-master-gs_service:latest` | **6.03GB**" in md and "acgs-gs-old (exited)" in md


def test_json_round_trips_and_carries_the_schema_version(tmp_path: Path) -> None:
    rep = _report(tmp_path)
    text = report.to_json(rep)
    data = json.loads(text)
    assert data["schema_version"] == report.SCHEMA_VERSION
    assert data["summary"]["dangling_count"] == 41 and data["summary"]["unreachable"] == 1
    assert report.AnalyzeReport.model_validate_json(text) == rep


def test_html_is_self_contained_with_both_charts(tmp_path: Path) -> None:
    page = report.to_html(_report(tmp_path))
    assert page.startswith("<!DOCTYPE html>") and page.rstrip().endswith("</html>")
    assert "<style>" in page and page.count("<svg") == 2  # storage per host + image sizes vs budgets
    # No external assets: no src/href, no URL other than the SVG namespace.
    assert not re.search(r"\b(src|href)\s*=", page)
    assert set(re.findall(r"https?://[^\s\"']+", page)) <= {"http://www.w3.org/2000/svg"}
    assert "Storage by category per host" in page and "rocm/pytorch:latest" in page
    assert "<script" not in page


def test_html_draws_status_with_its_own_markup_not_emoji(tmp_path: Path) -> None:
    """Without an emoji font, emoji show as empty boxes: status is a CSS badge with a word instead."""
    page = report.to_html(_report(tmp_path))
    symbols = sorted({ch for ch in page if unicodedata.category(ch) == "So" or ch == "\ufe0f"})
    assert not symbols, f"pictographs in the HTML report: {symbols}"
    assert "<span class='badge CRITICAL'>CRITICAL</span> critical issues identified" in page
    assert "<span class='badge fail'>FAIL</span> 30x oversized" in page
    assert "<span class='badge ok'>OK</span> Acceptable" in page
    assert ".badge.fail" in page  # drawn by the page's own stylesheet


def test_later_reports_show_the_change_against_the_baseline(tmp_path: Path) -> None:
    before = Baseline(
        host="docker-prod-01",
        recorded_at=datetime(2025, 6, 1, tzinfo=UTC),
        images_bytes=400_000_000_000,
        build_cache_bytes=7_000_000_000,
        image_count=60,
        dangling_count=50,
        dangling_bytes=20_000_000_000,
    )
    rep = _report(tmp_path, baseline=before)
    change = rep.hosts[0].change
    assert change is not None and not rep.hosts[0].baseline_recorded
    assert change.images_bytes.baseline == 400_000_000_000
    assert change.images_bytes.delta == rep.hosts[0].analysis.storage.df_layers_size - 400_000_000_000
    assert change.dangling_count.delta == 41 - 50
    md = report.to_markdown(rep)
    assert f"{change.images_bytes.pct:+.1f}%" in md and "_Baseline from 2025-06-01 00:00 UTC._" in md
    first = report.to_markdown(_report(tmp_path / "again"))
    assert "Baseline recorded by this run" in first


def test_fleet_status_and_summary_add_up(tmp_path: Path) -> None:
    rep = _report(tmp_path)
    host = rep.hosts[0].analysis
    assert rep.status == "CRITICAL" and rep.hosts[0].status == "CRITICAL"
    assert rep.summary.phase1_freed_bytes == host.savings[2].freed_bytes
    assert rep.summary.build_errors == 1
    assert rep.summary.oversized_candidates == 5


def test_rich_rendering_prints_every_host_and_the_unreachable_one(tmp_path: Path) -> None:
    from rich.console import Console

    console = Console(record=True, width=200, color_system=None)
    report.render_rich(_report(tmp_path), console)
    text = console.export_text()
    assert "docker-prod-01" in text and "docker-prod-02" in text and "UNREACHABLE" in text
    assert "❌ 30x oversized" in text and "Build-context doctor" in text


def test_documented_json_schema_matches_the_model() -> None:
    """docs/report-schema.md embeds the model's JSON Schema; regenerate it when the model changes."""
    text = DOCS.read_text()
    block = re.search(r"```json\n(.*?)\n```", text, re.S)
    assert block, "docs/report-schema.md has no ```json schema block"
    assert json.loads(block.group(1)) == report.AnalyzeReport.model_json_schema(), (
        "schema out of date: python -m acgs_remediate.report --schema > the block in docs/report-schema.md"
    )


@pytest.mark.parametrize(
    ("name", "fmt", "expected"),
    [
        ("r.html", None, "html"),
        ("r.md", None, "markdown"),
        ("r.json", None, "json"),
        ("r.html", "json", "json"),
        (None, None, "table"),
    ],
)
def test_output_format_from_option_or_suffix(name: str | None, fmt: str | None, expected: str) -> None:
    from acgs_remediate.cli.analyze import AnalyzeFormat, output_format

    assert output_format(AnalyzeFormat(fmt) if fmt else None, Path(name) if name else None) == expected


def test_unknown_output_suffix_is_a_usage_error() -> None:
    from acgs_remediate.cli.analyze import output_format
    from acgs_remediate.errors import UsageError

    with pytest.raises(UsageError, match="cannot tell the report format"):
        output_format(None, Path("report.pdf"))
