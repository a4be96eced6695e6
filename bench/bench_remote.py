"""analyze and phase1 over ssh:// against the docker CLI's own floors over ssh://, also at a real distance.

Run: ``python -m bench remote`` (root, dockerd, openssh-server). One sandbox fleet exposing every engine over
ssh:// (``sandbox up --transport ssh,unix``: a real sshd on a 127.x address, port 2222, one restricted key per
host, an ssh config with one alias per host). Transports measured (ACGS_BENCH_TRANSPORTS, comma list):

  ssh        the sandbox's sshd as it is (loopback: no network latency);
  ssh+NNms   the same sshd behind ``bench/latency_proxy.py`` on another 127.x address, which holds every
             chunk NN/2 ms each way (NN ms more per round trip, one more per connection); an ssh config
             whose aliases name the proxy's address. Nothing else on the machine is slowed (no tc on lo).
  unix       the engines' unix sockets (the same floors over unix://).

Contenders, per transport, alternated round by round (A then floor, next round floor then A):

  analyze: ``acgs-remediate analyze --format json`` vs ``docker -H <endpoint> system df -v`` for every host
           in parallel (the floor: the engine's own accounting, one CLI process per host);
  phase1:  ``acgs-remediate phase1 --yes`` vs ``docker -H <endpoint> rmi <planned refs>`` for every host in
           parallel (the floor: exactly the planned removals, no facts, checks, playbook or ledger).

The docker CLI reaches ``ssh://sb-hNN`` through ``ssh`` on PATH; a wrapper adds ``-F <that ssh config>``, as
if the aliases were in ~/.ssh/config. Environment: ACGS_BENCH_HOSTS (default 20), ACGS_BENCH_REPEAT (default
3), ACGS_BENCH_TRANSPORTS (default ``ssh,ssh+20ms``), ACGS_BENCH_REMOTE_DIR (default /var/lib/acgs-br).
Writes bench/results/remote.md.
"""

from __future__ import annotations

import json
import os
import re
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
from acgs_remediate.sandbox_transports import SSH_PORT, address_base, sshd_address
from acgs_remediate.scenario import load_scenario, prepare_sources

RESULTS = Path(__file__).parent / "results" / "remote.md"
CLI = str(Path(sys.executable).parent / "acgs-remediate")
DB_URL = "postgresql://acgs:bench@127.0.0.1:5432/acgs"
PROXY_OCTET = 251


def _rtt_ms(transport: str) -> int:
    match = re.fullmatch(r"ssh\+(\d+)ms", transport)
    return int(match.group(1)) if match else 0


class _Transport:
    """One way of reaching the fleet: its inventory, the docker CLI's endpoints and environment."""

    def __init__(self, sb: Sandbox, name: str, tmp: Path, procs: list[subprocess.Popen[str]]) -> None:
        self.name = name
        self.rtt_ms = _rtt_ms(name)
        if name == "unix":
            self.inventory = sb.directory / "inventory-unix.yml"
            self.endpoints = {h: sb.docker_host(h) for h in sb.hosts()}
            self.env = self._env(None, tmp)
            return
        if name != "ssh" and not self.rtt_ms:
            raise SystemExit(f"error: ACGS_BENCH_TRANSPORTS: unknown transport {name!r} (ssh, ssh+20ms, unix)")
        config = sb.directory / "ssh" / "config"
        self.inventory = sb.directory / "inventory-ssh.yml"
        if self.rtt_ms:
            # The proxy on its own 127.x address in front of the sshd; aliases and known_hosts name it.
            listen = f"{address_base(sb.directory)}.{PROXY_OCTET}"
            target = sshd_address(sb.directory)
            proc = subprocess.Popen(  # noqa: S603 - our argv
                [
                    sys.executable,
                    "-m",
                    "bench.latency_proxy",
                    f"{listen}:{SSH_PORT}",
                    f"{target}:{SSH_PORT}",
                    str(self.rtt_ms),
                ],
                stdout=subprocess.PIPE,
                text=True,
                cwd=Path(__file__).parent.parent,
            )
            procs.append(proc)
            assert proc.stdout is not None and proc.stdout.readline().strip() == "listening"
            ssh_dir = sb.directory / "ssh"
            known = (ssh_dir / "known_hosts").read_text().replace(f"[{target}]", f"[{listen}]")
            (tmp / f"known_hosts-{self.rtt_ms}").write_text(known)
            text = config.read_text().replace(f"HostName {target}", f"HostName {listen}")
            text = text.replace(str(ssh_dir / "known_hosts"), str(tmp / f"known_hosts-{self.rtt_ms}"))
            config = tmp / f"ssh_config-{self.rtt_ms}"
            config.write_text(text)
            inv = sb.directory / f"inventory-bench-{self.rtt_ms}ms.yml"  # beside group_vars/, as the others
            inv.write_text(self.inventory.read_text().replace(str(sb.directory / "ssh" / "config"), str(config)))
            self.inventory = inv
        self.endpoints = {h: f"ssh://{h}" for h in sb.hosts()}
        self.env = self._env(config, tmp)

    def _env(self, config: Path | None, tmp: Path) -> dict[str, str]:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        if config is not None:
            ssh_bin = tmp / f"bin-{self.name}"
            ssh_bin.mkdir()
            wrapper = ssh_bin / "ssh"
            wrapper.write_text(f'#!/bin/sh\nexec /usr/bin/ssh -F {config} "$@"\n')
            wrapper.chmod(0o755)
            path = f"{ssh_bin}{os.pathsep}{path}"
        return {**os.environ, "PATH": path, "DATABASE_URL": DB_URL}


