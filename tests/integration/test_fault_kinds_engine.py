"""Issue 9's safety faults, each as a kind, on a real engine: the tool must never delete an image that must stay.

1. An image named only by a registry digest (``docker pull repo@sha256:...``) is NAMED, not dangling.
2. "Fresh" is measured from when an image ARRIVED on the engine, not from its Created date.
4. The build-cache prune frees what the plan predicts and analyze reports (one accounting).
5. The base of an image that stays is protected whatever builder made the child (BuildKit records no parent).

Each test gets one empty engine of its own (a 1-host sandbox next to the shared fleet, emptied before the test)
and its own inventory and policy; the registry of case 1 is Debian's ``docker-registry`` on a 127.x address,
started and ended by PID here.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import shutil
import socket
import subprocess
import sys
import tarfile
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from acgs_remediate.sandbox import Sandbox

KEEP_ENV = "ACGS_TEST_KEEP_SANDBOX"  # as conftest.py: keep the engine up between sessions

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "acgs-remediate")
HOST = "sb-h01"
DOCKER_CLI = "/usr/bin/docker"  # the 20.10 CLI: its built-in BuildKit works against our engines
REGISTRY_ADDR = "127.0.0.57"
REGISTRY_PORT = 5000


# -- fixtures ------------------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def engine_sandbox(engines_available: None) -> Iterator[Sandbox]:
    """Return a 1-host sandbox with an empty engine (no scenario), next to the shared fleet's directory."""
    sb = Sandbox(Path(f"{os.environ.get('ACGS_TEST_SANDBOX_DIR') or '/var/lib/acgs-t'}e"))
    sb.up(1, None)
    yield sb
    if not os.environ.get(KEEP_ENV):
        sb.down()


@pytest.fixture
def engine(engine_sandbox: Sandbox) -> Iterator[docker.DockerClient]:
    """Return a client of the test's engine, emptied first (containers, images, build cache)."""
    client = docker.DockerClient(base_url=engine_sandbox.docker_host(HOST), timeout=120)
    for c in client.containers.list(all=True):
        c.remove(force=True)
    for _ in range(10):  # children before parents: a classic parent refuses to go while a child exists
        left = client.images.list(all=True)
        if not left:
            break
        for img in left:
            try:
                client.images.remove(img.id, force=True)  # test set-up only: the tool never forces
            except docker.errors.APIError:
                pass  # gone already, or a parent whose child goes in this pass
    client.api.prune_builds(all=True)
    yield client
    client.close()


def _inventory(sb: Sandbox, tmp_path: Path, policy: dict[str, Any]) -> Path:
    """Write an inventory with the test engine as its only host and ``policy`` as acgs_policy; return it."""
    inv = tmp_path / "inventory"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text(yaml.safe_dump({"all": {"hosts": {HOST: {
        "docker_host": sb.docker_host(HOST), "ansible_connection": "local",
        "ansible_python_interpreter": "{{ ansible_playbook_python }}",
    }}}}))
    (inv / "group_vars" / "all.yml").write_text(yaml.safe_dump({"acgs_policy": policy}))
    return inv


def _cli(*args: str, timeout: float = 600) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ.get('PATH', '')}",
           "NO_COLOR": "1", "COLUMNS": "200", "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([CLI, *args], capture_output=True, text=True, timeout=timeout, env=env,
                          stdin=subprocess.DEVNULL, check=False)


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), f"exit {proc.returncode}: {proc.stderr[-3000:]}"
    return json.loads(proc.stdout)


