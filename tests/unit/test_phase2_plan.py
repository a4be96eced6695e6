"""Phase 2's planner without Docker: what each host is told to do, from the builder's and its own facts.

Facts are written here as the engine would report them (the source-hash label is what phase 2's builds
carry); the fleet-wide build plan is made by hand so that each test states exactly one situation.
"""

from __future__ import annotations

from datetime import UTC, datetime

from acgs_remediate.builds import SOURCE_HASH_LABEL
from acgs_remediate.config import Policy
from acgs_remediate.models import EngineFact, HostSnapshot, ImageFact
from acgs_remediate.phases import get_spec
from acgs_remediate.phases.phase2 import FleetBuild, Phase2Plan, Phase2Service, plan_host_phase2, service_row

NOW = datetime(2026, 1, 1, tzinfo=UTC)
HASH = "ab" * 32
OLD = "sha256:" + "1" * 64
NEW = "sha256:" + "2" * 64
POLICY = Policy.model_validate(
    {"services": [{"name": "auth", "image": "acgs-1-auth_service:latest", "context": "auth", "expected_size": "55MB"}]}
)


def _snapshot(host: str, *images: ImageFact) -> HostSnapshot:
    engine = EngineFact(
        name=host,
        engine_id=host,
        server_version="20.10.24",
        api_version="1.41",
        storage_driver="overlay2",
        data_root="/d",
    )
    return HostSnapshot(host=host, collected_at=NOW, engine=engine, images=list(images))


def _old() -> ImageFact:
    return ImageFact(id=OLD, repo_tags=["acgs-1-auth_service:latest"], created=NOW, size=56_850_000)


def _new(*tags: str) -> ImageFact:
    return ImageFact(id=NEW, repo_tags=list(tags), created=NOW, size=12_000_000, labels={SOURCE_HASH_LABEL: HASH})


def _fleet(built: str | None, passed: bool) -> FleetBuild:
    svc = Phase2Service(
        service="auth",
        release_ref="acgs-1-auth_service:latest",
        verdict="generated",
        dockerfile="/stage/auth/Dockerfile.optimized",
        source_hash=HASH,
        built_image=built,
        passed_before=passed,
        expected_size=55_000_000,
    )
    return FleetBuild("h0", {}, {"auth": svc})


def _kinds(plan: Phase2Plan) -> list[str]:
    return [a.label for a in plan.actions]


def test_a_cold_fleet_builds_on_the_builder_ships_to_the_others_and_moves_every_release_tag() -> None:
    fleet = _fleet(None, False)
    builder = plan_host_phase2(_snapshot("h0", _old()), POLICY, fleet)
    other = plan_host_phase2(_snapshot("h1", _old()), POLICY, fleet)
    assert _kinds(builder) == ["auth: build on h0", "auth: release tag acgs-1-auth_service:latest"]
    assert _kinds(other) == ["auth: ship to h1", "auth: release tag acgs-1-auth_service:latest"]
    assert other.for_run()["services"] == ["auth"]
    assert other.services[0].size_before == 56_850_000


def test_a_rerun_with_everything_in_place_plans_nothing() -> None:
    fleet = _fleet(NEW, True)
    for host in ("h0", "h1"):
        snap = _snapshot(host, _new("acgs-1-auth_service:latest", "acgs-1-auth_service:build-abababababab"))
        assert plan_host_phase2(snap, POLICY, fleet).actions == []


def test_an_image_that_failed_its_gates_is_gated_again_and_never_shipped_as_released() -> None:
    fleet = _fleet(NEW, False)
    plan = plan_host_phase2(_snapshot("h0", _old(), _new("acgs-1-auth_service:build-abababababab")), POLICY, fleet)
    assert _kinds(plan) == ["auth: gate on h0", "auth: release tag acgs-1-auth_service:latest"]


def test_a_service_the_generator_does_not_understand_is_skipped_with_its_reason() -> None:
    svc = Phase2Service(
        service="auth", release_ref="acgs-1-auth_service:latest", verdict="not understood: RUN apt-get install"
    )
    plan = plan_host_phase2(_snapshot("h1", _old()), POLICY, FleetBuild("h0", {}, {"auth": svc}))
    assert plan.actions == []
    assert plan.for_run()["skipped"] == {"auth": "not understood: RUN apt-get install"}
    assert plan.notes == ["auth: skipped, not understood: RUN apt-get install"]
    assert service_row(plan.services[0], None)["skipped"] == "not understood: RUN apt-get install"


def test_the_playbook_receives_the_builder_the_services_their_dockerfiles_and_the_gate() -> None:
    spec = get_spec("phase2")
    fleet = _fleet(None, False)
    plans = {h: plan_host_phase2(_snapshot(h, _old()), POLICY, fleet) for h in ("h0", "h1")}
    extravars = spec.playbook_vars(plans)
    assert extravars["service_build_builder"] == "h0"
    assert extravars["service_build_services"] == ["auth"]
    assert extravars["service_build_dockerfiles"] == {"auth": "/stage/auth/Dockerfile.optimized"}
    assert extravars["service_build_gate"] == "policy"
    assert extravars["acgs_phase2_skipped"] == {}
    assert extravars["acgs_phase2_nothing_to_do"] is False
