"""Phase 1 across a sandbox fleet: acgs-remediate vs the seed report's shell loop vs a direct API floor.

Run: ``python -m bench phase1`` (root, dockerd). Same run, same freshly seeded fleet for each contender:
  (A) ``acgs-remediate phase1 --yes`` (facts, plan, ansible-runner playbook, facts again, ledger);
  (B) the seed report's own commands, host by host in a shell loop (``docker rmi`` x 6 and
      ``docker image prune -f``; its ``docker image prune -a -f`` is left out: it deletes every image
      without a container, rollback images included);
  (C) the floor: a Python script removing exactly the planned images on all hosts in parallel with the
      docker SDK (no facts, no checks, no ledger).
Then (D) ``acgs-remediate phase1 --yes`` over the finished fleet (ledger skip).
Targets from the issue: A <= 3x C; D <= 2 s for 20 hosts. Writes bench/results/phase1.md.
Environment: ACGS_BENCH_HOSTS (default 20), ACGS_BENCH_FORKS (default: the host count), ACGS_BENCH_REPEAT (default 3),
ACGS_BENCH_P1_DIR (default /var/lib/acgs-b1).
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

from acgs_remediate.facts import collect_many
from acgs_remediate.inventory import load_fleet
from acgs_remediate.plan import HostPlan, plan_phase1
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario, prepare_sources

RESULTS = Path(__file__).parent / "results" / "phase1.md"
TIMINGS: dict[str, float] = {}
CLI = str(Path(sys.executable).parent / "acgs-remediate")
REPORT_RMI = [
    "rocm/pytorch:latest",
    "router-server:latest",
    "llm-router-router-builder:latest",
    "nvcr.io/nvidia/tritonserver:24.10-py3",
    "acgs-master-gs_service:latest",
    "acgs-1-alembic-runner:latest",
]


def _plans(sb: Sandbox) -> dict[str, HostPlan]:
    fleet = load_fleet(sb.inventory_path)
    snaps, unreachable = collect_many(fleet.hosts, forks=10)
    assert not unreachable, unreachable
    return {h.name: plan_phase1(snaps[h.name], fleet.policy(h)) for h in fleet.hosts}


def _report_loop(sb: Sandbox) -> None:
    script = 'set -u\nfor h in "$@"; do\n'
    for ref in REPORT_RMI:
        script += f'  docker -H "$h" rmi {ref} >/dev/null 2>&1 || true\n'
    script += '  docker -H "$h" image prune -f >/dev/null\ndone\n'
    subprocess.run(["bash", "-c", script, "loop", *[sb.docker_host(h) for h in sb.hosts()]], check=True)


def _floor(sb: Sandbox, plans: dict[str, HostPlan]) -> None:
    def one(host: str) -> None:
        api = docker.APIClient(base_url=sb.docker_host(host), timeout=120)
        for action in plans[host].removals():
            refs = action.tags if len(action.tags) > 1 else [action.image_id]
            for ref in refs:
                try:
                    api.remove_image(ref)
                except docker.errors.APIError:
                    pass

    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        list(pool.map(one, plans))


def _cli(sb: Sandbox, state: Path, forks: int) -> None:
    env = {**os.environ, "DATABASE_URL": "postgresql://acgs:bench@127.0.0.1:5432/acgs"}
    proc = subprocess.run(
        [
            CLI,
            "phase1",
            "-i",
            str(sb.inventory_path),
            "--state",
            str(state),
            "--yes",
            "--forks",
            str(forks),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=env,
        stdin=subprocess.DEVNULL,
        check=False,
    )
    if proc.returncode != 0:
        raise RuntimeError(f"phase1 exited {proc.returncode}: {proc.stderr[-2000:]}")
    timings = json.loads(proc.stdout).get("timings")
    if timings:
        TIMINGS.update(timings)
        print(f"    inside the CLI: {timings}", flush=True)


def _timed(fn) -> float:  # type: ignore[no-untyped-def]
    t0 = time.monotonic()
    fn()
    return time.monotonic() - t0


def main() -> None:
    """Run the measurements on one fleet, ACGS_BENCH_REPEAT rounds of (A) and (C), and write bench/results/phase1.md."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "20"))
    forks = int(os.environ.get("ACGS_BENCH_FORKS") or n)  # one fork per host, as `--forks N` for N hosts
    repeat = max(1, int(os.environ.get("ACGS_BENCH_REPEAT", "3")))
    sb = Sandbox(os.environ.get("ACGS_BENCH_P1_DIR", "/var/lib/acgs-b1"))
    scenario = load_scenario("acgs-1")
    t_up = _timed(lambda: sb.up(n, "acgs-1"))
    print(f"fleet of {n} hosts up in {t_up:.1f} s", flush=True)
    rounds: list[tuple[float, float, dict[str, float]]] = []
    t_d = t_b = 0.0
    try:
        plans = _plans(sb)
        n_images = sum(len(p.removals()) for p in plans.values())
        for i in range(repeat):
            # (A) and (C) alternate on a freshly seeded fleet, so both see the same machine load.
            if i:
                sb.reseed()
            with tempfile.TemporaryDirectory() as tmp:
                state = Path(tmp) / "state.db"
                prepare_sources(scenario, sb.sources_root)
                t_a = _timed(lambda s=state: _cli(sb, s, forks))
                inside = dict(TIMINGS)
                print(f"round {i + 1}: (A) acgs-remediate phase1: {t_a:.2f} s", flush=True)
                if i == 0:
                    t_d = _timed(lambda s=state: _cli(sb, s, forks))
                    print(f"(D) re-run, finished fleet: {t_d:.2f} s", flush=True)
            sb.reseed()
            t_c = _timed(lambda: _floor(sb, plans))
            print(f"round {i + 1}: (C) direct API, parallel (floor): {t_c:.2f} s -> {t_a / t_c:.2f}x", flush=True)
            rounds.append((t_a, t_c, inside))
        sb.reseed()
        t_b = _timed(lambda: _report_loop(sb))
        print(f"(B) report's commands, shell loop: {t_b:.1f} s", flush=True)
    finally:
        sb.down()
    ratios = sorted(a / c for a, c, _ in rounds)
    median_ratio = ratios[len(ratios) // 2]
    t_a_med = sorted(a for a, _, _ in rounds)[len(rounds) // 2]
    t_c_med = sorted(c for _, c, _ in rounds)[len(rounds) // 2]
    lines = [
        "# Phase 1 benchmark",
        "",
        f"Command: `python -m bench phase1` (ACGS_BENCH_HOSTS={n}, ACGS_BENCH_FORKS={forks}, "
        f"ACGS_BENCH_REPEAT={repeat}); {time.strftime('%Y-%m-%d %H:%M')} on {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f} at the end (the 20 engines themselves load the machine).",
        "",
        f"Fleet: {n} sandbox hosts (scenario acgs-1, freshly seeded before each contender); "
        f"{n_images} image removals planned in total. (A) and (C) alternate, {repeat} rounds.",
        "",
        "| contender | seconds (median) | x floor |",
        "|---|---:|---:|",
        f"| (A) `acgs-remediate phase1 --yes` | {t_a_med:.2f} | {median_ratio:.2f}x (median of the rounds' ratios) |",
        f"| (B) the report's commands, host by host (shell loop) | {t_b:.2f} | {t_b / t_c_med:.2f}x |",
        f"| (C) direct Docker API script, all hosts in parallel (floor) | {t_c_med:.2f} | 1.00x |",
        f"| (D) `acgs-remediate phase1 --yes` again, finished fleet (ledger skip) | {t_d:.2f} | |",
        "",
        "| round | (A) s | (C) s | (A)/(C) | inside (A): facts+plan / playbook / measure |",
        "|---|---:|---:|---:|---|",
    ]
    for i, (a, c, inside) in enumerate(rounds, 1):
        keys = ("facts_and_plan", "playbook", "measure_after")
        parts = " / ".join(f"{inside.get(k, float('nan')):.2f}" for k in keys)
        lines.append(f"| {i} | {a:.2f} | {c:.2f} | {a / c:.2f}x | {parts} |")
    lines += [
        "",
        f"- (A)/(C) median = {median_ratio:.2f}x (target <= 3x). (A) is the whole CLI: start-up, inventory, facts "
        "on every host, planning, the ansible-runner playbook run (one module call applies each host's plan), "
        "one /system/df per host after, the ledger.",
        f"- (B) = {t_b:.2f} s: the report's loop does less (no checks, no plan, no build files) and removes a "
        "different set (it cannot protect the dangling image a stopped container uses).",
        f"- (D) = {t_d:.2f} s for {n} hosts (target <= 2 s).",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
