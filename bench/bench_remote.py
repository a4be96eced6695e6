"""analyze and phase1 over ssh:// against the docker CLI's own floors over ssh:// (and the same over unix://).

Run: ``python -m bench remote`` (root, dockerd, openssh-server). One sandbox fleet exposing every engine over
unix:// and ssh:// (``sandbox up --transport ssh,unix``: a real sshd on a 127.x address, port 2222, one
restricted key per host, an ssh config with one alias per host). Contenders, alternated round by round:

  analyze: ``acgs-remediate analyze --format json`` vs ``docker -H <endpoint> system df -v`` for every host
           in parallel (the floor: the engine's own accounting, one CLI process per host);
  phase1:  ``acgs-remediate phase1 --yes`` vs ``docker -H <endpoint> rmi <planned refs>`` for every host in
           parallel (the floor: exactly the planned removals, no facts, checks, playbook or ledger).

The docker CLI reaches ``ssh://sb-hNN`` through ``ssh`` on PATH; a wrapper adds ``-F <sandbox ssh config>``,
as if the aliases were in ~/.ssh/config. Environment: ACGS_BENCH_HOSTS (default 4), ACGS_BENCH_REPEAT
(default 3), ACGS_BENCH_REMOTE_DIR (default /var/lib/acgs-br). Writes bench/results/remote.md.
No added latency here (netem / a delaying proxy): that run is left for later.
"""

from __future__ import annotations

import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from acgs_remediate.facts import collect_many
from acgs_remediate.inventory import load_fleet
from acgs_remediate.plan import plan_phase1
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario, prepare_sources

RESULTS = Path(__file__).parent / "results" / "remote.md"
CLI = str(Path(sys.executable).parent / "acgs-remediate")
DB_URL = "postgresql://acgs:bench@127.0.0.1:5432/acgs"


def _endpoints(sb: Sandbox, transport: str) -> dict[str, str]:
    return {h: (f"ssh://{h}" if transport == "ssh" else sb.docker_host(h)) for h in sb.hosts()}


def _env(ssh_bin: Path) -> dict[str, str]:
    return {**os.environ, "PATH": f"{ssh_bin}{os.pathsep}{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"}


def _parallel(argvs: list[list[str]], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for a in argvs]
    for proc, argv in zip(procs, argvs, strict=True):
        _out, err = proc.communicate()
        if proc.returncode not in (0, 1):  # rmi of an image already gone with its parent: exit 1 is fine
            raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {err.decode()[-500:]}")
    return time.monotonic() - t0


def _cli(args: list[str], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)
    seconds = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    if args[0] == "phase1":
        doc = json.loads(proc.stdout)
        bad = [h["host"] for h in doc["hosts"] if h["status"] != "succeeded"]
        if bad or doc["unreachable"]:
            raise RuntimeError(f"phase1 did not succeed on {bad or doc['unreachable']}")
    return seconds


