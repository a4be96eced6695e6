"""The sandbox fleet on real dockerd engines: engines, inventory, scenario basics, up/down/up, recovery."""

from __future__ import annotations

import io
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
import zlib
from collections.abc import Iterator
from pathlib import Path

import docker
import pytest

from acgs_remediate.inventory import load_fleet
from acgs_remediate.sandbox import Sandbox, _cgroup_dirs

pytestmark = pytest.mark.integration

OVERSIZED = [
    "rocm/pytorch:latest",
    "router-server:latest",
    "llm-router-router-builder:latest",
    "nvcr.io/nvidia/tritonserver:24.10-py3",
    "acgs-master-gs_service:latest",
    "acgs-1-alembic-runner:latest",
]
# The golden scenario's long-running containers: every host (every variant) runs them.
GOLDEN_RUNNING = [
    "acgs-1-fv_service-1",
    "acgs-1-ac_service-1",
    "acgs-1-integrity_service-1",
    "acgs-1-auth_service-1",
    "acgs-1-postgres-1",
]
CLI = [sys.executable, "-c", "from acgs_remediate.cli import main; main()"]


def _client(sb: Sandbox, host: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=sb.docker_host(host), timeout=60)


def _leftovers(directory: Path, cgroup_parents: list[str]) -> list[str]:
    """Return what a removed sandbox left behind: processes, mounts, cgroups, files."""
    found: list[str] = []
    marker = str(directory) + "/"
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit() or int(entry.name) == os.getpid():
            continue
        try:
            args = (entry / "cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if marker in args:
            found.append(f"process {entry.name}: {args[:120]}")
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        if marker in line or f" {directory} " in line:
            found.append(f"mount: {line.split()[4]}")
    for parent in cgroup_parents:
        found += [f"cgroup {d}" for d in _cgroup_dirs(parent)]
    if directory.exists():
        found.append(f"directory {directory}")
    return found


def _cgroup_parents(sb: Sandbox, count: int) -> list[str]:
    return [sb._engine(i).cgroup_parent for i in range(count)]


@pytest.fixture
def scratch_dir(request: pytest.FixtureRequest, engines_available: None) -> Iterator[Path]:
    """Return a short, unused sandbox directory; whatever a test leaves there is torn down after it."""
    path = Path(f"/var/lib/acgs-t{zlib.crc32(request.node.name.encode()) % 1000:03d}")
    Sandbox(path).down()
    yield path
    Sandbox(path).down()


def _busybox_image(client: docker.DockerClient) -> str:
    """Build a tiny busybox image (no registry here) and return its tag."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tar:
        tar.add("/bin/busybox", arcname="busybox")
        dockerfile = (
            b'FROM scratch\nCOPY busybox /bin/busybox\nRUN ["/bin/busybox","--install","-s","/bin"]\n'
        )
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    buf.seek(0)
    client.images.build(fileobj=buf, custom_context=True, tag="t/busybox:1", network_mode="none", rm=True)
    return "t/busybox:1"


# --------------------------------------------------------------------------- the shared fleet (read-only)


def test_engines_are_distinct_and_answer(sandbox: Sandbox) -> None:
    st = sandbox.status()
    assert st.up and [h.name for h in st.hosts] == ["sb-h01", "sb-h02", "sb-h03"]
    assert len({h.engine_id for h in st.hosts}) == 3, "engines must report distinct engine IDs"
    assert len({h.engine_name for h in st.hosts}) == 3, "engines must report distinct names"
    assert len({h.docker_host for h in st.hosts}) == 3
    for h in st.hosts:
        info = _client(sandbox, h.name).info()
        assert info["ID"] == h.engine_id
        # Isolated engines: no bridge network, overlay2 on their own data-root.
        assert info["Driver"] == "overlay2"
        assert info["DockerRootDir"] == str(sandbox.directory / f"h{h.index + 1:02d}" / "root")


def test_inventory_loads_and_every_docker_host_answers(sandbox: Sandbox) -> None:
    fleet = load_fleet(sandbox.inventory_path, "sandbox")
    assert [h.name for h in fleet.hosts] == ["sb-h01", "sb-h02", "sb-h03"]
    for host in fleet.hosts:
        assert host.docker_host == sandbox.docker_host(host.name)
        assert host.vars["ansible_connection"] == "local"
        assert host.vars["acgs_sandbox_engine_name"] == _client(sandbox, host.name).info()["Name"]
        assert docker.DockerClient(**host.docker_client_kwargs()).ping()
        policy = fleet.policy(host)
        assert Path(policy.sources_root) == sandbox.sources_root
    assert sandbox.sources_root.is_dir() and any(sandbox.sources_root.iterdir())


def test_golden_host_holds_the_report_scenario(sandbox: Sandbox) -> None:
    client = _client(sandbox, "sb-h01")  # host index 0 is exactly the report
    tags = {t for img in client.images.list() for t in img.tags}
    assert set(OVERSIZED) <= tags, f"missing oversized images: {set(OVERSIZED) - tags}"
    dangling = client.images.list(filters={"dangling": True})
    assert len(dangling) == 41
    containers = client.containers.list(all=True)
    stopped = [c for c in containers if c.status != "running"]
    assert any(c.name == "acgs-1-pgc_service-1" for c in stopped)
    # One dangling image is still used by a stopped container (the case the tool must protect).
    dangling_ids = {img.id for img in dangling}
    assert any(c.attrs["Image"] in dangling_ids for c in stopped)
    volume = client.volumes.get("postgres_data")
    assert volume.attrs["Driver"] == "local"


def test_every_host_runs_the_golden_services(sandbox: Sandbox) -> None:
    # Copies of a stopped golden engine: what ran there must run on every host (checked via the API).
    for name in sandbox.hosts():
        running = {c.name for c in _client(sandbox, name).containers.list()}
        assert set(GOLDEN_RUNNING) <= running, f"{name}: not running {set(GOLDEN_RUNNING) - running}"


def test_hosts_differ_a_little(sandbox: Sandbox) -> None:
    def fingerprint(name: str) -> tuple[frozenset[str], int]:
        client = _client(sandbox, name)
        tags = frozenset(t for img in client.images.list() for t in img.tags)
        return tags, len(client.images.list(filters={"dangling": True}))

    prints = [fingerprint(n) for n in sandbox.hosts()]
    assert len(set(prints)) > 1, "all hosts are identical: the scenario's variants were not applied"


# --------------------------------------------------------------------------- the shared fleet (changing)


def test_reseed_puts_a_changed_host_back_fast(fresh_sandbox: Sandbox) -> None:
    client = _client(fresh_sandbox, "sb-h02")
    before = sorted(img.id for img in client.images.list(all=True))
    victim = client.images.list(filters={"dangling": True})[-1]
    container_ids = {c.attrs["Image"] for c in client.containers.list(all=True)}
    if victim.id in container_ids:
        victim = client.images.list(filters={"dangling": True})[0]
    client.images.remove(victim.id)
    assert sorted(img.id for img in client.images.list(all=True)) != before
    t0 = time.monotonic()
    fresh_sandbox.reseed(["sb-h02"])
    elapsed = time.monotonic() - t0
    after = sorted(img.id for img in _client(fresh_sandbox, "sb-h02").images.list(all=True))
    assert after == before
    assert elapsed < 10, f"reseed of one host took {elapsed:.1f} s (target < 10 s)"


def test_stop_and_start_one_engine(fresh_sandbox: Sandbox) -> None:
    fresh_sandbox.stop_engine("sb-h03")
    st = fresh_sandbox.status()
    assert [h.running for h in st.hosts] == [True, True, False]
    with pytest.raises(docker.errors.DockerException):
        _client(fresh_sandbox, "sb-h03").ping()
    fresh_sandbox.start_engine("sb-h03")
    assert fresh_sandbox.status().up


# --------------------------------------------------------------------------- lifecycle in scratch dirs


def test_up_status_down_up_leaves_nothing_behind(scratch_dir: Path) -> None:
    sb = Sandbox(scratch_dir)
    st = sb.up(2, scenario=None)
    assert st.up and len({h.engine_id for h in st.hosts}) == 2
    pids = [h.pid for h in st.hosts]
    # Same size again: idempotent, nothing restarted.
    messages: list[str] = []
    again = sb.up(2, scenario=None, log=messages.append)
    assert [h.pid for h in again.hosts] == pids
    assert any("already up" in m for m in messages)
    # Containers running at down time (shims, container processes, cgroups) are cleaned too.
    client = docker.DockerClient(base_url=sb.docker_host("sb-h01"))
    client.containers.run(
        _busybox_image(client), ["sleep", "300"], detach=True, init=True, network_mode="none"
    )
    sb.down()
    assert _leftovers(scratch_dir, _cgroup_parents(sb, 2)) == []
    assert not sb.status().exists
    st = sb.up(2, scenario=None)
    assert st.up
    fleet = load_fleet(sb.inventory_path, "sandbox")
    assert [h.name for h in fleet.hosts] == ["sb-h01", "sb-h02"]
    sb.down()
    assert _leftovers(scratch_dir, _cgroup_parents(sb, 2)) == []


def test_up_recovers_after_a_crash(scratch_dir: Path) -> None:
    sb = Sandbox(scratch_dir)
    st = sb.up(2, scenario=None)
    client = docker.DockerClient(base_url=sb.docker_host("sb-h02"))
    container = client.containers.run(
        _busybox_image(client), ["sleep", "300"], detach=True, init=True, network_mode="none"
    )
    container_pid = (
        container.attrs["State"]["Pid"] or client.api.inspect_container(container.id)["State"]["Pid"]
    )
    os.kill(st.hosts[1].pid, signal.SIGKILL)  # the engine crashes; its shim and container survive it
    time.sleep(0.5)
    assert Path(f"/proc/{container_pid}").exists()
    assert not sb.status().up
    recovered = sb.up(2, scenario=None)
    assert recovered.up and len({h.engine_id for h in recovered.hosts}) == 2
    assert not Path(f"/proc/{container_pid}").exists() or _is_zombie(container_pid)
    sb.down()
    assert _leftovers(scratch_dir, _cgroup_parents(sb, 2)) == []


def _is_zombie(pid: int) -> bool:
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] == "Z"
    except (OSError, IndexError):
        return True


def test_cli_up_status_down(scratch_dir: Path) -> None:
    def cli(*args: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [*CLI, "sandbox", *args, "--dir", str(scratch_dir)], capture_output=True, text=True, timeout=300
        )

    up = cli("up", "--hosts", "2", "--scenario", "none")
    assert up.returncode == 0, up.stderr
    assert "sb-h02" in up.stderr and str(scratch_dir / "inventory.yml") in up.stderr
    status = cli("status", "--format", "json")
    assert status.returncode == 0, status.stderr
    data = json.loads(status.stdout)  # JSON alone on stdout
    assert data["up"] and [h["name"] for h in data["hosts"]] == ["sb-h01", "sb-h02"]
    down = cli("down")
    assert down.returncode == 0, down.stderr
    assert _leftovers(scratch_dir, _cgroup_parents(Sandbox(scratch_dir), 2)) == []
    gone = cli("status")
    assert gone.returncode == 1 and "no sandbox" in gone.stderr


def test_missing_dockerd_is_a_clear_usage_error(tmp_path: Path) -> None:
    # A PATH without the Docker engine: one clear line naming what is missing and how to get it.
    result = subprocess.run(
        [*CLI, "sandbox", "up", "--hosts", "1", "--scenario", "none", "--dir", str(tmp_path / "sb")],
        capture_output=True,
        text=True,
        timeout=60,
        env={**os.environ, "PATH": str(tmp_path)},
    )
    assert result.returncode == 2, result.stderr
    assert "dockerd" in result.stderr and "apt-get install docker.io" in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "sb").exists()


@pytest.mark.skipif(os.geteuid() != 0 or not shutil.which("setpriv"), reason="needs root to drop to nobody")
def test_non_root_is_a_clear_usage_error(tmp_path: Path) -> None:
    result = subprocess.run(
        [
            "setpriv",
            "--reuid=65534",
            "--regid=65534",
            "--clear-groups",
            *CLI,
            "sandbox",
            "up",
            "--hosts",
            "1",
            "--dir",
            str(tmp_path / "sb"),
        ],
        capture_output=True,
        text=True,
        timeout=60,
        cwd="/",
    )
    assert result.returncode == 2, result.stderr
    assert "root" in result.stderr and "Traceback" not in result.stderr
