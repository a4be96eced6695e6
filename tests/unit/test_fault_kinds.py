"""Issue 9's fault kinds in the pure layers (snapshots in, decisions out; the same cases run on real engines in
tests/integration/test_fault_kinds_engine.py): digest-only images are named, "fresh" comes from arrival, the cache prune
has one accounting, and the base of an image that stays is protected whatever builder made the child."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate.analysis import analyze, baseline_from, build_cache_prune, dangling_images
from acgs_remediate.config import Policy
from acgs_remediate.criteria import evaluate
from acgs_remediate.facts import _event_arrivals
from acgs_remediate.models import HostSnapshot, is_dangling
from acgs_remediate.plan import plan_phase1
from acgs_remediate.state import StateStore

NOW = datetime(2026, 6, 1, 12, 0, tzinfo=UTC)
DIGEST = "127.0.0.55:5000/pinned/base@sha256:" + "d" * 64


def _img(n: int, tags: list[str] | None = None, digests: list[str] | None = None, layers: list[str] | None = None,
         created: datetime | None = None, arrived: datetime | None | str = "created", **extra: Any) -> dict[str, Any]:
    made = created or NOW - timedelta(days=30)
    when = made if arrived == "created" else arrived
    return {"id": f"sha256:{n:064x}", "repo_tags": tags or [], "repo_digests": digests or [], "size": 1,
            "created": made.isoformat(), "layers": layers or [f"L{n}"],
            "arrived_at": when.isoformat() if isinstance(when, datetime) else None,
            "arrival_source": "imagedb" if when is not None else "", **extra}


def _snapshot(images: list[dict[str, Any]], containers: list[dict[str, Any]] | None = None,
              build_cache: list[dict[str, Any]] | None = None) -> HostSnapshot:
    chains = {c for i in images for c in i["layers"]}
    return HostSnapshot.model_validate({
        "host": "h", "collected_at": NOW.isoformat(),
        "engine": {"name": "h", "server_version": "20.10", "api_version": "1.41", "storage_driver": "overlay2",
                   "data_root": "/d"},
        "images": images, "containers": containers or [], "build_cache": build_cache or [],
        "layer_sizes": {c: 1000 for c in chains},
    })


def _policy(**values: Any) -> Policy:
    return Policy.model_validate({"fresh_min_age": "1h", "dangling_min_age": "0s", **values})


def _id(n: int) -> str:
    return f"sha256:{n:064x}"


# -- 1. digest-only images are named ------------------------------------------------------------------------


def test_an_image_named_only_by_digest_is_not_dangling_in_analysis_plan_criteria_or_baseline() -> None:
    snap = _snapshot([_img(1, digests=[DIGEST]), _img(2), _img(3, tags=["app:1"])])
    policy = _policy()
    assert [i.id for i in dangling_images(snap)] == [_id(2)]
    report = analyze(snap, policy)
    assert report.dangling.count == 1 and [d.image_id for d in report.dangling.images] == [_id(2)]
    rows = {r.action: r for r in report.savings}
    assert rows["Remove dangling images"].image_ids == [_id(2)]
    assert _id(1) in {u.image_id for u in report.unused}
    plan = plan_phase1(snap, policy)
    assert [a.image_id for a in plan.removals()] == [_id(2)]
    kept = {p.image_id: p for p in plan.protections}
    assert kept[_id(1)].reasons == [f"named by digest only ({DIGEST}): not dangling; no policy names it"]
    assert kept[_id(1)].label == "127.0.0.55:5000/pinned/base@sha256:dddddddddddd"
    baseline = baseline_from(snap)
    assert baseline.dangling_count == 1
    zero = next(r for r in evaluate("h", baseline, snap, [], policy) if r.id == "zero_dangling")
    assert zero.value == 1 and [d["image_id"] for d in zero.details] == [_id(2)]


@pytest.mark.parametrize("ref", [DIGEST, _id(1)])
def test_a_digest_only_image_goes_only_when_the_policy_names_it(ref: str) -> None:
    snap = _snapshot([_img(1, digests=[DIGEST])])
    plan = plan_phase1(snap, _policy(oversized_images=[{"ref": ref}]))
    assert [(a.image_id, a.category, a.digests) for a in plan.removals()] == [(_id(1), "oversized", [DIGEST])]
    assert plan.removals()[0].label == f"{_id(1)[7:19]} (127.0.0.55:5000/pinned/base@sha256:dddddddddddd)"


def test_protected_patterns_and_rollback_see_digest_references() -> None:
    snap = _snapshot(
        [_img(1, digests=[DIGEST]), _img(2, tags=["svc:2"], created=NOW - timedelta(days=2)),
         _img(3, digests=["reg/svc@sha256:" + "a" * 64], created=NOW - timedelta(days=3))],
        containers=[{"id": "c", "name": "svc", "image_id": _id(2), "image_ref": "svc:2", "state": "running",
                     "created": NOW.isoformat()}],
    )
    policy = _policy(protected_patterns=["127.0.0.55:5000/pinned/*"], oversized_images=[{"ref": DIGEST}],
                     services=[{"name": "svc", "image": "reg/svc:2", "context": "svc"}])
    plan = plan_phase1(snap, policy)
    kept = {p.image_id: p.reasons for p in plan.protections}
    assert any("protected pattern '127.0.0.55:5000/pinned/*'" in r for r in kept[_id(1)])
    assert plan.removals() == []


@pytest.mark.parametrize(
    "tags,digests,expected",
    [([], [], True), (["<none>:<none>"], ["<none>@<none>"], True), ([], [DIGEST], False), (["a:1"], [], False)],
)
def test_one_definition_of_dangling(tags: list[str], digests: list[str], expected: bool) -> None:
    assert is_dangling(tags, digests) is expected


# -- 2. fresh from arrival ----------------------------------------------------------------------------------


def test_an_old_image_that_arrived_seconds_ago_is_too_young() -> None:
    snap = _snapshot([_img(1, ["old:1"], created=datetime(2020, 1, 1, tzinfo=UTC), arrived=NOW - timedelta(seconds=6))])
    plan = plan_phase1(snap, _policy(oversized_images=[{"ref": "old:1"}]))
    assert plan.removals() == []
    assert plan.protections[0].reasons == ["too young: arrived 6s ago (fresh_min_age 1h)"]
    finding = analyze(snap, _policy(oversized_images=[{"ref": "old:1"}])).oversized[0]
    assert finding.candidate is False and finding.kept_because == plan.protections[0].reasons


def test_an_unknown_arrival_is_fresh_and_says_so_never_guessed_old() -> None:
    old = datetime(2020, 1, 1, tzinfo=UTC)
    snap = _snapshot([_img(1, ["old:1"], created=old, arrived=None), _img(2, arrived=None)])
    plan = plan_phase1(snap, _policy(oversized_images=[{"ref": "old:1"}]))
    assert plan.removals() == []
    assert {tuple(p.reasons) for p in plan.protections} == {("arrival unknown: treated as fresh (fresh_min_age 1h)",)}
    # With no minimum age at all, nothing is "too young", known or not.
    assert len(plan_phase1(snap, _policy(fresh_min_age="0s", oversized_images=[{"ref": "old:1"}])).removals()) == 2


def test_the_ledger_fills_only_unknown_arrivals_and_bounds_them_from_above(tmp_path: Path) -> None:
    snap = _snapshot([_img(1, ["a:1"], arrived=None), _img(2, ["b:1"])])
    store = StateStore(tmp_path / "s.db")
    first = store.note_arrivals(snap)
    assert first.images[0].arrived_at == NOW and first.images[0].arrival_source == "ledger"
    assert first.images[1].arrival_source == "imagedb"
    reason = plan_phase1(first, _policy(oversized_images=[{"ref": "a:1"}])).protections[0].reasons[0]
    assert reason.startswith("too young: first seen by acgs-remediate 0s ago")
    later = snap.model_copy(update={"collected_at": NOW + timedelta(hours=2)})
    again = store.note_arrivals(later)
    assert again.images[0].arrived_at == NOW  # the first sighting stays
    assert [a.image_id for a in plan_phase1(again, _policy(oversized_images=[{"ref": "a:1"}])).removals()] == [_id(1)]
    # An image that left the engine loses its row: if it comes back, it is fresh again.
    store.note_arrivals(snap.model_copy(update={"images": snap.images[1:], "collected_at": NOW + timedelta(hours=3)}))
    back = store.note_arrivals(snap.model_copy(update={"collected_at": NOW + timedelta(hours=4)}))
    assert back.images[0].arrived_at == NOW + timedelta(hours=4)
    store.close()


def test_events_date_an_image_by_id_or_by_reference_latest_wins() -> None:
    images = [{"Id": _id(1), "RepoTags": ["app:1"], "RepoDigests": [DIGEST]}, {"Id": _id(2), "RepoTags": None}]
    t = NOW.timestamp()
    events = [
        {"Type": "image", "Action": "pull", "Actor": {"ID": "app:1"}, "time": int(t - 100)},
        {"Type": "image", "Action": "tag", "Actor": {"ID": _id(1), "Attributes": {"name": "app:1"}},
         "time": int(t - 50)},
        {"Type": "image", "Action": "load", "Actor": {"ID": _id(2)}, "timeNano": int((t - 5) * 1e9)},
        {"Type": "image", "Action": "delete", "Actor": {"ID": _id(2)}, "time": int(t)},
        {"Type": "container", "Action": "start", "Actor": {"ID": _id(1)}, "time": int(t)},
        {"Type": "image", "Action": "pull", "Actor": {"ID": DIGEST}, "time": int(t - 10)},
    ]
    found = _event_arrivals(events, images)
    assert found[_id(1)] == datetime.fromtimestamp(int(t - 10), tz=UTC)
    assert abs((found[_id(2)] - (NOW - timedelta(seconds=5))).total_seconds()) < 0.01


# -- 4. one build-cache accounting --------------------------------------------------------------------------


def test_cache_records_marked_shared_free_nothing_plan_equals_analysis() -> None:
    cache = [  # the two-stage build of the issue: the final stage's 4 MB layer is shared with the image
        {"id": "shared", "size": 4_000_000, "shared": True, "last_used": NOW.isoformat()},
        {"id": "exec", "size": 4_000_000, "last_used": NOW.isoformat()},
        {"id": "ctx", "size": 103, "last_used": NOW.isoformat()},
        {"id": "busy", "size": 500, "in_use": True, "last_used": NOW.isoformat()},
    ]
    snap = _snapshot([_img(1, ["app:1"])], build_cache=cache)
    policy = _policy(build_cache_budget="0B")
    prune = build_cache_prune(snap, 0)
    assert (prune.total_bytes, prune.freed_bytes) == (4_000_603, 4_000_103)
    action = next(a for a in plan_phase1(snap, policy).actions if a.kind == "prune_build_cache")
    report = analyze(snap, policy)
    row = next(r for r in report.savings if r.action.startswith("Prune build cache"))
    assert action.predicted_bytes == row.freed_bytes == report.build_cache.prune_freed_bytes == 4_000_103
    assert report.storage.build_cache == 4_000_603


def test_cache_prune_goes_least_recently_used_first_and_stops_at_the_budget() -> None:
    cache = [{"id": f"r{i}", "size": 1000, "last_used": (NOW - timedelta(days=i)).isoformat()} for i in range(5)]
    snap = _snapshot([], build_cache=cache)
    prune = build_cache_prune(snap, 2500)
    assert prune.record_ids == ["r4", "r3", "r2"] and prune.freed_bytes == 3000
    assert build_cache_prune(snap, 5000).freed_bytes == 0
    assert all(a.kind != "prune_build_cache" for a in plan_phase1(snap, _policy(build_cache_budget=5000)).actions)


# -- 5. the base of an image that stays ---------------------------------------------------------------------


def _buildkit_family() -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    base = ["B1", "B1/B2"]
    images = [
        _img(1, ["base:v1"], layers=base),  # classic build, no child link anywhere
        _img(2, ["app:v1"], layers=[*base, "B1/B2/A"]),  # BuildKit child: no parent link
        _img(3, ["labelled:v1"], layers=base),  # BuildKit child that only adds a LABEL: the same chain
        _img(4, [], layers=[*base, "B1/B2/X"]),  # an old BuildKit child, now dangling
    ]
    containers = [{"id": "c", "name": "app", "image_id": _id(2), "state": "running", "created": NOW.isoformat()}]
    return images, containers


def test_the_base_of_a_buildkit_child_that_stays_is_protected_and_analyze_agrees() -> None:
    images, containers = _buildkit_family()
    snap = _snapshot(images, containers)
    policy = _policy(oversized_images=[{"ref": "base:v1"}, {"ref": "labelled:v1"}])
    plan = plan_phase1(snap, policy)
    assert [a.image_id for a in plan.removals()] == [_id(4)]  # the dangling child goes: nothing names it
    kept = {p.image_id: p.reasons for p in plan.protections}
    assert kept[_id(1)][0].startswith("base of image(s) that stay (app:v1, labelled:v1)")
    assert kept[_id(3)][0].startswith("base of image(s) that stay (app:v1, base:v1)")
    report = analyze(snap, policy)
    assert [f.candidate for f in report.oversized] == [False, False]
    assert next(r for r in report.savings if r.action == "Remove unused oversized images").image_ids == []


def test_bases_go_with_children_that_go() -> None:
    images, _ = _buildkit_family()
    snap = _snapshot(images)
    policy = _policy(oversized_images=[{"ref": "base:v1"}, {"ref": "app:v1"}, {"ref": "labelled:v1"}])
    removed = {a.image_id for a in plan_phase1(snap, policy).removals()}
    assert removed == {_id(1), _id(2), _id(3), _id(4)}
    assert {f.image_id for f in analyze(snap, policy).oversized if f.candidate} == {_id(1), _id(2), _id(3)}
