"""Phase 3 across a sandbox fleet: an acgs-remediate rollout with nothing failing vs the Compose floor.

Run: ``python -m bench phase3`` (root, dockerd). One freshly seeded fleet of N hosts. Two "phase 2" versions
(v1, v2) of auth_service and ac_service are built once (the scenario's image + a HEALTHCHECK, a label) and
loaded into every host, one image ID everywhere as phase 2 ships them; a first, untimed ``acgs-remediate
phase3`` hands the seed's hand-made containers over to Compose.
Then, in alternating rounds on the same fleet, each contender switches both services to the other version:
  (A) ``acgs-remediate phase3 --yes`` (lock, facts, plan, pinned compose file written, rollback units
      recorded, ``compose up --no-deps`` of the changed services, health watched through the soak window,
      ledger, the monitor's stats sample) with the policy canary 0, batch 100 % (all hosts at once, as the
      floor) and the soak window the healthchecks imply;
  (E) the same command again right after (A): nothing changed;
  (F) the floor: ``docker compose up -d --wait --no-deps auth_service ac_service`` of the same pinned file
      (the other version) on all N hosts in parallel — no facts, no ledger, no soak, no rollback unit.
Targets from issue 11: (A) - soak <= 1.5 x (F); (E) <= 2 s for 20 hosts. Writes bench/results/phase3.md.
Environment: ACGS_BENCH_HOSTS (default 20), ACGS_BENCH_ROUNDS (default 3), ACGS_BENCH_P3_DIR (default
/var/lib/acgs-b3), ACGS_BENCH_KEEP=1 (leave the fleet up), ACGS_BENCH_PROFILE=1 (also profile the first (A)
and (E) with cProfile: $TMPDIR/phase3-rollout.prof, phase3-rerun.prof).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import yaml

from acgs_remediate.deploy import ServiceTarget, target_compose
from acgs_remediate.inventory import load_fleet
from acgs_remediate.models import BuildRecord
from acgs_remediate.rollout import compose_binary, compose_env, interpolation_env
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.state import StateStore

RESULTS = Path(__file__).parent / "results" / "phase3.md"
CLI = str(Path(sys.executable).parent / "acgs-remediate")
DOCKER = "/usr/bin/docker"  # the 20.10 CLI: its built-in BuildKit works against the sandbox engines
PROJECT = "acgs-1"
SERVICES = {"auth": ("auth_service", "acgs-1-auth_service"), "ac": ("ac_service", "acgs-1-ac_service")}
# The slim image's Python has no urllib.request: the check speaks HTTP over a socket to the host's 127.x address.
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
# Soak window = start_period + interval x retries = 5 + 1 x 3 = 8 s. A loaded machine (load 40-60) needs the
# generous timeout: starting python3 for one check took over 5 s there.
HEALTHCHECK = 'HEALTHCHECK --interval=1s --timeout=15s --start-period=5s --retries=3 CMD ["python3", "/app/health.py"]'


def _build(docker_host: str, repo: str, version: str) -> str:
    """Build ``repo``'s version ``version`` on one engine (BuildKit, network none); return its image ID."""
    with tempfile.TemporaryDirectory() as ctx:
        Path(ctx, "Dockerfile").write_text(
            f"FROM {repo}:latest\nCOPY health.py /app/health.py\n"
            f"LABEL org.acgs.bench-version={version}\n{HEALTHCHECK}\n"
        )
        Path(ctx, "health.py").write_text(HEALTH_PY)
        env = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_HOST": docker_host}
        proc = subprocess.run(
            [DOCKER, "build", "-q", "--network", "none", "-t", f"{repo}:bench-{version}", ctx],
            env=env,
            capture_output=True,
            text=True,
            check=True,
            timeout=600,
        )
        return proc.stdout.strip().splitlines()[-1]


def _build_versions(sb: Sandbox) -> dict[str, dict[str, dict[str, str]]]:
    """Return version -> host -> service -> image ID: v1 and v2 of both services built once on the first host and
    loaded into every other host (as phase 2 ships one image, one ID, everywhere)."""
    first, *others = sb.hosts()
    jobs = [(key, v) for key in SERVICES for v in ("v1", "v2")]
    with ThreadPoolExecutor(max_workers=4) as pool:
        ids = list(pool.map(lambda j: _build(sb.docker_host(first), SERVICES[j[0]][1], j[1]), jobs))
    with tempfile.TemporaryDirectory() as tmp:
        archive = Path(tmp) / "images.tar"
        refs = [f"{SERVICES[key][1]}:bench-{v}" for key, v in jobs]
        subprocess.run([DOCKER, "-H", sb.docker_host(first), "save", "-o", str(archive), *refs], check=True)

        def load(host: str) -> None:
            subprocess.run(
                [DOCKER, "-H", sb.docker_host(host), "load", "-q", "-i", str(archive)], check=True, capture_output=True
            )

        with ThreadPoolExecutor(max_workers=4) as pool:
            list(pool.map(load, others))
    out: dict[str, dict[str, dict[str, str]]] = {}
    for (key, v), image_id in zip(jobs, ids, strict=True):
        for h in sb.hosts():
            out.setdefault(v, {}).setdefault(h, {})[key] = image_id
    return out


