"""Phase 2 in the report: per service before -> after, shrink factor, build time and gate verdicts, from the
build records phase 2 writes (JSON, Markdown and the HTML report's before/after chart)."""

from __future__ import annotations

from datetime import UTC, datetime

from acgs_remediate.models import BuildRecord, GateVerdict
from acgs_remediate.report import build_report, optimized_services, to_html, to_markdown

T1 = datetime(2026, 1, 1, tzinfo=UTC)
T2 = datetime(2026, 1, 2, tzinfo=UTC)


def _record(host: str, service: str, **kw: object) -> BuildRecord:
    base: dict[str, object] = {
        "host": host,
        "service": service,
        "image": f"acgs-1-{service}:latest",
        "ok": True,
        "seconds": 42.0,
        "size": 12_000_000,
        "size_before": 346_500_000,
        "finished_at": T1,
        "image_id": "sha256:" + "2" * 64,
        "gates": [GateVerdict(name="size_cap", passed=True, detail="12MB <= 60MB")],
        "released": True,
    }
    base.update(kw)
    return BuildRecord.model_validate(base)


def test_before_after_shrink_and_release_count_come_from_each_hosts_latest_record() -> None:
    records = {
        "h1": [_record("h1", "gs")],
        "h2": [
            _record("h2", "gs", size_before=50_000_000, finished_at=T2),
            _record(
                "h2",
                "auth",
                finished_at=T2,
                released=False,
                gates=[GateVerdict(name="smoke_test", passed=False, detail="never turned healthy")],
            ),
        ],
    }
    rows = {o.service: o for o in optimized_services(records, {"gs": 55_000_000})}
    gs = rows["gs"]
    assert (gs.size_before, gs.size_after, gs.shrink, gs.released, gs.hosts) == (346_500_000, 12_000_000, 28.9, 2, 2)
    assert gs.expected_size == 55_000_000
    assert rows["auth"].released == 0

    report = build_report([], [], [], inventory="inv", pattern="all", generated_at=T2, optimized=rows.values())
    md = to_markdown(report)
    assert "| gs | 346MB | 12MB | 55MB | 28.9x | 42.0s | 2/2 | all passed |" in md
    assert "failed smoke_test: never turned healthy" in md
    html = to_html(report)
    assert 'aria-label="Service image size before and after phase 2"' in html
    assert "28.9x smaller" in html
