"""Hygiene planning from recorded case files, and its invariants over generated hosts (hypothesis).

A case (tests/unit/cases/hygiene/*.json) is a snapshot + policy + what was observed about use + "now" ->
the removals in order with the bytes each frees given what remains, the watermark, and why images stay.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acgs_remediate.analysis import reclaimable_bytes
from acgs_remediate.config import Policy
from acgs_remediate.hygiene import event_signals, last_used, plan_hygiene, with_arrivals
from acgs_remediate.models import HostSnapshot
from acgs_remediate.plan import HostPlan

CASES = sorted((Path(__file__).parent / "cases" / "hygiene").glob("*.json"))


def _load(path: Path) -> tuple[HostSnapshot, Policy, HostPlan, dict[str, Any]]:
    case = json.loads(path.read_text())
    snapshot = HostSnapshot.model_validate(case["snapshot"])
    policy = Policy.model_validate(case["policy"])
    observed = {k: (datetime.fromisoformat(v[0]), v[1]) for k, v in case["observed"].items()}
    now = datetime.fromisoformat(case["now"])
    return snapshot, policy, plan_hygiene(snapshot, policy, last_used(snapshot, observed), now), case["expected"]


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hygiene_plan_matches_case(path: Path) -> None:
    _, _, plan, expected = _load(path)
    got = [[a.image_id if a.kind == "remove_image" else "build cache", a.predicted_bytes] for a in plan.actions]
    assert got == expected["removals"]
    assert plan.predicted_bytes == expected["predicted_bytes"]
    assert plan.watermark is not None
    for key, value in expected["watermark"].items():
        assert getattr(plan.watermark, key) == value, key
    reasons = {p.image_id: p.reasons for p in plan.protections}
    assert set(reasons) == set(expected["protections"])
    for image_id, fragments in expected["protections"].items():
        for fragment in fragments:
            assert any(fragment in r for r in reasons[image_id]), (image_id, fragment, reasons[image_id])
    for note in expected.get("notes", []):
        assert any(note in n for n in plan.notes), (note, plan.notes)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_hygiene_predicted_total_is_the_unique_layers_of_everything_removed(path: Path) -> None:
    snapshot, _, plan, _ = _load(path)
    removed = [a.image_id for a in plan.removals()]
    cache = sum(a.predicted_bytes for a in plan.actions if a.kind == "prune_build_cache")
    assert plan.predicted_bytes == reclaimable_bytes(snapshot, removed) + cache
    assert "volume" not in json.dumps(plan.for_run())


def test_a_multi_tag_image_goes_whole_with_every_tag() -> None:
    snapshot, _, plan, _ = _load(Path(__file__).parent / "cases" / "hygiene" / "shared_base_lru_to_low.json")
    app3 = next(a for a in plan.removals() if a.image_id == "sha256:app3")
    assert app3.tags == ["app3:1", "app3:latest"]
    assert "removes all 2 tags" in app3.reason


def test_events_count_as_use_and_arrival_and_a_child_makes_its_base_used() -> None:
    base = {"created": "2025-01-01T00:00:00Z", "size": 1}
    snapshot = HostSnapshot.model_validate(
        {
            "host": "h",
            "collected_at": "2026-03-01T00:00:00Z",
            "engine": {
                "name": "h",
                "server_version": "20.10",
                "api_version": "1.41",
                "storage_driver": "overlay2",
                "data_root": "/d",
            },
            "images": [
                {"id": "sha256:aaaaaaaaaaaaaaaa", "repo_tags": ["base:1"], "layers": ["B"], **base},
                {"id": "sha256:bbbbbbbbbbbbbbbb", "repo_tags": ["app:1"], "layers": ["B", "A"], **base},
            ],
            "layer_sizes": {"B": 1, "A": 1},
        }
    )
    t_use = datetime(2026, 2, 20, tzinfo=UTC)
    t_pull = datetime(2026, 2, 25, tzinfo=UTC)
    events = [
        {
            "Type": "container",
            "Action": "start",
            "Actor": {"ID": "gone", "Attributes": {"image": "app:1", "name": "x"}},
            "timeNano": int(t_use.timestamp() * 1e9),
        },
        {"Type": "image", "Action": "pull", "Actor": {"ID": "base:1"}, "time": int(t_pull.timestamp())},
    ]
    uses, arrivals = event_signals(snapshot, events)
    result = last_used(snapshot, uses)
    assert result["sha256:bbbbbbbbbbbbbbbb"].last_used == t_use
    assert result["sha256:aaaaaaaaaaaaaaaa"].last_used == t_use  # used through the image built on it
    assert "child image app:1" in result["sha256:aaaaaaaaaaaaaaaa"].source
    old = datetime(2026, 1, 1, tzinfo=UTC)
    # The image ledger's first sighting (StateStore.note_arrivals) dates what neither the store nor events date.
    arrived = with_arrivals(
        snapshot.with_ledger({"sha256:bbbbbbbbbbbbbbbb": old}),
        imagedb={"sha256:aaaaaaaaaaaaaaaa": old},
        arrivals=arrivals,
    )
    assert [(i.arrived_at, i.arrival_source) for i in arrived.images] == [(t_pull, "event pull"), (old, "ledger")]


# -- invariants over generated hosts -------------------------------------------------------------------

NOW = datetime(2026, 3, 1, tzinfo=UTC)


@st.composite
def hosts(draw: st.DrawFn) -> tuple[HostSnapshot, Policy, dict[str, Any]]:
    n = draw(st.integers(1, 9))
    pool = [f"L{i}" for i in range(8)]
    images, layer_sizes = [], {c: draw(st.integers(0, 50)) for c in pool}
    observed: dict[str, Any] = {}
    for i in range(n):
        prefix = draw(st.lists(st.sampled_from(pool), min_size=1, max_size=4, unique=True))
        tags = draw(st.sampled_from([[], [f"img{i}:1"], [f"img{i}:1", f"img{i}:keep"]]))
        arrived = draw(st.sampled_from([None, NOW - timedelta(days=30), NOW - timedelta(seconds=30)]))
        images.append(
            {
                "id": f"sha256:{i:016x}",
                "repo_tags": tags,
                "created": "2020-01-01T00:00:00Z",
                "size": 1,
                "layers": prefix,
                "arrived_at": arrived.isoformat() if arrived else None,
            }
        )
        if draw(st.booleans()):
            observed[f"sha256:{i:016x}"] = (NOW - timedelta(days=draw(st.sampled_from([0, 2, 10, 40]))), "ledger")
    used = draw(st.lists(st.integers(0, n - 1), max_size=3, unique=True))
    containers = [
        {
            "id": f"c{j}",
            "name": f"c{j}",
            "image_id": f"sha256:{j:016x}",
            "state": "created",
            "created": "2026-01-01T00:00:00Z",
        }
        for j in used
    ]
    snapshot = HostSnapshot.model_validate(
        {
            "host": "h",
            "collected_at": NOW.isoformat(),
            "engine": {
                "name": "h",
                "server_version": "20.10",
                "api_version": "1.41",
                "storage_driver": "overlay2",
                "data_root": "/d",
            },
            "images": images,
            "containers": containers,
            "layer_sizes": layer_sizes,
        }
    )
    used_bytes = sum(layer_sizes[c] for c in {c for i in images for c in i["layers"]})
    low = draw(st.integers(0, max(used_bytes, 1)))
    high = draw(st.integers(low + 1, low + 60))
    policy = Policy.model_validate(
        {
            "protected_patterns": ["*:keep"],
            "hygiene": {
                "high_watermark": f"{high}B",
                "low_watermark": f"{low}B",
                "fresh_min_age": "1h",
                "dangling_min_age": "1h",
                "unused_min_age": "1d",
            },
        }
    )
    return snapshot, policy, observed


@settings(max_examples=200, deadline=None)
@given(hosts())
def test_hygiene_never_plans_used_protected_or_fresh_and_stops_right_at_low(case: Any) -> None:
    snapshot, policy, observed = case
    uses = last_used(snapshot, observed)
    plan = plan_hygiene(snapshot, policy, uses, NOW)
    by_id = {i.id: i for i in snapshot.images}
    used = {c.image_id for c in snapshot.containers}
    removed = [a.image_id for a in plan.removals()]
    for image_id in removed:
        img = by_id[image_id]
        assert image_id not in used
        assert not any(t.endswith(":keep") for t in img.repo_tags)
        assert img.arrived_at is not None and NOW - img.arrived_at >= timedelta(hours=1)
        if img.repo_tags:
            assert uses[image_id].last_used is None or NOW - uses[image_id].last_used >= timedelta(days=1)
    mark = plan.watermark
    assert mark is not None and mark.used_bytes is not None and mark.low_bytes is not None
    assert mark.predicted_used_bytes == mark.used_bytes - reclaimable_bytes(snapshot, removed)
    unused = [a for a in plan.removals() if a.category == "unused"]
    if mark.state != "above_high":
        assert not unused
        return
    if unused:
        # Never past low by more than the last image: before the last removal, usage was still above low.
        assert (
            mark.predicted_used_bytes + unused[-1].predicted_bytes > mark.low_bytes or unused[-1].predicted_bytes == 0
        )
    if mark.predicted_used_bytes > mark.low_bytes:
        # Short of low only when no candidate left frees anything, alone or all together.
        left = [
            p.image_id
            for p in plan.protections
            if any(r.startswith(("not needed", "removing it frees nothing")) for r in p.reasons)
        ]
        assert reclaimable_bytes(snapshot, removed + left) == reclaimable_bytes(snapshot, removed)


# -- "%" watermarks on a remote engine ----------------------------------------------------------------


@pytest.mark.parametrize("docker_host", ["ssh://deploy@db1", "tcp://db1:2376"])
def test_percent_watermarks_on_a_remote_engine_say_why_and_what_to_write(docker_host: str, tmp_path: Path) -> None:
    from acgs_remediate.facts import _engine_fact

    info = {
        "ID": "E",
        "Name": "db1",
        "Driver": "overlay2",
        "DockerRootDir": str(tmp_path),
        "DriverStatus": [["Backing Filesystem", "extfs"], ["Supports d_type", "true"]],
    }
    version = {"Version": "20.10.24", "ApiVersion": "1.41"}
    # The same data root seen through a local socket is measured (statfs); through ssh or TLS it is not,
    # even when a directory of that name happens to exist on this machine: it is another machine's disk.
    assert _engine_fact(info, version, "unix:///run/docker.sock").fs_total_bytes
    remote = _engine_fact(info, version, docker_host)
    assert remote.fs_total_bytes is None and remote.fs_used_bytes is None
    snapshot, policy, plan, _ = _load(Path(__file__).parent / "cases" / "hygiene" / "remote_percent_unknown.json")
    snapshot = snapshot.model_copy(update={"engine": remote})
    plan = plan_hygiene(snapshot, policy, last_used(snapshot), datetime(2026, 3, 1, tzinfo=UTC))
    assert plan.watermark is not None and plan.watermark.state == "unknown"
    (note,) = plan.notes
    assert note == (
        f"watermark 85%/80% is a share of the filesystem holding the engine's data root ({tmp_path}), which "
        "cannot be measured for a remote engine: the Engine API reports no filesystem size and acgs-remediate "
        "runs nothing on the host; no unused image is evicted by LRU (dangling images and build cache still go). "
        "For this host write the watermarks in bytes of the engine's own accounting (it holds 17B now), e.g. "
        "high_watermark: 20GB, low_watermark: 16GB"
    )
    assert [a.image_id for a in plan.removals()] == ["sha256:dang"]  # the dangling image still goes
