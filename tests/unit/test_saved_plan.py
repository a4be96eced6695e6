"""Saved plans without Docker: what a plan file records, when applying it is refused, and bad plan files.

The facts are the recorded fleet host of ``cases/plan/report_fleet_host.json``; each test changes one
fact the way another actor on the engine would, and checks whether the saved plan still holds.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from acgs_remediate.config import Policy
from acgs_remediate.errors import EXIT_USAGE, UsageError
from acgs_remediate.models import ContainerFact, HostSnapshot, ImageFact
from acgs_remediate.orchestrate import Planned, drift, load_plan, save_plan
from acgs_remediate.phases import get_spec

REPO = Path(__file__).resolve().parents[2]
CASE = Path(__file__).parent / "cases" / "plan" / "report_fleet_host.json"
SPEC = get_spec("phase1")


@pytest.fixture
def facts() -> tuple[HostSnapshot, Policy]:
    case = json.loads(CASE.read_text())
    snapshot = HostSnapshot.model_validate(case["snapshot"])
    return snapshot.model_copy(update={"engine": snapshot.engine.model_copy(update={"engine_id": "ENG1"})}), (
        Policy.model_validate(case["policy"])
    )


def _saved(facts: tuple[HostSnapshot, Policy], tmp_path: Path) -> Path:
    snapshot, policy = facts
    plan = SPEC.plan_host(snapshot, policy, [])
    assert plan.removals(), "the case should plan removals"
    path = tmp_path / "plan.json"
    save_plan(
        Planned(SPEC, {snapshot.host: plan}, {snapshot.host: snapshot}, []), {snapshot.host: policy}, tmp_path, path
    )
    return path


def _drift(facts: tuple[HostSnapshot, Policy], path: Path, snapshot: HostSnapshot, policy: Policy) -> list[str]:
    saved, plans = load_plan(SPEC, path)
    host = facts[0].host
    return drift(host, saved.hosts[host].fingerprint, SPEC.fingerprint(plans[host], snapshot, policy))


def test_a_saved_plan_round_trips_exactly(facts, tmp_path: Path) -> None:
    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    saved, plans = load_plan(SPEC, path)
    assert plans[snapshot.host] == SPEC.plan_host(snapshot, policy, [])
    fp = saved.hosts[snapshot.host].fingerprint
    removed = {a.image_id for a in plans[snapshot.host].removals()}
    assert set(fp.images) == removed  # the facts of every image an action touches, and only those
    assert fp.engine_id == "ENG1" and all(f.containers == [] for f in fp.images.values())
    assert oct(path.stat().st_mode & 0o777) == "0o600"


def test_unchanged_facts_and_an_unrelated_new_image_do_not_refuse(facts, tmp_path: Path) -> None:
    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    new = ImageFact(id="sha256:" + "f" * 64, repo_tags=["unrelated:1"], created=snapshot.collected_at, size=5)
    assert _drift(facts, path, snapshot, policy) == []
    assert _drift(facts, path, snapshot.model_copy(update={"images": [*snapshot.images, new]}), policy) == []


def test_an_image_now_used_by_a_container_refuses_naming_host_image_and_container(facts, tmp_path: Path) -> None:
    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    target = SPEC.plan_host(snapshot, policy, []).removals()[0]
    user = ContainerFact(
        id="c-late", name="web-1", image_id=target.image_id or "", state="exited", created=snapshot.collected_at
    )
    lines = _drift(facts, path, snapshot.model_copy(update={"containers": [*snapshot.containers, user]}), policy)
    assert len(lines) == 1
    assert lines[0].startswith(f"{snapshot.host}: image {target.image_id[:19]}")
    assert lines[0].endswith("is now used by container web-1")


def test_tag_engine_policy_and_vanished_image_changes_refuse(facts, tmp_path: Path) -> None:
    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    target = SPEC.plan_host(snapshot, policy, []).removals()[0].image_id
    retagged = [
        i.model_copy(update={"repo_tags": [*i.repo_tags, "keep/me:1"]}) if i.id == target else i
        for i in snapshot.images
    ]
    assert "now tagged keep/me:1" in _drift(facts, path, snapshot.model_copy(update={"images": retagged}), policy)[0]
    gone = [i for i in snapshot.images if i.id != target]
    assert "no longer on the engine" in _drift(facts, path, snapshot.model_copy(update={"images": gone}), policy)[0]
    other = snapshot.model_copy(update={"engine": snapshot.engine.model_copy(update={"engine_id": "ENG2"})})
    assert "different one" in _drift(facts, path, other, policy)[0]
    stricter = policy.model_copy(update={"rollback_keep": policy.rollback_keep + 1})
    assert "policy" in _drift(facts, path, snapshot, stricter)[0]


@pytest.mark.parametrize(
    ("content", "fragment"),
    [
        (None, "does not exist"),
        ("not json {", "is not JSON"),
        ('{"hello": 1}', "is not an acgs-remediate plan file"),
        ('{"kind": "acgs-remediate-plan", "version": 1, "phase": "phase1"}', "is invalid at"),
        (
            '{"kind": "acgs-remediate-plan", "version": 9, "phase": "phase1", "created_at": "2026-01-01T00:00:00Z",'
            ' "inventory": "x", "hosts": {}}',
            "is invalid at version",
        ),
        (
            '{"kind": "acgs-remediate-plan", "version": 1, "phase": "phase7", "created_at": "2026-01-01T00:00:00Z",'
            ' "inventory": "x", "hosts": {}}',
            "is a plan of phase7, not of phase1",
        ),
    ],
)
def test_a_wrong_plan_file_is_one_line_and_exit_2(tmp_path: Path, content: str | None, fragment: str) -> None:
    path = tmp_path / "plan.json"
    if content is not None:
        path.write_text(content)
    with pytest.raises(UsageError) as exc:
        load_plan(SPEC, path)
    assert exc.value.exit_code == EXIT_USAGE
    assert fragment in exc.value.message and str(path) in exc.value.message
    assert "\n" not in exc.value.message


def test_a_tampered_action_is_refused_as_invalid(facts, tmp_path: Path) -> None:
    path = _saved(facts, tmp_path)
    data = json.loads(path.read_text())
    host = next(iter(data["hosts"]))
    data["hosts"][host]["plan"]["actions"][0]["kind"] = "remove_volume"
    path.write_text(json.dumps(data))
    with pytest.raises(UsageError) as exc:
        load_plan(SPEC, path)
    assert f"hosts.{host}.plan" in exc.value.message or "actions.0.kind" in exc.value.message


def _cli(*args: str, tmp_path: Path) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (stdin closed) against the repository's example inventory (no engine reachable)."""
    return subprocess.run(
        [sys.executable, "-c", "from acgs_remediate.cli import main; main()", *args, "-i", str(REPO / "inventory")],
        capture_output=True,
        text=True,
        env={**os.environ, "COLUMNS": "200", "ACGS_REMEDIATE_STATE": str(tmp_path / "s.db")},
        stdin=subprocess.DEVNULL,
        timeout=120,
        check=False,
    )


