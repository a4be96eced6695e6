"""The sandbox fleet: N real, isolated dockerd engines on this machine, their inventory, a seeded scenario.

Layout of a sandbox directory D (kept short: unix socket paths are limited to 108 bytes)::

    D/sandbox.json           what runs: hosts, pids, scenario, content hash (status/down/recovery read it)
    D/inventory.yml          group `sandbox`, one host per engine with its docker_host
    D/group_vars/all.yml     acgs_policy from the scenario
    D/sources/               the scenario's service source trees (phase 1 may repair them)
    D/hNN/{root,exec,etc,docker.sock,docker.pid,dockerd.log}   one engine

Each engine runs under ``unshare --mount --uts`` with its own /etc/docker (so its engine ID differs) and its
own hostname (so its name differs); overlay mounts stay inside that namespace. Seeding builds the scenario
once into a cached *golden* engine, then gives every host a copy of its data-root whose immutable image
layers are hard links (near-free), and applies the scenario's small per-host variant.
"""

from __future__ import annotations

import contextlib
import datetime as _dt
import fcntl
import hashlib
import http.client
import json
import os
import shutil
import signal
import socket
import subprocess
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import yaml

from . import sandbox_transports as transports_mod
from .errors import EngineError, EnvironmentProblem, UsageError

Log = Callable[[str], None]

HOST_PREFIX = "sb-h"
GROUP = "sandbox"
STATE_FILE = "sandbox.json"
GOLDEN_CACHE_ENV = "ACGS_GOLDEN_CACHE"
DEFAULT_GOLDEN_CACHE = Path("/var/cache/acgs-remediate/golden")
MAX_HOSTS = 99
# Concurrent sandboxes (demo, tests, each engineer's) share this machine's network namespace, and the
# scenario's services bind an address derived from the engine name. Each live sandbox therefore holds a
# slot: slot 0 names its engines sb-h01..; slot k names them sb-h<k>01.. (distinct addresses).
SLOTS_DIR = Path("/run/acgs-remediate/sandbox-slots")
LOCKS_DIR = Path("/run/acgs-remediate/locks")
MAX_SLOTS = 99
# The longest socket path dockerd creates below an engine's base dir (containerd's debug socket).
_LONGEST_SOCKET_SUFFIX = "/exec/containerd/containerd-debug.sock"
_UNIX_PATH_MAX = 107
# Entries of a data-root that are never copied from the golden engine: containerd's own state and
# scratch space are rebuilt by each engine (and containerd's bolt DB embeds absolute paths).
_SKIP_IN_CLONE = {"containerd", "tmp", "runtimes"}
_ENGINE_PROGRAMS = (
    "dockerd",
    "containerd",
    "containerd-shim",
    "containerd-shim-runc-v2",
    "runc",
    "docker-init",
    "docker-proxy",
)


def _quiet(_msg: str) -> None:
    return None


# --------------------------------------------------------------------------------------------- status


@dataclass
class EngineStatus:
    """One sandbox engine as seen now."""

    name: str
    index: int
    docker_host: str
    pid: int | None
    running: bool
    engine_id: str | None = None
    engine_name: str | None = None
    server_version: str | None = None
    images: int | None = None
    containers: int | None = None
    containers_running: int | None = None


@dataclass
class SandboxStatus:
    """The whole sandbox: where it lives, what scenario it holds, and each engine."""

    directory: Path
    scenario: str | None = None
    content_hash: str | None = None
    created: str | None = None
    hosts: list[EngineStatus] = field(default_factory=list)
    # The sandbox's registry ("127.0.55.1:5000"), None when it runs without one (--no-registry).
    registry: str | None = None
    registry_pid: int | None = None
    registry_running: bool = False

    @property
    def exists(self) -> bool:
        """Return whether a sandbox is recorded in the directory."""
        return bool(self.hosts)

    @property
    def up(self) -> bool:
        """Return whether every recorded engine answers, and the registry too when there is one."""
        engines = bool(self.hosts) and all(h.running for h in self.hosts)
        return engines and (self.registry is None or self.registry_running)

    @property
    def inventory_path(self) -> Path:
        """Return the inventory written for this sandbox."""
        return self.directory / "inventory.yml"

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-ready mapping."""
        return {
            "directory": str(self.directory),
            "up": self.up,
            "scenario": self.scenario,
            "content_hash": self.content_hash,
            "created": self.created,
            "inventory": str(self.inventory_path) if self.exists else None,
            "registry": self.registry,
            "registry_running": self.registry_running,
            "hosts": [asdict(h) for h in self.hosts],
        }


# --------------------------------------------------------------------------------------------- engines


@dataclass(frozen=True)
class _Engine:
    """Where one dockerd keeps everything, and what it is called."""

    base: Path
    hostname: str  # the engine's name (/info Name); the services derive their 127.0.x.y from it
    cgroup_parent: str
    name: str = ""  # the inventory host name (sb-hNN); empty for the golden engine
    extra_args: tuple[str, ...] = ()  # more listeners (sandbox_transports: TLS on a 127.x address)

    @property
    def root(self) -> Path:
        return self.base / "root"

    @property
    def exec_root(self) -> Path:
        return self.base / "exec"

    @property
    def etc(self) -> Path:
        return self.base / "etc"

    @property
    def sock(self) -> Path:
        return self.base / "docker.sock"

    @property
    def pidfile(self) -> Path:
        return self.base / "docker.pid"

    @property
    def logfile(self) -> Path:
        return self.base / "dockerd.log"

    @property
    def docker_host(self) -> str:
        return f"unix://{self.sock}"

    def argv(self) -> list[str]:
        """Return the command that starts this engine in its own mount and UTS namespace."""
        # The shell step runs inside the new namespaces: our /etc/docker (own key.json -> own engine ID)
        # and our hostname (-> own engine name), then it becomes dockerd (same PID).
        script = 'mount --bind "$1" /etc/docker && hostname "$2" && shift 2 && exec "$@"'
        return [
            _which("unshare"),
            "--mount",
            "--uts",
            "--propagation",
            "slave",
            "--",
            "/bin/sh",
            "-c",
            script,
            "sh",
            str(self.etc),
            self.hostname,
            _which("dockerd"),
            "--data-root",
            str(self.root),
            "--exec-root",
            str(self.exec_root),
            "--pidfile",
            str(self.pidfile),
            "-H",
            self.docker_host,
            "--config-file",
            str(self.etc / "daemon.json"),
            "--cgroup-parent",
            f"/{self.cgroup_parent}",
            "--bridge=none",
            "--iptables=false",
            "--ip6tables=false",
            "--ip-forward=false",
            "--userland-proxy=false",
            # Containers run with --init; a short grace keeps engine stops quick.
            "--shutdown-timeout=5",
            *self.extra_args,
        ]


def _which(program: str) -> str:
    path = shutil.which(program) or shutil.which(program, path="/usr/sbin:/usr/bin:/sbin:/bin")
    if not path:
        raise EnvironmentProblem(
            f"{program} not found", hint="apt-get install docker.io util-linux (or run 'make setup')"
        )
    return path


# Engines this process started; waited on so they leave no zombies in long-lived processes (pytest).
_CHILDREN: dict[int, subprocess.Popen[bytes]] = {}


def _pid_alive(pid: int) -> bool:
    child = _CHILDREN.get(pid)
    if child is not None:
        if child.poll() is not None:
            _CHILDREN.pop(pid, None)
            return False
        return True
    try:
        with open(f"/proc/{pid}/stat", encoding="ascii", errors="replace") as f:
            state = f.read().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


def _read_pid(path: Path) -> int | None:
    try:
        return int(path.read_text().strip())
    except (OSError, ValueError):
        return None


def _proc_cmdline(pid: int) -> list[str]:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return [a.decode(errors="replace") for a in f.read().split(b"\0") if a]
    except OSError:
        return []


def _api(sock: Path, method: str, path: str, timeout: float = 5.0, body: Any = None) -> tuple[int, Any]:
    """Return (status, decoded JSON or None) of one Engine API call over a unix socket."""

    class _Conn(http.client.HTTPConnection):
        def connect(self) -> None:
            s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            s.settimeout(timeout)
            s.connect(str(sock))
            self.sock = s

    conn = _Conn("localhost", timeout=timeout)
    try:
        payload = json.dumps(body).encode() if body is not None else None
        headers = {"Content-Type": "application/json"} if payload is not None else {}
        conn.request(method, path, body=payload, headers=headers)
        resp = conn.getresponse()
        raw = resp.read()
        try:
            data = json.loads(raw) if raw else None
        except ValueError:
            data = raw.decode(errors="replace")
        return resp.status, data
    finally:
        conn.close()


def _ping(sock: Path) -> bool:
    try:
        return _api(sock, "GET", "/_ping", timeout=2.0)[0] == 200
    except OSError:
        return False


def _start_engine(engine: _Engine) -> int:
    """Start one dockerd (not waiting for it); return its PID."""
    for d in (engine.root, engine.exec_root, engine.etc):
        d.mkdir(parents=True, exist_ok=True)
    cfg = engine.etc / "daemon.json"
    if not cfg.exists():
        # Our own (empty) config file: the machine's /etc/docker/daemon.json must not apply.
        cfg.write_text("{}\n")
    stale = _read_pid(engine.pidfile)
    if stale is not None and not _pid_alive(stale):
        engine.pidfile.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        engine.sock.unlink()
    with open(engine.logfile, "ab") as log:
        # A new session: the engines outlive the CLI and ignore its Ctrl-C.
        proc = subprocess.Popen(
            engine.argv(),
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    _CHILDREN[proc.pid] = proc
    return proc.pid


def _wait_ready(engine: _Engine, pid: int, timeout: float = 60.0) -> None:
    """Wait until the engine answers /_ping; raise EngineError with its log's tail if it died or hung."""
    deadline = time.monotonic() + timeout
    delay = 0.05
    while time.monotonic() < deadline:
        if _ping(engine.sock):
            return
        if not _pid_alive(pid):
            break
        time.sleep(delay)
        delay = min(delay * 1.5, 0.5)
    tail = ""
    with contextlib.suppress(OSError):
        lines = [ln for ln in engine.logfile.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1][-300:] if lines else ""
    state = "exited" if not _pid_alive(pid) else f"did not answer within {timeout:.0f} s"
    raise EngineError(f"dockerd for {engine.hostname} {state}: {tail}", hint=f"see {engine.logfile}")


