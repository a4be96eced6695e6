"""`acgs-remediate verify` and playbooks/verify.yml on the real sandbox fleet (3 dockerd engines, acgs-1).

What a user relies on: the gate fails before phase 1 (dangling images, storage) with exit 1; after
phase 1 the dangling and storage criteria pass exactly where the scenario says phase 1 can make them
pass; build criteria read "not verified" until build records exist and then reflect them; the
playbook reaches the same verdict on every host x criterion; JUnit has one test case per host x
criterion; an engine that is down gives exit 3.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate.criteria import CRITERIA
from acgs_remediate.inventory import load_fleet
from acgs_remediate.models import BuildRecord
from acgs_remediate.resources import playbooks_dir, roles_dir
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "acgs-remediate")


def _verify(sb: Sandbox, state: Path, *args: str) -> tuple[int, dict[str, Any]]:
    """Run the real CLI with --format json; return its exit code and document."""
    proc = subprocess.run(
        [CLI, "verify", "-i", str(sb.inventory_path), "--state", str(state), "--format", "json", *args],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )
    assert proc.stdout.strip(), f"verify printed no JSON (exit {proc.returncode}): {proc.stderr}"
    return proc.returncode, json.loads(proc.stdout)


def _verdicts(doc: dict[str, Any]) -> dict[str, dict[str, dict[str, Any]]]:
    return {host: {r["id"]: r for r in results} for host, results in doc["hosts"].items()}


def _cli(*args: str, timeout: float = 900, env: dict[str, str] | None = None) -> None:
    """Run another acgs-remediate command that must succeed."""
    proc = subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
        env={**os.environ, **(env or {})},
    )
    assert proc.returncode == 0, (
        f"acgs-remediate {args[0]} exit {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    )


def _playbook_verdicts(
    sb: Sandbox, state: Path, tmp: Path
) -> tuple[dict[str, dict[str, str]], dict[str, bool]]:
    """Run playbooks/verify.yml (ansible-runner); return per host: criterion -> status, and failed or not."""
    import ansible_runner

    env = {
        "PATH": f"{Path(sys.executable).parent}:{os.environ.get('PATH', '')}",
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "HOME": str(tmp),
    }
    (tmp / "runner").mkdir()
    result = ansible_runner.run(
        private_data_dir=str(tmp / "runner"),
        playbook=str(playbooks_dir() / "verify.yml"),
        inventory=str(sb.inventory_path),
        extravars={"success_criteria_state_path": str(state)},
        envvars=env,
        quiet=True,
    )
    verdicts: dict[str, dict[str, str]] = {}
    for event in result.events:
        data = event.get("event_data", {})
        res = data.get("res") or {}
        if event.get("event") == "runner_on_ok" and "criteria" in res:
            verdicts[data["host"]] = {c["id"]: c["status"] for c in res["criteria"]}
    assert result.stats is not None, "the playbook run ended without its final stats"
    failed = {h: h in (result.stats.get("failures") or {}) for h in sb.hosts()}
    return verdicts, failed


def test_verify_gate_before_and_after_phase1_and_with_build_records(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb = fresh_sandbox
    scenario = load_scenario("acgs-1")
    hosts = sb.hosts()
    state = tmp_path / "state.db"

    # Nothing recorded yet: storage cannot be verified, whatever the engines hold.
    code, doc = _verify(sb, state)
    assert code == 1
    assert not state.exists(), "verify reads the state store; it must not create one"
    for host in hosts:
        assert _verdicts(doc)[host]["storage_reduction"]["status"] == "not_verified"

    # Before phase 1: dangling images and storage fail on every host, with the causes named.
    # analyze records each host's baseline before anything is removed.
    _cli("analyze", "-i", str(sb.inventory_path), "--state", str(state), "--format", "json")
    junit = tmp_path / "verify.xml"
    code, doc = _verify(sb, state, "--junit", str(junit))
    assert code == 1 and doc["verdict"] == "fail"
    before = _verdicts(doc)
    for index, host in enumerate(hosts):
        exp = scenario.expectation(index)
        v = before[host]
        assert v["zero_dangling"]["status"] == "fail"
        assert v["zero_dangling"]["value"] == exp.dangling
        assert len(v["zero_dangling"]["causes"]) == exp.dangling  # each dangling image named
        assert v["storage_reduction"]["status"] == "fail" and v["storage_reduction"][
            "value"
        ] == pytest.approx(0, abs=1)
        # No build records yet: never a pass.
        assert v["services_build"]["status"] == "not_verified"
        assert v["build_time"]["status"] == "not_verified"
        # The report's gs image (6.03GB x scale) is far over the scaled 300MB cap.
        gs = next(d for d in v["image_size_cap"]["details"] if d["image"] == "acgs-master-gs_service:latest")
        assert gs["status"] == "fail" and gs["size"] > gs["cap"]
        assert any(
            "acgs-master-gs_service:latest is" in c and "over the" in c for c in v["image_size_cap"]["causes"]
        )

    # JUnit: one test case per host x criterion, failures typed and carrying their causes.
    root = ET.parse(junit).getroot()
    cases = root.findall(".//testcase")
    assert sorted((c.get("classname"), c.get("name")) for c in cases) == sorted(
        (f"acgs-remediate.verify.{h}", cid) for h in hosts for cid in CRITERIA
    )
    for case in cases:
        status = before[case.get("classname").rsplit(".", 1)[-1]][case.get("name")]["status"]
        failure = case.find("failure")
        assert (failure is None) == (status == "pass")
        if failure is not None:
            assert failure.get("type") == status

    # Phase 1: dangling and storage now pass exactly where the scenario says they can.
    # Phase 1 regenerates the missing alembic.ini from real sources; its database URL must come from
    # the environment (never an empty file).
    fleet = load_fleet(sb.inventory_path)
    min_age = fleet.policy(fleet.host(hosts[0])).dangling_min_age
    phase1_started = datetime.now(UTC)
    _cli(
        "phase1",
        "-i",
        str(sb.inventory_path),
        "--state",
        str(state),
        "--yes",
        "--format",
        "json",
        env={"ACGS_DATABASE_URL": "postgresql://acgs:acgs@127.0.0.1:5432/acgs"},
    )
    code, doc = _verify(sb, state)
    after = _verdicts(doc)
    for index, host in enumerate(hosts):
        exp = scenario.expectation(index)
        v = after[host]
        expected_storage = "pass" if exp.storage_criterion_after_phase1 else "fail"
        assert v["storage_reduction"]["status"] == expected_storage, (host, v["storage_reduction"])
        # What may stay dangling: images a container still uses (safety invariant 1; the cause names
        # the container) and images younger than dangling_min_age (a build may be in progress —
        # the seed's own multi-stage leftovers when the golden engine was seeded moments ago).
        left = v["zero_dangling"]["details"]
        in_use = [d for d in left if d["containers"]]
        young = [d for d in left if not d["containers"]]
        assert len(in_use) == exp.dangling_in_use, (host, v["zero_dangling"]["causes"])
        for d in young:
            age = (phase1_started - datetime.fromisoformat(d["created"])).total_seconds()
            assert age < min_age, f"{host}: phase 1 left an old, unused dangling image: {d}"
        assert v["zero_dangling"]["value"] == len(left)
        assert v["zero_dangling"]["status"] == ("pass" if not left else "fail")
        kept = [c for c in v["zero_dangling"]["causes"] if "kept by container" in c]
        assert len(kept) == exp.dangling_in_use
    assert code == 1  # build criteria are still not verified

    # Build records: host 1 all good and fast, host 2 one failure and one slow build, host 3 none.
    services = [s for s in fleet.policy(fleet.host(hosts[0])).services]
    now = datetime.now(UTC)
    store = StateStore(state)
    try:
        for svc in services:
            store.add_build_record(
                BuildRecord(
                    host=hosts[0], service=svc.name, image=svc.image, ok=True, seconds=42.0, finished_at=now
                )
            )
        for i, svc in enumerate(services):
            ok = svc.name != "pgc"
            store.add_build_record(
                BuildRecord(
                    host=hosts[1],
                    service=svc.name,
                    image=svc.image,
                    ok=ok,
                    seconds=400.0 if i == 0 else 30.0,
                    finished_at=now,
                    error=None if ok else "COPY requirements.txt: file not found",
                )
            )
    finally:
        store.close()
    code, doc = _verify(sb, state, "--junit", str(junit))
    assert code == 1
    v = _verdicts(doc)
    assert v[hosts[0]]["services_build"]["status"] == "pass"
    assert v[hosts[0]]["build_time"]["status"] == "pass"
    assert v[hosts[1]]["services_build"]["status"] == "fail"
    assert any(
        c.startswith("pgc: build failed — COPY requirements.txt")
        for c in v[hosts[1]]["services_build"]["causes"]
    )
    assert v[hosts[1]]["build_time"]["status"] == "fail"
    assert any(
        c.startswith(f"{services[0].name}: build took 6m40s") for c in v[hosts[1]]["build_time"]["causes"]
    )
    assert v[hosts[2]]["services_build"]["status"] == "not_verified"
    assert v[hosts[2]]["build_time"]["status"] == "not_verified"

    # The playbook (what AWX runs) reaches the very same verdict on every host x criterion.
    playbook, failed = _playbook_verdicts(sb, state, tmp_path)
    cli = {h: {cid: r["status"] for cid, r in rs.items()} for h, rs in v.items()}
    assert playbook == cli
    for host in hosts:
        assert failed[host] == any(s != "pass" for s in cli[host].values())


def test_verify_exit_3_when_an_engine_is_down(sandbox: Sandbox, tmp_path: Path) -> None:
    down = sandbox.hosts()[-1]
    sandbox.stop_engine(down)
    try:
        junit = tmp_path / "verify.xml"
        code, doc = _verify(sandbox, tmp_path / "state.db", "--junit", str(junit))
    finally:
        sandbox.start_engine(down)
    assert code == 3
    assert [u["host"] for u in doc["unreachable"]] == [down]
    assert {r["status"] for r in doc["hosts"][down]} == {"not_verified"}
    # The hosts that answered are still verified (and fail before phase 1).
    up = [h for h in sandbox.hosts() if h != down]
    assert all(_verdicts(doc)[h]["zero_dangling"]["status"] == "fail" for h in up)
    errors = [c for c in ET.parse(junit).getroot().findall(".//testcase") if c.find("error") is not None]
    assert len(errors) == len(CRITERIA)
    assert all(
        c.find("error").get("type") == "unreachable" and c.get("classname").endswith(down) for c in errors
    )


def test_verify_bad_policy_is_a_usage_error_naming_the_file(sandbox: Sandbox, tmp_path: Path) -> None:
    inv = tmp_path / "inventory.yml"
    inv.write_text(sandbox.inventory_path.read_text())
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(
        "acgs_policy:\n  criteria:\n    storage_reduction_pct: 190\n"
    )
    proc = subprocess.run(
        [CLI, "verify", "-i", str(inv), "--state", str(tmp_path / "s.db")],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 2
    assert "storage_reduction_pct" in proc.stderr and "all.yml" in proc.stderr
    assert "Traceback" not in proc.stderr
