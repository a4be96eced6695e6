"""A throw-away dockerd for the role's molecule scenario: start (by PID, under its own dir), seed, stop.

Usage: python engine.py start|seed|age|stop DIR
The engine has no network (bridge off); images are built FROM scratch with busybox-static.
"""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

BUSYBOX = "/bin/busybox"


def _docker(d: Path, *args: str, stdin: str | None = None) -> str:
    env = {**os.environ, "DOCKER_BUILDKIT": "0", "DOCKER_CONFIG": str(d / "cli")}
    out = subprocess.run(["/usr/bin/docker", "-H", f"unix://{d}/docker.sock", *args], input=stdin, env=env,
                         check=True, capture_output=True, text=True)
    return out.stdout.strip()


def start(d: Path) -> None:
    """Start dockerd under ``d`` and wait until it answers."""
    d.mkdir(parents=True, exist_ok=True)
    (d / "daemon.json").write_text("{}")
    argv = ["dockerd", f"--data-root={d}/root", f"--exec-root={d}/exec", f"--pidfile={d}/docker.pid",
            f"-H=unix://{d}/docker.sock", f"--config-file={d}/daemon.json", "--bridge=none", "--iptables=false",
            "--ip6tables=false", "--ip-forward=false", "--userland-proxy=false", "--storage-driver=overlay2"]
    with open(d / "dockerd.log", "ab") as log:
        proc = subprocess.Popen(argv, stdout=log, stderr=log, start_new_session=True)
    (d / "dockerd.pid").write_text(str(proc.pid))
    for _ in range(200):
        try:
            _docker(d, "version")
            return
        except subprocess.CalledProcessError:
            time.sleep(0.1)
    raise SystemExit(f"dockerd under {d} did not answer; see {d}/dockerd.log")


def _build(d: Path, tag: str, dockerfile: str) -> None:
    ctx = d / "ctx"
    ctx.mkdir(exist_ok=True)
    if not (ctx / "busybox").exists():
        shutil.copy(BUSYBOX, ctx / "busybox")
    (ctx / "Dockerfile").write_text(dockerfile)
    _docker(d, "build", "-q", "--network", "none", "-t", tag, str(ctx))


def seed(d: Path) -> None:
    """Seed the scenario: oversized unused/used images, dangling ones, a DB with a named volume."""
    base = "FROM scratch\nCOPY busybox /bin/busybox\nRUN [\"/bin/busybox\", \"--install\", \"-s\", \"/bin\"]\n"
    _build(d, "mol/base:latest", base)
    pad = "FROM mol/base:latest\nRUN head -c {n} /dev/urandom > /pad-{k}\n"
    _build(d, "rocm/pytorch:latest", pad.format(n=3_000_000, k="rocm"))
    _build(d, "router-server:latest", pad.format(n=2_000_000, k="router"))
    _docker(d, "tag", "router-server:latest", "router-server:v2")  # several tags: all go
    _build(d, "llm-router-router-builder:latest", pad.format(n=1_000_000, k="builder"))
    _docker(d, "create", "--name", "builder-old", "--network", "none", "llm-router-router-builder:latest", "true")
    _build(d, "postgres:15-mol", pad.format(n=500_000, k="pg"))
    _docker(d, "volume", "create", "postgres_data")
    _docker(d, "run", "--rm", "--network", "none", "-v", "postgres_data:/data", "postgres:15-mol",
            "sh", "-c", "echo precious > /data/PG_VERSION")
    _docker(d, "create", "--name", "db", "--network", "none", "-v", "postgres_data:/data", "postgres:15-mol", "true")
    # Dangling: the same tag rebuilt; the first build stays used by a stopped container.
    _build(d, "app:latest", pad.format(n=200_000, k="app1"))
    _docker(d, "create", "--name", "app-previous", "--network", "none", "app:latest", "true")
    _build(d, "app:latest", pad.format(n=200_000, k="app2"))
    _build(d, "app:latest", pad.format(n=200_000, k="app3"))
    _docker(d, "run", "-d", "--init", "--name", "app", "--network", "none", "app:latest", "sleep", "3600")


def age(d: Path) -> None:
    """Date every image 30 days back on the engine (its image store file time: what hygiene reads as arrival)."""
    content = d / "root" / "image" / "overlay2" / "imagedb" / "content" / "sha256"
    when = time.time() - 30 * 86400
    for path in content.iterdir():
        os.utime(path, (when, when))


def stop(d: Path) -> None:
    """Stop the dockerd started under ``d`` (by its PID) and remove ``d``."""
    pid_file = d / "dockerd.pid"
    if pid_file.exists():
        pid = int(pid_file.read_text())
        try:
            os.kill(pid, signal.SIGTERM)
            for _ in range(150):
                os.kill(pid, 0)
                time.sleep(0.1)
            os.kill(pid, signal.SIGKILL)
        except ProcessLookupError:
            pass
    subprocess.run(["umount", "-R", "-l", str(d / "root")], capture_output=True, check=False)
    subprocess.run(["umount", "-R", "-l", str(d / "exec")], capture_output=True, check=False)
    shutil.rmtree(d, ignore_errors=True)


if __name__ == "__main__":
    {"start": start, "seed": seed, "age": age, "stop": stop}[sys.argv[1]](Path(sys.argv[2]))