def _processes_of(engine: _Engine) -> list[int]:
    """Return PIDs of dockerd/containerd/shims whose command line names this engine's directories."""
    marker = f"{engine.base}/"
    me = os.getpid()
    found: list[int] = []
    for entry in os.scandir("/proc"):
        if not entry.name.isdigit() or int(entry.name) == me:
            continue
        args = _proc_cmdline(int(entry.name))
        if not args:
            continue
        prog = os.path.basename(args[0])
        # Only the engine's own programs: never a user's `tail -f D/h01/dockerd.log`.
        if not (prog in _ENGINE_PROGRAMS or prog.startswith("containerd-shim") or prog == "unshare"):
            continue
        if any(marker in a or a == str(engine.base) for a in args[1:]):
            found.append(int(entry.name))
    return found


def _cgroup_dirs(parent: str) -> list[Path]:
    """Return every cgroup directory (all hierarchies, v1 and v2) named after ``parent``."""
    base = Path("/sys/fs/cgroup")
    dirs = []
    if (base / parent).is_dir():
        dirs.append(base / parent)
    with contextlib.suppress(OSError):
        for ctl in base.iterdir():
            if (ctl / parent).is_dir():
                dirs.append(ctl / parent)
    return dirs


def _cgroup_pids(parent: str) -> set[int]:
    pids: set[int] = set()
    for top in _cgroup_dirs(parent):
        for dirpath, _dirs, files in os.walk(top):
            if "cgroup.procs" in files:
                with contextlib.suppress(OSError, ValueError):
                    pids.update(int(x) for x in Path(dirpath, "cgroup.procs").read_text().split())
    return pids


def _remove_cgroups(parent: str) -> None:
    for top in _cgroup_dirs(parent):
        for dirpath, _dirs, _files in sorted(os.walk(top), key=lambda t: -len(t[0])):
            with contextlib.suppress(OSError):
                os.rmdir(dirpath)


def _signal(pids: Iterable[int], sig: int) -> None:
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.kill(pid, sig)


def _wait_gone(pids: Iterable[int], timeout: float) -> list[int]:
    """Wait until the PIDs are gone; return those still alive after ``timeout``."""
    left = list(pids)
    deadline = time.monotonic() + timeout
    while left and time.monotonic() < deadline:
        left = [p for p in left if _pid_alive(p)]
        if left:
            time.sleep(0.05)
    return [p for p in left if _pid_alive(p)]


def _stop_engine(engine: _Engine, pid: int | None, graceful: bool = True, timeout: float = 30.0) -> None:
    """Stop one engine and everything it left behind (containerd, shims, container processes, cgroups)."""
    main = [p for p in {pid, _read_pid(engine.pidfile)} if p and _pid_alive(p)]
    if graceful and main:
        _signal(main, signal.SIGTERM)
        main = _wait_gone(main, timeout)
    _signal(main, signal.SIGKILL)
    _wait_gone(main, 5.0)
    # After dockerd is gone: shims and container processes may survive it (a SIGKILLed dockerd
    # never stops them). End them by PID: the shims by their exec-root, containers by cgroup.
    for _ in range(3):
        leftovers = set(_processes_of(engine)) | _cgroup_pids(engine.cgroup_parent)
        leftovers.discard(os.getpid())
        if not leftovers:
            break
        _signal(leftovers, signal.SIGKILL)
        _wait_gone(leftovers, 5.0)
    for p in [pid, _read_pid(engine.pidfile)]:
        if p is not None and p in _CHILDREN:
            with contextlib.suppress(subprocess.TimeoutExpired):
                _CHILDREN.pop(p).wait(timeout=1)
    _remove_cgroups(engine.cgroup_parent)
    # The exec-root is runtime state only; a stale containerd.pid there (its PID now a zombie or reused)
    # makes the next dockerd wait for a containerd that never answers.
    if not _mounts_under(engine.exec_root):
        shutil.rmtree(engine.exec_root, ignore_errors=True)
    engine.pidfile.unlink(missing_ok=True)
    with contextlib.suppress(FileNotFoundError):
        engine.sock.unlink()


