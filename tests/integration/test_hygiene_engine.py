"""Hygiene on a real engine: LRU with shared bases (exact bytes), children before parents, fresh by arrival,
what must stay (a created-only container's multi-tag image, a named volume), overlapping and killed runs.

The engine is an empty sandbox host of its own (scenario none), wiped before each test, so every image in
it is the test's. Ages never depend on the clock: images are dated 30 days back on the engine (the image
store's file time, which is what the tool reads as arrival), far from every threshold; uses happen in a
known order between two runs.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import signal
import sqlite3
import subprocess
import tarfile
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from acgs_remediate.errors import EXIT_LOCKED
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.state import StateStore

DOCKER = "/usr/bin/docker"  # the 20.10 CLI, whose classic builder needs no buildx
HOST = "sb-h01"
OLD = 30 * 86400  # seconds: how long ago the test's images "arrived"
CLI = str(Path(__file__).resolve().parents[2] / ".venv" / "bin" / "acgs-remediate")


@pytest.fixture(scope="module")
def engine(engines_available: None) -> Iterator[Sandbox]:
    """Return a 1-host sandbox with an empty engine (its own directory next to the shared fleet's)."""
    sb = Sandbox(Path(f"{os.environ.get('ACGS_TEST_SANDBOX_DIR') or '/var/lib/acgs-t'}-hyg"))
    sb.up(1, None)
    yield sb
    if not os.environ.get("ACGS_TEST_KEEP_SANDBOX"):
        sb.down()


class Engine:
    """The test's view of the one engine: docker CLI, image store dates, Engine API numbers."""

    def __init__(self, sb: Sandbox, tmp: Path) -> None:
        inv = yaml.safe_load(sb.inventory_path.read_text())
        self.vars = inv["all"]["children"]["sandbox"]["hosts"][HOST]
        self.sock = self.vars["docker_host"]
        self.tmp = tmp
        self.state = tmp / "state.db"
        self.root = Path(json.loads(self.docker("info", "--format", "{{json .DockerRootDir}}")))

    def docker(self, *args: str, stdin: bytes | None = None) -> str:
        env = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(self.tmp / "docker-cli")}
        proc = subprocess.run([DOCKER, "-H", self.sock, *args], input=stdin, env=env, capture_output=True, check=True)
        return proc.stdout.decode().strip()

    def wipe(self) -> None:
        ids = self.docker("ps", "-aq").split()
        if ids:
            self.docker("rm", "-f", *ids)
        vols = self.docker("volume", "ls", "-q").split()
        if vols:
            self.docker("volume", "rm", *vols)
        while images := self.docker("images", "-aq").split():
            subprocess.run([DOCKER, "-H", self.sock, "rmi", "-f", *sorted(set(images))], capture_output=True)
        self.docker("builder", "prune", "-af")

    def build(self, tag: str, parent: str | None, blob_bytes: int) -> str:
        ctx = self.tmp / f"ctx-{tag.replace(':', '-').replace('/', '-')}"
        ctx.mkdir()
        if parent is None:
            (ctx / "busybox").write_bytes(Path("/bin/busybox").read_bytes())
            (ctx / "busybox").chmod(0o755)
            (ctx / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\n")
        else:
            (ctx / "blob").write_bytes(os.urandom(blob_bytes))
            (ctx / "Dockerfile").write_text(f"FROM {parent}\nCOPY blob /blob-{ctx.name}\n")
        self.docker("build", "-q", "--network", "none", "-t", tag, str(ctx))
        return self.image_id(tag)

    def image_id(self, ref: str) -> str:
        return self.docker("image", "inspect", "--format", "{{.Id}}", ref)

    def images(self) -> dict[str, list[str]]:
        """Return image ID -> tags of the top-level images."""
        out = self.docker("images", "--no-trunc", "--format", "{{.ID}} {{.Repository}}:{{.Tag}}")
        result: dict[str, list[str]] = {}
        for line in out.splitlines():
            image_id, tag = line.split(" ", 1)
            result.setdefault(image_id, [])
            if tag != "<none>:<none>":
                result[image_id].append(tag)
        return result

    def age(self, image_ids: list[str] | None = None, seconds: int = OLD) -> None:
        """Date images ``seconds`` back on this engine (their image store config files' time)."""
        content = self.root / "image" / "overlay2" / "imagedb" / "content" / "sha256"
        when = time.time() - seconds
        for path in content.iterdir():
            if image_ids is None or f"sha256:{path.name}" in image_ids:
                os.utime(path, (when, when))

    def used_bytes(self) -> int:
        """Return the engine's own bytes (/system/df LayersSize + build cache), as a run measures them."""
        from acgs_remediate.facts import disk_usage
        from acgs_remediate.inventory import Host

        data = disk_usage(Host(name=HOST, docker_host=self.sock))
        return int(data["LayersSize"]) + sum(int(b["Size"]) for b in data.get("BuildCache") or [] if not b["Shared"])

    def inventory(self, **hygiene: Any) -> Path:
        """Write an inventory for the engine whose policy has these hygiene settings; return its path."""
        policy = {
            "fresh_min_age": "1h",
            "dangling_min_age": "1h",
            "hygiene": {
                "fresh_min_age": "1h",
                "dangling_min_age": "1h",
                "unused_min_age": 0,
                "build_cache_budget": "100GB",
                **hygiene,
            },
        }
        inv = {"all": {"hosts": {HOST: self.vars}, "vars": {"acgs_policy": policy}}}
        path = self.tmp / "inventory.yml"
        path.write_text(yaml.safe_dump(inv))
        return path

    def hygiene(self, *args: str, check: bool = True, **hygiene: Any) -> tuple[int, dict[str, Any], str]:
        cmd = [
            CLI,
            "hygiene",
            "-i",
            str(self.inventory(**hygiene)),
            "--state",
            str(self.state),
            "--yes",
            "--format",
            "json",
            *args,
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(self.tmp), check=False)
        if check:
            assert proc.returncode == 0, proc.stderr
        return proc.returncode, json.loads(proc.stdout) if proc.stdout.strip() else {}, proc.stderr


def _env(tmp: Path) -> dict[str, str]:
    bin_dir = str(Path(CLI).parent)
    return {
        **os.environ,
        "PATH": f"{bin_dir}:{os.environ['PATH']}",
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_LOCAL_TEMP": str(tmp / "ansible-tmp"),
        "ANSIBLE_HOME": str(tmp / "ansible-home"),
    }


@pytest.fixture
def eng(engine: Sandbox, tmp_path: Path) -> Engine:
    e = Engine(engine, tmp_path)
    e.wipe()
    return e


def _row(result: dict[str, Any]) -> dict[str, Any]:
    (row,) = result["hosts"]
    return row


def _assert_exact(row: dict[str, Any]) -> None:
    """Predicted bytes equal the bytes freed as the engine measures them (/system/df), within 1 %."""
    assert row["status"] == "succeeded", row
    assert row["measured_freed"] is not None
    assert abs(row["predicted_bytes"] - row["measured_freed"]) <= 0.01 * max(row["predicted_bytes"], 1), row


def test_lru_with_a_shared_base_frees_exactly_what_was_predicted(eng: Engine) -> None:
    base = eng.build("hbase:1", None, 0)
    apps = {n: eng.build(f"happ{n}:1", "hbase:1", size) for n, size in ((1, 3_000_000), (2, 2_000_000), (3, 1_000_000))}
    eng.age()
    # The first run starts the engine's event window and changes nothing (far below its watermark): with
    # nothing to do no playbook starts, and the ledger still records the run (a scheduled run's normal case).
    _, quiet, err = eng.hygiene(high_watermark="100GB", low_watermark="90GB")
    assert _row(quiet)["status"] == "succeeded" and _row(quiet)["actions"] == 0
    assert quiet["timings"]["playbook"] == 0 and "sb-h01: nothing to do" in err
    # Used in this order: app2 first, then app3, then app1 (LRU: app2, app3, app1).
    for n in (2, 3, 1):
        eng.docker("run", "--rm", "--network", "none", f"happ{n}:1", "/bin/busybox", "true")
    used = eng.used_bytes()
    from acgs_remediate.facts import collect
    from acgs_remediate.inventory import Host

    snap = collect(Host(name=HOST, docker_host=eng.sock))
    own = {img.id: sum(snap.layer_sizes[c] for c in img.layers[1:]) for img in snap.images if img.id in apps.values()}
    low = used - own[apps[2]] - own[apps[3]]  # exactly: removing app2 and app3 (own layers only) reaches it
    # The containers are gone: only the engine's events since the first run know the order of use.
    _, planned, _ = _plan(eng, high_watermark=f"{used - 1}B", low_watermark=f"{low}B")
    reasons = [a["reason"] for a in planned["plans"][0]["actions"]]
    assert [a["image_id"] for a in planned["plans"][0]["actions"]] == [apps[2], apps[3]]
    assert all("(event die of container" in r for r in reasons), reasons
    _, result, _ = eng.hygiene(high_watermark=f"{used - 1}B", low_watermark=f"{low}B")
    row = _row(result)
    assert [r["id"] for r in row["removed_images"]] == [apps[2], apps[3]]
    assert row["predicted_bytes"] == own[apps[2]] + own[apps[3]]  # one of three apps frees only its own layers
    _assert_exact(row)
    assert set(eng.images()) == {base, apps[1]}
    # Down to nothing: app1 goes, then the base with it (its layers free only once its last child is gone).
    metrics = eng.tmp / "acgs_hygiene.prom"
    _, result, _ = eng.hygiene("--metrics-file", str(metrics), high_watermark="1B", low_watermark="0B")
    row = _row(result)
    assert [r["id"] for r in row["removed_images"]] == [apps[1], base]
    _assert_exact(row)
    assert eng.images() == {}
    # node_exporter's textfile collector reads what this run did; status shows the host's last hygiene run.
    text = metrics.read_text()
    assert f'acgs_hygiene_bytes_reclaimed_measured{{host="{HOST}"}} {row["measured_freed"]}' in text
    assert f'acgs_hygiene_images_removed{{host="{HOST}",category="unused"}} 2' in text
    assert f'acgs_hygiene_errors{{host="{HOST}"}} 0' in text
    assert "acgs_hygiene_last_success_timestamp_seconds" in text
    status = subprocess.run(
        [CLI, "status", "--state", str(eng.state), "--format", "json"],
        capture_output=True,
        text=True,
        check=True,
        env=_env(eng.tmp),
    )
    last = json.loads(status.stdout)["hosts"][HOST]["hygiene"]
    assert last["status"] == "succeeded" and last["bytes_freed"] == row["measured_freed"]


def test_children_go_before_their_parents(eng: Engine) -> None:
    parent = eng.build("cparent:1", None, 0)
    child = eng.build("cchild:1", "cparent:1", 1_000_000)
    grandchild = eng.build("cgrandchild:1", "cchild:1", 500_000)
    eng.age()  # same arrival, never used: the order comes from the image graph alone
    rc, result, err = eng.hygiene(high_watermark="1B", low_watermark="0B")
    row = _row(result)
    assert [r["id"] for r in row["removed_images"]] == [grandchild, child, parent], err
    assert row["skipped"] == []  # the engine refused nothing (a parent first would be a 409 without force)
    _assert_exact(row)


def _old_image_tar(tag: str, created: str) -> bytes:
    """Return a `docker save` archive of a one-layer image created at ``created`` (an "old" image)."""
    layer = io.BytesIO()
    with tarfile.open(fileobj=layer, mode="w") as tf:
        data = os.urandom(200_000)
        info = tarfile.TarInfo("old.bin")
        info.size = len(data)
        tf.addfile(info, io.BytesIO(data))
    layer_bytes = layer.getvalue()
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "created": created,
            "config": {},
            "rootfs": {"type": "layers", "diff_ids": [f"sha256:{hashlib.sha256(layer_bytes).hexdigest()}"]},
            "history": [{"created": created, "created_by": "test"}],
        }
    ).encode()
    config_name = f"{hashlib.sha256(config).hexdigest()}.json"
    manifest = json.dumps([{"Config": config_name, "RepoTags": [tag], "Layers": ["layer/layer.tar"]}]).encode()
    out = io.BytesIO()
    with tarfile.open(fileobj=out, mode="w") as tf:
        for name, payload in ((config_name, config), ("layer/layer.tar", layer_bytes), ("manifest.json", manifest)):
            info = tarfile.TarInfo(name)
            info.size = len(payload)
            tf.addfile(info, io.BytesIO(payload))
    return out.getvalue()


