"""Phase-1 planning from recorded case files: snapshot + policy + phase -> actions, protections, bytes."""

from __future__ import annotations

import json
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from acgs_remediate.analysis import analyze
from acgs_remediate.config import Policy
from acgs_remediate.models import HostSnapshot
from acgs_remediate.plan import BuildFileIssue, HostPlan, plan, rollback_images

CASES = sorted((Path(__file__).parent / "cases" / "plan").glob("*.json"))


def _load(path: Path) -> tuple[HostSnapshot, Policy, str, dict[str, Any]]:
    case = json.loads(path.read_text())
    return (HostSnapshot.model_validate(case["snapshot"]), Policy.model_validate(case["policy"]),
            case["phase"], case["expected"])


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_matches_case(path: Path) -> None:
    snapshot, policy, phase, expected = _load(path)
    result = plan(snapshot, policy, phase)
    got = [
        {k: v for k, v in a.model_dump().items() if k in want}
        for a, want in zip(result.actions, expected["actions"], strict=False)
    ]
    assert got == expected["actions"]
    assert len(result.actions) == len(expected["actions"])
    assert result.predicted_bytes == expected["predicted_bytes"]
    protections = {p.image_id: p.reasons for p in result.protections}
    assert set(protections) == set(expected["protections"])
    for image_id, wanted in expected["protections"].items():
        for fragment in wanted:
            reasons = protections[image_id]
            assert any(fragment in reason for reason in reasons), (image_id, reasons)
    for note in expected["notes"]:
        assert note in result.notes


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_plan_never_touches_used_protected_or_volumes(path: Path) -> None:
    snapshot, policy, phase, _ = _load(path)
    result = plan(snapshot, policy, phase)
    used = {c.image_id for c in snapshot.containers}
    for action in result.removals():
        assert action.image_id not in used
        assert not any(policy.is_protected(t) for t in action.tags)
    assert {a.kind for a in result.actions} <= {"remove_image", "prune_build_cache", "repair_build_file"}
    assert "volume" not in json.dumps([a.model_dump() for a in result.actions])


def test_plan_round_trips_through_json_for_extravars() -> None:
    snapshot, policy, phase, _ = _load(CASES[0])
    result = plan(snapshot, policy, phase, [BuildFileIssue(service="pgc", path="/src/pgc/requirements.txt",
                                                           kind="requirements.txt")])
    again = HostPlan.model_validate(json.loads(result.model_dump_json()))
    assert again == result
    assert again.actions[-1].kind == "repair_build_file"


def test_the_plan_sent_to_the_playbook_keeps_every_action_exactly() -> None:
    snapshot, policy, phase, _ = _load(CASES[0])
    result = plan(snapshot, policy, phase, [BuildFileIssue(service="pgc", path="/src/pgc/requirements.txt",
                                                           kind="requirements.txt")])
    assert result.protections and result.actions
    sent = json.loads(json.dumps(result.for_run()))
    again = HostPlan.model_validate(sent)
    assert again.actions == result.actions
    assert (again.host, again.phase, again.planned_at, again.predicted_bytes) == (
        result.host, result.phase, result.planned_at, result.predicted_bytes)
    assert "protections" not in sent
    assert len(json.dumps(sent)) < len(result.model_dump_json())


def test_unknown_phase_is_refused() -> None:
    snapshot, policy, _, _ = _load(CASES[0])
    with pytest.raises(ValueError, match="unknown phase"):
        plan(snapshot, policy, "phase9")


# -- property: whatever the host looks like, the plan never targets what must stay ------------------

_NOW = datetime(2026, 1, 10, tzinfo=UTC)
_REPOS = ["app", "postgres", "big", "svc"]


