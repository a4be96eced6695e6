"""Phase 3 against real engines: pinned compose stack rolled out through the real Compose v2 binary.

Each test builds the "phase 2" images itself on every host of the sandbox fleet (BuildKit, network none:
the scenario's service image plus a HEALTHCHECK), records BuildRecords the way phase 2 does, and deploys
them with ``phases.phase3.run_phase3``. Then it asserts what an operator cares about: every service healthy
on its new image, the database container and its data untouched, a re-run changing nothing, and a bad
image or a failed migration undoing itself per policy with every host back healthy on its old images.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
import tempfile
import time
import urllib.request
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate import monitor
from acgs_remediate.facts import engine_api
from acgs_remediate.inventory import Fleet, load_fleet
from acgs_remediate.models import BuildRecord
from acgs_remediate.phases.phase3 import PHASE3, run_phase3
from acgs_remediate.plan import rollback_images
from acgs_remediate.rollout import observe
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

# The slim image's Python has no urllib.request (its stdlib is trimmed): a check must make do with socket.
HEALTH_PY = """\
import os, re, socket, sys
b = os.environ.get("ACGS_BIND", "127.0.0.1")
if b == "auto":
    m = re.search(r"(?:^|-)h(\\d+)$", socket.gethostname())
    n = int(m.group(1)) - 1 if m and int(m.group(1)) >= 1 else None
    b = "127.0.99.1" if n is None else f"127.0.{100 + n // 250}.{1 + n % 250}"