def test_an_old_image_loaded_just_now_is_fresh_and_survives(eng: Engine) -> None:
    stale = eng.build("stale:1", None, 0)
    eng.age()
    eng.docker("load", stdin=_old_image_tar("ancient:2015", "2015-06-01T00:00:00Z"))
    loaded = eng.image_id("ancient:2015")
    assert eng.docker("image", "inspect", "--format", "{{.Created}}", loaded).startswith("2015-06-01")
    _, result, _ = eng.hygiene(high_watermark="1B", low_watermark="0B")
    row = _row(result)
    assert [r["id"] for r in row["removed_images"]] == [stale]
    assert eng.images() == {loaded: ["ancient:2015"]}
    _, plan, _ = _plan(eng, high_watermark="1B", low_watermark="0B")
    (kept,) = plan["plans"][0]["protections"]
    assert kept["image_id"] == loaded and kept["reasons"][0].startswith("fresh: arrived on this engine")


def _plan(eng: Engine, **hygiene: Any) -> tuple[int, dict[str, Any], str]:
    cmd = [CLI, "plan", "hygiene", "-i", str(eng.inventory(**hygiene)), "--state", str(eng.state), "--format", "json"]
    proc = subprocess.run(cmd, capture_output=True, text=True, env=_env(eng.tmp), check=False)
    assert proc.returncode == 0, proc.stderr
    return proc.returncode, json.loads(proc.stdout), proc.stderr