@st.composite
def _hosts(draw: st.DrawFn) -> tuple[HostSnapshot, Policy]:
    n = draw(st.integers(1, 12))
    diffs = [f"d{i}" for i in range(8)]
    images, used_tags, chains = [], set(), set()
    for i in range(n):
        tags = []
        for _ in range(draw(st.integers(0, 2))):
            tag = f"{draw(st.sampled_from(_REPOS))}:{draw(st.sampled_from(['latest', 'v1', 'stable']))}"
            if tag not in used_tags:
                used_tags.add(tag)
                tags.append(tag)
        # Some images are pulled by digest: named, maybe with no tag at all (never dangling).
        digests = [f"reg.local:5000/{draw(st.sampled_from(_REPOS))}@sha256:{i:064x}"] if draw(st.booleans()) else []
        # Layer chains as the layer store keys them (a chain ID names the whole stack below it). Some images
        # are BuildKit children of an earlier one: its whole chain, then more layers, and no parent link.
        if i and draw(st.booleans()):
            stack = [*images[draw(st.integers(0, i - 1))]["_diffs"], *draw(st.lists(st.sampled_from(diffs),
                                                                                        max_size=2))]
        else:
            stack = draw(st.lists(st.sampled_from(diffs), min_size=1, max_size=4))
        layers = ["/".join(stack[: k + 1]) for k in range(len(stack))]
        chains.update(layers)
        created = _NOW - timedelta(hours=draw(st.integers(0, 5000)))
        # Arrival: unknown, or any time since it was made (a 2020 image may have been loaded an hour ago).
        arrived = draw(st.one_of(st.none(), st.integers(0, 100)))
        images.append({
            "id": f"sha256:{i:064x}", "repo_tags": tags, "repo_digests": digests, "size": 1,
            "created": created.isoformat(), "_diffs": stack, "layers": layers,
            "arrived_at": None if arrived is None else max(created, _NOW - timedelta(hours=arrived)).isoformat(),
            "arrival_source": "" if arrived is None else draw(st.sampled_from(["imagedb", "events", "ledger"])),
        })
    for img in images:
        del img["_diffs"]
    containers = [
        {"id": f"c{j}", "name": f"c{j}", "image_id": draw(st.sampled_from(images))["id"],
         "state": draw(st.sampled_from(["running", "exited", "created"])), "created": _NOW.isoformat()}
        for j in range(draw(st.integers(0, 4)))
    ]
    # Classic-builder parent links: an image built on an earlier one, directly or through an intermediate.
    parents: dict[str, str] = {}
    for i in range(1, n):
        if draw(st.booleans()):
            parent = images[draw(st.integers(0, i - 1))]["id"]
            if draw(st.booleans()):
                parents[f"sha256:{i:062x}ff"] = parent
                parent = f"sha256:{i:062x}ff"
            parents[images[i]["id"]] = parent
            images[i]["parent_id"] = parent
    snapshot = HostSnapshot.model_validate({
        "host": "h", "collected_at": _NOW.isoformat(),
        "engine": {"name": "h", "server_version": "20.10", "api_version": "1.41", "storage_driver": "overlay2",
                   "data_root": "/d"},
        "images": images, "containers": containers, "layer_sizes": {chain: 10 for chain in chains},
        "image_parents": parents,
    })
    digest_refs = sorted(d for img in images for d in img["repo_digests"])
    policy = Policy.model_validate({
        "oversized_images": [{"ref": t} for t in sorted(used_tags) + digest_refs if draw(st.booleans())],
        "protected_patterns": ["postgres:*", "*:stable", "*/postgres@*"],
        "fresh_min_age": f"{draw(st.integers(0, 50))}h", "dangling_min_age": f"{draw(st.integers(0, 50))}h",
        "services": [{"name": "svc", "image": "svc:latest", "context": "svc"}],
    })
    return snapshot, policy


