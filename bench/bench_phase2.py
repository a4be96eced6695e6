"""Phase 2 across a sandbox fleet: acgs-remediate vs the floor (one BuildKit build, plain docker shipping).

Run: ``python -m bench phase2`` (root, dockerd). One freshly seeded fleet, phase 1 applied first (it repairs
the build files phase 2 needs), then, each from the same cold state (no image of the optimized sources on
any engine, the builder's BuildKit cache pruned, the registry emptied):
  (C) the floor: the same optimized Dockerfiles (generated and staged exactly as phase 2 does) built once on
      the builder with ``DOCKER_BUILDKIT=1 docker build --network none``, two at a time, pushed to the
      sandbox registry, then pulled by every other host in parallel with plain ``docker pull`` — no gates,
      no hashing, no records, no tags moved;
  (A) ``acgs-remediate phase2 --yes`` (facts, plan with source hashes, build once, gates with smoke tests,
      push, pull by digest, release tags, build records, ledger);
then (D) ``acgs-remediate phase2 --yes --force`` over the finished fleet (nothing rebuilt, changed=0),
(E) ``acgs-remediate phase2 --yes`` (ledger skip), and (B) what the report implies: every host building every
service itself (measured on ACGS_BENCH_B_HOSTS hosts other than the builder, cold BuildKit caches, all at
once, each two builds at a time like (C); the same work per host on 20 hosts scales linearly on 2 cores).
The fleet's bytes (image layers + build cache, /system/df) are read before phase 1 and after phase 2.
Writes bench/results/phase2.md.
Environment: ACGS_BENCH_HOSTS (default 20), ACGS_BENCH_B_HOSTS (default 2), ACGS_BENCH_FORKS (default: the
host count), ACGS_BENCH_P2_DIR (default /var/lib/acgs-b2).
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import docker

from acgs_remediate.builds import registry_repository, sources_from_policy
from acgs_remediate.inventory import load_fleet
from acgs_remediate.optimize import generate_all
from acgs_remediate.phases.phase2 import stage
from acgs_remediate.sandbox import Sandbox

RESULTS = Path(__file__).parent / "results" / "phase2.md"
CLI = str(Path(sys.executable).parent / "acgs-remediate")
DOCKER = "/usr/bin/docker"  # the 20.10 CLI: its built-in BuildKit works against the sandbox engines
ENV = {**os.environ, "ACGS_DATABASE_URL": "sqlite:////var/lib/acgs/acgs.db", "DOCKER_BUILDKIT": "1"}


def _cli(sb: Sandbox, state: Path, *args: str) -> dict:  # type: ignore[type-arg]
    proc = subprocess.run(
        [CLI, *args, "-i", str(sb.inventory_path), "--state", str(state), "--yes", "--format", "json"],
        capture_output=True,
        text=True,
        env=ENV,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr[-2000:]}")
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def _docker(host: str, *args: str) -> None:
    subprocess.run([DOCKER, "-H", host, *args], check=True, capture_output=True, env=ENV, timeout=1800)


def _fleet_bytes(sb: Sandbox) -> int:
    """Return image layers (LayersSize) + unshared build cache summed over the fleet, in bytes (/system/df)."""

    def one(host: str) -> int:
        client = docker.DockerClient(base_url=sb.docker_host(host), timeout=600)
        try:
            df = client.df()
        finally:
            client.close()
        cache = sum(int(b.get("Size") or 0) for b in df.get("BuildCache") or [] if not b.get("Shared"))
        return int(df.get("LayersSize") or 0) + cache

    with ThreadPoolExecutor(max_workers=8) as pool:
        return sum(pool.map(one, sb.hosts()))


def _sources(sb: Sandbox) -> list:  # type: ignore[type-arg]
    fleet = load_fleet(sb.inventory_path)
    policy = fleet.policy(fleet.hosts[0])
    base = sb.inventory_path.parent
    defs = [d for d in generate_all(policy, base) if d.understood]
    return sources_from_policy(policy, base, {d.service: stage(d) for d in defs}, [d.service for d in defs])


def _every_host_builds(sb: Sandbox, hosts: list[str], tag: str) -> None:
    """(B): each of ``hosts`` builds every optimized service itself (two at a time), all hosts at once."""
    sources = _sources(sb)

    def one_host(host: str) -> None:
        def one(source) -> None:  # type: ignore[no-untyped-def]
            _docker(
                sb.docker_host(host), "build", "--network", "none", "-q", "-f", str(source.dockerfile),
                "-t", f"{source.repository}:{tag}", str(source.context),
            )  # fmt: skip

        with ThreadPoolExecutor(max_workers=2) as pool:
            list(pool.map(one, sources))

    with ThreadPoolExecutor(max_workers=len(hosts)) as pool:
        list(pool.map(one_host, hosts))
    for host in hosts:
        client = docker.DockerClient(base_url=sb.docker_host(host), timeout=600)
        for source in sources:
            try:
                client.images.remove(f"{source.repository}:{tag}")
            except docker.errors.APIError:
                pass
        client.close()
        _docker(sb.docker_host(host), "builder", "prune", "-af")


def _floor(sb: Sandbox, tag: str) -> list[str]:
    """Build every optimized service once on the builder, push, pull on the others; return the refs."""
    fleet = load_fleet(sb.inventory_path)
    policy = fleet.policy(fleet.hosts[0])
    sources = _sources(sb)
    builder, others = sb.docker_host(sb.hosts()[0]), [sb.docker_host(h) for h in sb.hosts()[1:]]
    registry = str(policy.registry)
    refs = [f"{registry_repository(registry, s)}:{tag}" for s in sources]

    def build_push(pair: tuple) -> None:  # type: ignore[type-arg]
        source, ref = pair
        _docker(
            builder, "build", "--network", "none", "-q", "-f", str(source.dockerfile), "-t", ref, str(source.context)
        )
        _docker(builder, "push", ref)

    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(build_push, zip(sources, refs, strict=True)))

    def pull_all(host: str) -> None:
        for ref in refs:
            _docker(host, "pull", "-q", ref)

    with ThreadPoolExecutor(max_workers=max(1, len(others))) as pool:
        list(pool.map(pull_all, others))
    return refs


def _cold(sb: Sandbox, refs: list[str]) -> None:
    """Remove the floor's images everywhere, prune the builder's BuildKit cache, empty the registry."""
    for h in sb.hosts():
        client = docker.DockerClient(base_url=sb.docker_host(h))
        for ref in refs:
            try:
                client.images.remove(ref)
            except docker.errors.APIError:
                pass
        client.close()
    _docker(sb.docker_host(sb.hosts()[0]), "builder", "prune", "-af")
    sb.start_registry(empty=True)


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def main() -> None:
    """Measure (C), (A), (D), (E), (B) on one fleet and write bench/results/phase2.md."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "20"))
    nb = int(os.environ.get("ACGS_BENCH_B_HOSTS", "2"))
    forks = os.environ.get("ACGS_BENCH_FORKS", str(n))
    sb = Sandbox(os.environ.get("ACGS_BENCH_P2_DIR", "/var/lib/acgs-b2"))
    was_up = sb.status().up
    t_up = _timed(lambda: sb.up(n, "acgs-1"))
    if was_up:
        sb.reseed()
    print(f"fleet of {n} hosts up in {t_up:.1f} s", flush=True)
    result: dict = {}  # type: ignore[type-arg]
    loads: dict[str, float] = {}
    try:
        with tempfile.TemporaryDirectory() as tmp:
            state = Path(tmp) / "state.db"
            baseline = _fleet_bytes(sb)
            _cli(sb, state, "phase1", "--forks", forks)
            sb.start_registry(empty=True)
            _docker(sb.docker_host(sb.hosts()[0]), "builder", "prune", "-af")
            refs: list[str] = []
            loads["C"] = os.getloadavg()[0]
            t_c = _timed(lambda: refs.extend(_floor(sb, "bench-floor")))
            print(f"(C) floor: one BuildKit build per service + push + parallel pulls: {t_c:.1f} s", flush=True)
            _cold(sb, refs)
            loads["A"] = os.getloadavg()[0]
            t_a = _timed(lambda: result.update(_cli(sb, state, "phase2", "--forks", forks)))
            print(f"(A) acgs-remediate phase2: {t_a:.1f} s -> {t_a / t_c:.2f}x the floor", flush=True)
            print(f"    timings: {result.get('timings')}", flush=True)
            after = _fleet_bytes(sb)
            forced: dict = {}  # type: ignore[type-arg]
            t_d = _timed(lambda: forced.update(_cli(sb, state, "phase2", "--force", "--forks", forks)))
            changed = sorted({r["changed"] for r in forced.get("hosts", [])})
            print(f"(D) re-run --force, nothing changed: {t_d:.1f} s (changed per host: {changed})", flush=True)
            t_e = _timed(lambda: _cli(sb, state, "phase2", "--forks", forks))
            print(f"(E) re-run, ledger skip: {t_e:.1f} s", flush=True)
            loads["B"] = os.getloadavg()[0]
            t_b = _timed(lambda: _every_host_builds(sb, sb.hosts()[1 : 1 + nb], "bench-every"))
            print(f"(B) every host builds every service, {nb} hosts at once: {t_b:.1f} s", flush=True)
    finally:
        load = os.getloadavg()
        sb.down()
    b_scaled = t_b * n / nb
    rows = {}
    for host in result.get("hosts", []):
        for svc in host.get("services", []):
            rows.setdefault(svc["service"], svc)
    timings = result.get("timings") or {}
    lines = [
        "# Phase 2 benchmark",
        "",
        f"Command: `ACGS_BENCH_HOSTS={n} ACGS_BENCH_B_HOSTS={nb} python -m bench phase2` (phase 2 run with "
        f"`--forks {forks}`), {time.strftime('%Y-%m-%d %H:%M')} UTC, on {os.cpu_count()} cores shared with the "
        "other engineers' test runs. Load average (1 min) when each contender started: "
        + ", ".join(f"{k} {v:.1f}" for k, v in loads.items())
        + f"; at the end {load[0]:.1f} / {load[1]:.1f} / {load[2]:.1f}. Absolute seconds depend on that load; "
        "(A) and (C) ran back to back on the same fleet from the same cold state (no image of the optimized "
        "sources on any engine, the builder's BuildKit cache pruned, the registry emptied): read their ratio. "
        "One round (not alternated): a second cold round costs another fleet reseed.",
        "",
        "| contender | seconds | x floor |",
        "|---|---:|---:|",
        f"| (C) floor: one BuildKit build per service (two at a time), push, `docker pull` on {n - 1} hosts "
        f"in parallel | {t_c:.1f} | 1.00x |",
        f"| (A) `acgs-remediate phase2 --yes` (cold), {n} hosts | {t_a:.1f} | {t_a / t_c:.2f}x |",
        f"| (B) every host builds every service: measured on {nb} hosts at once | {t_b:.1f} | {t_b / t_c:.2f}x |",
        f"| (B) scaled to {n} hosts (x{n}/{nb}: the builds are CPU-bound on the same 2 cores) | {b_scaled:.0f} | "
        f"{b_scaled / t_c:.1f}x |",
        f"| (D) `phase2 --yes --force` again, nothing changed (changed per host: {changed}) | {t_d:.1f} | |",
        f"| (E) `phase2 --yes` again (the ledger: every host finished) | {t_e:.1f} | |",
        "",
        f"(A)'s own timings: {', '.join(f'{k} {v:.1f} s' for k, v in timings.items())}.",
        "",
        f"Fleet bytes ({n} hosts, image layers + build cache, /system/df): baseline {baseline:,} B, after "
        f"phase 1 + phase 2 {after:,} B: **{baseline - after:,} B freed** ({(baseline - after) / baseline:.1%}).",
        "",
        "| service | before (bytes) | after (bytes) | shrink | build s |",
        "|---|---:|---:|---:|---:|",
    ]
    for name, r in rows.items():
        lines.append(
            f"| {name} | {r['size_before'] or '-'} | {r['size_after'] or '-'} | {r['shrink'] or '-'} | "
            f"{r['build_seconds'] if r['build_seconds'] is not None else '-'} |"
        )
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