def _one_error(proc: subprocess.CompletedProcess[str]) -> str:
    assert proc.returncode == 2, proc.stderr
    assert "Traceback" not in proc.stderr and proc.stdout == ""
    errors = [ln for ln in proc.stderr.splitlines() if ln.startswith("error:")]
    assert len(errors) == 1, proc.stderr
    return errors[0]


def test_the_cli_refuses_a_missing_plan_file_before_touching_any_engine(tmp_path: Path) -> None:
    line = _one_error(_cli("phase1", "--yes", "--plan", str(tmp_path / "nope.json"), tmp_path=tmp_path))
    assert "nope.json does not exist" in line
    assert not (tmp_path / "s.db.locks").exists()  # refused before any host was locked


def test_the_cli_refuses_a_plan_for_hosts_the_inventory_does_not_have(facts, tmp_path: Path) -> None:
    path = _saved(facts, tmp_path)
    line = _one_error(_cli("phase1", "--yes", "--plan", str(path), tmp_path=tmp_path))
    assert "names host(s) the inventory" in line and "h1" in line


def test_plan_refuses_an_unwritable_output_before_reading_facts(tmp_path: Path) -> None:
    line = _one_error(_cli("plan", "phase1", "-o", str(tmp_path / "no" / "dir" / "p.json"), tmp_path=tmp_path))
    assert "is not a directory" in line


def test_an_action_added_to_the_file_without_its_facts_is_refused(facts, tmp_path: Path) -> None:
    from acgs_remediate.orchestrate import StalePlanError, _saved_plans_if_unchanged

    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    data = json.loads(path.read_text())
    host = snapshot.host
    used = snapshot.containers[0].image_id
    extra = {"kind": "remove_image", "image_id": used, "reason": "hand-edited", "tags": []}
    data["hosts"][host]["plan"]["actions"].append(extra)
    path.write_text(json.dumps(data))
    with pytest.raises(StalePlanError) as exc:
        _saved_plans_if_unchanged(SPEC, load_plan(SPEC, path), {host: snapshot}, {host: policy}, path)
    assert f"{host}: the plan's actions and the facts recorded for them do not match" in exc.value.message


def test_a_planned_dangling_image_that_gained_a_digest_refuses(facts, tmp_path: Path) -> None:
    """Pulled or pushed by digest since the plan: it is named now (not dangling), so the saved plan is stale."""
    snapshot, policy = facts
    path = _saved(facts, tmp_path)
    target = next(a.image_id for a in SPEC.plan_host(snapshot, policy, []).removals() if a.category == "dangling")
    digest = "127.0.0.55:5000/pinned/base@sha256:" + "d" * 64
    named = [i.model_copy(update={"repo_digests": [digest]}) if i.id == target else i for i in snapshot.images]
    lines = _drift(facts, path, snapshot.model_copy(update={"images": named}), policy)
    assert len(lines) == 1 and f"now named {digest}" in lines[0]