def test_a_multi_tag_image_of_a_created_only_container_keeps_every_tag(eng: Engine) -> None:
    img = eng.build("multi:1", None, 0)
    eng.docker("tag", "multi:1", "multi:2")
    eng.docker("tag", "multi:1", "127.0.0.55:5000/team/multi:latest")
    eng.docker("create", "--name", "never-started", "--network", "none", "multi:2", "/bin/busybox", "true")
    eng.age()
    _, result, _ = eng.hygiene(high_watermark="1B", low_watermark="0B")
    assert _row(result)["removed_images"] == []
    assert sorted(eng.images()[img]) == ["127.0.0.55:5000/team/multi:latest", "multi:1", "multi:2"]
    assert eng.docker("ps", "-a", "--format", "{{.Names}} {{.State}}") == "never-started created"


def test_a_named_volume_whose_container_was_just_removed_survives(eng: Engine) -> None:
    img = eng.build("db:1", None, 0)
    eng.docker("volume", "create", "postgres_data")
    eng.docker(
        "run",
        "--rm",
        "--network",
        "none",
        "-v",
        "postgres_data:/data",
        "db:1",
        "/bin/busybox",
        "sh",
        "-c",
        "echo precious > /data/PG_VERSION",
    )
    eng.age()
    _, result, _ = eng.hygiene(high_watermark="1B", low_watermark="0B")
    assert [r["id"] for r in _row(result)["removed_images"]] == [img]  # the image, unused, goes
    assert eng.docker("volume", "ls", "-q") == "postgres_data"
    mount = eng.docker("volume", "inspect", "--format", "{{.Mountpoint}}", "postgres_data")
    assert Path(mount, "PG_VERSION").read_text() == "precious\n"