@settings(max_examples=300, deadline=None)
@given(_hosts())
def test_plan_never_targets_used_protected_young_or_rollback_images(host: tuple[HostSnapshot, Policy]) -> None:
    snapshot, policy = host
    result = plan(snapshot, policy, "phase1")
    used = {c.image_id for c in snapshot.containers}
    rollback = set(rollback_images(snapshot, policy))
    by_id = {i.id: i for i in snapshot.images}
    removed = [a.image_id for a in result.removals()]
    assert len(removed) == len(set(removed))
    named = {o.ref for o in policy.oversized_images}
    for image_id in removed:
        img = by_id[image_id]
        assert image_id not in used and image_id not in rollback
        assert not any(policy.is_protected(ref) for ref in img.names)
        # "Fresh" is counted from arrival on the engine; an unknown arrival is fresh, never guessed old.
        if policy.fresh_min_age > 0:
            assert img.arrived_at is not None
            assert (_NOW - img.arrived_at).total_seconds() >= policy.fresh_min_age
        # Dangling means no tag AND no digest: an image named only by digest goes only when a policy names it.
        assert (not img.repo_tags and not img.repo_digests) or bool(named & set(img.names))
    # The engine refuses to delete an image an image that stays was built on: never planned; a planned
    # image built on another planned one goes first.
    for position, image_id in enumerate(removed):
        for other in snapshot.images:
            if image_id in snapshot.ancestors(other.id):
                assert other.id in removed, f"{image_id} is the parent of {other.id}, which stays"
                assert removed.index(other.id) < position, f"{other.id} must go before its parent {image_id}"
    # A policy-named image whose every layer stays with an image that stays (a BuildKit child's base) would
    # free 0 B and only lose its name: never planned, whatever builder made the child.
    kept_layers = {c for img in snapshot.images if img.id not in removed for c in img.layers}
    for action in result.removals():
        if action.category == "oversized":
            assert not set(by_id[action.image_id].layers) <= kept_layers, action
    # Everything that stays for a reason is explained; nothing is both removed and protected.
    assert not set(removed) & {p.image_id for p in result.protections}
    for img in snapshot.images:
        if img.digest_only and img.id not in removed:
            assert img.id in {p.image_id for p in result.protections}, "a digest-only image stays, and says why"
    assert result.predicted_bytes >= max((a.predicted_bytes for a in result.removals()), default=0)
    # analyze and plan agree on what phase 1 removes (one decision).
    report = analyze(snapshot, policy)
    assert {f.image_id for f in report.oversized if f.candidate} == {
        a.image_id for a in result.removals() if a.category == "oversized"}
    rows = {r.action: r for r in report.savings}
    assert set(rows["Remove unused oversized images"].image_ids) == {
        a.image_id for a in result.removals() if a.category == "oversized"}
    assert rows["Phase 1 together (shared layers counted once)"].freed_bytes == result.predicted_bytes - sum(
        a.predicted_bytes for a in result.actions if a.kind == "prune_build_cache")


def test_an_image_with_a_child_that_stays_is_protected_and_planned_children_go_first() -> None:
    def image(n: int, tags: list[str], hours: int, parent: str = "") -> dict[str, Any]:
        when = (_NOW - timedelta(hours=hours)).isoformat()
        return {"id": f"sha256:{n:064x}", "repo_tags": tags, "size": 1, "parent_id": parent,
                "created": when, "arrived_at": when, "arrival_source": "imagedb", "layers": [f"L{n}"]}

    base, old, child, kept = (f"sha256:{n:064x}" for n in (1, 2, 3, 4))
    snapshot = HostSnapshot.model_validate({
        "host": "h", "collected_at": _NOW.isoformat(),
        "engine": {"name": "h", "server_version": "20.10", "api_version": "1.41", "storage_driver": "overlay2",
                   "data_root": "/d"},
        # base <- (intermediate) <- kept:latest ; old <- child (both dangling and old)
        "images": [image(1, [], 90), image(2, [], 80), image(3, [], 70, old), image(4, ["kept:latest"], 60, "i")],
        "image_parents": {"i": base, kept: "i", child: old},
        "layer_sizes": {f"L{n}": 10 for n in range(1, 5)},
    })
    policy = Policy.model_validate({"dangling_min_age": "1h", "fresh_min_age": "1h"})
    result = plan(snapshot, policy, "phase1")
    assert [a.image_id for a in result.removals()] == [child, old]
    reasons = {p.image_id: p.reasons for p in result.protections}
    assert reasons[base] == [
        "parent of image(s) that stay (kept:latest): the engine refuses to delete an image with dependent "
        "child images, and a removal is never forced"
    ]
