"""The five success criteria from recorded cases: snapshot + baseline + build records + policy -> verdicts."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest

from acgs_remediate.config import Policy
from acgs_remediate.criteria import CRITERIA, Status, evaluate, overall, rollup, unreachable_results
from acgs_remediate.junit import to_junit
from acgs_remediate.models import Baseline, BuildRecord, HostSnapshot, Unreachable

CASES = sorted((Path(__file__).parent / "cases" / "criteria").glob("*.json"))


def _load(path: Path):
    case = json.loads(path.read_text())
    policy = Policy.model_validate(case["policy"])
    baseline = Baseline.model_validate(case["baseline"]) if case["baseline"] else None
    snapshot = HostSnapshot.model_validate(case["snapshot"])
    records = [BuildRecord.model_validate(r) for r in case["build_records"]]
    return case, evaluate(case["host"], baseline, snapshot, records, policy)


@pytest.mark.parametrize("path", CASES, ids=[p.stem for p in CASES])
def test_case(path: Path) -> None:
    case, results = _load(path)
    by_id = {r.id: r for r in results}
    assert list(by_id) == list(CRITERIA), "all five criteria, in the report's order"
    for cid, exp in case["expect"].items():
        r = by_id[cid]
        assert r.status.value == exp["status"], f"{cid}: {r.status.value} ({r.measured}; {r.causes})"
        if "value" in exp:
            assert r.value == pytest.approx(exp["value"], abs=1e-3), f"{cid}: measured {r.value}"
        text = "\n".join(r.causes)
        for needle in exp.get("causes_contain", []):
            assert needle in text, f"{cid}: {needle!r} not among causes:\n{text}"
        if r.status is Status.passed:
            assert not r.causes, f"{cid}: a pass carries no causes"
        else:
            assert r.causes, f"{cid}: a {r.status.value} must say why"
    for cid, needles in case.get("expect_not_in_causes", {}).items():
        for needle in needles:
            assert not any(c.startswith(needle) for c in by_id[cid].causes), (
                f"{cid}: unexpected cause {needle}"
            )
    assert overall(results).value == case["expect_fleet"]


def test_rollup_takes_the_worst_host_and_names_each_host_in_causes() -> None:
    _, good = _load(Path(__file__).parent / "cases" / "criteria" / "all_pass_after_remediation.json")
    _, bad = _load(Path(__file__).parent / "cases" / "criteria" / "before_phase1.json")
    bad = [r.model_copy(update={"host": "h2"}) for r in bad]
    fleet = {r.id: r for r in rollup({"h1": good, "h2": bad})}
    assert fleet["zero_dangling"].status is Status.failed
    assert fleet["zero_dangling"].measured == "1/2 hosts pass (1 fail)"
    first = "dangling dddddddddddd (40MB, created 2026-11-02 08:30)"
    assert fleet["zero_dangling"].causes == [f"h2: {first} (+2 more)"]
    assert fleet["services_build"].status is Status.not_verified
    assert rollup({"h1": good})[0].status is Status.passed


def test_unreachable_host_is_not_verified_on_every_criterion() -> None:
    results = unreachable_results(Unreachable(host="h9", reason="connection refused"))
    assert [r.id for r in results] == list(CRITERIA)
    assert {r.status for r in results} == {Status.not_verified}
    assert all("connection refused" in r.causes[0] for r in results)


def test_junit_has_one_testcase_per_host_and_criterion_with_causes() -> None:
    _, good = _load(Path(__file__).parent / "cases" / "criteria" / "all_pass_after_remediation.json")
    _, bad = _load(Path(__file__).parent / "cases" / "criteria" / "before_phase1.json")
    down = unreachable_results(Unreachable(host="h3", reason="connection refused"))
    root = ET.fromstring(to_junit({"h1": good, "h2": bad, "h3": down}, {"h3": "connection refused"}))
    cases = root.findall(".//testcase")
    assert len(cases) == 3 * 5
    assert {(c.get("classname"), c.get("name")) for c in cases} == {
        (f"acgs-remediate.verify.{h}", cid) for h in ("h1", "h2", "h3") for cid in CRITERIA
    }
    h2 = {c.get("name"): c for c in cases if c.get("classname").endswith(".h2")}
    assert h2["zero_dangling"].find("failure").get("type") == "fail"
    assert "dddddddddddd" in h2["zero_dangling"].find("failure").text
    assert h2["services_build"].find("failure").get("type") == "not_verified"
    h1 = [c for c in cases if c.get("classname").endswith(".h1")]
    assert all(c.find("failure") is None and c.find("error") is None for c in h1)
    h3 = [c for c in cases if c.get("classname").endswith(".h3")]
    assert all(c.find("error").get("type") == "unreachable" for c in h3)
    assert root.get("tests") == "15" and root.get("errors") == "5"
