"""Phase 2 end to end on the sandbox fleet: real engines, real registry, real BuildKit builds, the real CLI.

After ``phase1 --yes`` and ``phase2 --yes`` the success criteria phase 2 is for (2: services build, 3: size
cap, 4: zero dangling, 5: build time) pass on the hosts where the scenario says they should
(``expectations.<variant>.criteria_after_phase2``); each optimized image is within its expected size
(scaled); the image the release tag named before keeps a rollback tag (nothing turns dangling). A re-run
changes nothing and builds nothing. A service whose own optimized Dockerfile never turns healthy fails its
smoke test: recorded with the reason, not release-tagged, exit 1 — the other services stay released.

Changes every host: runs on ``fresh_sandbox``, which reseeds the fleet afterwards.
"""

from __future__ import annotations

import shutil
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from test_phase1 import _env, as_json, run_cli

from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

DB_URL = "sqlite:////var/lib/acgs/acgs.db"  # what the scenario's services run with (alembic.ini from phase 1)
NEVER_HEALTHY = """\
# A hand-written "optimized" Dockerfile whose health check never passes: the smoke test must catch it.
FROM acgs-base/python:3.11-slim
COPY app /app/app
HEALTHCHECK --interval=1s --timeout=1s --start-period=1s --retries=2 CMD ["python3", "-c", "raise SystemExit(1)"]
CMD ["python3", "-c", "import time; time.sleep(3600)"]
"""


def _cli(sb: Sandbox, state: Path, *args: str, inventory: Path | None = None) -> Any:
    return run_cli(
        *args,
        "-i",
        str(inventory or sb.inventory_path),
        "--state",
        str(state),
        env=_env(ACGS_DATABASE_URL=DB_URL),
        timeout=1800,
    )


def _dangling(sb: Sandbox, host: str) -> set[str]:
    client = docker.DockerClient(base_url=sb.docker_host(host))
    try:
        return {img.id for img in client.images.list(filters={"dangling": True})}
    finally:
        client.close()


def _criteria(verify: dict[str, Any]) -> dict[str, dict[str, str]]:
    """Return host -> criterion id -> status from ``verify -f json``."""
    return {host: {r["id"]: r["status"] for r in results} for host, results in verify["hosts"].items()}


def test_phase2_builds_once_releases_gated_images_and_verify_passes_its_criteria(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, state = fresh_sandbox, tmp_path / "state.db"
    scen = load_scenario("acgs-1")
    assert _cli(sb, state, "phase1", "--yes").returncode == 0

    dangling_before = {h: _dangling(sb, h) for h in sb.hosts()}  # young seed leftovers phase 1 keeps
    run = _cli(sb, state, "phase2", "--yes", "-f", "json")
    assert run.returncode == 0, run.stderr[-3000:]
    result = as_json(run)
    assert {r["host"]: r["status"] for r in result["hosts"]} == dict.fromkeys(sb.hosts(), "succeeded")

    # Built once: every host holds the same image ID per service, and the release tag names it.
    ids: dict[str, set[str]] = {}
    for row in result["hosts"]:
        for svc in row["services"]:
            assert svc["released"], f"{row['host']}: {svc['service']} not released: {svc}"
            ids.setdefault(svc["service"], set()).add(svc["image_id"])
            assert svc["size_after"] <= svc["expected_size"], f"{svc['service']} over its expected size"
    assert all(len(v) == 1 for v in ids.values()), ids
    assert len(ids) == len(scen.services)

    # The image a release tag left behind keeps a rollback tag: no image turned dangling.
    for host in sb.hosts():
        client = docker.DockerClient(base_url=sb.docker_host(host))
        for svc in scen.services:
            assert client.images.get(svc.image).id in ids[svc.name]
        client.close()

    verify = as_json(_cli(sb, state, "verify", "-f", "json"))
    got = _criteria(verify)
    for host in sb.hosts():
        new = _dangling(sb, host) - dangling_before[host]
        assert not new, f"{host}: phase 2 left dangling images behind: {new}"
    for index, host in enumerate(sb.hosts()):
        expected = scen.expectation(index).criteria_after_phase2
        assert expected, f"the scenario states no criteria_after_phase2 for host {index}"
        for criterion, status in expected.items():
            assert got[host][criterion] == status, f"{host}: {criterion} is {got[host][criterion]}"

    # A re-run (forced past the ledger) rebuilds nothing and changes nothing.
    store = StateStore(state)
    records_before = sum(len(store.build_records(h)) for h in sb.hosts())
    store.close()
    again = _cli(sb, state, "phase2", "--yes", "--force", "-f", "json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert [r["changed"] for r in as_json(again)["hosts"]] == [0] * len(sb.hosts())
    store = StateStore(state)
    assert sum(len(store.build_records(h)) for h in sb.hosts()) == records_before
    store.close()

    # A service whose own optimized Dockerfile never turns healthy: gated out, not released, exit 1.
    auth = scen.service("auth")
    context = sb.sources_root / auth.context
    (context / "Dockerfile.never-healthy").write_text(NEVER_HEALTHY)
    try:
        inventory = tmp_path / "inventory"
        inventory.mkdir()
        shutil.copy(sb.inventory_path, inventory / "inventory.yml")
        shutil.copytree(sb.inventory_path.parent / "group_vars", inventory / "group_vars")
        gv = inventory / "group_vars" / "all.yml"
        data = yaml.safe_load(gv.read_text())
        for svc in data["acgs_policy"]["services"]:
            if svc["name"] == "auth":
                svc["optimized_dockerfile"] = "Dockerfile.never-healthy"
        gv.write_text(yaml.safe_dump(data))
        bad = _cli(sb, state, "phase2", "--yes", "--force", "-f", "json", inventory=inventory / "inventory.yml")
        assert bad.returncode == 1, bad.stderr[-3000:]
        rows = as_json(bad)["hosts"]
        for row in rows:
            assert row["status"] == "failed"
            by_name = {s["service"]: s for s in row["services"]}
            failed = by_name["auth"]["failed_gates"]
            assert any(g.startswith("smoke_test") for g in failed), by_name["auth"]
            assert not by_name["auth"]["released"]
            assert all(s["released"] for n, s in by_name.items() if n != "auth")
            assert any("auth" in m and "smoke_test" in m for m in row["messages"]), row["messages"]
        for host in sb.hosts():
            client = docker.DockerClient(base_url=sb.docker_host(host))
            assert client.images.get(auth.image).id in ids["auth"], "the gated-out image must not be released"
            client.close()
    finally:
        (context / "Dockerfile.never-healthy").unlink(missing_ok=True)
