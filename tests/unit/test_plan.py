"""Phase-1 planning from recorded case files: snapshot + policy + phase -> actions, protections, bytes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate.config import Policy
from acgs_remediate.models import HostSnapshot
from acgs_remediate.plan import BuildFileIssue, HostPlan, plan

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


def test_unknown_phase_is_refused() -> None:
    snapshot, policy, _, _ = _load(CASES[0])
    with pytest.raises(ValueError, match="unknown phase"):
        plan(snapshot, policy, "phase9")
