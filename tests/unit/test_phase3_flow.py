"""Phase 3 in the one flow, pure parts: cleanup after health (which replaced images go), the rollout's batches
and failure threshold, and the per-host rollout read back from the state store (no Docker, no Ansible)."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

from acgs_remediate.config import Policy
from acgs_remediate.deploy import DeployPlan, RollbackUnit, RunningService
from acgs_remediate.execute import HostResult
from acgs_remediate.models import HostSnapshot
from acgs_remediate.orchestrate import RunReport
from acgs_remediate.phases import get_spec
from acgs_remediate.phases.phase3 import MEASUREMENT, fleet_rollout, host_rollout, max_fail_percentage, serial
from acgs_remediate.plan import plan_cleanup_after_health
from acgs_remediate.state import StateStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)


def _id(n: int) -> str:
    return "sha256:" + (f"{n:x}" * 64)[:64]


def _img(n: int, tags: list[str], days_old: int, digests: list[str] | None = None) -> dict[str, Any]:
    made = NOW - timedelta(days=days_old)
    return {
        "id": _id(n),
        "repo_tags": tags,
        "repo_digests": digests or [],
        "size": 1,
        "created": made.isoformat(),
        "layers": [f"L{n}"],
        "arrived_at": NOW.isoformat(),
        "arrival_source": "imagedb",
    }


def _container(name: str, image: int, service: str | None = None, state: str = "running") -> dict[str, Any]:
    labels = {"com.docker.compose.service": service, "com.docker.compose.project": "acgs-1"} if service else {}
    return {
        "id": f"c-{name}",
        "name": name,
        "image_id": _id(image),
        "state": state,
        "created": NOW.isoformat(),
        "labels": labels,
    }


def _snapshot(images: list[dict[str, Any]], containers: list[dict[str, Any]]) -> HostSnapshot:
    return HostSnapshot.model_validate(
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
            "build_cache": [],
            "layer_sizes": {layer: 1000 for i in images for layer in i["layers"]},
        }
    )


def _policy(keep: int = 1, **values: Any) -> Policy:
    return Policy.model_validate(
        {
            "rollback_keep": keep,
            "services": [{"name": "auth", "image": "acgs/auth:latest", "compose_service": "auth", "context": "auth"}],
            **values,
        }
    )


def _rb(n: int) -> str:
    return f"acgs/auth:rollback-{_id(n)[7:19]}"


def test_cleanup_after_health_removes_only_replaced_images_beyond_retention_never_the_units() -> None:
    # v4 runs now; v3 is the unit's image (replaced by this deployment), v2 and v1 were replaced earlier.
    snap = _snapshot(
        [
            _img(4, ["acgs/auth:latest"], 1),
            _img(3, [_rb(3)], 5),
            _img(2, [_rb(2), "acgs/auth:build-222222222222"], 10),  # phase 2's candidate tag goes with it
            _img(1, [_rb(1)], 20),
        ],
        [_container("auth", 4, "auth")],
    )
    out = plan_cleanup_after_health(snap, _policy(keep=1), [_id(3)])
    assert [(image, tags) for image, tags, _why in out] == [
        (_id(1), [_rb(1)]),
        (_id(2), ["acgs/auth:build-222222222222", _rb(2)]),
    ]  # oldest first
    assert all("beyond rollback retention (1)" in why for _i, _t, why in out)
    # With rollback_keep 2 the newest other rollback image stays as the second one.
    assert [image for image, _t, _w in plan_cleanup_after_health(snap, _policy(keep=2), [_id(3)])] == [_id(1)]


def test_cleanup_after_health_keeps_used_protected_and_otherwise_named_images() -> None:
    snap = _snapshot(
        [
            _img(4, ["acgs/auth:latest"], 1),
            _img(3, [_rb(3)], 5),
            _img(2, [_rb(2)], 10),  # a stopped container still uses it
            _img(1, [_rb(1), "acgs/auth:v1"], 20),  # another tag names it: not ours to drop
            _img(5, [_rb(5)], 30, digests=["reg.example/acgs/auth@sha256:" + "e" * 64]),  # a digest names it
            _img(6, [_rb(6)], 40),  # protected by pattern
        ],
        [_container("auth", 4, "auth"), _container("old-auth", 2, state="exited")],
    )
    policy = _policy(keep=0, protected_patterns=[f"acgs/auth:rollback-{_id(6)[7:19]}"])
    assert plan_cleanup_after_health(snap, policy, [_id(3)]) == []


def test_cleanup_after_health_does_nothing_without_rollback_images() -> None:
    snap = _snapshot([_img(4, ["acgs/auth:latest"], 1)], [_container("auth", 4, "auth")])
    assert plan_cleanup_after_health(snap, _policy(keep=0), []) == []


def test_batches_are_a_canary_then_the_batch_size_and_a_failure_stops_unless_rollback_host() -> None:
    assert serial(1, 2) == [1, 2]
    assert serial(0, 3) == [3]  # never 0: Ansible reads serial 0 as "every host at once"
    assert max_fail_percentage("rollback_fleet") == 0
    assert max_fail_percentage("pause") == 0
    assert max_fail_percentage("rollback_host") == 100


def _unit(host: str, run_id: str) -> RollbackUnit:
    svc = RunningService(service="auth", container_id="c1", container_name="auth", image_id=_id(1))
    return RollbackUnit(
        host=host,
        project="acgs-1",
        run_id=run_id,
        recorded_at=NOW,
        compose_path="/x.yml",
        compose_text="services: {}\n",
        services={"auth": svc},
        switched=["auth"],
    )


def test_the_rollout_of_each_host_is_read_from_what_the_role_recorded(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "state.db")
    run = "phase3-20260601T120000-1"
    deployed = store.add_rollback_unit(_unit("h1", run))
    store.set_rollback_unit_status(deployed, "deployed")
    back = store.add_rollback_unit(_unit("h2", run))
    store.set_rollback_unit_status(back, "rolled_back")
    store.add_measurement(
        "h2",
        MEASUREMENT,
        {"status": "rolled_back", "switch_seconds": 4.0, "rollback_seconds": 6.5, "reason": "auth: unhealthy"},
        run_id=run,
    )
    # The flow's own bytes before/after share the kind and come later: they say nothing about the rollout.
    store.add_measurement("h2", MEASUREMENT, {"bytes_before": 1, "bytes_after": 1, "predicted": 0}, run_id=run)
    store.add_rollback_unit(_unit("h3", "an-older-run"))  # another run's unit says nothing about this one
    ok, not_run = HostResult("h3", status="ok"), HostResult("h4", status="not_run")

    assert host_rollout(store, "h1", run, HostResult("h1", status="changed")).status == "deployed"
    h2 = host_rollout(store, "h2", run, HostResult("h2", status="failed"))
    assert (h2.status, h2.reason, h2.rollback_seconds, h2.switched) == ("rolled_back", "auth: unhealthy", 6.5, ["auth"])
    assert host_rollout(store, "h3", run, ok).status == "unchanged"
    assert host_rollout(store, "h4", run, not_run).status == "pending"

    report = RunReport(
        "phase3",
        False,
        [
            {
                "host": "h1",
                "status": "rolled_back",
                "rollout_status": "rolled_back",
                "reason": "rolled back with the fleet (h2: auth: unhealthy)",
            },
            {"host": "h2", "status": "rolled_back", "rollout_status": "rolled_back", "reason": "auth: unhealthy"},
            {"host": "h4", "status": "pending", "rollout_status": "pending", "reason": ""},
        ],
        [],
        [],
    )
    rollout = fleet_rollout(report, ["h1", "h2", "h4"])
    assert rollout.stopped == "h2 failed: auth: unhealthy" and not rollout.ok
    assert report.exit_code() == 1


def test_phase3_is_a_phase_of_the_one_flow() -> None:
    spec = get_spec("phase3")
    assert spec.playbook == "phase3_production_deployment.yml" and spec.repeats
    empty = DeployPlan(host="h", project="p", compose_path="/x.yml")
    assert empty.actions == []