def test_an_overlapping_run_exits_4_at_once_and_changes_nothing(eng: Engine) -> None:
    eng.build("victim:1", None, 0)
    eng.age()
    before = eng.images()
    store = StateStore(eng.state)
    try:
        with store.lock_hosts([HOST], "hygiene-the-other-run"):  # what a run in progress holds
            rc, result, err = eng.hygiene(check=False, high_watermark="1B", low_watermark="0B")
    finally:
        store.close()
    assert rc == EXIT_LOCKED, err
    assert "another hygiene run is still going" in err and "hygiene-the-other-run" in err
    assert eng.images() == before
    after = StateStore(eng.state)
    assert after.phase_status(HOST, "hygiene") is None and after.runs() == []
    # It stopped before reading the engine: every read of the facts records the images it sees in the ledger.
    assert after.image_ledger(HOST, eng.docker("info", "--format", "{{.ID}}")) == {}


def test_a_killed_run_is_left_interrupted_and_the_next_run_finishes(eng: Engine) -> None:
    ids = [eng.build(f"k{n}:1", None if n == 0 else "k0:1", 300_000) for n in range(4)]
    eng.age()
    inventory = eng.inventory(high_watermark="1B", low_watermark="0B")
    cmd = [CLI, "hygiene", "-i", str(inventory), "--state", str(eng.state), "--yes", "--format", "json"]
    proc = subprocess.Popen(
        cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=_env(eng.tmp), start_new_session=True
    )
    try:
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline and proc.poll() is None:
            if _ledger_status(eng.state) == "running":
                break
            time.sleep(0.05)
        assert proc.poll() is None, "the run ended before it could be killed"
        os.killpg(proc.pid, signal.SIGKILL)  # the run and its ansible-playbook, mid-run
    finally:
        proc.wait(timeout=30)
    rc, result, err = eng.hygiene(high_watermark="1B", low_watermark="0B")
    assert "marked interrupted" in err
    history = [e.status for e in StateStore(eng.state).history(HOST, "hygiene")]
    assert "interrupted" in history and history[0] == "succeeded"
    assert eng.images() == {}  # the next run finished the work
    assert set(ids) >= {r["id"] for r in _row(result)["removed_images"]}


def _ledger_status(db: Path) -> str | None:
    if not db.exists():
        return None
    try:
        with sqlite3.connect(db, timeout=1) as conn:
            row = conn.execute(
                "SELECT status FROM phase_status WHERE host = ? AND phase = 'hygiene'", (HOST,)
            ).fetchone()
    except sqlite3.Error:
        return None
    return row[0] if row else None