def _plan(inv: Path, state: Path) -> dict[str, Any]:
    proc = _cli("plan", "phase1", "-i", str(inv), "--state", str(state), "--format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _json(proc)["plans"][0]


def _analyze(inv: Path, state: Path) -> dict[str, Any]:
    proc = _cli("analyze", "-i", str(inv), "--state", str(state), "--format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _json(proc)["hosts"][0]["analysis"]


def _phase1(inv: Path, state: Path) -> dict[str, Any]:
    proc = _cli("phase1", "-i", str(inv), "--state", str(state), "--yes", "--format", "json")
    assert proc.returncode == 0, proc.stderr[-3000:]
    return _json(proc)["hosts"][0]


def _docker(sb: Sandbox, *args: str, buildkit: bool = False, cwd: Path | None = None) -> str:
    # The CLI's config under the sandbox's own work dir: a file elsewhere in it makes the next `up` refuse the dir.
    config = str(sb.directory / "work" / "docker-config")
    env = {**os.environ, "DOCKER_BUILDKIT": "1" if buildkit else "0", "DOCKER_CONFIG": config}
    proc = subprocess.run([DOCKER_CLI, "-H", sb.docker_host(HOST), *args], capture_output=True, text=True,
                          env=env, cwd=cwd, timeout=300, check=False)
    assert proc.returncode == 0, f"docker {' '.join(args)}: {proc.stderr[-2000:]}"
    return proc.stdout.strip()


def _busybox() -> Path:
    for candidate in ("/bin/busybox", "/usr/bin/busybox"):
        if Path(candidate).is_file():
            return Path(candidate)
    pytest.fail("busybox-static is needed (make system-deps installs it)", pytrace=False)


def _context(tmp_path: Path, name: str, dockerfile: str, files: dict[str, bytes] | None = None) -> Path:
    ctx = tmp_path / name
    ctx.mkdir()
    shutil.copy(_busybox(), ctx / "busybox")
    for fname, data in (files or {}).items():
        (ctx / fname).write_bytes(data)
    (ctx / "Dockerfile").write_text(dockerfile)
    return ctx


def _archive(tag: str | None, created: str, payload: bytes) -> bytes:
    """Return a `docker save` archive of a one-layer image whose config says it was created at ``created``."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tar:
        info = tarfile.TarInfo("payload.bin")
        info.size, info.mtime = len(payload), 1_577_836_800
        tar.addfile(info, io.BytesIO(payload))
    layer_bytes = layer.getvalue()
    config = json.dumps({
        "architecture": "amd64", "os": "linux", "created": created, "config": {"Cmd": ["/payload.bin"]},
        "rootfs": {"type": "layers", "diff_ids": ["sha256:" + hashlib.sha256(layer_bytes).hexdigest()]},
        "history": [{"created": created, "created_by": "acgs test payload"}],
    }).encode()
    config_name = hashlib.sha256(config).hexdigest() + ".json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag] if tag else None,
                            "Layers": ["layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tar:
        for name, body in ((config_name, config), ("layer.tar", layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(body)
            tar.addfile(info, io.BytesIO(body))
    return out.getvalue()


@pytest.fixture(scope="module")
def registry(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """Return ``host:port`` of a real registry (Debian's docker-registry) on a 127.x address, ended by PID."""
    exe = shutil.which("docker-registry") or "/usr/bin/docker-registry"
    if not Path(exe).is_file():
        pytest.fail("docker-registry is needed (make system-deps installs it)", pytrace=False)
    root = tmp_path_factory.mktemp("registry")
    config = root / "config.yml"
    config.write_text(yaml.safe_dump({
        "version": 0.1, "log": {"level": "warn"},
        "storage": {"filesystem": {"rootdirectory": str(root / "data")}, "delete": {"enabled": True}},
        "http": {"addr": f"{REGISTRY_ADDR}:{REGISTRY_PORT}"},
    }))
    log = (root / "registry.log").open("w")
    proc = subprocess.Popen([exe, "serve", str(config)], stdout=log, stderr=subprocess.STDOUT)
    try:
        deadline = time.monotonic() + 20
        while True:
            try:
                with socket.create_connection((REGISTRY_ADDR, REGISTRY_PORT), timeout=1):
                    break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    pytest.fail(f"the registry did not start: {(root / 'registry.log').read_text()[-2000:]}")
                time.sleep(0.1)
        yield f"{REGISTRY_ADDR}:{REGISTRY_PORT}"
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def _digest_only(sb: Sandbox, client: docker.DockerClient, registry: str, repo: str, payload: bytes) -> str:
    """Put an image on the engine that only a digest names (pushed, removed, pulled by digest); return its ID."""
    client.images.load(_archive(f"{registry}/{repo}:push", "2024-01-01T00:00:00Z", payload))
    _docker(sb, "push", f"{registry}/{repo}:push")
    digest = client.images.get(f"{registry}/{repo}:push").attrs["RepoDigests"][0]
    client.images.remove(f"{registry}/{repo}:push")
    assert not client.images.list(all=True) or all(
        f"{registry}/{repo}:push" not in i.tags for i in client.images.list(all=True))
    _docker(sb, "pull", digest)
    image = client.images.get(digest)
    assert image.tags == [] and image.attrs["RepoDigests"] == [digest]
    return str(image.id)


# -- 1. digest-only images are named -------------------------------------------------------------------------


def test_an_image_named_only_by_digest_is_not_dangling_anywhere_and_phase1_keeps_it(
    engine_sandbox: Sandbox, engine: docker.DockerClient, registry: str, tmp_path: Path
) -> None:
    sb = engine_sandbox
    pinned = _digest_only(sb, engine, registry, "pinned/base", b"p" * 2_000_000)
    # Variants: another digest-only image a policy names by its digest (it goes, as any named image would),
    # one a protected pattern matches by its digest reference (it stays), and a truly dangling one (it goes).
    named = _digest_only(sb, engine, registry, "old/tool", b"t" * 1_000_000)
    named_ref = engine.images.get(named).attrs["RepoDigests"][0]
    guarded = _digest_only(sb, engine, registry, "prod/db", b"g" * 500_000)
    engine.images.load(_archive("junk:1", "2024-01-01T00:00:00Z", b"j" * 700_000))
    junk = engine.images.get("junk:1").id
    engine.images.load(_archive("junk:1", "2024-01-02T00:00:00Z", b"k" * 300_000))  # junk's tag moves on
    # The engine's own filter calls every tagless image dangling: never rely on it.
    listed = {i.id for i in engine.images.list(filters={"dangling": True})}
    assert {pinned, named, guarded, junk} <= listed

    inv = _inventory(sb, tmp_path, {"dangling_min_age": "0s", "fresh_min_age": "0s",
                                    "protected_patterns": [f"{registry}/prod/*"],
                                    "oversized_images": [{"ref": named_ref, "priority": "LOW"}]})
    state = tmp_path / "state.db"

    report = _analyze(inv, state)
    assert report["dangling"]["count"] == 1
    assert [d["image_id"] for d in report["dangling"]["images"]] == [junk]
    rows = {r["action"]: r for r in report["savings"]}
    assert rows["Remove dangling images"]["image_ids"] == [junk]
    assert rows["Remove unused oversized images"]["image_ids"] == [named]
    assert {u["image_id"] for u in report["unused"]} >= {pinned, guarded}

    plan = _plan(inv, state)
    assert {a["image_id"] for a in plan["actions"] if a["kind"] == "remove_image"} == {junk, named}
    reasons = {p["image_id"]: p["reasons"] for p in plan["protections"]}
    assert any("named by digest only" in r and "not dangling; no policy names it" in r for r in reasons[pinned])
    assert any(f"protected pattern '{registry}/prod/*'" in r for r in reasons[guarded])

    row = _phase1(inv, state)
    assert row["status"] == "succeeded", row
    left = {i.id for i in engine.images.list(all=True)}
    assert pinned in left and guarded in left
    assert junk not in left and named not in left

    proc = _cli("verify", "-i", str(inv), "--state", str(state), "--format", "json")
    criteria = {r["id"]: r for r in _json(proc)["hosts"][HOST]}
    assert criteria["zero_dangling"]["status"] == "pass", criteria["zero_dangling"]
    assert criteria["zero_dangling"]["value"] == 0


# -- 2. fresh from arrival, not from Created ----------------------------------------------------------------


def test_an_old_image_loaded_seconds_ago_is_too_young_and_phase1_keeps_it(
    engine_sandbox: Sandbox, engine: docker.DockerClient, tmp_path: Path
) -> None:
    sb = engine_sandbox
    engine.images.load(_archive("old:1", "2020-01-01T00:00:00Z", b"o" * 3_000_000))
    old = engine.images.get("old:1")
    assert old.attrs["Created"].startswith("2020-01-01")
    # Variant: an old build's leftover, loaded untagged just now, with no minimum dangling age of its own.
    engine.images.load(_archive(None, "2019-06-01T00:00:00Z", b"u" * 1_000_000))
    untagged = next(i.id for i in engine.images.list(all=True) if not i.tags and i.id != old.id)
    loaded_at = datetime.now(UTC)

    inv = _inventory(sb, tmp_path, {"fresh_min_age": "1h", "dangling_min_age": "0s",
                                    "oversized_images": [{"ref": "old:1", "priority": "HIGH"}]})
    state = tmp_path / "state.db"
    plan = _plan(inv, state)
    assert [a for a in plan["actions"] if a["kind"] == "remove_image"] == []
    reasons = {p["image_id"]: p["reasons"] for p in plan["protections"]}
    young = next(r for r in reasons[old.id] if r.startswith("too young: arrived "))
    seconds = int(young.removeprefix("too young: arrived ").split("s ago")[0])
    assert 0 <= seconds <= (datetime.now(UTC) - loaded_at).total_seconds() + 2
    assert young.endswith("ago (fresh_min_age 1h)")
    assert any(r.startswith("too young: arrived ") for r in reasons[untagged])

    report = _analyze(inv, state)
    finding = next(f for f in report["oversized"] if f["ref"] == "old:1")
    assert finding["candidate"] is False and any("too young" in r for r in finding["kept_because"])

    row = _phase1(inv, state)
    assert row["status"] == "succeeded", row
    assert {old.id, untagged} <= {i.id for i in engine.images.list(all=True)}


def test_arrival_evidence_from_a_real_engine_imagedb_then_events(
    engine_sandbox: Sandbox, engine: docker.DockerClient
) -> None:
    """The engine's image store dates a loaded image to its load; without it, the engine's events do."""
    from acgs_remediate.facts import _arrivals, collect, engine_api
    from acgs_remediate.inventory import Host

    before = datetime.now(UTC)
    engine.images.load(_archive("evidence:1", "2020-01-01T00:00:00Z", b"e" * 100_000))
    after = datetime.now(UTC)
    host = Host(name=HOST, docker_host=engine_sandbox.docker_host(HOST))
    snapshot = collect(host)
    img = snapshot.image("evidence:1")
    assert img is not None and img.arrival_source == "imagedb"
    assert before.timestamp() - 1 <= img.arrived_at.timestamp() <= after.timestamp() + 1  # type: ignore[union-attr]

    # As for an engine whose data root this machine cannot see (tcp:// or ssh://): the next evidence.
    with engine_api(host, 30) as api:
        found = _arrivals(api, api.images(), snapshot.engine, "tcp://remote:2376", datetime.now(UTC),
                          api.inspect_image)
    when, source = found[img.id]
    assert source == "events"  # a load leaves LastTagTime zero
    assert before.timestamp() - 1 <= when.timestamp() <= after.timestamp() + 1


# -- 4. build cache: predicted = analyzed = freed -----------------------------------------------------------


def _du(path: Path) -> int:
    out = subprocess.run(["du", "-sb", str(path)], capture_output=True, text=True, check=True).stdout
    return int(out.split()[0])


def test_build_cache_prune_predicts_what_it_frees_and_analyze_agrees(
    engine_sandbox: Sandbox, engine: docker.DockerClient, tmp_path: Path
) -> None:
    sb = engine_sandbox
    ctx = _context(tmp_path, "two-stage", (
        "FROM scratch AS build\n"
        "COPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "sh", "-c", "/bin/busybox head -c 4000000 /dev/urandom > /blob.bin"]\n'
        "FROM scratch\n"
        "COPY --from=build /blob.bin /blob.bin\n"
    ))
    _docker(sb, "build", "-q", "--network", "none", "-t", "two-stage:1", str(ctx), buildkit=True)
    df = engine.api.df()
    assert any(b["Shared"] for b in df["BuildCache"]), "the final stage's layer is shared with the image"

    inv = _inventory(sb, tmp_path, {"build_cache_budget": "0B", "fresh_min_age": "0s"})
    state = tmp_path / "state.db"
    report = _analyze(inv, state)
    analyzed = next(r for r in report["savings"] if r["action"].startswith("Prune build cache"))["freed_bytes"]
    assert report["build_cache"]["prune_freed_bytes"] == analyzed
    plan = _plan(inv, state)
    predicted = next(a for a in plan["actions"] if a["kind"] == "prune_build_cache")["predicted_bytes"]
    assert predicted == analyzed
    assert predicted == plan["predicted_bytes"]  # nothing else to do on this engine

    root = Path(engine.info()["DockerRootDir"])
    du_before = _du(root)
    row = _phase1(inv, state)
    du_after = _du(root)
    assert row["status"] == "succeeded", row
    measured = row["measured_freed"]  # /system/df before and after: layers (once) + unshared cache
    print(f"predicted {predicted} B; /system/df freed {measured} B; du freed {du_before - du_after} B")
    assert abs(measured - predicted) <= 0.01 * predicted
    assert abs((du_before - du_after) - predicted) <= 0.01 * predicted
    assert engine.images.get("two-stage:1")  # the image keeps its (shared) layer


# -- 5. the base of an image that stays is protected, whatever builder made the child -----------------------


def test_the_base_of_a_buildkit_child_that_stays_is_protected_in_plan_and_analyze(
    engine_sandbox: Sandbox, engine: docker.DockerClient, tmp_path: Path
) -> None:
    sb = engine_sandbox
    base_ctx = _context(tmp_path, "base", (
        "FROM scratch\nCOPY busybox /bin/busybox\n"
        'RUN ["/bin/busybox", "--install", "-s", "/bin"]\n'
        "COPY pad.bin /pad.bin\n"
    ), {"pad.bin": os.urandom(3_000_000)})
    _docker(sb, "build", "-q", "--network", "none", "-t", "base:v1", str(base_ctx), buildkit=False)
    app_ctx = _context(tmp_path, "app", "FROM base:v1\nRUN echo app > /app.txt\n")
    _docker(sb, "build", "-q", "--network", "none", "-t", "app:v1", str(app_ctx), buildkit=True)
    # Variant: a child that only changes metadata has the very same layer chain as its base.
    label_ctx = _context(tmp_path, "label", "FROM base:v1\nLABEL acgs.test=label-only\n")
    _docker(sb, "build", "-q", "--network", "none", "-t", "labelled:v1", str(label_ctx), buildkit=True)
    base, app = engine.images.get("base:v1"), engine.images.get("app:v1")
    assert not app.attrs.get("Parent"), "BuildKit records no parent link"
    engine.containers.run("app:v1", ["sleep", "600"], detach=True, init=True, network_mode="none", name="app")

    inv = _inventory(sb, tmp_path, {"fresh_min_age": "0s", "dangling_min_age": "0s", "oversized_images": [
        {"ref": "base:v1", "priority": "CRITICAL"}, {"ref": "labelled:v1", "priority": "LOW"}]})
    state = tmp_path / "state.db"
    plan = _plan(inv, state)
    removed = [a["image_id"] for a in plan["actions"] if a["kind"] == "remove_image"]
    labelled = engine.images.get("labelled:v1").id
    # Both stay: all their layers are part of app:v1, which a container uses (removing them would free 0 B).
    assert removed == []
    reasons = {p["image_id"]: p["reasons"] for p in plan["protections"]}
    assert any(r.startswith("base of image(s) that stay (") and "app:v1" in r for r in reasons[base.id])
    assert any(r.startswith("base of image(s) that stay (") and "app:v1" in r for r in reasons[labelled])

    report = _analyze(inv, state)
    finding = next(f for f in report["oversized"] if f["ref"] == "base:v1")
    assert finding["candidate"] is False
    assert any("base of image(s) that stay" in r for r in finding["kept_because"])
    over_row = next(r for r in report["savings"] if r["action"] == "Remove unused oversized images")
    assert set(over_row["image_ids"]) == {a["image_id"] for a in plan["actions"]
                                          if a["kind"] == "remove_image" and a["category"] == "oversized"}
    assert base.id not in over_row["image_ids"]

    row = _phase1(inv, state)
    assert row["status"] == "succeeded", row
    assert engine.images.get("base:v1").id == base.id
    assert engine.images.get("app:v1").id == app.id
    assert engine.images.get("labelled:v1").id == labelled


def test_bases_go_with_their_children_when_nothing_stands_on_them(
    engine_sandbox: Sandbox, engine: docker.DockerClient, tmp_path: Path
) -> None:
    """The other side of the rule: a base whose BuildKit child is removed too is no longer protected."""
    sb = engine_sandbox
    base_ctx = _context(tmp_path, "base", "FROM scratch\nCOPY busybox /bin/busybox\nCOPY pad.bin /pad.bin\n",
                        {"pad.bin": os.urandom(2_000_000)})
    _docker(sb, "build", "-q", "--network", "none", "-t", "base:v2", str(base_ctx), buildkit=True)
    app_ctx = _context(tmp_path, "app", "FROM base:v2\nCOPY extra.bin /extra.bin\n", {"extra.bin": b"x" * 500_000})
    _docker(sb, "build", "-q", "--network", "none", "-t", "app:v2", str(app_ctx), buildkit=True)
    inv = _inventory(sb, tmp_path, {"fresh_min_age": "0s", "oversized_images": [
        {"ref": "base:v2", "priority": "HIGH"}, {"ref": "app:v2", "priority": "HIGH"}]})
    state = tmp_path / "state.db"
    plan = _plan(inv, state)
    removed = {a["image_id"] for a in plan["actions"] if a["kind"] == "remove_image"}
    assert removed == {engine.images.get("base:v2").id, engine.images.get("app:v2").id}
    report = _analyze(inv, state)
    assert {f["image_id"] for f in report["oversized"] if f["candidate"]} == removed
    before = engine.api.df()["LayersSize"]
    row = _phase1(inv, state)
    assert row["status"] == "succeeded", row
    assert not engine.images.list(name="base") and not engine.images.list(name="app")
    freed = before - engine.api.df()["LayersSize"]
    assert abs(freed - plan["predicted_bytes"]) <= 0.01 * freed
