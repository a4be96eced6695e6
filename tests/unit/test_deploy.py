"""Phase 3's pure part: compose pinning keeps the user's file, plans switch only what changed, batches, units."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from acgs_remediate.config import HealthcheckSpec, Policy, parse_policy
from acgs_remediate.deploy import (
    DeployError,
    RollbackUnit,
    RunningService,
    ServiceTarget,
    batches,
    compose_diff,
    compose_services,
    plan_deploy,
    render_compose,
    rollback_tag,
    soak_seconds,
    target_compose,
    targets_from_records,
)
from acgs_remediate.errors import UsageError
from acgs_remediate.models import BuildRecord

COMPOSE = (Path(__file__).parents[2] / "scenarios/acgs-1/sources/infrastructure/docker/docker-compose.yml").read_text()
NEW = "sha256:" + "a" * 64
OLD = "sha256:" + "b" * 64
DB = "sha256:" + "d" * 64
HC = HealthcheckSpec(test=["CMD", "python3", "/app/health.py"], interval=2, timeout=1, start_period=3, retries=3)


def _running(service: str, image: str, state: str = "running", exit_code: int | None = None) -> RunningService:
    return RunningService(
        service=service,
        container_id=f"id-{service}",
        container_name=f"acgs-1-{service}-1",
        image_id=image,
        state=state,
        exit_code=exit_code,
    )


def _target(service: str, image_id: str = NEW, one_shot: bool = False) -> ServiceTarget:
    return ServiceTarget(
        service=service,
        policy_service=service,
        image=f"acgs-1-{service}:latest",
        image_id=image_id,
        ref=image_id,
        healthcheck=None if one_shot else HC,
        one_shot=one_shot,
    )


def test_pinning_keeps_comments_anchors_and_every_other_line() -> None:
    new = render_compose(COMPOSE, {"auth_service": NEW}, {"auth_service": HC})
    diff = compose_diff(COMPOSE, new, "docker-compose.yml")
    changed = [line for line in diff.splitlines() if line[:1] in "+-" and line[:3] not in ("+++", "---")]
    # One image line replaced, the healthcheck block added: nothing else of the user's file moves.
    assert changed[0] == "-    image: acgs-1-auth_service:latest"
    assert changed[1] == f"+    image: {NEW}"
    assert all(line.startswith("+") for line in changed[1:])
    assert "+    healthcheck:" in changed
    assert "# The ACGS-1 stack." in new and "x-service: &service" in new and "<<: *service" in new
    services = compose_services(new)
    assert services["auth_service"].image == NEW
    assert services["auth_service"].healthcheck == HC
    assert services["postgres"].image == "postgres:15-sandbox"  # the database's definition is untouched


def test_a_moving_tag_or_unknown_service_is_refused() -> None:
    with pytest.raises(DeployError, match="moving tag"):
        render_compose(COMPOSE, {"auth_service": "acgs-1-auth_service:latest"})
    with pytest.raises(DeployError, match="no service 'nope'"):
        render_compose(COMPOSE, {"nope": NEW})
    # A registry digest is a pin.
    ref = "127.0.0.55:5000/acgs/acgs-1-auth_service@sha256:" + "c" * 64
    assert compose_services(render_compose(COMPOSE, {"auth_service": ref}))["auth_service"].image == ref


def test_one_shots_are_the_services_that_do_not_restart() -> None:
    services = compose_services(COMPOSE)
    assert [n for n, s in services.items() if s.one_shot] == ["alembic-runner"]
    assert compose_services(COMPOSE, one_shot=["auth_service"])["auth_service"].one_shot


def test_plan_switches_only_changed_services_and_never_the_database() -> None:
    services = compose_services(COMPOSE)
    running = {
        "postgres": _running("postgres", DB),
        "auth_service": _running("auth_service", OLD),
        "ac_service": _running("ac_service", NEW),  # already on the phase-2 image
        "fv_service": _running("fv_service", OLD, state="exited", exit_code=1),
    }
    targets = {n: _target(n) for n in ("auth_service", "ac_service", "fv_service", "gs_service")}
    targets["alembic-runner"] = _target("alembic-runner", one_shot=True)
    plan = plan_deploy("h1", "acgs-1", "/x/docker-compose.yml", running, services, targets)
    by = {c.service: c for c in plan.changes}
    assert [(c.service, c.kind) for c in plan.actions] == [
        ("alembic-runner", "run_once"),
        ("auth_service", "switch"),
        ("fv_service", "switch"),
    ]
    assert by["auth_service"].from_image == OLD and by["auth_service"].to_image == NEW
    assert by["postgres"].kind == "keep" and by["ac_service"].kind == "keep"
    assert by["gs_service"].kind == "keep" and "profile governance" in by["gs_service"].reason
    # Re-planning the switched host finds nothing to do.
    after = {
        **running,
        **{n: _running(n, NEW) for n in ("auth_service", "fv_service")},
        "alembic-runner": _running("alembic-runner", NEW, state="exited", exit_code=0),
    }
    again = plan_deploy("h1", "acgs-1", "/x/docker-compose.yml", after, services, targets)
    assert again.actions == []


def test_a_failed_migration_runs_again() -> None:
    services = compose_services(COMPOSE)
    targets = {"alembic-runner": _target("alembic-runner", one_shot=True)}
    running = {"alembic-runner": _running("alembic-runner", NEW, state="exited", exit_code=3)}
    plan = plan_deploy("h1", "acgs-1", "/x", running, services, targets)
    assert [c.kind for c in plan.actions] == ["run_once"]


def test_soak_covers_start_period_plus_interval_times_retries() -> None:
    targets = {"a": _target("a"), "m": _target("m", one_shot=True)}
    assert soak_seconds(targets, 0) == 3 + 2 * 3
    assert soak_seconds(targets, 30) == 30


def test_batches_canary_then_counts_and_percentages() -> None:
    hosts = [f"h{i}" for i in range(1, 8)]
    assert batches(hosts, 1, 2) == [["h1"], ["h2", "h3"], ["h4", "h5"], ["h6", "h7"]]
    assert batches(hosts, 0, 3) == [["h1", "h2", "h3"], ["h4", "h5", "h6"], ["h7"]]
    policy = Policy.model_validate({"deploy": {"batch_size": "25%"}})
    assert policy.deploy.batch_count(7) == 1 and policy.deploy.batch_count(20) == 5
    with pytest.raises(UsageError, match="batch_size"):
        parse_policy({"deploy": {"batch_size": "lots"}}, "group_vars/all.yml")


def test_rollback_unit_restores_recorded_ids_even_when_the_tag_moved() -> None:
    unit = RollbackUnit(
        host="h1",
        project="acgs-1",
        run_id="r",
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        compose_path="/x/docker-compose.yml",
        compose_text=COMPOSE,
        services={"auth_service": _running("auth_service", OLD), "postgres": _running("postgres", DB)},
        switched=["auth_service"],
    )
    restored = compose_services(unit.rollback_text())
    assert restored["auth_service"].image == OLD  # not acgs-1-auth_service:latest, which now names the new one
    assert restored["auth_service"].healthcheck is None  # exactly the old definition
    assert unit.images() == {"auth_service": OLD, "postgres": DB}


def test_rollback_tag_says_service_and_version() -> None:
    assert rollback_tag("acgs-1-auth_service:latest", OLD) == "acgs-1-auth_service:rollback-bbbbbbbbbbbb"
    assert rollback_tag("127.0.0.55:5000/acgs/api:1", OLD) == "127.0.0.55:5000/acgs/api:rollback-bbbbbbbbbbbb"


def test_targets_come_from_the_latest_released_build_record() -> None:
    policy = Policy.model_validate(
        {
            "registry": "127.0.0.55:5000/acgs",
            "services": [
                {
                    "name": "auth",
                    "image": "acgs-1-auth_service:latest",
                    "context": "a",
                    "compose_service": "auth_service",
                },
                {"name": "ac", "image": "acgs-1-ac_service:latest", "context": "b", "compose_service": "ac_service"},
                {"name": "fv", "image": "acgs-1-fv_service:latest", "context": "c", "compose_service": "fv_service"},
            ],
        }
    )
    now = datetime(2026, 1, 1, tzinfo=UTC)

    def rec(service: str, image_id: str, **kw: object) -> BuildRecord:
        fields: dict[str, object] = {"released": True, **kw}
        return BuildRecord(
            host="h1",
            service=service,
            image=f"acgs-1-{service}_service:latest",
            ok=True,
            seconds=1.0,
            finished_at=now,
            image_id=image_id,
            **fields,
        )

    records = [
        rec("auth", NEW, digest="sha256:" + "e" * 64),
        rec("ac", NEW),
        rec("ac", OLD),
        rec("fv", NEW, released=False),
    ]
    targets, notes = targets_from_records(records, policy, compose_services(COMPOSE), {NEW: HC})
    assert targets["auth_service"].ref == "127.0.0.55:5000/acgs/acgs-1-auth_service@sha256:" + "e" * 64
    assert targets["ac_service"].ref == NEW and targets["ac_service"].healthcheck == HC
    assert "fv_service" not in targets and any("fv_service" in n for n in notes)
    text = target_compose(COMPOSE, targets)
    assert compose_services(text)["ac_service"].image == NEW


def test_rollback_units_survive_in_the_ledger_with_their_state(tmp_path: Path) -> None:
    from acgs_remediate.state import StateStore

    store = StateStore(tmp_path / "state.db")
    unit = RollbackUnit(
        host="h1",
        project="acgs-1",
        run_id="r1",
        recorded_at=datetime(2026, 1, 1, tzinfo=UTC),
        compose_path="/x/docker-compose.yml",
        compose_text=COMPOSE,
        services={"auth_service": _running("auth_service", OLD)},
        switched=["auth_service"],
    )
    uid = store.add_rollback_unit(unit)
    assert [(i, s) for i, s, _u in store.rollback_units("h1")] == [(uid, "switching")]
    store.set_rollback_unit_status(uid, "rolled_back")
    # A second process sees the same unit, exactly.
    again = StateStore(tmp_path / "state.db")
    [(got_id, status, got)] = again.rollback_units("h1", statuses=["rolled_back"])
    assert (got_id, status, got) == (uid, "rolled_back", unit)
    assert again.rollback_units("h1", statuses=["deployed"]) == []
    with pytest.raises(ValueError, match="unknown rollback unit state"):
        again.set_rollback_unit_status(uid, "half-done")