def _mounts_under(path: Path) -> list[str]:
    """Return mount points in our namespace at or below ``path`` (deepest first)."""
    prefix = str(path).rstrip("/") + "/"
    points = []
    with contextlib.suppress(OSError):
        for line in Path("/proc/self/mountinfo").read_text().splitlines():
            point = line.split()[4].replace("\\040", " ")
            if point == str(path) or point.startswith(prefix):
                points.append(point)
    return sorted(points, key=len, reverse=True)


def _unmount_under(path: Path) -> None:
    for point in _mounts_under(path):
        subprocess.run([_which("umount"), "-l", point], check=False, capture_output=True)


def _mount_small_disk(engine: _Engine, size: int) -> None:
    """Give ``engine`` a data root on its own ext4 filesystem of ``size`` bytes (a loop-mounted image file).

    A fault test's full disk: the engine's data root fills up while the machine's disk does not. The image
    file is ``base/disk.img`` (sparse); the mount is in our namespace, so the engine (started after it, in a
    slave mount namespace) sees it, and ``sandbox down`` unmounts it with everything under the sandbox.
    Raises EnvironmentProblem when mkfs.ext4 or the loop mount fails (no loop devices in a container).
    """
    if os.path.ismount(engine.root):
        return
    engine.root.mkdir(parents=True, exist_ok=True)
    image = engine.base / "disk.img"
    with open(image, "wb") as fh:
        fh.truncate(size)
    steps = (
        [_which("mkfs.ext4"), "-q", "-F", "-m", "0", str(image)],
        [_which("mount"), "-o", "loop", str(image), str(engine.root)],
    )
    for argv in steps:
        proc = subprocess.run(argv, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise EnvironmentProblem(
                f"cannot make the small data root of {engine.name}: {(proc.stderr or proc.stdout).strip()}",
                hint="a small disk needs mkfs.ext4 and a free loop device (losetup -f)",
            )


def _empty(path: Path) -> None:
    """Remove everything in ``path`` (kept: it may be a mount point); create it when missing."""
    if not path.is_dir():
        path.mkdir(parents=True)
        return
    for entry in path.iterdir():
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry)
        else:
            entry.unlink()


def _running_container_ids(sock: Path) -> list[str]:
    status, data = _api(sock, "GET", "/containers/json", timeout=30.0)
    if status != 200:
        raise EngineError(f"listing containers on {sock} failed: HTTP {status}")
    return sorted(c["Id"] for c in data)


def _ensure_running(sock: Path, ids: Iterable[str]) -> None:
    """Start the containers that ran in the golden engine (those without a restart policy stay stopped)."""
    for cid in ids:
        status, data = _api(sock, "GET", f"/containers/{cid}/json", timeout=30.0)
        if status == 200 and data.get("State", {}).get("Running"):
            continue
        code, resp = _api(sock, "POST", f"/containers/{cid}/start", timeout=60.0)
        if code not in (204, 304):
            raise EngineError(f"starting container {cid[:12]} on {sock} failed: HTTP {code} {resp}")


# --------------------------------------------------------------------------------------------- registry

REGISTRY_PORT = 5000
# Images phase 2 pushes go under this namespace of the sandbox registry (acgs_policy.registry).
REGISTRY_NAMESPACE = "acgs"


@dataclass(frozen=True)
class _Registry:
    """The sandbox's image registry: Debian's docker-registry (distribution 2.x), one process, own storage."""

    base: Path  # D/registry
    address: str  # 127.0.55.<slot+1>:5000 — a 127.x address, which engines treat as an insecure registry

    @property
    def config(self) -> Path:
        return self.base / "config.yml"

    @property
    def storage(self) -> Path:
        return self.base / "data"

    @property
    def logfile(self) -> Path:
        return self.base / "registry.log"

    def config_text(self) -> str:
        return yaml.safe_dump(
            {
                "version": 0.1,
                "log": {"level": "warn", "fields": {"service": "registry"}},
                "storage": {
                    "filesystem": {"rootdirectory": str(self.storage)},
                    "delete": {"enabled": True},
                    "maintenance": {"uploadpurging": {"enabled": False}},
                },
                "http": {"addr": self.address, "headers": {"X-Content-Type-Options": ["nosniff"]}},
            },
            sort_keys=False,
        )


def registry_address(slot: int) -> str:
    """Return where the registry of sandbox ``slot`` listens: 127.0.55.<slot+1>:5000 (distinct per sandbox)."""
    return f"127.0.55.{slot + 1}:{REGISTRY_PORT}"


def _registry_ping(address: str, timeout: float = 2.0) -> bool:
    """Return whether a registry answers GET /v2/ at ``address`` (host:port) with 200."""
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=timeout)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _registry_pids(reg: _Registry, recorded: int | None) -> list[int]:
    """Return the live PIDs running this registry: the recorded one, if it is still ours, and any other."""
    found = []
    marker = str(reg.config)
    candidates = {recorded} if recorded else set()
    for entry in os.scandir("/proc"):
        if entry.name.isdigit():
            candidates.add(int(entry.name))
    for pid in candidates:
        # A PID is only ours when its command line names our config file (PIDs are reused).
        if pid and pid != os.getpid() and marker in _proc_cmdline(pid) and _pid_alive(pid):
            found.append(pid)
    return found


def _start_registry(reg: _Registry, timeout: float = 30.0) -> int:
    """Start the registry and wait until GET /v2/ answers; return its PID. Raise EngineError if it does not."""
    program = shutil.which("docker-registry") or shutil.which("docker-registry", path="/usr/bin:/usr/sbin")
    if not program:
        raise EnvironmentProblem(
            "docker-registry not found (the sandbox runs a real registry for phase 2)",
            hint="apt-get install docker-registry (or run 'make setup'), or pass --no-registry",
        )
    reg.storage.mkdir(parents=True, exist_ok=True)
    _write_atomic(reg.config, reg.config_text())
    if _registry_ping(reg.address, timeout=1.0):
        raise EngineError(
            f"something already answers as a registry on {reg.address}",
            hint="another sandbox holds this address: bring it down, or pass --no-registry",
        )
    with open(reg.logfile, "ab") as log:
        proc = subprocess.Popen(
            [program, "serve", str(reg.config)],
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            close_fds=True,
            cwd="/",
        )
    _CHILDREN[proc.pid] = proc
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if _registry_ping(reg.address, timeout=1.0):
            return proc.pid
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    _stop_registry(reg, proc.pid)
    tail = ""
    with contextlib.suppress(OSError):
        lines = [ln for ln in reg.logfile.read_text(errors="replace").splitlines() if ln.strip()]
        tail = lines[-1][-300:] if lines else ""
    raise EngineError(f"the sandbox registry on {reg.address} did not start: {tail}", hint=f"see {reg.logfile}")


def _stop_registry(reg: _Registry, pid: int | None, timeout: float = 10.0) -> None:
    """End the registry by PID (SIGTERM, then SIGKILL); only processes running our config are touched."""
    pids = _registry_pids(reg, pid)
    _signal(pids, signal.SIGTERM)
    _signal(_wait_gone(pids, timeout), signal.SIGKILL)
    _wait_gone(pids, 5.0)
    for p in pids:
        child = _CHILDREN.pop(p, None)
        if child is not None:
            with contextlib.suppress(subprocess.TimeoutExpired):
                child.wait(timeout=1)