def _parallel(argvs: list[list[str]], env: dict[str, str]) -> float:
    t0 = time.monotonic()
    procs = [subprocess.Popen(a, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, env=env) for a in argvs]  # noqa: S603
    for proc, argv in zip(procs, argvs, strict=True):
        _out, err = proc.communicate()
        if proc.returncode not in (0, 1):  # rmi of an image already gone with its parent: exit 1 is fine
            raise RuntimeError(f"{' '.join(argv[:4])} exited {proc.returncode}: {err.decode()[-500:]}")
    return time.monotonic() - t0


def _cli(args: list[str], env: dict[str, str]) -> tuple[float, dict[str, float]]:
    t0 = time.monotonic()
    proc = subprocess.run([CLI, *args], capture_output=True, text=True, env=env, stdin=subprocess.DEVNULL, check=False)  # noqa: S603
    seconds = time.monotonic() - t0
    if proc.returncode not in (0, 1):
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr[-1500:]}")
    timings: dict[str, float] = {}
    if args[0] == "phase1":
        doc = json.loads(proc.stdout)
        bad = [h["host"] for h in doc["hosts"] if h["status"] != "succeeded"]
        if bad or doc["unreachable"]:
            raise RuntimeError(f"phase1 did not succeed on {bad or doc['unreachable']}")
        timings = doc.get("timings") or {}
    return seconds, timings


def _uptime() -> str:
    return " ".join(f"{x:.1f}" for x in os.getloadavg())