def _release(store: StateStore, images: dict[str, dict[str, str]]) -> None:
    """Record ``images`` (host -> service -> ID) as phase 2's released builds, newest: phase 3 deploys them."""
    now = datetime.now(UTC)
    for host, services in images.items():
        for key, image_id in services.items():
            store.add_build_record(
                BuildRecord(
                    host=host,
                    service=key,
                    image=f"{SERVICES[key][1]}:latest",
                    ok=True,
                    seconds=1.0,
                    finished_at=now,
                    image_id=image_id,
                    released=True,
                )
            )


def _policy_all_at_once(sb: Sandbox) -> Path:
    """Set the bench fleet's deploy policy to every host at once (canary 0, batch 100 %); return the inventory."""
    path = sb.directory / "group_vars" / "all.yml"
    data = yaml.safe_load(path.read_text())
    policy = data["acgs_policy"]
    policy["deploy"] = {**(policy.get("deploy") or {}), "canary": 0, "batch_size": "100%", "timeout": 120}
    path.write_text(yaml.safe_dump(data, sort_keys=False))
    return sb.inventory_path


def _cli(inventory: Path, state: Path, *args: str, profile: Path | None = None) -> dict[str, Any]:
    cmd = [CLI, "phase3", "-i", str(inventory), "--state", str(state), "--yes", "--format", "json", *args]
    if profile is not None:
        cmd = [sys.executable, "-m", "cProfile", "-o", str(profile), *cmd]
    proc = subprocess.run(cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, check=False)
    if proc.returncode != 0:
        try:
            hosts = {h: r.get("reason") for h, r in json.loads(proc.stdout).get("hosts", {}).items()}
        except ValueError:
            hosts = {}
        raise RuntimeError(f"phase3 exited {proc.returncode}: {hosts} {proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def _floor(sb: Sandbox, inventory: Path, images: dict[str, dict[str, str]]) -> None:
    """``docker compose up -d --wait --no-deps auth_service ac_service`` of the pinned file on every host at once."""
    fleet = load_fleet(inventory)
    policy = fleet.policy(fleet.hosts[0])
    compose_path = policy.compose_path(inventory.parent)
    text = compose_path.read_text()

    def one(host: Any) -> None:
        targets = {
            svc: ServiceTarget(
                service=svc,
                policy_service=key,
                image=f"{repo}:latest",
                image_id=images[host.name][key],
                ref=images[host.name][key],
            )
            for key, (svc, repo) in SERVICES.items()
        }
        pinned = target_compose(text, targets)
        with tempfile.NamedTemporaryFile("w", suffix=".yml", delete=False) as fh:
            fh.write(pinned)
        try:
            env = compose_env(host, interpolation_env(pinned, policy.deploy.env))
            subprocess.run(
                [compose_binary(), "-f", fh.name, "--project-directory", str(compose_path.parent), "-p", PROJECT,
                 "up", "-d", "--wait", "--no-deps", "--pull", "never", "--no-build",
                 *[svc for svc, _repo in SERVICES.values()]],
                env=env, capture_output=True, text=True, check=True, timeout=600,
            )  # fmt: skip
        finally:
            os.unlink(fh.name)

    with ThreadPoolExecutor(max_workers=len(fleet.hosts)) as pool:
        list(pool.map(one, fleet.hosts))


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def _timed_cli(inventory: Path, state: Path, profile: Path | None) -> tuple[float, dict[str, Any]]:
    t0 = time.monotonic()
    result = _cli(inventory, state, profile=profile)
    return time.monotonic() - t0, result


def main() -> None:
    """Measure (A), (E), (F) in alternating rounds on one fleet and write bench/results/phase3.md."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "20"))
    rounds = int(os.environ.get("ACGS_BENCH_ROUNDS", "3"))
    profile = os.environ.get("ACGS_BENCH_PROFILE") == "1"
    sb = Sandbox(os.environ.get("ACGS_BENCH_P3_DIR", "/var/lib/acgs-b3"))
    was_up = sb.status().up
    t_up = _timed(lambda: sb.up(n, "acgs-1"))
    if was_up:
        sb.reseed()
    a: list[float] = []
    e: list[float] = []
    f: list[float] = []
    loads: list[float] = []
    soak = 0.0
    try:
        with tempfile.TemporaryDirectory() as tmp:
            inventory = _policy_all_at_once(sb)
            state = Path(tmp) / "state.db"
            store = StateStore(state)
            t_build = _timed(lambda: versions.update(_build_versions(sb)))
            print(f"fleet up {t_up:.1f} s; v1 and v2 built and loaded on {n} hosts in {t_build:.1f} s", flush=True)
            _release(store, versions["v1"])
            t_first = _timed(lambda: _cli(inventory, state))  # hand-made seed containers -> Compose's
            print(f"first rollout (adopting the seed's containers, not compared): {t_first:.1f} s", flush=True)
            current = "v1"
            for r in range(rounds):
                nxt = "v2" if current == "v1" else "v1"
                _release(store, versions[nxt])
                prof = Path(tempfile.gettempdir(), "phase3-rollout.prof") if profile and r == 0 else None
                t_a, result = _timed_cli(inventory, state, prof)
                a.append(t_a)
                soak = float(result["plan"]["soak_seconds"])
                statuses = {h["status"] for h in result["hosts"].values()}
                assert statuses == {"deployed"}, result["hosts"]
                prof = Path(tempfile.gettempdir(), "phase3-rerun.prof") if profile and r == 0 else None
                t_e, rerun = _timed_cli(inventory, state, prof)
                e.append(t_e)
                assert {h["status"] for h in rerun["hosts"].values()} == {"unchanged"}, rerun["hosts"]
                current = nxt
                nxt = "v2" if current == "v1" else "v1"
                f.append(_timed(lambda nxt=nxt: _floor(sb, inventory, versions[nxt])))
                current = nxt  # the next (A) switches back to the version (A) just deployed
                loads.append(os.getloadavg()[0])
                print(
                    f"round {r + 1}: (A) {a[-1]:.1f} s (soak {soak:g} s), (E) {e[-1]:.2f} s, (F) {f[-1]:.1f} s; "
                    f"(A - soak) / F = {(a[-1] - soak) / f[-1]:.2f}x; load {loads[-1]:.1f}",
                    flush=True,
                )
            store.close()
    finally:
        if os.environ.get("ACGS_BENCH_KEEP") != "1":
            sb.down()
    _write(n, rounds, a, e, f, soak, loads, t_first)


versions: dict[str, dict[str, dict[str, str]]] = {}


def _write(
    n: int, rounds: int, a: list[float], e: list[float], f: list[float], soak: float, loads: list[float], first: float
) -> None:
    med = sorted((x - soak) / y for x, y in zip(a, f, strict=True))[len(a) // 2]
    lines = [
        "# Phase 3 benchmark",
        "",
        f"Command: `ACGS_BENCH_HOSTS={n} ACGS_BENCH_ROUNDS={rounds} python -m bench phase3`, "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC on {os.cpu_count()} cores shared with other engineers' test runs: "
        f"load average {', '.join(f'{x:.1f}' for x in loads)} after each round. Contenders alternate on the same "
        f"fleet ((A), (E), (F), (A), ...), each switching auth_service and ac_service on all {n} hosts to the other "
        "of two pinned versions; read the ratios.",
        "",
        "| round | (A) `phase3 --yes` s | soak s | (F) floor s | (A - soak) / (F) | (E) re-run, nothing changed s |",
        "|---:|---:|---:|---:|---:|---:|",
    ]
    for i, (x, y, z) in enumerate(zip(a, f, e, strict=True)):
        lines.append(f"| {i + 1} | {x:.1f} | {soak:g} | {y:.1f} | {(x - soak) / y:.2f}x | {z:.2f} |")
    lines += [
        "",
        f"Median (A - soak) / (F): **{med:.2f}x** (target <= 1.5x). (E) median: **{sorted(e)[len(e) // 2]:.2f} s** "
        f"(target <= 2 s for 20 hosts). The first, untimed rollout (the seed's hand-made containers handed "
        f"over to Compose) took {first:.1f} s.",
        "",
        "(F) is `docker compose up -d --wait --no-deps --pull never auth_service ac_service` of the same pinned "
        "file on every host at once. (A) runs with canary 0 and batch 100 % (every host at once, as (F)); with a "
        "canary each batch adds its own soak window. (A) also: takes the host locks, reads every host's containers "
        "and phase 2's records, writes the pinned compose file and a rollback unit per host (tagging the replaced "
        "images), watches health through the soak window, writes the ledger, and takes one stats sample per "
        "container for the monitor.",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