# --------------------------------------------------------------------------------------------- helpers


@contextlib.contextmanager
def _flock(path: Path, shared: bool = False) -> Iterator[None]:
    """Hold a lock on ``path`` (blocks): two concurrent `up`s never build the same thing twice.

    Shared holders (copying from a golden engine) keep it from being pruned meanwhile.
    """
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "a+") as f:
        fcntl.flock(f, fcntl.LOCK_SH if shared else fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_atomic(path: Path, text: str) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(text)
    os.replace(tmp, path)


def _golden_cache() -> Path:
    return Path(os.environ.get(GOLDEN_CACHE_ENV) or DEFAULT_GOLDEN_CACHE)


def _layer_dirs(root: Path) -> set[str]:
    """Return the overlay2 directory names of image layers (immutable: safe to hard-link between engines)."""
    names: set[str] = set()
    layerdb = root / "image" / "overlay2" / "layerdb" / "sha256"
    with contextlib.suppress(OSError):
        for chain in layerdb.iterdir():
            with contextlib.suppress(OSError):
                names.add((chain / "cache-id").read_text().strip())
    return names


def _clone_data_root(golden: _Engine, host: _Engine) -> None:
    """Give ``host`` a copy of the golden data-root: image layers hard-linked, everything else copied."""
    src, dst = golden.root, host.root
    _empty(dst)  # not removed: a small data root is a mount point
    cp = _which("cp")
    # Hard links cannot cross filesystems (a host with its own small data root): copy the layers there.
    link_flag = "-al" if os.stat(src).st_dev == os.stat(dst).st_dev else "-a"
    layers = _layer_dirs(src)
    for entry in sorted(src.iterdir()):
        if entry.name in _SKIP_IN_CLONE:
            continue
        if entry.name != "overlay2":
            subprocess.run([cp, "-a", str(entry), str(dst / entry.name)], check=True, capture_output=True)
            continue
        (dst / "overlay2").mkdir()
        linked, copied = [], []
        for d in (src / "overlay2").iterdir():
            (linked if d.name in layers else copied).append(str(d))
        # Container layers (and l/ with its relative symlinks) are written to: real copies.
        # Batches keep argv well below the kernel's limit.
        for flag, items in ((link_flag, linked), ("-a", copied)):
            for i in range(0, len(items), 500):
                chunk = items[i : i + 500]
                if chunk:
                    subprocess.run([cp, flag, *chunk, str(dst / "overlay2")], check=True, capture_output=True)
    # Container configs embed the golden engine's absolute paths (log, hosts, resolv.conf, netns, volumes).
    pairs = [(f"{golden.root}/", f"{host.root}/"), (f"{golden.exec_root}/", f"{host.exec_root}/")]
    for cfg in list(dst.glob("containers/*/*.json")):
        text = cfg.read_text()
        new = text
        for old, repl in pairs:
            new = new.replace(old, repl)
        if new != text:
            cfg.write_text(new)


def _slot_alive(directory: Path, slot: int) -> bool:
    """Return whether the sandbox in ``directory`` still exists and holds ``slot``."""
    try:
        return int(json.loads((directory / STATE_FILE).read_text()).get("slot", -1)) == slot
    except (OSError, ValueError, TypeError, AttributeError):
        return False


def _load_scenario_module() -> Any:
    try:
        from . import scenario as scenario_module
    except ImportError as exc:
        raise EnvironmentProblem(
            f"the scenario module is not available: {exc}", hint="use --scenario none for empty engines"
        ) from None
    needed = (
        "load_scenario",
        "prepare_sources",
        "policy_vars",
        "ensure_wheelhouse",
        "seed_engine",
        "apply_variant",
    )
    missing = [name for name in needed if not callable(getattr(scenario_module, name, None))]
    if missing:
        # Checked before anything is started or removed: a half-built sandbox helps no one.
        raise EnvironmentProblem(
            f"acgs_remediate.scenario lacks {', '.join(missing)}",
            hint="use --scenario none for empty engines",
        )
    return scenario_module


@contextlib.contextmanager
def _scenario_step(what: str, logfile: Path | None = None) -> Iterator[None]:
    """Turn a failure inside the scenario's code into one EngineError line (no traceback for the user)."""
    try:
        yield
    except (EngineError, UsageError):
        raise
    except Exception as exc:
        detail = str(exc).strip().splitlines()[-1][:300] if str(exc).strip() else type(exc).__name__
        hint = f"see {logfile}" if logfile else "run again; the scenario's own message is above"
        raise EngineError(f"{what} failed: {detail}", hint=hint) from exc


# --------------------------------------------------------------------------------------------- sandbox


class Sandbox:
    """A sandbox fleet living in one directory (see the module docstring for its layout)."""

    def __init__(self, directory: Path | str) -> None:
        self.directory = Path(directory).absolute()

    # ---- paths and names

    @property
    def state_path(self) -> Path:
        """Return D/sandbox.json."""
        return self.directory / STATE_FILE

    @property
    def inventory_path(self) -> Path:
        """Return D/inventory.yml."""
        return self.directory / "inventory.yml"

    @property
    def _lock_path(self) -> Path:
        # Outside D (D is removed on down) and out of the user's directories: one lock per sandbox path.
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:16]
        return LOCKS_DIR / f"sandbox-{digest}.lock"

    @property
    def sources_root(self) -> Path:
        """Return D/sources (the scenario's service source trees)."""
        return self.directory / "sources"

    @staticmethod
    def host_name(index: int) -> str:
        """Return the inventory name of host ``index`` (0-based): sb-h01, sb-h02, ..."""
        return f"{HOST_PREFIX}{index + 1:02d}"

    @staticmethod
    def engine_name(index: int, slot: int) -> str:
        """Return the hostname of host ``index`` in sandbox ``slot``: sb-h01 or sb-h<slot>01."""
        return f"{HOST_PREFIX}{index + 1:02d}" if slot == 0 else f"{HOST_PREFIX}{slot}{index + 1:02d}"

    def _engine(self, index: int, slot: int | None = None, transports: list[str] | None = None) -> _Engine:
        digest = hashlib.sha1(str(self.directory).encode()).hexdigest()[:8]
        if slot is None or transports is None:
            state = self._state()
            slot = int(state.get("slot", 0) or 0) if slot is None else slot
            transports = list(state.get("transports") or ["unix"]) if transports is None else transports
        extra = transports_mod.tls_daemon_args(self.directory, index) if "tls" in transports else []
        return _Engine(
            self.directory / f"h{index + 1:02d}",
            self.engine_name(index, slot),
            f"acgs-{digest}-h{index + 1:02d}",
            self.host_name(index),
            tuple(extra),
        )

    def _registry(self, state: dict[str, Any] | None = None) -> _Registry | None:
        """Return the recorded registry of this sandbox, or None when it runs without one."""
        state = self._state() if state is None else state
        rec = state.get("registry")
        if not rec:
            return None
        return _Registry(self.directory / "registry", str(rec["address"]))

    def _claim_slot(self) -> int:
        """Return a slot no other live sandbox holds (ours again if we hold one); record it."""
        with _flock(SLOTS_DIR.parent / "sandbox-slots.lock"):
            SLOTS_DIR.mkdir(parents=True, exist_ok=True)
            for k in range(MAX_SLOTS + 1):
                path = SLOTS_DIR / str(k)
                holder = path.read_text().strip() if path.is_file() else ""
                # A just-claimed slot counts as held even before its sandbox.json records it.
                fresh = holder and time.time() - path.stat().st_mtime < 300
                if holder and holder != str(self.directory) and (fresh or _slot_alive(Path(holder), k)):
                    continue
                _write_atomic(path, f"{self.directory}\n")
                return k
        raise EngineError(f"all {MAX_SLOTS + 1} sandbox slots are taken", hint="bring a sandbox down first")

    def _release_slot(self) -> None:
        with contextlib.suppress(OSError), _flock(SLOTS_DIR.parent / "sandbox-slots.lock"):
            for path in SLOTS_DIR.iterdir():
                if path.read_text().strip() == str(self.directory):
                    path.unlink()

    def _index(self, host: str) -> int:
        state = self._state()
        names = [h["name"] for h in state.get("hosts", [])]
        if host not in names:
            raise UsageError(
                f"no sandbox host {host!r} in {self.directory}",
                hint=f"hosts there: {', '.join(names) or '(none: run sandbox up)'}",
            )
        return names.index(host)

    def docker_host(self, host: str) -> str:
        """Return the docker_host URL of sandbox host ``host``."""
        return self._engine(self._index(host)).docker_host

    def hosts(self) -> list[str]:
        """Return the recorded host names."""
        return [h["name"] for h in self._state().get("hosts", [])]

    # ---- recorded state

    def _state(self) -> dict[str, Any]:
        try:
            data = json.loads(self.state_path.read_text())
        except FileNotFoundError:
            return {}
        except (OSError, ValueError) as exc:
            raise UsageError(
                f"{self.state_path} is unreadable: {exc}",
                hint="run 'acgs-remediate sandbox down' to clean it up",
            ) from None
        return data if isinstance(data, dict) else {}

    def _save_state(self, state: dict[str, Any]) -> None:
        _write_atomic(self.state_path, json.dumps(state, indent=2) + "\n")

    # ---- checks

    def _check_directory(self) -> None:
        sock = f"{self._engine(MAX_HOSTS - 1, slot=0).base}{_LONGEST_SOCKET_SUFFIX}"
        if len(sock) > _UNIX_PATH_MAX:
            raise UsageError(
                f"sandbox directory {self.directory} is too long for unix socket paths "
                f"({len(str(self.directory))} characters)",
                hint="use a short --dir such as /var/lib/acgs-sb",
            )
        if self.directory.exists() and not self.directory.is_dir():
            raise UsageError(f"{self.directory} exists and is not a directory", hint="pass another --dir")
        if self.directory.is_dir() and not self.state_path.exists():
            ours = {STATE_FILE, "inventory.yml", "group_vars", "sources", "work", "registry", "ssh", "tls"}
            ours |= {f"inventory-{t}.yml" for t in transports_mod.TRANSPORTS}
            foreign = [
                p.name
                for p in self.directory.iterdir()
                if p.name not in ours and not (p.name.startswith("h") and p.name[1:].isdigit())
            ]
            if foreign:
                raise UsageError(
                    f"{self.directory} is not empty and holds no sandbox (found {foreign[0]})",
                    hint="pass an empty or new --dir; the sandbox deletes its directory on down",
                )

    # ---- the public operations

    def status(self, probe: bool = True) -> SandboxStatus:
        """Return what the recorded sandbox looks like now (engines probed over their sockets)."""
        state = self._state()
        result = SandboxStatus(self.directory, state.get("scenario"), state.get("content_hash"), state.get("created"))
        reg = self._registry(state)
        if reg is not None:
            result.registry = reg.address
            pids = _registry_pids(reg, state["registry"].get("pid"))
            result.registry_pid = pids[0] if pids else None
            result.registry_running = bool(pids) and (not probe or _registry_ping(reg.address))
        for i, rec in enumerate(state.get("hosts", [])):
            engine = self._engine(i)
            pid = _read_pid(engine.pidfile) or rec.get("pid")
            es = EngineStatus(rec["name"], i, engine.docker_host, pid, False)
            if probe and pid and _pid_alive(pid):
                with contextlib.suppress(OSError, ValueError, TypeError):
                    code, info = _api(engine.sock, "GET", "/info", timeout=5.0)
                    if code == 200:
                        es.running = True
                        es.engine_id, es.engine_name = info.get("ID"), info.get("Name")
                        es.server_version = info.get("ServerVersion")
                        es.containers, es.containers_running = (
                            info.get("Containers"),
                            info.get("ContainersRunning"),
                        )
                        code, images = _api(engine.sock, "GET", "/images/json", timeout=10.0)
                        es.images = len(images) if code == 200 else None
            result.hosts.append(es)
        return result

    def up(
        self,
        hosts: int,
        scenario: str | None = "acgs-1",
        log: Log = _quiet,
        registry: bool = True,
        transport: str = "unix",
        small_disk: int | None = None,
    ) -> SandboxStatus:
        """Start ``hosts`` engines (and a registry unless ``registry`` is False), write the inventory, seed
        ``scenario`` (None/"none": empty engines).

        The registry is Debian's docker-registry on 127.0.55.<slot+1>:5000, storage under D/registry; the
        inventory's ``acgs_policy.registry`` names it (``ADDRESS/acgs``) so phase 2 ships through it.
        ``transport``: how the inventory reaches the engines: unix (sockets), ssh (a real sshd, see
        sandbox_transports) or tls (dockerd --tlsverify on 127.x:2376), or a comma list of them: the first
        writes D/inventory.yml, each writes D/inventory-<transport>.yml (the same engines, reached its way).
        ``small_disk``: bytes; the last host's data root is then its own ext4 filesystem of that size (a
        loop-mounted file, for tests of an engine whose disk fills up); None: every host on the machine's disk.
        """
        if small_disk is not None and small_disk < 64_000_000:
            raise UsageError(f"--small-disk must be at least 64MB, not {small_disk} bytes")
        if not 1 <= hosts <= MAX_HOSTS:
            raise UsageError(f"--hosts must be between 1 and {MAX_HOSTS}, not {hosts}")
        transports = transports_mod.parse_transports(transport)
        scen_name = None if scenario in (None, "", "none") else scenario
        check_environment()
        self._check_directory()
        scen_mod = scen = None
        content_hash = None
        if scen_name is not None:
            scen_mod = _load_scenario_module()
            scen = scen_mod.load_scenario(scen_name)
            content_hash = scen.content_hash()

        with _flock(self._lock_path):
            state = self._state()
            if state:
                current = self.status()
                same = (
                    len(current.hosts) == hosts
                    and state.get("scenario") == (scen.name if scen else None)
                    and state.get("content_hash") == content_hash
                    and state.get("state") == "up"
                    and bool(state.get("registry")) == registry
                    and state.get("small_disk") == small_disk
                    and list(state.get("transports") or ["unix"]) == transports
                    and ("ssh" not in transports or _pid_alive(int(state.get("sshd_pid") or 0) or -1))
                )
                if same and current.registry is not None and not current.registry_running:
                    engines_up = bool(current.hosts) and all(h.running for h in current.hosts)
                    if engines_up:
                        log(f"restarting the sandbox registry on {current.registry}")
                        self.start_registry()
                        current = self.status()
                if same and current.up:
                    log(
                        f"sandbox in {self.directory} is already up with {hosts} hosts "
                        f"(scenario {state.get('scenario') or 'none'}): nothing to do"
                    )
                    return current
                why = (
                    "another size or scenario was asked for, or the scenario changed"
                    if current.up
                    else "it is not healthy (an engine is down or a previous run crashed)"
                )
                log(f"replacing the sandbox in {self.directory}: {why}")
            if state or self.directory.is_dir():
                self._teardown(log)
            return self._create(hosts, scen_mod, scen, content_hash, log, registry, transports, small_disk)

    def down(self, log: Log = _quiet) -> None:
        """Stop every engine and remove the sandbox: no process, mount or cgroup is left behind."""
        self._check_directory()
        if not self.directory.exists():
            log(f"no sandbox in {self.directory}: nothing to do")
            return
        check_environment(need_dockerd=False)
        with _flock(self._lock_path):
            self._teardown(log)

    def engine_pid(self, host: str) -> int | None:
        """Return the PID of ``host``'s dockerd (a fault test signals it: SIGSTOP, SIGKILL), None when down."""
        index = self._index(host)
        pid = _read_pid(self._engine(index).pidfile) or self._state()["hosts"][index].get("pid")
        return pid if pid and _pid_alive(pid) else None

    def stop_engine(self, host: str) -> None:
        """Stop one host's engine (a fault test: an engine down mid-run); its data stays."""
        index = self._index(host)
        engine = self._engine(index)
        _stop_engine(engine, self._state()["hosts"][index].get("pid"))

    def start_engine(self, host: str) -> None:
        """Start one host's engine again and wait until it answers."""
        index = self._index(host)
        engine = self._engine(index)
        if _ping(engine.sock):
            return
        _stop_engine(engine, None, graceful=False)  # clear leftovers of a killed engine
        pid = _start_engine(engine)
        _wait_ready(engine, pid)
        state = self._state()
        state["hosts"][index]["pid"] = pid
        self._save_state(state)

    def stop_registry(self) -> None:
        """Stop the sandbox registry (a fault test: the registry down mid-run); its storage stays."""
        state = self._state()
        reg = self._registry(state)
        if reg is None:
            raise UsageError(f"the sandbox in {self.directory} runs no registry", hint="sandbox up --registry")
        _stop_registry(reg, state["registry"].get("pid"))
        state["registry"]["pid"] = None
        self._save_state(state)

    def start_registry(self, empty: bool = False) -> None:
        """Start the sandbox registry again (``empty``: with no images) and wait until it answers."""
        state = self._state()
        reg = self._registry(state)
        if reg is None:
            raise UsageError(f"the sandbox in {self.directory} runs no registry", hint="sandbox up --registry")
        if empty or not _registry_ping(reg.address):
            _stop_registry(reg, state["registry"].get("pid"))
            if empty:
                shutil.rmtree(reg.storage, ignore_errors=True)
            state["registry"]["pid"] = _start_registry(reg)
            self._save_state(state)

    def reseed(self, hosts: list[str] | None = None, log: Log = _quiet) -> None:
        """Put ``hosts`` (default: all) back to the freshly seeded state: a fresh golden copy each."""
        check_environment()
        state = self._state()
        if not state:
            raise UsageError(f"no sandbox in {self.directory}", hint="run 'acgs-remediate sandbox up' first")
        names = [h["name"] for h in state["hosts"]]
        targets = names if hosts is None else hosts
        indexes = [self._index(h) for h in targets]
        scen_mod = scen = None
        golden = None
        if state.get("scenario"):
            scen_mod = _load_scenario_module()
            scen = scen_mod.load_scenario(state["scenario"])
            # The very golden engine this sandbox was made from, while it is cached: reseeded hosts
            # equal freshly upped ones even when the scenario's files changed since.
            golden = self._golden_recorded(state["scenario"], state.get("content_hash") or "")
            if golden is None:
                golden = self._golden(scen_mod, scen, log)
                state["content_hash"] = scen.content_hash()
                self._save_state(state)
        count = len(names)
        if scen is not None:
            # The sources are the fleet's build files on the control node; phase 1 repairs them, so
            # a reseed puts them back to the scenario's pristine (defective) state too.
            scen_mod.prepare_sources(scen, self.sources_root)

        def one(index: int) -> int:
            engine = self._engine(index)
            _stop_engine(engine, state["hosts"][index].get("pid"), graceful=False)
            if golden is not None:
                _clone_data_root(golden[0], engine)
            elif engine.root.exists():
                _empty(engine.root)
            pid = _start_engine(engine)
            _wait_ready(engine, pid)
            if golden is not None:
                _ensure_running(engine.sock, golden[1])
                with _scenario_step(f"scenario variant for {engine.hostname}", engine.logfile):
                    scen_mod.apply_variant(engine.docker_host, scen, index, count, log)
            return pid

        with contextlib.ExitStack() as stack:
            if golden is not None:
                stack.enter_context(_flock(golden[0].base.with_name(f"{golden[0].base.name}.lock"), shared=True))
            with ThreadPoolExecutor(max_workers=min(4, len(indexes)) or 1) as pool:
                pids = list(pool.map(one, indexes))
        state = self._state()
        for index, pid in zip(indexes, pids, strict=True):
            state["hosts"][index]["pid"] = pid
        self._save_state(state)
        if hosts is None and state.get("registry"):
            # The whole fleet back to its seeded state: the registry too (it starts empty).
            self.start_registry(empty=True)

    # ---- internals

    def _teardown(self, log: Log) -> None:
        """Stop engines recorded or found in D, clean leftovers, remove D (only what a sandbox creates)."""
        state = self._state()
        recorded = {i: h.get("pid") for i, h in enumerate(state.get("hosts", []))}
        # Also engines of a crashed `up` that never got recorded: every hNN directory present.
        if self.directory.is_dir():
            for p in self.directory.iterdir():
                if p.is_dir() and p.name.startswith("h") and p.name[1:].isdigit():
                    recorded.setdefault(int(p.name[1:]) - 1, None)
        if recorded:
            log(f"stopping {len(recorded)} engines")
        with ThreadPoolExecutor(max_workers=min(20, len(recorded)) or 1) as pool:
            # Its data is deleted next: a graceful engine stop (containers stopped one by one) buys nothing.
            list(
                pool.map(
                    lambda item: _stop_engine(self._engine(item[0]), item[1], graceful=False),
                    recorded.items(),
                )
            )
        reg_dir = self.directory / "registry"
        if state.get("registry") or reg_dir.is_dir():
            # Found by its config path even when the state file is gone (a crashed up).
            reg = self._registry(state) or _Registry(reg_dir, "")
            _stop_registry(reg, (state.get("registry") or {}).get("pid"))
            log("registry stopped")
        _unmount_under(self.directory)
        left = _mounts_under(self.directory)
        if left:
            raise EngineError(f"cannot unmount {left[0]}", hint="check what holds it with 'fuser -m'")
        if (self.directory / "ssh").is_dir():
            transports_mod.stop_sshd(transports_mod.SSHFiles(self.directory / "ssh"), state.get("sshd_pid"))
        bases = [self._engine(i).base for i in recorded]
        for name in ("inventory.yml", STATE_FILE, *(f"inventory-{t}.yml" for t in transports_mod.TRANSPORTS)):
            (self.directory / name).unlink(missing_ok=True)
        with ThreadPoolExecutor(max_workers=min(8, len(bases)) or 1) as pool:
            list(pool.map(lambda base: shutil.rmtree(base, ignore_errors=True), bases))
        for name in ("group_vars", "sources", "work", "registry", "ssh", "tls"):
            shutil.rmtree(self.directory / name, ignore_errors=True)
        with contextlib.suppress(OSError):
            self.directory.rmdir()
        self._release_slot()
        log(f"sandbox in {self.directory} removed")

    @staticmethod
    def _golden_engine(name: str, content_hash: str) -> tuple[_Engine, str]:
        key = f"{name}-{content_hash[:12]}"
        return _Engine(_golden_cache() / key, f"golden-{name}"[:63], f"acgs-golden-{key}"), key

    def _golden_recorded(self, name: str, content_hash: str) -> tuple[_Engine, list[str]] | None:
        """Return the cached golden engine of this scenario version, or None when it is not cached."""
        engine, _key = self._golden_engine(name, content_hash)
        with contextlib.suppress(OSError, ValueError):
            meta = json.loads((engine.base / "golden.json").read_text())
            return engine, list(meta.get("running", []))
        return None

    def _golden(self, scen_mod: Any, scen: Any, log: Log) -> tuple[_Engine, list[str]]:
        """Return the golden engine (seeded, stopped, cached) and the containers that ran in it."""
        engine, key = self._golden_engine(scen.name, scen.content_hash())
        cache = _golden_cache()
        base = engine.base
        meta_path = base / "golden.json"
        with _flock(cache / f"{key}.lock"):
            if meta_path.is_file():
                meta = json.loads(meta_path.read_text())
                log(f"golden engine for {scen.name} cached in {base}")
                return engine, list(meta.get("running", []))
            if base.exists():
                log(f"removing an incomplete golden engine in {base}")
                _stop_engine(engine, None, graceful=False)
                shutil.rmtree(base)
            self._prune_golden(cache, scen.name, keep=key, log=log)
            t0 = time.monotonic()
            log(f"seeding the golden engine for scenario {scen.name} (once; cached in {base})")
            pid = _start_engine(engine)
            try:
                _wait_ready(engine, pid)
                work = base / "work"
                work.mkdir(parents=True, exist_ok=True)
                with _scenario_step(f"seeding scenario {scen.name} into the golden engine", engine.logfile):
                    scen_mod.seed_engine(engine.docker_host, scen, work, log)
                # What runs now must run on every copy (the engine stop below stops it all).
                running = _running_container_ids(engine.sock)
                # Restart once: drops the network sandboxes left by builds and runs, so copies start clean.
                _stop_engine(engine, pid)
                pid = _start_engine(engine)
                _wait_ready(engine, pid)
            finally:
                _stop_engine(engine, pid)
            shutil.rmtree(base / "work", ignore_errors=True)
            _write_atomic(
                meta_path,
                json.dumps(
                    {
                        "scenario": scen.name,
                        "content_hash": scen.content_hash(),
                        "root": str(engine.root),
                        "running": running,
                        "seconds": round(time.monotonic() - t0, 1),
                    },
                    indent=2,
                )
                + "\n",
            )
            log(f"golden engine seeded in {time.monotonic() - t0:.0f} s")
            return engine, running

    @staticmethod
    def _prune_golden(cache: Path, name: str, keep: str, log: Log) -> None:
        """Remove golden engines of older versions of the same scenario (disk is shared)."""
        for old in cache.glob(f"{name}-*"):
            if old.name == keep or not old.is_dir() or len(old.name) != len(keep):
                continue
            lock = cache / f"{old.name}.lock"
            with open(lock, "a+") as f:
                try:
                    fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except OSError:
                    continue  # another run uses it
                _stop_engine(_Engine(old, "golden", f"acgs-golden-{old.name}"), None, graceful=False)
                shutil.rmtree(old, ignore_errors=True)
                log(f"removed outdated golden engine {old}")
            lock.unlink(missing_ok=True)

    def _create(
        self,
        hosts: int,
        scen_mod: Any,
        scen: Any,
        content_hash: str | None,
        log: Log,
        registry: bool = True,
        transports: list[str] | None = None,
        small_disk: int | None = None,
    ) -> SandboxStatus:
        t0 = time.monotonic()
        transports = transports or ["unix"]
        self.directory.mkdir(parents=True, exist_ok=True)
        slot = self._claim_slot()
        engines = [self._engine(i, slot, transports) for i in range(hosts)]
        state: dict[str, Any] = {
            "version": 1,
            "state": "starting",
            "directory": str(self.directory),
            "slot": slot,
            "scenario": scen.name if scen else None,
            "content_hash": content_hash,
            "transports": transports,
            "created": _dt.datetime.now(_dt.UTC).isoformat(timespec="seconds"),
            "hosts": [
                {"name": e.name, "engine_name": e.hostname, "docker_host": e.docker_host, "pid": None} for e in engines
            ],
            "registry": {"address": registry_address(slot), "pid": None} if registry else None,
            "small_disk": small_disk,
        }
        # Recorded before anything starts, so a crash mid-way is found and cleaned by the next up/down.
        self._save_state(state)
        if "tls" in transports:
            log("making the TLS certificates (a CA, the engines', a client's)")
            transports_mod.prepare_tls(self.directory, hosts)
        if "ssh" in transports:
            log("making the ssh keys and configs (one restricted key per host)")
            transports_mod.prepare_ssh(self.directory, [(e.name, str(e.sock)) for e in engines])
        reg = self._registry(state)
        self._write_inventory(engines, scen_mod, scen, log, reg, transports)
        if reg is not None:
            state["registry"]["pid"] = _start_registry(reg)
            self._save_state(state)
            log(f"registry answers on {reg.address} (storage {reg.storage})")

        if small_disk is not None:
            log(f"giving {engines[-1].name} a data root of its own, {small_disk} bytes (ext4 on a loop device)")
            _mount_small_disk(engines[-1], small_disk)

        golden: tuple[_Engine, list[str]] | None = None
        if scen is not None:
            golden = self._golden(scen_mod, scen, log)
            t1 = time.monotonic()
            log(f"copying the golden data-root to {hosts} hosts")
            lock = golden[0].base.with_name(f"{golden[0].base.name}.lock")
            with _flock(lock, shared=True), ThreadPoolExecutor(max_workers=min(4, hosts)) as pool:
                list(pool.map(lambda e: _clone_data_root(golden[0], e), engines))
            log(f"copies done in {time.monotonic() - t1:.1f} s")

        log(f"starting {hosts} engines")
        pids = [_start_engine(e) for e in engines]
        for rec, pid in zip(state["hosts"], pids, strict=True):
            rec["pid"] = pid
        self._save_state(state)
        with ThreadPoolExecutor(max_workers=min(20, hosts)) as pool:
            list(pool.map(lambda ep: _wait_ready(*ep), zip(engines, pids, strict=True)))
        log(f"{hosts} engines answer ({time.monotonic() - t0:.1f} s)")
        if "ssh" in transports:
            ssh_files = transports_mod.SSHFiles(self.directory / "ssh")
            state["sshd_pid"] = transports_mod.start_sshd(ssh_files)
            self._save_state(state)
            log(f"sshd listens on {transports_mod.sshd_address(self.directory)}:{transports_mod.SSH_PORT}")

        if golden is not None:

            def finish(item: tuple[int, _Engine]) -> None:
                index, engine = item
                _ensure_running(engine.sock, golden[1])
                with _scenario_step(f"scenario variant for {engine.hostname}", engine.logfile):
                    scen_mod.apply_variant(engine.docker_host, scen, index, hosts, log)

            with ThreadPoolExecutor(max_workers=min(4, hosts)) as pool:
                list(pool.map(finish, enumerate(engines)))
            log(f"per-host variants applied ({time.monotonic() - t0:.1f} s)")

        state["state"] = "up"
        self._save_state(state)
        result = self.status()
        ids = {h.engine_id for h in result.hosts}
        if len(ids) != hosts:
            raise EngineError(
                "sandbox engines report the same engine ID",
                hint="each engine needs its own /etc/docker (unshare --mount); see dockerd.log",
            )
        log(f"sandbox up: {hosts} hosts in {time.monotonic() - t0:.1f} s; inventory {self.inventory_path}")
        return result

    def _endpoint_vars(self, index: int, engine: _Engine, transport: str) -> dict[str, Any]:
        """Return the host variables that reach ``engine`` over ``transport``."""
        if transport == "ssh":
            files = transports_mod.SSHFiles(self.directory / "ssh")
            return {"docker_host": f"ssh://{engine.name}", "docker_ssh_config": str(files.config)}
        if transport == "tls":
            tls = transports_mod.TLSFiles(self.directory / "tls")
            address = transports_mod.engine_address(self.directory, index)
            return {
                "docker_host": f"tcp://{address}:{transports_mod.TLS_PORT}",
                "docker_tls": True,
                "docker_validate_certs": True,
                "docker_ca_path": str(tls.ca),
                "docker_client_cert": str(tls.client_cert),
                "docker_client_key": str(tls.client_key),
            }
        return {"docker_host": engine.docker_host}

    def _write_inventory(
        self,
        engines: list[_Engine],
        scen_mod: Any,
        scen: Any,
        log: Log,
        registry: _Registry | None = None,
        transports: list[str] | None = None,
    ) -> None:
        transports = transports or ["unix"]
        bind = getattr(scen_mod, "bind_for_hostname", None) if scen is not None else None
        hosts: dict[str, dict[str, Any]] = {}
        for i, e in enumerate(engines):
            hosts[e.name] = {
                "docker_host": e.docker_host,
                "ansible_connection": "local",
                "ansible_python_interpreter": "{{ ansible_playbook_python }}",
                "acgs_sandbox_index": i,
                "acgs_sandbox_engine_name": e.hostname,
            }
            if callable(bind):
                # Where this host's services listen (health checks): derived from the engine name.
                hosts[e.name]["acgs_sandbox_bind_address"] = bind(e.hostname)
                # Phase 3 interpolates the compose file's ${ACGS_BIND} with it: the services listen there
                # and their HEALTHCHECK asks it (the compose file's default, "auto", is no address to ask).
                hosts[e.name]["acgs_deploy_env"] = {"ACGS_BIND": bind(e.hostname)}
        inventory = {"all": {"children": {GROUP: {"hosts": hosts}}}}
        if scen is not None:
            log(f"writing the scenario's sources to {self.sources_root}")
            with _scenario_step(f"preparing scenario {scen.name}'s sources and policy"):
                scen_mod.prepare_sources(scen, self.sources_root)
                # The scenario's own cache dir: seed_engine looks for the same wheelhouse there.
                cache = Path(getattr(scen_mod, "DEFAULT_CACHE", "/var/cache/acgs-remediate"))
                wheelhouse = scen_mod.ensure_wheelhouse(scen, cache)
                policy = scen_mod.policy_vars(scen, self.sources_root, wheelhouse)
        else:
            self.sources_root.mkdir(parents=True, exist_ok=True)
            policy = {"sources_root": str(self.sources_root)}
        if registry is not None:
            # Phase 2 ships images through it (engines treat 127.0.0.0/8 as an insecure registry).
            policy["registry"] = f"{registry.address}/{REGISTRY_NAMESPACE}"
        header = "# Written by 'acgs-remediate sandbox up'; removed by 'sandbox down'.\n"
        for k, transport in enumerate(transports):
            for i, e in enumerate(engines):
                hosts[e.name].pop("docker_ssh_config", None)
                for key in ("docker_tls", "docker_validate_certs", "docker_ca_path", "docker_client_cert"):
                    hosts[e.name].pop(key, None)
                hosts[e.name].pop("docker_client_key", None)
                hosts[e.name].update(self._endpoint_vars(i, e, transport))
            text = header + yaml.safe_dump(inventory, sort_keys=False)
            if k == 0:
                _write_atomic(self.inventory_path, text)
            if len(transports) > 1 or transport != "unix":
                # inventory-<transport>.yml reads the same group_vars (same directory).
                _write_atomic(self.directory / f"inventory-{transport}.yml", text)
        probes = {
            str(svc.get("compose_service") or svc["name"]): f"http://${{ACGS_BIND}}:{svc['port']}/health"
            for svc in policy.get("services") or []
            if svc.get("port")
        }
        if probes:
            # Phase 3 polls each service's health endpoint on the host's address while it switches and rolls
            # back: seconds of unavailability per service (the services answer GET /health on ACGS_BIND).
            policy.setdefault("deploy", {})["probes"] = probes
        gv = self.directory / "group_vars"
        gv.mkdir(exist_ok=True)
        _write_atomic(gv / "all.yml", header + yaml.safe_dump({"acgs_policy": policy}, sort_keys=False))


