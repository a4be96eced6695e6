"""Phase 3 through the one flow on real engines: saved plans refused when their facts changed, the images a
deployment replaced removed only after health and beyond rollback retention, and `rollback` on demand
through the same playbook (state=rolled_back).

The rollout itself (happy path, crash, failed migration, killed run) is tests/integration/test_phase3.py.
"""

from __future__ import annotations

import os
import subprocess
import sys
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from test_phase3 import HEALTH_PY, PROJECT, _build  # noqa: F401 (HEALTH_PY: the context's health.py)

from acgs_remediate.facts import engine_api
from acgs_remediate.inventory import Fleet, load_fleet
from acgs_remediate.models import BuildRecord
from acgs_remediate.phases.phase3 import PHASE3, rollback_hosts, run_phase3
from acgs_remediate.rollout import observe
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).with_name("acgs-remediate"))
# A short health check (soak 2 + 1 x 2 = 4 s), so three deployments stay cheap.
QUICK_HEALTHCHECK = (
    'HEALTHCHECK --interval=1s --timeout=5s --start-period=2s --retries=2 CMD ["python3", "/app/health.py"]'
)
AUTH = "acgs-1-auth_service"


def _cli(*args: str) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "NO_COLOR": "1", "COLUMNS": "200", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run(
        [CLI, *args], capture_output=True, text=True, timeout=600, env=env, stdin=subprocess.DEVNULL, check=False
    )


def _release(store: StateStore, host: str, image_id: str, when: datetime) -> None:
    store.add_build_record(
        BuildRecord(
            host=host,
            service="auth",
            image=f"{AUTH}:latest",
            ok=True,
            seconds=1.0,
            finished_at=when,
            image_id=image_id,
            released=True,
        )
    )


def test_a_saved_phase3_plan_is_refused_when_the_compose_file_changed(sandbox: Sandbox, tmp_path: Path) -> None:
    fleet = load_fleet(sandbox.inventory_path, "sb-h01")
    host = fleet.hosts[0]
    state = tmp_path / "state.db"
    store = StateStore(state)
    with engine_api(host) as api:  # any image the host holds will do: the plan is never applied
        other = api.inspect_image("acgs-1-ac_service:latest")["Id"]
    _release(store, host.name, other, datetime.now(UTC))
    store.close()
    compose = fleet.policy(host).compose_path(sandbox.inventory_path.parent)
    plan_file = tmp_path / "phase3.plan.json"
    original = compose.read_text()

    made = _cli(
        "plan",
        "phase3",
        "-i",
        str(sandbox.inventory_path),
        "--hosts",
        "sb-h01",
        "--state",
        str(state),
        "-o",
        str(plan_file),
    )
    assert made.returncode == 0, made.stderr
    assert "auth_service" in made.stderr and "switch" in made.stderr
    try:
        compose.write_text(original + "# edited after the plan was reviewed\n")
        applied = _cli(
            "phase3",
            "-i",
            str(sandbox.inventory_path),
            "--hosts",
            "sb-h01",
            "--state",
            str(state),
            "--plan",
            str(plan_file),
            "--yes",
        )
    finally:
        compose.write_text(original)
    assert applied.returncode == 2, applied.stderr
    assert "refusing the saved plan" in applied.stderr and f"the compose file {compose}" in applied.stderr
    reread = StateStore(state)
    assert reread.rollback_units(host.name) == []  # nothing was switched
    assert reread.phase_status(host.name, PHASE3) is None
    assert observe(host, PROJECT)["auth_service"].image_id != other


def _one_host(sandbox: Sandbox, **policy: Any) -> Fleet:
    fleet = load_fleet(sandbox.inventory_path, "sb-h01")
    fleet.hosts[0].vars["acgs_policy"].update(policy)
    fleet.hosts[0].vars["acgs_policy"]["deploy"] = {"canary": 1, "batch_size": 1, "timeout": 60}
    return fleet


def test_replaced_images_go_after_health_beyond_retention_and_rollback_on_demand_restores_the_unit(
    fresh_sandbox: Sandbox, store: StateStore
) -> None:
    fleet = _one_host(fresh_sandbox, rollback_keep=1)
    host = fleet.hosts[0]
    versions = {}
    for v in ("v7", "v8", "v9"):
        versions[v] = _build(
            host.docker_host,
            f"{AUTH}:build-{v}",
            f"FROM {AUTH}:latest\nCOPY health.py /app/health.py\n"
            f"LABEL org.acgs.test-version={v}\n{QUICK_HEALTHCHECK}\n",
        )
    start = datetime.now(UTC)
    for n, v in enumerate(("v7", "v8", "v9")):
        _release(store, host.name, versions[v], start + timedelta(seconds=n + 1))
        result = run_phase3(fleet, store)
        assert result.exit_code == 0, {h: (r.status, r.reason) for h, r in result.rollout.hosts.items()}
        assert observe(host, PROJECT)["auth_service"].image_id == versions[v]
        with engine_api(host) as api:
            present = {img["Id"] for img in api.images()}
        if v == "v8":
            # rollback_keep 1: v7 (this deployment's unit) stays; nothing was removed before health passed.
            assert versions["v7"] in present
    # After v9 passed its soak: v8 (its unit) stays, v7 went (rollback tag and phase 2's build tag dropped).
    assert versions["v8"] in present and versions["v7"] not in present
    cleanup = next(m["data"]["cleanup"] for m in store.measurements(host.name, "phase3") if "cleanup" in m["data"])
    assert [c["image"] for c in cleanup if c["removed"]] == [versions["v7"]]

    # `rollback` on demand, through the playbook: back to v9's unit (v8), healthy, the database untouched.
    db = observe(host, PROJECT)["postgres"].container_id
    back = rollback_hosts(fleet, store)
    assert back[host.name].status == "rolled_back", back[host.name].reason
    running = observe(host, PROJECT)
    assert running["auth_service"].image_id == versions["v8"] and running["auth_service"].state == "running"
    assert running["postgres"].container_id == db
    assert store.phase_status(host.name, PHASE3).status == "rolled_back"
    print({"rollback_seconds": back[host.name].rollback_seconds})


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")