def main() -> None:
    """Measure, alternating contenders, and write bench/results/remote.md."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "20"))
    repeat = max(1, int(os.environ.get("ACGS_BENCH_REPEAT", "3")))
    names = [t.strip() for t in os.environ.get("ACGS_BENCH_TRANSPORTS", "ssh,ssh+20ms").split(",") if t.strip()]
    sb = Sandbox(os.environ.get("ACGS_BENCH_REMOTE_DIR", "/var/lib/acgs-br"))
    scenario = load_scenario("acgs-1")
    started = time.strftime("%Y-%m-%d %H:%M", time.gmtime())
    loads = [f"start {_uptime()}"]
    t0 = time.monotonic()
    sb.up(n, "acgs-1", transport="ssh,unix")
    print(f"fleet of {n} hosts up in {time.monotonic() - t0:.1f} s (ssh + unix)", flush=True)
    tmp = Path(tempfile.mkdtemp(prefix="acgs-bench-remote-"))
    proxies: list[subprocess.Popen[str]] = []
    rows: dict[str, list[float]] = {}
    inside: dict[str, list[dict[str, float]]] = {}

    def record(key: str, measured: float | tuple[float, dict[str, float]]) -> None:
        seconds, timings = measured if isinstance(measured, tuple) else (measured, {})
        rows.setdefault(key, []).append(seconds)
        if timings:
            inside.setdefault(key, []).append(timings)
        print(f"  {key}: {seconds:.2f} s {timings or ''}", flush=True)

    try:
        transports = [_Transport(sb, name, tmp, proxies) for name in names]
        fleet = load_fleet(sb.directory / "inventory-unix.yml")
        snaps, unreachable = collect_many(fleet.hosts, forks=n)
        assert not unreachable, unreachable
        plans = {h.name: plan_phase1(snaps[h.name], fleet.policy(h)) for h in fleet.hosts}
        n_images = sum(len(p.removals()) for p in plans.values())
        for i in range(repeat):
            print(f"round {i + 1} (load {_uptime()})", flush=True)
            floor_first = i % 2 == 1
            for t in transports:
                floor = [["docker", "-H", ep, "system", "df", "-v"] for ep in t.endpoints.values()]
                state = tmp / f"analyze-{t.name}-{i}.db"
                args = ["analyze", "-i", str(t.inventory), "--state", str(state), "--format", "json"]
                steps = [
                    (f"analyze floor {t.name}", lambda floor=floor, t=t: _parallel(floor, t.env)),
                    (f"analyze {t.name}", lambda args=args, t=t: _cli(args, t.env)),
                ]
                for key, fn in steps if floor_first else reversed(steps):
                    record(key, fn())
            for t in transports:
                state = tmp / f"phase1-{t.name}-{i}.db"
                args = ["phase1", "-i", str(t.inventory), "--state", str(state), "--yes", "--forks", str(n)]
                floor = []
                for host, plan in plans.items():
                    refs = [r for a in plan.removals() for r in (a.tags if len(a.tags) > 1 else [a.image_id])]
                    floor.append(["docker", "-H", t.endpoints[host], "rmi", *refs])
                steps = [
                    (f"phase1 floor {t.name}", lambda floor=floor, t=t: _parallel(floor, t.env)),
                    (f"phase1 {t.name}", lambda args=args, t=t: _cli([*args, "--format", "json"], t.env)),
                ]
                for key, fn in steps if floor_first else reversed(steps):
                    sb.reseed()
                    prepare_sources(scenario, sb.sources_root)
                    record(key, fn())
            loads.append(f"after round {i + 1} {_uptime()}")
        sb.reseed()
    finally:
        for proc in proxies:
            proc.terminate()
            proc.wait(timeout=10)
        for inv in sb.directory.glob("inventory-bench-*.yml"):
            inv.unlink()
        sb.down()
        shutil.rmtree(tmp, ignore_errors=True)
    _write(n, repeat, names, n_images, started, loads, rows, inside)


def _write(
    n: int,
    repeat: int,
    names: list[str],
    n_images: int,
    started: str,
    loads: list[str],
    rows: dict[str, list[float]],
    inside: dict[str, list[dict[str, float]]],
) -> None:
    med = {k: statistics.median(v) for k, v in rows.items()}
    env = f"ACGS_BENCH_HOSTS={n} ACGS_BENCH_REPEAT={repeat} ACGS_BENCH_TRANSPORTS={','.join(names)}"
    lines = [
        "# ssh:// benchmark (and at a real distance)",
        "",
        f"Command: `{env} python -m bench remote`; started {started} UTC on {os.cpu_count()} cores shared with "
        f"other engineers' work. Load average (1, 5, 15 min): {'; '.join(loads)}.",
        "",
        f"Fleet: {n} sandbox hosts (scenario acgs-1), each engine reached over ssh:// (a real sshd on a 127.x "
        f"address, port 2222, `ssh://sb-hNN` aliases in an ssh config, one restricted key per host whose forced "
        f"command is `docker system dial-stdio`). `ssh+NNms`: the same sshd behind `bench/latency_proxy.py` on "
        f"another 127.x address, adding NN ms to every round trip (and one to each TCP connect); the floors pay "
        f"it too. {n_images} image removals planned in total. Medians of {repeat} rounds; in each round every "
        f"contender runs next to its floor, the order flipping round by round.",
        "",
        "| | acgs-remediate s | floor s | x floor |",
        "|---|---:|---:|---:|",
    ]
    for what, floor_desc in (
        ("analyze", "`docker -H … system df -v`, all hosts in parallel"),
        ("phase1", "`docker -H … rmi <planned refs>`, all hosts in parallel"),
    ):
        for t in names:
            a, f = med[f"{what} {t}"], med[f"{what} floor {t}"]
            ratios = [x / y for x, y in zip(rows[f"{what} {t}"], rows[f"{what} floor {t}"], strict=True)]
            lines.append(
                f"| {what} over {t} (floor: {floor_desc}) | {a:.2f} | {f:.2f} | {a / f:.2f}x "
                f"(rounds: {', '.join(f'{r:.2f}' for r in ratios)}) |"
            )
    lines += ["", "Inside phase1 (the CLI's own timings, medians): "]
    for t in names:
        runs = inside.get(f"phase1 {t}", [])
        if runs:
            keys = ("facts_and_plan", "playbook", "measure_after")
            parts = [f"{k} {statistics.median(r.get(k, 0.0) for r in runs):.2f} s" for k in keys]
            lines.append(f"- over {t}: " + ", ".join(parts))
    lines += [
        "",
        "Every round: " + "; ".join(f"{k}: " + ", ".join(f"{s:.2f}" for s in v) for k, v in rows.items()),
        "",
    ]
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines))
    print("\n".join(lines))


if __name__ == "__main__":
    main()