def check_environment(need_dockerd: bool = True) -> None:
    """Raise EnvironmentProblem (exit 2) naming what is missing to run sandbox engines."""
    if os.geteuid() != 0:
        raise EnvironmentProblem(
            "the sandbox needs root: it starts dockerd engines and mounts in namespaces",
            hint="run it as root (sudo acgs-remediate sandbox ...)",
        )
    if need_dockerd:
        missing = [p for p in ("dockerd", "containerd", "runc") if not shutil.which(p)]
        if missing:
            raise EnvironmentProblem(
                f"{', '.join(missing)} not found on PATH",
                hint="install the Docker engine: apt-get install docker.io (or run 'make setup')",
            )
    for prog in ("unshare", "mount"):
        if not shutil.which(prog):
            raise EnvironmentProblem(f"{prog} not found on PATH", hint="apt-get install util-linux mount")


def purge_golden_cache(log: Log = _quiet) -> None:
    """Delete the cached golden engines that no running `up` is using (they are rebuilt when needed)."""
    check_environment(need_dockerd=False)
    cache = _golden_cache()
    if not cache.is_dir():
        return
    for base in sorted(p for p in cache.iterdir() if p.is_dir()):
        lock = cache / f"{base.name}.lock"
        with open(lock, "a+") as f:
            try:
                fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                log(f"kept {base}: in use")
                continue
            _stop_engine(_Engine(base, "golden", f"acgs-golden-{base.name}"), None, graceful=False)
            shutil.rmtree(base, ignore_errors=True)
            log(f"removed golden engine {base}")
        lock.unlink(missing_ok=True)
