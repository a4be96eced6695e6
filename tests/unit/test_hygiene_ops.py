"""Hygiene around the planner: policy validation, the ledger of use, metrics for node_exporter, systemd units."""

from __future__ import annotations

import shutil
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acgs_remediate.config import parse_policy
from acgs_remediate.errors import EXIT_USAGE, UsageError
from acgs_remediate.metrics import HostMetrics, render, write_atomically
from acgs_remediate.state import StateStore

ROOT = Path(__file__).resolve().parents[2]
T0 = datetime(2026, 3, 1, tzinfo=UTC)


@pytest.mark.parametrize(
    ("hygiene", "fragment"),
    [
        ({"high_watermark": "85%", "low_watermark": "20GB"}, "both be percentages or both be sizes"),
        ({"high_watermark": "80%", "low_watermark": "85%"}, "must be below high_watermark"),
        ({"high_watermark": "120%"}, "at most 100%"),
        ({"high_watermark": "lots"}, "is not a size"),
        ({"fresh_min_age": "30s"}, "at least 2m"),
        ({"unused_min_age": "soon"}, "is not a duration"),
        ({"watermark": "85%"}, "hygiene.watermark"),
    ],
)
def test_a_bad_hygiene_policy_is_one_clear_line_and_exit_2(hygiene: dict[str, str], fragment: str) -> None:
    with pytest.raises(UsageError) as exc:
        parse_policy({"hygiene": hygiene}, "group_vars/all.yml")
    assert exc.value.exit_code == EXIT_USAGE
    assert fragment in exc.value.message and "group_vars/all.yml" in exc.value.message
    assert "\n" not in exc.value.message


def test_production_defaults_follow_kubelet() -> None:
    hyg = parse_policy({}, "x").hygiene
    assert (hyg.high_watermark, hyg.low_watermark) == ("85%", "80%")
    assert hyg.fresh_min_age >= 120 and hyg.dangling_min_age >= 120


def test_the_ledger_keeps_first_sight_and_never_moves_a_use_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.record_image_use("h", ["a", "b"], {"a": (T0, "container x started")}, T0)
    store.record_image_use(
        "h", ["a", "b", "c"], {"a": (T0 - timedelta(days=1), "older"), "b": (T0, "event die")}, T0 + timedelta(hours=1)
    )
    use = store.image_use("h")
    assert use["a"] == (T0, T0, "container x started")
    assert use["b"] == (T0, T0, "event die")
    assert use["c"] == (T0 + timedelta(hours=1), None, "")
    store.record_image_use("h", ["c"], {}, T0 + timedelta(hours=2))  # a and b are gone: forgotten
    assert set(store.image_use("h")) == {"c"}
    assert store.events_cursor("h") is None
    store.set_events_cursor("h", T0)
    store.set_events_cursor("h", T0 + timedelta(minutes=5))
    assert store.events_cursor("h") == T0 + timedelta(minutes=5)
    assert store.image_use("other") == {}


def test_metrics_are_prometheus_text_written_atomically(tmp_path: Path) -> None:
    text = render(
        [
            HostMetrics(
                host='h"1',
                ok=True,
                used_bytes={"images": 100, "build_cache": 5},
                reclaimed_bytes={"images": 40},
                reclaimed_measured=40,
                removed={"unused": 2},
                watermark={"used": 145, "high": 120, "low": 100},
                watermark_basis="engine",
                above_high=1,
                last_success=T0,
            ),
            HostMetrics(host="h2", ok=False),
        ],
        finished_at=T0,
        duration_seconds=1.5,
    )
    assert 'acgs_hygiene_bytes_reclaimed{host="h\\"1",category="images"} 40' in text
    assert 'acgs_hygiene_errors{host="h2"} 1' in text
    assert f'acgs_hygiene_last_success_timestamp_seconds{{host="h\\"1"}} {T0.timestamp()}' in text
    assert "# TYPE acgs_hygiene_run_duration_seconds gauge" in text and text.endswith("\n")
    target = tmp_path / "acgs_hygiene.prom"
    target.write_text("old\n")
    write_atomically(target, text)
    assert target.read_text() == text
    assert [p.name for p in tmp_path.iterdir()] == ["acgs_hygiene.prom"]  # no temp file left behind
    with pytest.raises(UsageError, match="is not a directory"):
        write_atomically(tmp_path / "missing" / "x.prom", text)


def test_prometheus_can_parse_the_file_when_its_client_is_installed() -> None:
    from prometheus_client import parser  # the parser Prometheus itself ships for Python

    text = render([HostMetrics(host="h", ok=True, used_bytes={"images": 1})], T0, 0.1)
    names = {f.name for f in parser.text_string_to_metric_families(text)}
    assert "acgs_hygiene_bytes_used" in names


def test_systemd_units_verify(tmp_path: Path) -> None:
    analyze = shutil.which("systemd-analyze")
    if analyze is None:
        pytest.skip("systemd-analyze is not installed here")
    for unit in (ROOT / "contrib" / "systemd").glob("acgs-remediate-hygiene.*"):
        text = unit.read_text()
        # The unit names the install path /opt/acgs-remediate; verify it with this checkout's executable.
        exe = Path(sys.executable).parent / "acgs-remediate"
        (tmp_path / unit.name).write_text(text.replace("/opt/acgs-remediate/.venv/bin/acgs-remediate", str(exe)))
    timer = (tmp_path / "acgs-remediate-hygiene.timer").read_text()
    assert "OnCalendar=" in timer and "RandomizedDelaySec=" in timer and "Persistent=true" in timer
    proc = subprocess.run(
        [analyze, "verify", *sorted(str(p) for p in tmp_path.iterdir())], capture_output=True, text=True, check=False
    )
    assert proc.returncode == 0, proc.stderr


def test_a_metrics_file_in_a_missing_directory_is_refused_before_anything_runs(tmp_path: Path) -> None:
    inventory = tmp_path / "hosts.yml"
    inventory.write_text("all:\n  hosts:\n    h1:\n      docker_host: unix:///nonexistent/docker.sock\n")
    exe = Path(sys.executable).parent / "acgs-remediate"
    proc = subprocess.run(
        [
            str(exe),
            "hygiene",
            "-i",
            str(inventory),
            "--state",
            str(tmp_path / "s.db"),
            "--yes",
            "--metrics-file",
            str(tmp_path / "missing" / "acgs.prom"),
        ],
        capture_output=True,
        text=True,
        check=False,
        timeout=120,
    )
    assert proc.returncode == EXIT_USAGE
    assert "is not a directory" in proc.stderr
    assert not (tmp_path / "s.db").exists()  # nothing ran: no ledger was even opened
