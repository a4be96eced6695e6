"""Phase 2's build once, ship to the fleet, on real engines and a real registry (the sandbox's).

Each test builds two small multi-stage services (on the scenario's locally made Python bases) once on the
builder and checks what a user relies on: the same image ID on every host, tagged (never dangling), the
digest recorded, build records written, a re-run that changes nothing, and faults that name the service and
the host, leave nothing half-tagged and are finished by a re-run.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import docker
import pytest
import yaml
from conftest import shared_sandbox_dir

from acgs_remediate.builds import (
    SOURCE_HASH_LABEL,
    BuildSource,
    BuiltImage,
    ServiceOutcome,
    build_and_ship,
    dangling_ids,
)
from acgs_remediate.config import Policy, parse_policy
from acgs_remediate.inventory import Host, load_fleet
from acgs_remediate.models import GateVerdict
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parents[2]
SERVICES = ("hello", "greeter")


def _write_sources(root: Path, marker: str = "v1") -> None:
    """Two services: a builder stage (full Python base, has a shell) and a slim final stage."""
    for name in SERVICES:
        ctx = root / name
        (ctx / "app").mkdir(parents=True, exist_ok=True)
        (ctx / "tests").mkdir(exist_ok=True)
        (ctx / "app" / "main.py").write_text(f"print('{name} {marker}')\n")
        (ctx / "tests" / "test_main.py").write_text("def test_x():\n    assert True\n")
        (ctx / ".dockerignore").write_text("tests/\n")
        (ctx / "Dockerfile").write_text(
            "FROM acgs-base/python:3.11-full AS build\n"
            "RUN mkdir -p /out && echo built > /out/stamp\n"
            "FROM acgs-base/python:3.11-slim\n"
            "COPY --from=build /out /opt/stamp\n"
            "COPY app /app\n"
            'CMD ["python3", "/app/main.py"]\n'
        )


def _policy(sb: Sandbox, sources: Path, **extra: object) -> Policy:
    group = yaml.safe_load((sb.directory / "group_vars" / "all.yml").read_text())["acgs_policy"]
    raw = {
        "sources_root": str(sources),
        "registry": group.get("registry"),
        "services": [{"name": n, "image": f"acgs-test/{n}:latest", "context": n} for n in SERVICES],
        **extra,
    }
    return parse_policy(raw, "test policy")


@pytest.fixture
def fleet(fresh_sandbox: Sandbox) -> Iterator[tuple[Sandbox, list[Host]]]:
    yield fresh_sandbox, load_fleet(fresh_sandbox.inventory_path, "sandbox").hosts


def _ok(outcomes: list[ServiceOutcome]) -> None:
    problems = [o.error for o in outcomes if o.error] + [e for o in outcomes for e in o.host_errors.values()]
    assert not problems, problems


def _client(host: Host) -> docker.DockerClient:
    return docker.DockerClient(base_url=host.docker_host, timeout=60)


def _assert_same_image_everywhere(hosts: list[Host], outcomes: list[ServiceOutcome]) -> None:
    for o in outcomes:
        assert o.image is not None
        for h in hosts:
            img = _client(h).images.get(o.source.release_ref)
            assert img.id == o.image.image_id, (h.name, o.source.service)
            assert o.image.candidate in img.tags  # tagged: never listed as dangling
            assert img.labels[SOURCE_HASH_LABEL] == o.image.source_hash


@pytest.mark.parametrize("via", ["registry", "engine"])
def test_each_service_is_built_once_and_the_same_image_reaches_every_host(
    fleet: tuple[Sandbox, list[Host]], tmp_path: Path, via: str
) -> None:
    sb, hosts = fleet
    _write_sources(tmp_path / "src")
    policy = _policy(sb, tmp_path / "src")
    assert policy.registry, "the sandbox runs a registry and names it in acgs_policy.registry"
    dangling_before = {h.name: dangling_ids(h) for h in hosts}
    store = StateStore(tmp_path / "state.db")

    outcomes = build_and_ship(hosts, policy, store=store, use_registry=via == "registry")

    _ok(outcomes)
    _assert_same_image_everywhere(hosts, outcomes)
    for o in outcomes:
        assert o.image is not None and o.image.built and o.image.builder == hosts[0].name
        assert o.image.seconds is not None and o.image.seconds > 0
        assert o.shipped[hosts[0].name].method == "present"
        assert {o.shipped[h.name].method for h in hosts[1:]} == {via}
        if via == "registry":
            assert o.image.digest and o.image.digest.startswith("sha256:")
            assert any(
                d.endswith(o.image.digest) for d in _client(hosts[2]).images.get(o.image.image_id).attrs["RepoDigests"]
            )
        else:
            assert o.image.digest is None
    # BuildKit leaves no stage images and nothing arrives untagged: no host has a new dangling image.
    assert {h.name: dangling_ids(h) for h in hosts} == dangling_before
    # One record per service and host: the image ID, the digest, sizes and the one build's seconds.
    for h in hosts:
        records = {r.service: r for r in store.build_records(h.name)}
        assert set(records) == set(SERVICES)
        for o in outcomes:
            r = records[o.source.service]
            assert o.image is not None
            assert r.ok and r.released and r.image_id == o.image.image_id and r.digest == o.image.digest
            assert r.size == o.image.size and r.seconds == o.image.seconds and r.source_hash == o.image.source_hash
    count = sum(len(store.build_records(h.name)) for h in hosts)

    # A re-run with unchanged sources builds, pushes, ships and tags nothing, and records nothing new.
    again = build_and_ship(hosts, policy, store=store, use_registry=via == "registry")
    _ok(again)
    assert not any(o.changed for o in again)
    assert [o.image.image_id for o in again if o.image] == [o.image.image_id for o in outcomes if o.image]
    assert all(o.image is not None and not o.image.built for o in again)
    assert sum(len(store.build_records(h.name)) for h in hosts) == count

    # A changed source is a new build (once), and the old release image keeps a tag when it loses its last.
    (tmp_path / "src" / "hello" / "app" / "main.py").write_text("print('hello v2')\n")
    third = build_and_ship(hosts, policy, store=store, use_registry=via == "registry")
    _ok(third)
    hello = next(o for o in third if o.source.service == "hello")
    assert hello.image is not None and hello.image.built and hello.image.image_id != outcomes[0].image.image_id
    assert not next(o for o in third if o.source.service == "greeter").changed
    _assert_same_image_everywhere(hosts, third)
    assert {h.name: dangling_ids(h) for h in hosts} == dangling_before
    store.close()


def test_registry_down_names_service_and_host_and_a_rerun_finishes(
    fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = fleet
    _write_sources(tmp_path / "src")
    policy = _policy(sb, tmp_path / "src")
    dangling_before = {h.name: dangling_ids(h) for h in hosts}
    sb.stop_registry()
    try:
        failed = build_and_ship(hosts, policy)
    finally:
        sb.start_registry()
    for o in failed:
        assert o.error is not None
        assert f"service {o.source.service} on {hosts[0].name}" in o.error and "registry" in o.error
        assert not o.shipped and not o.released
    for h in hosts:
        tags = [t for img in _client(h).images.list() for t in img.tags]
        # Not half-tagged: no release tag anywhere, no registry tag left on the builder.
        assert not [t for t in tags if t.startswith("acgs-test/") and t.endswith(":latest")]
        assert not [t for t in tags if policy.registry and t.startswith(policy.registry)]
    assert {h.name: dangling_ids(h) for h in hosts} == dangling_before

    again = build_and_ship(hosts, policy)
    _ok(again)
    assert all(o.image is not None and not o.image.built and o.image.pushed for o in again)  # no rebuild
    _assert_same_image_everywhere(hosts, again)
    assert {h.name: dangling_ids(h) for h in hosts} == dangling_before


def test_an_engine_down_mid_ship_fails_that_host_only_and_a_rerun_finishes(
    fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = fleet
    _write_sources(tmp_path / "src")
    policy = _policy(sb, tmp_path / "src")
    sb.stop_engine(hosts[2].name)
    try:
        outcomes = build_and_ship(hosts, policy, use_registry=False)
    finally:
        sb.start_engine(hosts[2].name)
    for o in outcomes:
        assert o.error is None
        assert set(o.host_errors) == {hosts[2].name}
        assert f"service {o.source.service} on {hosts[2].name}" in o.host_errors[hosts[2].name]
    again = build_and_ship(hosts, policy, use_registry=False)
    _ok(again)
    assert all(o.image is not None and not o.image.built for o in again)
    assert {o.shipped[hosts[2].name].method for o in again} == {"engine"}
    assert {o.shipped[hosts[1].name].method for o in again} == {"present"}
    _assert_same_image_everywhere(hosts, again)


def test_a_missing_base_image_or_a_failed_gate_ships_nothing_of_that_service(
    fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = fleet
    _write_sources(tmp_path / "src")
    (tmp_path / "src" / "hello" / "Dockerfile").write_text("FROM acgs-base/nothing:1\nCOPY app /app\n")
    seen: list[str] = []

    def gate(builder: Host, source: BuildSource, image: BuiltImage) -> list[GateVerdict]:
        seen.append(source.service)
        return [GateVerdict(name="size cap", passed=False, detail=f"{image.size} bytes is over the cap")]

    store = StateStore(tmp_path / "state.db")
    outcomes = build_and_ship(hosts, _policy(sb, tmp_path / "src"), gate=gate, store=store)
    hello = next(o for o in outcomes if o.source.service == "hello")
    assert hello.error is not None and "acgs-base/nothing:1" in hello.error
    assert f"service hello on {hosts[0].name}" in hello.error
    greeter = next(o for o in outcomes if o.source.service == "greeter")
    assert seen == ["greeter"] and greeter.error is None and not greeter.gates_passed
    assert greeter.image is not None and not greeter.shipped and not greeter.released
    # The gated-out image stays a candidate on the builder only; no release tag moved anywhere.
    assert greeter.image.candidate in _client(hosts[0]).images.get(greeter.image.image_id).tags
    for h in hosts:
        tags = [t for img in _client(h).images.list() for t in img.tags]
        assert "acgs-test/greeter:latest" not in tags and "acgs-test/hello:latest" not in tags
        if h is not hosts[0]:
            assert greeter.image.candidate not in tags
    # The failed build is recorded on every host (criterion 2 reads it).
    for h in hosts:
        records = {r.service: r for r in store.build_records(h.name)}
        assert not records["hello"].ok and "acgs-base/nothing:1" in (records["hello"].error or "")
        assert records["greeter"].ok and not records["greeter"].released
        assert [(g.name, g.passed) for g in records["greeter"].gates] == [("size cap", False)]
    store.close()


def _playbook(sb: Sandbox, extra: dict, *flags: str) -> dict:
    env = {
        **os.environ,
        "ANSIBLE_STDOUT_CALLBACK": "ansible.posix.json",
        "ANSIBLE_CONFIG": str(ROOT / "ansible.cfg"),
        "PATH": f"{Path(sys.executable).parent}:{os.environ['PATH']}",
    }
    extra_file = Path(extra["service_build_policy"]["sources_root"]).parent / "extra.json"
    extra_file.write_text(json.dumps(extra))
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            str(sb.inventory_path),
            str(ROOT / "playbooks" / "phase2_service_optimization.yml"),
            "-e",
            f"@{extra_file}",
            *flags,
        ],
        capture_output=True,
        text=True,
        env=env,
        cwd=ROOT,
        timeout=600,
    )
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-2000:]
    return json.loads(proc.stdout)


def test_the_playbook_builds_once_ships_everywhere_and_a_rerun_changes_nothing(
    fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = fleet
    _write_sources(tmp_path / "src")
    policy = _policy(sb, tmp_path / "src")
    extra = {
        "service_build_policy": policy.model_dump(mode="json"),
        "service_build_state_db": str(tmp_path / "state.db"),
        "service_build_gate": "",  # these test images have no HEALTHCHECK for the smoke test
        "service_build_optimize": False,  # build these services' own Dockerfiles (the generator skips them)
    }
    dangling_before = {h.name: dangling_ids(h) for h in hosts}

    check = _playbook(sb, extra, "--check", "--diff")
    assert all(s["changed"] > 0 for s in check["stats"].values())
    assert not [i for h in hosts for i in _client(h).images.list() if any(t.startswith("acgs-test/") for t in i.tags)]

    first = _playbook(sb, extra)
    assert all(s["changed"] > 0 and s["failures"] == 0 for s in first["stats"].values())
    store = StateStore(tmp_path / "state.db")
    ids = set()
    for h in hosts:
        records = store.build_records(h.name)
        assert {r.service for r in records} == set(SERVICES)
        ids |= {r.image_id for r in records}
        assert all(r.digest and r.shipped_via for r in records)
    assert len(ids) == len(SERVICES)  # one image per service, the same on every host
    assert {h.name: dangling_ids(h) for h in hosts} == dangling_before

    again = _playbook(sb, extra)
    assert all(s["changed"] == 0 and s["failures"] == 0 for s in again["stats"].values())
    assert sum(len(store.build_records(h.name)) for h in hosts) == 2 * len(hosts)
    store.close()


# --------------------------------------------------------------------------------------------- engines killed
# On a 2-engine empty sandbox of their own (up in ~2 s, no reseed afterwards): killing an engine stops the
# scenario's containers, which would cost the shared fleet a reseed. The services are FROM scratch + busybox.


@pytest.fixture
def empty_fleet(engines_available: None) -> Iterator[tuple[Sandbox, list[Host]]]:
    sb = Sandbox(f"{shared_sandbox_dir()}k")
    sb.up(2, scenario=None)
    try:
        yield sb, load_fleet(sb.inventory_path, "sandbox").hosts
    finally:
        sb.down()


def _busybox_sources(root: Path, marker: str = "v1") -> Policy:
    """hello (2 MB) and greeter (~120 MB, built in a RUN step marked for the test), FROM scratch + busybox."""
    for name in SERVICES:
        ctx = root / name
        (ctx / "app").mkdir(parents=True, exist_ok=True)
        (ctx / "app" / "greeting.txt").write_text(f"{name} {marker}\n")
        shutil.copy(os.path.realpath(shutil.which("busybox") or "/bin/busybox"), ctx / "busybox")
    (root / "hello" / "Dockerfile").write_text(
        'FROM scratch\nCOPY busybox /bin/busybox\nCOPY app /app\nCMD ["/bin/busybox", "sleep", "3600"]\n'
    )
    (root / "greeter" / "Dockerfile").write_text(
        "FROM scratch AS build\n"
        "COPY busybox /bin/busybox\n"
        # The marker in the RUN step: a new marker is a new step, never answered from BuildKit's cache, so
        # the step (and its kill point) really runs.
        f'RUN ["/bin/busybox", "sh", "-c", "echo acgs-test-kill-point {marker}; /bin/busybox sleep 3; '
        '/bin/busybox head -c 120000000 /dev/zero > /big"]\n'
        "FROM scratch\n"
        "COPY busybox /bin/busybox\n"
        "COPY --from=build /big /opt/big\n"
        "COPY app /app\n"
        'CMD ["/bin/busybox", "sleep", "3600"]\n'
    )
    return _policy_of(root)


def _policy_of(root: Path) -> Policy:
    sb_dir = Path(f"{shared_sandbox_dir()}k")
    group = yaml.safe_load((sb_dir / "group_vars" / "all.yml").read_text())["acgs_policy"]
    raw = {
        "sources_root": str(root),
        "registry": group.get("registry"),
        "services": [{"name": n, "image": f"acgs-test/{n}:latest", "context": n} for n in SERVICES],
    }
    return parse_policy(raw, "test policy")


def _wait_for(what: str, found: Callable[[], bool], worker: threading.Thread) -> None:
    """Poll until ``found()`` (the moment to kill) while the run is still going; fail if it ended first."""
    while not found():
        assert worker.is_alive(), f"the run ended before {what}"
        time.sleep(0.02)


def _kill_engine(sb: Sandbox, host: str) -> None:
    """SIGKILL the host's dockerd by its PID (a crash, not a stop), and wait until it is gone."""
    pid = next(h.pid for h in sb.status().hosts if h.name == host)
    assert pid
    os.kill(pid, signal.SIGKILL)
    while Path(f"/proc/{pid}").exists() and Path(f"/proc/{pid}/stat").read_text().split()[2] != "Z":
        time.sleep(0.02)