s = socket.create_connection((b, int(os.environ.get("ACGS_PORT", "8000"))), timeout=2)
s.sendall(b"GET /health HTTP/1.0\\r\\n\\r\\n")
sys.exit(0 if s.recv(64).split()[1:2] == [b"200"] else 1)
"""
HEALTHCHECK = 'HEALTHCHECK --interval=1s --timeout=10s --start-period=15s --retries=3 CMD ["python3", "/app/health.py"]'
SERVICES = {"auth": "acgs-1-auth_service", "ac": "acgs-1-ac_service"}
PROJECT = "acgs-1"


def _build(host_sock: str, tag: str, dockerfile: str) -> str:
    """Build ``dockerfile`` on the engine at ``host_sock`` with BuildKit (network none); return the image ID."""
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(dockerfile)
        Path(ctx, "health.py").write_text(HEALTH_PY)
        env = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_HOST": host_sock}
        out = subprocess.run(
            ["/usr/bin/docker", "build", "-q", "--network", "none", "-t", tag, ctx],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=300,
        )
        return out.stdout.strip().splitlines()[-1]


def _release(store: StateStore, fleet: Fleet, images: dict[str, dict[str, str]]) -> None:
    """Record one released build per host and service, as phase 2 does (``images``: host -> service -> ID)."""
    now = datetime.now(UTC)
    for host in fleet.hosts:
        for service, image_id in images[host.name].items():
            repo = SERVICES.get(service, f"acgs-1-{service}")
            store.add_build_record(
                BuildRecord(
                    host=host.name,
                    service=service,
                    image=f"{repo}:latest",
                    ok=True,
                    seconds=1.0,
                    finished_at=now,
                    image_id=image_id,
                    released=True,
                )
            )


def _build_all(
    fleet: Fleet,
    version: str,
    crash: set[str] = frozenset(),
    bad_migration: bool = False,
    hosts_crash: set[str] = frozenset(),
) -> dict[str, dict[str, str]]:
    """Build version ``version`` of auth, ac and the alembic runner on every host; return host -> service -> ID."""
    out: dict[str, dict[str, str]] = {}
    for host in fleet.hosts:
        ids: dict[str, str] = {}
        for service, repo in SERVICES.items():
            cmd = ""
            if service in crash and (not hosts_crash or host.name in hosts_crash):
                cmd = '\nCMD ["python3", "-c", "import sys; print(\'boom\'); sys.exit(1)"]'
            ids[service] = _build(
                host.docker_host,
                f"{repo}:build-{version}",
                f"FROM {repo}:latest\nCOPY health.py /app/health.py\n"
                f"LABEL org.acgs.test-version={version}\n{HEALTHCHECK}{cmd}\n",
            )
        migrate = '\nCMD ["sh", "-c", "echo migration failed; exit 3"]' if bad_migration else ""
        ids["alembic-runner"] = _build(
            host.docker_host,
            f"acgs-1-alembic-runner:build-{version}",
            f"FROM acgs-1-alembic-runner:latest\nLABEL org.acgs.test-version={version}{migrate}\n",
        )
        out[host.name] = ids
    return out


def _fleet(sandbox: Sandbox, **deploy: Any) -> Fleet:
    fleet = load_fleet(sandbox.inventory_path, "all")
    for host in fleet.hosts:
        host.vars["acgs_policy"]["deploy"] = {"canary": 1, "batch_size": 1, "timeout": 60, **deploy}
    return fleet


def _volume_checksum(sandbox: Sandbox, index: int) -> str:
    root = Path(sandbox.directory) / f"h{index + 1:02d}" / "root" / "volumes" / "postgres_data" / "_data"
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        if path.is_file():
            digest.update(str(path.relative_to(root)).encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()


def _containers(fleet: Fleet) -> dict[str, dict[str, tuple[str, str | None, str]]]:
    """Return host -> service -> (container ID, StartedAt, image ID)."""
    return {
        h.name: {s: (c.container_id, c.started_at, c.image_id) for s, c in observe(h, PROJECT).items()}
        for h in fleet.hosts
    }


def _answers(sandbox: Sandbox, index: int, port: int, wait: float = 60.0) -> bool:
    """Return whether the service on ``port`` of host ``index`` answers GET /health (polling up to ``wait`` s)."""
    url = f"http://{sandbox_bind(sandbox, index)}:{port}/health"
    deadline = time.monotonic() + wait
    while True:
        try:
            with urllib.request.urlopen(url, timeout=3) as resp:  # noqa: S310 (loopback only)
                if resp.status == 200:
                    return True
        except OSError:
            pass
        if time.monotonic() > deadline:
            return False
        time.sleep(0.5)


def sandbox_bind(sandbox: Sandbox, index: int) -> str:
    fleet = load_fleet(sandbox.inventory_path, "all")
    return str(fleet.hosts[index].vars["acgs_sandbox_bind_address"])


@pytest.fixture
def store(tmp_path: Path) -> StateStore:
    return StateStore(tmp_path / "state.db")


def test_happy_path_then_a_rerun_changes_nothing(fresh_sandbox: Sandbox, store: StateStore) -> None:
    fleet = _fleet(fresh_sandbox)
    images = _build_all(fleet, "v2")
    _release(store, fleet, images)
    before = _containers(fleet)
    volumes = [_volume_checksum(fresh_sandbox, i) for i in range(len(fleet.hosts))]

    result = run_phase3(fleet, store)

    assert result.exit_code == 0, {h: (r.status, r.reason) for h, r in result.rollout.hosts.items()}
    after = _containers(fleet)
    for i, host in enumerate(fleet.hosts):
        hr = result.rollout.hosts[host.name]
        assert hr.status == "deployed", hr.reason
        assert sorted(hr.switched) == ["ac_service", "alembic-runner", "auth_service"]
        running = observe(host, PROJECT)
        for svc, key in (("auth_service", "auth"), ("ac_service", "ac")):
            assert running[svc].image_id == images[host.name][key]
            assert running[svc].state == "running" and running[svc].health == "healthy"
        assert running["alembic-runner"].exit_code == 0
        assert _answers(fresh_sandbox, i, 8000) and _answers(fresh_sandbox, i, 8001)
        # The database: same container, same start, same data.
        assert after[host.name]["postgres"] == before[host.name]["postgres"]
        assert _volume_checksum(fresh_sandbox, i) == volumes[i]
        assert store.phase_status(host.name, PHASE3).status == "succeeded"
        # The images replaced carry a human tag and stay protected as rollback images.
        with engine_api(host) as api:
            old_auth = api.inspect_image(before[host.name]["auth_service"][2])
        assert any(t.startswith("acgs-1-auth_service:rollback-") for t in old_auth["RepoTags"])
    # The monitor's sample after the rollout: what each service runs, its health and usage, sizes before/after.
    for host in fleet.hosts:
        sample = {s.service: s for s in result.monitor[host.name].services}
        for svc, key in (("auth_service", "auth"), ("ac_service", "ac")):
            s = sample[svc]
            assert s.image_id == s.image_ref == images[host.name][key]  # pinned by ID (no registry digest)
            assert (s.health, s.restart_count) == ("healthy", 0)
            assert s.memory_bytes and s.memory_bytes > 0 and s.cpu_percent is not None
            assert s.image_before == before[host.name][svc][2] and s.size_before and s.size_after
        assert not sample["postgres"].switched and sample["alembic-runner"].exit_code == 0
    assert monitor.latest(store, [h.name for h in fleet.hosts]) == result.monitor
    # The compose file on disk is pinned, the previous one kept.
    path = result.plan.compose_path
    assert f"image: {images[fleet.hosts[0].name]['auth']}" in path.read_text()
    assert path.with_name(path.name + ".previous").read_text() == result.plan.current_text

    # Re-deploying the unchanged, healthy stack changes nothing and recreates nothing.
    again = run_phase3(fleet, store)
    assert again.exit_code == 0
    assert all(hr.status == "unchanged" for hr in again.rollout.hosts.values())
    assert all(not p.actions for p in again.plan.plans.values())
    assert _containers(fleet) == after
    assert again.monitor == {}  # nothing switched: no new sample; status keeps the rollout's
    assert monitor.latest(store, [h.name for h in fleet.hosts]) == result.monitor


def test_a_crashing_image_rolls_the_whole_fleet_back(fresh_sandbox: Sandbox, store: StateStore) -> None:
    fleet = _fleet(fresh_sandbox)  # canary h01, then h02, then h03: h03 gets the crashing build
    last = fleet.hosts[-1].name
    images = _build_all(fleet, "v3", crash={"auth"}, hosts_crash={last})
    _release(store, fleet, images)
    before = _containers(fleet)

    result = run_phase3(fleet, store)

    assert result.exit_code == 1
    out = result.rollout
    assert out.hosts[last].status == "rolled_back" and "auth_service" in out.hosts[last].reason
    for i, host in enumerate(fleet.hosts):
        hr = out.hosts[host.name]
        assert hr.status == "rolled_back", {h: (r.status, r.reason) for h, r in out.hosts.items()}
        assert hr.rollback_seconds is not None and hr.rollback_seconds < 60
        running = observe(host, PROJECT)
        for svc in ("auth_service", "ac_service"):
            assert running[svc].image_id == before[host.name][svc][2]
            assert running[svc].state == "running"
        assert _answers(fresh_sandbox, i, 8000) and _answers(fresh_sandbox, i, 8001)
        assert running["postgres"].container_id == before[host.name]["postgres"][0]
        assert store.phase_status(host.name, PHASE3).status == "rolled_back"
    # The fleet is back on the old file too.
    assert result.plan.compose_path.read_text() == result.plan.current_text
    print({h: round(hr.rollback_seconds or 0, 1) for h, hr in out.hosts.items()})  # rollback seconds per host


def test_a_failed_migration_rolls_the_canary_back_and_stops(fresh_sandbox: Sandbox, store: StateStore) -> None:
    fleet = _fleet(fresh_sandbox)
    images = _build_all(fleet, "v4", bad_migration=True)
    _release(store, fleet, images)
    before = _containers(fleet)

    result = run_phase3(fleet, store)

    assert result.exit_code == 1
    canary, *rest = fleet.hosts
    hr = result.rollout.hosts[canary.name]
    assert hr.status == "rolled_back" and "exited with code 3" in hr.reason
    running = observe(canary, PROJECT)
    assert running["auth_service"].image_id == before[canary.name]["auth_service"][2]
    assert store.phase_status(canary.name, PHASE3).status == "rolled_back"
    for host in rest:  # never reached
        assert result.rollout.hosts[host.name].status == "pending"
        assert _containers(fleet)[host.name] == before[host.name]


def test_rollback_images_are_kept_by_phase1_planning(fresh_sandbox: Sandbox, store: StateStore) -> None:
    from acgs_remediate.facts import collect

    fleet = _fleet(fresh_sandbox)
    images = _build_all(fleet, "v5")
    _release(store, fleet, images)
    host = fleet.hosts[0]
    old = observe(host, PROJECT)["auth_service"].image_id
    assert run_phase3(fleet, store).exit_code == 0
    kept = rollback_images(collect(host), fleet.policy(host))
    assert old in kept and "rollback" in kept[old]


def test_a_run_killed_mid_switch_is_rolled_back_then_finished(fresh_sandbox: Sandbox, store: StateStore) -> None:
    """The orchestrator dies after recording the unit and starting the switch: the next run converges."""
    from acgs_remediate.phases.phase3 import plan_phase3
    from acgs_remediate.rollout import adopt, compose_up, record_unit

    fleet = _fleet(fresh_sandbox)
    images = _build_all(fleet, "v6")
    _release(store, fleet, images)
    host = fleet.hosts[0]
    before = observe(host, PROJECT)
    # What a killed run leaves: the unit recorded ("switching"), auth switched, nothing watched or finished.
    plan = plan_phase3(fleet, store)
    hp = plan.plans[host.name]
    _uid, unit = record_unit(
        store,
        host,
        hp,
        plan.previous_texts[host.name],
        plan.target_texts[host.name],
        {},
        "phase3-killed",
        plan.targets[host.name],
    )
    adopt(host, unit, ["auth_service"])
    compose_up(host, plan.target_texts[host.name], plan.compose_path.parent, PROJECT, ["auth_service"], {})
    assert [s for _i, s, _u in store.rollback_units(host.name)] == ["switching"]

    result = run_phase3(fleet, store)

    assert result.plan.resumed[host.name].status == "rolled_back"
    assert result.exit_code == 0, {h: (r.status, r.reason) for h, r in result.rollout.hosts.items()}
    running = observe(host, PROJECT)
    assert running["auth_service"].image_id == images[host.name]["auth"]
    assert running["auth_service"].health == "healthy"
    assert running["postgres"].container_id == before["postgres"].container_id
    assert [s for _i, s, _u in store.rollback_units(host.name)] == ["deployed", "rolled_back"]
