"""Phase 3's monitor from a recorded snapshot: what each service runs after a rollout, and how it is doing.

``cases/monitor/after_rollout.json`` holds real engine answers (dockerd 20.10, cgroup v1) recorded on sandbox
host sb-h01 right after phase 3 switched auth_service and ac_service to new images and ran the alembic
one-shot: the containers as ``rollout.observe`` reads them, one ``/containers/{id}/stats?stream=false`` answer
per running container, image sizes, the images the host's rollback unit recorded, and phase 2's records.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate import monitor
from acgs_remediate.deploy import RollbackUnit, RunningService
from acgs_remediate.models import BuildRecord
from acgs_remediate.report import health_class, health_text, monitor_markdown, size_change_text
from acgs_remediate.state import StateStore

CASE = Path(__file__).parent / "cases" / "monitor" / "after_rollout.json"
NOW = datetime(2026, 11, 30, 8, 25, 11, tzinfo=UTC)


def _case() -> dict[str, Any]:
    return json.loads(CASE.read_text())


def _shape(case: dict[str, Any]) -> monitor.HostMonitor:
    return monitor.shape_host(
        case["host"],
        case["project"],
        NOW,
        {k: RunningService.model_validate(v) for k, v in case["running"].items()},
        case["stats"],
        case["image_sizes"],
        case["before"],
        [BuildRecord.model_validate(r) for r in case["records"]],
        run_id="phase3-test",
    )


def _by_service(m: monitor.HostMonitor) -> dict[str, monitor.ServiceSample]:
    return {s.service: s for s in m.services}


def test_a_switched_service_shows_its_pinned_image_health_usage_and_sizes() -> None:
    case = _case()
    m = _shape(case)
    auth = _by_service(m)["auth_service"]
    raw = case["running"]["auth_service"]
    stats = case["stats"][raw["container_id"]]

    # The image it runs: its ID and the reference phase 3 pinned in the compose file (the ID: no registry).
    assert auth.image_id == raw["image_id"] and auth.image_ref == raw["image_id"]
    assert (auth.state, auth.health, auth.restart_count) == ("running", "healthy", 0)
    # Memory as `docker stats` shows it: usage without the inactive page cache (cgroup v1 here).
    mem = stats["memory_stats"]
    assert auth.memory_bytes == mem["usage"] - mem["stats"]["total_inactive_file"]
    assert auth.memory_limit == mem["limit"]
    # CPU between the answer's two samples, of one core: container delta / system delta x online CPUs.
    cpu, pre = stats["cpu_stats"], stats["precpu_stats"]
    expected = (
        (cpu["cpu_usage"]["total_usage"] - pre["cpu_usage"]["total_usage"])
        / (cpu["system_cpu_usage"] - pre["system_cpu_usage"])
        * cpu["online_cpus"]
        * 100
    )
    assert auth.cpu_percent == pytest.approx(expected, abs=0.01) and auth.cpu_percent > 0
    # Before: the image the rollback unit recorded; after: the one it runs now, both as the engine sizes them.
    assert auth.image_before == case["before"]["auth_service"] != auth.image_id
    assert auth.size_before == case["image_sizes"][case["before"]["auth_service"]]
    assert auth.size_after == case["image_sizes"][auth.image_id]
    assert auth.switched and size_change_text(auth) == "56.9MB → 56.9MB"
    assert m.healthy == 5 and m.running == 5  # auth, ac (healthy), fv, integrity, postgres (no healthcheck)


def test_services_the_rollout_left_alone_and_one_shots_read_as_such() -> None:
    s = _by_service(_shape(_case()))
    postgres = s["postgres"]
    assert not postgres.switched and size_change_text(postgres) == "28.6MB (unchanged)"
    assert postgres.memory_bytes is not None and health_text(postgres) == "running (no healthcheck)"
    # The migration ran once and exited 0: a success, with no stats (it is not running) and no "before".
    runner = s["alembic-runner"]
    assert (runner.state, runner.exit_code, health_class(runner)) == ("exited", 0, "OK")
    assert runner.memory_bytes is None and "not running" in (runner.note or "")
    assert runner.image_before is None and size_change_text(runner) == "338MB"
    # The scenario's stopped pgc container (killed, 143) is shown as what it is.
    assert health_text(s["pgc_service"]) == "exited 143" and health_class(s["pgc_service"]) == "CRITICAL"


def test_a_stats_call_that_failed_is_a_note_on_its_row_only() -> None:
    case = _case()
    auth_id = case["running"]["auth_service"]["container_id"]
    case["stats"][auth_id] = "engine error 404: No such container"
    s = _by_service(_shape(case))
    assert s["auth_service"].memory_bytes is None and s["auth_service"].cpu_percent is None
    assert s["auth_service"].note == "no stats: engine error 404: No such container"
    assert s["ac_service"].memory_bytes is not None and s["ac_service"].note is None


def test_size_before_comes_from_phase2s_record_when_the_engine_no_longer_has_the_image() -> None:
    case = _case()
    old = case["before"]["auth_service"]
    del case["image_sizes"][old]
    auth_now = case["running"]["auth_service"]["image_id"]
    for r in case["records"]:
        if r["image_id"] == auth_now:
            r["size_before"] = 347_000_000
    assert _by_service(_shape(case))["auth_service"].size_before == 347_000_000


def test_memory_and_cpu_follow_the_docker_cli_on_cgroup_v1_and_v2() -> None:
    v1 = {"memory_stats": {"usage": 1000, "limit": 5000, "stats": {"total_inactive_file": 300, "inactive_file": 1}}}
    v2 = {"memory_stats": {"usage": 1000, "limit": 5000, "stats": {"inactive_file": 200}}}
    bigger = {"memory_stats": {"usage": 1000, "stats": {"total_inactive_file": 4000}}}
    assert monitor.memory_used(v1) == (700, 5000)
    assert monitor.memory_used(v2) == (800, 5000)
    assert monitor.memory_used(bigger) == (1000, None)
    assert monitor.memory_used({"memory_stats": {}}) == (None, None)  # a container that is not running
    # No previous sample (a one-shot stats answer): no percentage rather than a wrong one.
    first = {"cpu_stats": {"cpu_usage": {"total_usage": 5}, "system_cpu_usage": 100}, "precpu_stats": {}}
    assert monitor.cpu_percent(first) is None
    idle = {
        "cpu_stats": {"cpu_usage": {"total_usage": 5}, "system_cpu_usage": 200, "online_cpus": 2},
        "precpu_stats": {"cpu_usage": {"total_usage": 5}, "system_cpu_usage": 100},
    }
    assert monitor.cpu_percent(idle) == 0.0
    busy = {
        "cpu_stats": {"cpu_usage": {"total_usage": 55, "percpu_usage": [1, 2, 3, 4]}, "system_cpu_usage": 200},
        "precpu_stats": {"cpu_usage": {"total_usage": 5}, "system_cpu_usage": 100},
    }
    assert monitor.cpu_percent(busy) == 200.0  # 50/100 x 4 CPUs (counted from percpu_usage) x 100


def _unit(images: dict[str, str], run_id: str) -> RollbackUnit:
    return RollbackUnit(
        host="h1",
        project="p",
        run_id=run_id,
        recorded_at=NOW,
        compose_path="/x/docker-compose.yml",
        compose_text="services: {}\n",
        services={
            s: RunningService(service=s, container_id=f"c-{s}", container_name=s, image_id=i) for s, i in images.items()
        },
    )


def test_before_is_the_newest_unit_that_was_deployed() -> None:
    units = [
        (3, "rolled_back", _unit({"auth": "sha256:new-bad"}, "r3")),  # a failed run went back: not a deploy
        (2, "deployed", _unit({"auth": "sha256:v1"}, "r2")),
        (1, "deployed", _unit({"auth": "sha256:v0"}, "r1")),
    ]
    assert monitor.images_before(units) == {"auth": "sha256:v1"}
    assert monitor.images_before([]) == {}


def test_status_shows_the_latest_sample_in_its_table_json_and_markdown(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    store.begin_run("phase3-test", "phase3", ["sb-h01"])
    store.finish_host("sb-h01", "phase3", "phase3-test", "succeeded", detail="switched")
    old = _shape(_case()).model_copy(update={"sampled_at": datetime(2026, 11, 29, tzinfo=UTC)})
    old.services = old.services[:1]
    monitor.record(store, old)
    monitor.record(store, _shape(_case()))
    store.close()

    def status(*args: str) -> str:
        proc = subprocess.run(
            [
                sys.executable,
                "-c",
                "from acgs_remediate.cli import main; main()",
                "status",
                "--state",
                str(tmp_path / "state.db"),
                *args,
            ],
            capture_output=True,
            text=True,
            env={**os.environ, "COLUMNS": "200"},
            timeout=120,
            check=False,
        )
        assert proc.returncode == 0, proc.stderr
        return proc.stdout

    data = json.loads(status("--format", "json"))
    shown = {s["service"]: s for s in data["monitor"]["sb-h01"]["services"]}
    assert len(shown) == 7  # the latest sample, not the older one-row sample
    assert shown["auth_service"]["health"] == "healthy" and shown["auth_service"]["memory_bytes"] > 0
    table = status()
    assert "Phase 3: services after the rollout (sampled 2026-11-30 08:25:11 UTC)" in table
    row = next(line for line in table.splitlines() if "auth_service" in line)
    assert "f054aecd46b3" in row and "healthy" in row and "56.9MB -> 56.9MB" in row
    assert "| sb-h01 | auth_service | `f054aecd46b3` |" in status("--format", "markdown")


def test_the_markdown_rows_name_an_engine_that_could_not_be_read() -> None:
    broken = monitor.HostMonitor(host="h9", project="p", sampled_at=NOW, error="ssh: host key verification failed")
    lines = monitor_markdown([broken])
    assert any(line.startswith("| h9 | - | - | - | not read: ssh: host key verification failed") for line in lines)


def test_the_html_report_has_a_row_per_host_and_service_with_a_health_badge() -> None:
    from acgs_remediate.report import build_report, to_html, to_json

    report = build_report([], [], [], inventory="inv.yml", pattern="all", generated_at=NOW, deployed=[_shape(_case())])
    page = to_html(report)
    assert "<h2>Phase 3: services after the rollout</h2>" in page
    row = next(r for r in page.split("<tr>") if "<td>auth_service</td>" in r)
    assert "<code>f054aecd46b3</code>" in row and "<span class='badge OK'>healthy</span>" in row
    assert "56.9MB → 56.9MB" in row and "12.3MB" in row  # sizes before -> after, memory
    pgc = next(r for r in page.split("<tr>") if "<td>pgc_service</td>" in r)
    assert "<span class='badge CRITICAL'>exited 143</span>" in pgc
    assert json.loads(to_json(report))["deployed"][0]["services"][0]["service"] == "ac_service"