def _in_background(fn: Callable[[], list[ServiceOutcome]]) -> tuple[threading.Thread, list[list[ServiceOutcome]]]:
    box: list[list[ServiceOutcome]] = []
    worker = threading.Thread(target=lambda: box.append(fn()), daemon=True)
    worker.start()
    return worker, box


def _process_running(marker: str) -> bool:
    for proc in Path("/proc").iterdir():
        try:
            if proc.name.isdigit() and marker.encode() in (proc / "cmdline").read_bytes():
                return True
        except OSError:
            continue
    return False


def _images(hosts: list[Host]) -> dict[str, list[tuple[str, list[str]]]]:
    return {h.name: sorted((i.id, sorted(i.tags)) for i in _client(h).images.list(all=True)) for h in hosts}


def test_the_builder_killed_mid_build_names_service_and_host_and_a_rerun_finishes(
    empty_fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = empty_fleet
    policy = _busybox_sources(tmp_path / "src", f"kill-{uuid.uuid4().hex[:12]}")
    worker, box = _in_background(lambda: build_and_ship(hosts, policy))
    try:
        _wait_for("greeter's build step ran", lambda: _process_running("acgs-test-kill-point"), worker)
        _kill_engine(sb, hosts[0].name)
        worker.join(600)
    finally:
        sb.start_engine(hosts[0].name)
    greeter = next(o for o in box[0] if o.source.service == "greeter")
    assert greeter.error and greeter.error.startswith(f"service greeter on {hosts[0].name}: "), greeter.error
    assert "\n" not in greeter.error and not greeter.shipped and not greeter.released
    # Nothing half-made: no release tag on any engine. An image without a name may remain only when the engine
    # died between committing a build and naming it: then it carries the build's source-hash label, and the
    # re-run adopts it (asserted below: nothing dangling anywhere after it).
    for host, images in _images(hosts).items():
        assert not [t for _, tags in images for t in tags if t.endswith(":latest")], (host, images)
        unnamed = [i for i, tags in images if not tags]
        h = next(x for x in hosts if x.name == host)
        assert all(SOURCE_HASH_LABEL in (_client(h).images.get(i).labels or {}) for i in unnamed), (host, images)

    again = build_and_ship(hosts, policy)
    _ok(again)
    _assert_same_image_everywhere(hosts, again)
    assert all(dangling_ids(h) == set() for h in hosts)


def test_an_engine_killed_mid_push_or_mid_stream_names_service_and_host_and_a_rerun_finishes(
    empty_fleet: tuple[Sandbox, list[Host]], tmp_path: Path
) -> None:
    sb, hosts = empty_fleet
    policy = _busybox_sources(tmp_path / "src")
    uploads = sb.directory / "registry" / "data"

    # The builder dies while it pushes to the registry (an upload is open there).
    def uploading() -> bool:
        return any(any(p.iterdir()) for p in uploads.rglob("_uploads") if p.is_dir())

    worker, box = _in_background(lambda: build_and_ship(hosts, policy))
    try:
        _wait_for("a push started", uploading, worker)
        _kill_engine(sb, hosts[0].name)
        worker.join(600)
    finally:
        sb.start_engine(hosts[0].name)
    failed = [o for o in box[0] if o.error]
    assert failed and all(o.error.startswith(f"service {o.source.service} on {hosts[0].name}: ") for o in failed)
    assert all("\n" not in o.error for o in failed)
    for host, images in _images(hosts).items():
        assert not [t for _, tags in images for t in tags if t.endswith(":latest")], (host, images)
        assert all(tags for _, tags in images), (host, images)
    again = build_and_ship(hosts, policy)
    _ok(again)
    _assert_same_image_everywhere(hosts, again)

    # A new version streamed engine to engine (export -> load): the receiving engine dies while it loads.
    policy = _busybox_sources(tmp_path / "src", "v2")
    target = hosts[1]
    tmp_dir = Path(_client(target).info()["DockerRootDir"]) / "tmp"

    def loading() -> bool:
        return tmp_dir.is_dir() and any(p.name.startswith("docker-import-") for p in tmp_dir.iterdir())

    worker, box = _in_background(lambda: build_and_ship(hosts, policy, use_registry=False))
    try:
        _wait_for("a load started", loading, worker)
        _kill_engine(sb, target.name)
        worker.join(600)
    finally:
        sb.start_engine(target.name)
    outcomes = box[0]
    assert all(o.error is None for o in outcomes)
    errors = [o.host_errors[target.name] for o in outcomes if target.name in o.host_errors]
    assert errors and all(e.startswith("service ") and f" on {target.name}: " in e and "\n" not in e for e in errors)
    assert all(set(o.host_errors) <= {target.name} for o in outcomes)
    assert dangling_ids(target) == set()  # nothing half-loaded
    again = build_and_ship(hosts, policy, use_registry=False)
    _ok(again)
    assert all(o.image is not None and not o.image.built for o in again)
    _assert_same_image_everywhere(hosts, again)
    assert all(dangling_ids(h) == set() for h in hosts)