def main() -> None:
    """Measure, alternating contenders, and write bench/results/remote.md."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "4"))
    repeat = max(1, int(os.environ.get("ACGS_BENCH_REPEAT", "3")))
    sb = Sandbox(os.environ.get("ACGS_BENCH_REMOTE_DIR", "/var/lib/acgs-br"))
    scenario = load_scenario("acgs-1")
    t0 = time.monotonic()
    sb.up(n, "acgs-1", transport="ssh,unix")
    print(f"fleet of {n} hosts up in {time.monotonic() - t0:.1f} s (ssh + unix)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="acgs-bench-remote-"))
    ssh_bin = tmp / "bin"
    ssh_bin.mkdir()
    wrapper = ssh_bin / "ssh"
    wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {sb.directory / "ssh" / "config"} "$@"\n')
    wrapper.chmod(0o755)
    env = _env(ssh_bin)
    env["DATABASE_URL"] = DB_URL
    rows: dict[str, list[float]] = {}

    def record(key: str, seconds: float) -> None:
        rows.setdefault(key, []).append(seconds)
        print(f"  {key}: {seconds:.2f} s", flush=True)

    try:
        fleet = load_fleet(sb.directory / "inventory-unix.yml")
        snaps, unreachable = collect_many(fleet.hosts, forks=n)
        assert not unreachable, unreachable
        plans = {h.name: plan_phase1(snaps[h.name], fleet.policy(h)) for h in fleet.hosts}
        n_images = sum(len(p.removals()) for p in plans.values())
        for i in range(repeat):
            print(f"round {i + 1}", flush=True)
            for transport in ("ssh", "unix"):
                inv = str(sb.directory / f"inventory-{transport}.yml")
                eps = _endpoints(sb, transport)
                floor = [["docker", "-H", ep, "system", "df", "-v"] for ep in eps.values()]
                record(f"analyze floor {transport}", _parallel(floor, env))
                state = tmp / f"analyze-{transport}-{i}.db"
                record(
                    f"analyze {transport}", _cli(["analyze", "-i", inv, "--state", str(state), "--format", "json"], env)
                )
            for transport in ("ssh", "unix"):
                inv = str(sb.directory / f"inventory-{transport}.yml")
                eps = _endpoints(sb, transport)
                sb.reseed()
                prepare_sources(scenario, sb.sources_root)
                state = tmp / f"phase1-{transport}-{i}.db"
                args = ["phase1", "-i", inv, "--state", str(state), "--yes", "--forks", str(n), "--format", "json"]
                record(f"phase1 {transport}", _cli(args, env))
                sb.reseed()
                floor = []
                for host, plan in plans.items():
                    refs = [r for a in plan.removals() for r in (a.tags if len(a.tags) > 1 else [a.image_id])]
                    floor.append(["docker", "-H", eps[host], "rmi", *refs])
                record(f"phase1 floor {transport}", _parallel(floor, env))
        sb.reseed()
    finally:
        sb.down()
        shutil.rmtree(tmp, ignore_errors=True)
    med = {k: statistics.median(v) for k, v in rows.items()}
    lines = [
        "# ssh:// benchmark",
        "",
        f"Command: `python -m bench remote` (ACGS_BENCH_HOSTS={n}, ACGS_BENCH_REPEAT={repeat}); "
        f"{time.strftime('%Y-%m-%d %H:%M')} UTC on {os.cpu_count()} cores shared with other work, load average "
        f"{os.getloadavg()[0]:.1f} at the end.",
        "",
        f"Fleet: {n} sandbox hosts (scenario acgs-1), each engine reached over unix:// and over ssh:// (a real sshd "
        f"on a 127.x address, port 2222, `ssh://sb-hNN` aliases in an ssh config, one restricted key per host whose "
        f"forced command is `docker system dial-stdio`). {n_images} image removals planned in total. Medians of "
        f"{repeat} rounds; contenders alternate within each round.",
        "",
        "| | acgs-remediate s | floor s | x floor |",
        "|---|---:|---:|---:|",
    ]
    for what, floor_desc in (
        ("analyze", "`docker -H … system df -v`, all hosts in parallel"),
        ("phase1", "`docker -H … rmi <planned refs>`, all hosts in parallel"),
    ):
        for transport in ("ssh", "unix"):
            a, f = med[f"{what} {transport}"], med[f"{what} floor {transport}"]
            lines.append(f"| {what} over {transport}:// (floor: {floor_desc}) | {a:.2f} | {f:.2f} | {a / f:.2f}x |")
    extra = {w: med[f"{w} ssh"] - med[f"{w} unix"] for w in ("analyze", "phase1")}
    floor_extra = {w: med[f"{w} floor ssh"] - med[f"{w} floor unix"] for w in ("analyze", "phase1")}
    lines += [
        "",
        f"What ssh:// costs over unix:// (medians): acgs-remediate analyze {extra['analyze']:+.2f} s, phase1 "
        f"{extra['phase1']:+.2f} s; the docker CLI floors {floor_extra['analyze']:+.2f} s and "
        f"{floor_extra['phase1']:+.2f} s.",
        "",
        "Every round: " + "; ".join(f"{k}: " + ", ".join(f"{s:.2f}" for s in v) for k, v in rows.items()),
        "",
        "- analyze = the whole CLI (start-up, inventory, facts from every host over one ssh process per host with "
        "its requests pipelined, the analysis, the JSON report). phase1 = the whole CLI (facts, plan, the "
        "ansible-runner playbook whose module joins the CLI's ssh connection per host, the measure, the ledger).",
        "- Not measured yet: 20 hosts, and added round-trip latency (netem or a delaying proxy on the sandbox's "
        "127.x addresses); the floors above would then pay the same round trips.",
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
