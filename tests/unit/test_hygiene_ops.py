"""Hygiene around the planner: policy validation, the ledger of use, metrics for node_exporter, systemd units."""

from __future__ import annotations

import shutil
import sqlite3
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acgs_remediate.config import parse_policy
from acgs_remediate.errors import EXIT_USAGE, UsageError
from acgs_remediate.metrics import HostMetrics, render, write_atomically
from acgs_remediate.models import HostSnapshot
from acgs_remediate.state import Sighting, StateStore

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


def _snap(host: str, engine_id: str, image_ids: list[str], at: datetime) -> HostSnapshot:
    """Return a snapshot of ``host`` whose engine holds ``image_ids`` (none dated by the engine itself)."""
    return HostSnapshot.model_validate(
        {
            "host": host,
            "collected_at": at.isoformat(),
            "engine": {
                "name": host,
                "engine_id": engine_id,
                "server_version": "20.10",
                "api_version": "1.41",
                "storage_driver": "overlay2",
                "data_root": "/d",
            },
            "images": [
                {"id": i, "repo_tags": [f"{i}:1"], "size": 1, "created": "2020-01-01T00:00:00Z", "layers": [i]}
                for i in image_ids
            ],
            "layer_sizes": {i: 1 for i in image_ids},
        }
    )


def test_one_image_ledger_keeps_first_sight_and_never_moves_a_use_back(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    dated = store.note_arrivals(_snap("h", "E1", ["a", "b"], T0))
    assert [(i.arrived_at, i.arrival_source) for i in dated.images] == [(T0, "ledger"), (T0, "ledger")]
    store.record_uses("h", "E1", {"a": (T0, "container x started")})
    store.note_arrivals(_snap("h", "E1", ["a", "b", "c"], T0 + timedelta(hours=1)))
    store.record_uses("h", "E1", {"a": (T0 - timedelta(days=1), "older"), "b": (T0, "event die")})
    seen = store.image_ledger("h", "E1")
    assert seen["a"] == Sighting(T0, T0, "container x started")  # an older use never overwrites a newer one
    assert seen["b"] == Sighting(T0, T0, "event die")
    assert seen["c"] == Sighting(T0 + timedelta(hours=1), None, "")
    # A run removed b: forgotten at once, so if it comes back it is a new arrival.
    store.record_uses("h", "E1", {}, gone=["b"])
    back = store.note_arrivals(_snap("h", "E1", ["a", "b", "c"], T0 + timedelta(hours=2)))
    assert {i.id: i.arrived_at for i in back.images}["b"] == T0 + timedelta(hours=2)
    # a and b left the engine: forgotten; another engine behind the same host name starts a ledger of its own.
    store.note_arrivals(_snap("h", "E1", ["c"], T0 + timedelta(hours=3)))
    assert set(store.image_ledger("h", "E1")) == {"c"}
    store.note_arrivals(_snap("h", "E2", ["c"], T0 + timedelta(hours=4)))
    assert store.image_ledger("h", "E1") == {}
    assert store.image_ledger("h", "E2")["c"].first_seen == T0 + timedelta(hours=4)
    assert store.image_ledger("other", "E1") == {}
    assert store.events_cursor("h") is None
    store.set_events_cursor("h", T0)
    store.set_events_cursor("h", T0 + timedelta(minutes=5))
    assert store.events_cursor("h") == T0 + timedelta(minutes=5)
    store.close()


# The two "first seen" tables of the version before the one image ledger, exactly as it created them.
_PREVIOUS_LEDGERS = """
CREATE TABLE image_arrivals (
    host TEXT NOT NULL,
    engine_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    PRIMARY KEY (host, engine_id, image_id)
);
CREATE TABLE image_use (
    host TEXT NOT NULL,
    image_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_used TEXT,
    last_used_source TEXT,
    PRIMARY KEY (host, image_id)
);
"""


def test_a_state_store_of_the_previous_version_keeps_its_ledgers_merged_into_one(tmp_path: Path) -> None:
    path = tmp_path / "old.db"
    store = StateStore(path)
    store.finish_host("h", "phase1", "phase1-run", "succeeded", bytes_before=10, bytes_after=4, bytes_freed=6)
    store.close()
    iso = lambda t: t.isoformat()  # noqa: E731
    with sqlite3.connect(path) as db:  # turn it into what the previous version left on disk
        db.executescript("DROP TABLE image_ledger;" + _PREVIOUS_LEDGERS)
        db.executemany(
            "INSERT INTO image_arrivals VALUES (?, ?, ?, ?)",
            [("h", "E1", "a", iso(T0)), ("h", "E1", "b", iso(T0 + timedelta(hours=1)))],
        )
        db.executemany(
            "INSERT INTO image_use VALUES (?, ?, ?, ?, ?)",
            [
                ("h", "a", iso(T0 + timedelta(hours=1)), iso(T0 + timedelta(hours=2)), "event die of container x"),
                ("h", "d", iso(T0), None, None),  # hygiene saw it, no arrival row: the host's engine
                ("h2", "c", iso(T0), iso(T0 + timedelta(hours=1)), "container y running"),  # no engine known at all
            ],
        )
    store = StateStore(path)
    assert store.image_ledger("h", "E1") == {
        "a": Sighting(T0, T0 + timedelta(hours=2), "event die of container x"),  # earliest sight, latest use
        "b": Sighting(T0 + timedelta(hours=1), None, ""),
        "d": Sighting(T0, None, ""),
    }
    # h2's rows had no engine ID: the next sighting of h2 adopts them for the engine it finds.
    dated = store.note_arrivals(_snap("h2", "E2", ["c"], T0 + timedelta(days=1)))
    assert dated.images[0].arrived_at == T0
    assert store.image_ledger("h2", "E2") == {"c": Sighting(T0, T0 + timedelta(hours=1), "container y running")}
    record = store.phase_status("h", "phase1")  # the rest of the store is untouched
    assert record is not None and record.status == "succeeded" and record.bytes_freed == 6
    store.close()
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")}
    assert {"image_arrivals", "image_use"}.isdisjoint(tables) and "image_ledger" in tables
    again = StateStore(path)  # opening a migrated store changes nothing
    assert set(again.image_ledger("h", "E1")) == {"a", "b", "d"}
    again.close()


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
