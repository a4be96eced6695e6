"""Hygiene across a sandbox fleet: (a) nothing to do vs the `docker system df -v` floor, (b) above the high
watermark vs a direct-API script removing the same images, both with alternating rounds in one run.

Run: ``python -m bench hygiene`` (root, dockerd). Targets from issue 12:
  (a) N hosts, nothing to do: ``acgs-remediate hygiene --yes`` <= 1.5x `docker -H X system df -v` run against
      every engine at once (the least any tool must do to know the usage of every host);
  (b) N hosts above the high watermark: ``acgs-remediate hygiene --yes`` <= 2x a Python script removing the
      very images the plan names on all hosts in parallel (docker SDK; no facts, no checks, no ledger), and per
      host the predicted bytes equal the bytes freed (/system/df before and after) within 1 %.
(a) and its floor alternate on one fleet that a first hygiene run left clean; (b) and its floor alternate, each
on a freshly reseeded fleet. Writes bench/results/hygiene.md.
Environment: ACGS_BENCH_HOSTS (default 20), ACGS_BENCH_REPEAT (default 3), ACGS_BENCH_HYG_DIR (default
/var/lib/acgs-bh), ACGS_BENCH_HYG_PARTS (default "a,b"), ACGS_BENCH_HYG_SKIP (hosts to leave out, comma list),
ACGS_BENCH_KEEP=1 (leave the fleet up).
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
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import docker
import yaml

from acgs_remediate.sandbox import Sandbox

RESULTS = Path(__file__).parent / "results" / "hygiene.md"
CLI = str(Path(sys.executable).parent / "acgs-remediate")
# Ages far from every threshold: the scenario's images arrived when the golden engine was seeded.
AGES = {"fresh_min_age": "2m", "dangling_min_age": "2m", "unused_min_age": 0}


def _inventory(sb: Sandbox, name: str, **hygiene: Any) -> Path:
    """Write an inventory of the sandbox whose policy (the scenario's) has these hygiene settings; return it.

    It sits in a directory of its own: the sandbox's group_vars/all.yml (the scenario's policy, copied here)
    would win over any group var of the inventory file.
    """
    inv = yaml.safe_load(sb.inventory_path.read_text())
    policy = yaml.safe_load((sb.inventory_path.parent / "group_vars" / "all.yml").read_text())["acgs_policy"]
    policy["hygiene"] = {**AGES, "build_cache_budget": "100GB", **hygiene}
    inv["all"]["vars"] = {"acgs_policy": policy}
    path = sb.inventory_path.parent / f"bench-hygiene-{name}" / "inventory.yml"
    path.parent.mkdir(exist_ok=True)
    path.write_text(yaml.safe_dump(inv))
    return path


def _cli(*args: str) -> tuple[float, dict[str, Any]]:
    """Return (wall seconds, JSON answer) of one acgs-remediate command."""
    t0 = time.monotonic()
    proc = subprocess.run([CLI, *args, "--format", "json"], capture_output=True, text=True, stdin=subprocess.DEVNULL)
    seconds = time.monotonic() - t0
    if proc.returncode != 0:
        raise RuntimeError(f"{args[0]} exited {proc.returncode}: {proc.stderr.strip()[-1500:]}")
    return seconds, json.loads(proc.stdout)


def _parallel_df(docker_hosts: list[str]) -> float:
    """Return the wall time of `docker -H X system df -v` run against every engine at once."""
    docker_cli = shutil.which("docker")
    if docker_cli is None:
        raise RuntimeError("no docker CLI on PATH (the floor of (a) is `docker system df -v`)")
    t0 = time.monotonic()
    procs = [
        subprocess.Popen([docker_cli, "-H", h, "system", "df", "-v"], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
        for h in docker_hosts
    ]
    for p in procs:
        _, err = p.communicate(timeout=600)
        if p.returncode != 0:
            raise RuntimeError(f"docker system df -v failed: {err.decode(errors='replace').strip()}")
    return time.monotonic() - t0


def _direct_api(sb: Sandbox, plans: dict[str, dict[str, Any]]) -> float:
    """Return the wall time of removing each plan's images (in its order) on all hosts in parallel, no checks."""

    def one(host: str) -> None:
        api = docker.APIClient(base_url=sb.docker_host(host), timeout=300)
        for action in plans[host]["actions"]:
            if action["kind"] == "remove_image":
                for ref in action["tags"] if len(action["tags"]) > 1 else [action["image_id"]]:
                    api.remove_image(ref)
            elif action["kind"] == "prune_build_cache":
                api.prune_builds()

    t0 = time.monotonic()
    with ThreadPoolExecutor(max_workers=len(plans)) as pool:
        list(pool.map(one, plans))
    return time.monotonic() - t0


def _engine_bytes(sb: Sandbox, host: str) -> int:
    """Return the engine's own bytes as a hygiene run measures them (/system/df LayersSize + build cache)."""
    df = docker.APIClient(base_url=sb.docker_host(host), timeout=300).df()
    return int(df["LayersSize"]) + sum(int(b["Size"]) for b in df.get("BuildCache") or [] if not b["Shared"])


def _reseed(sb: Sandbox, hosts: list[str], attempts: int = 3) -> None:
    """Reseed ``hosts``; on a loaded machine a scenario service may miss its health deadline: try again."""
    for attempt in range(1, attempts + 1):
        try:
            sb.reseed(hosts)
            return
        except Exception as exc:  # noqa: BLE001 - the last attempt's error is raised
            if attempt == attempts:
                raise
            print(f"  reseed failed ({exc}); again", flush=True)


def _median(values: list[float]) -> float:
    return statistics.median(values)


def main() -> None:
    """Measure (a) and (b) on one sandbox fleet and write bench/results/hygiene.md (after each part)."""
    n = int(os.environ.get("ACGS_BENCH_HOSTS", "20"))
    repeat = max(1, int(os.environ.get("ACGS_BENCH_REPEAT", "3")))
    parts = os.environ.get("ACGS_BENCH_HYG_PARTS", "a,b").split(",")
    skip = [h for h in os.environ.get("ACGS_BENCH_HYG_SKIP", "").split(",") if h]
    sb = Sandbox(os.environ.get("ACGS_BENCH_HYG_DIR", "/var/lib/acgs-bh"))
    t0 = time.monotonic()
    sb.up(n, "acgs-1", log=lambda m: print(f"  [sandbox] {m}", flush=True))
    print(f"fleet of {n} hosts up in {time.monotonic() - t0:.1f} s", flush=True)
    names = [h for h in sb.hosts() if h not in skip]
    docker_hosts = [sb.docker_host(h) for h in names]
    res = Results(hosts=names, repeat=repeat, skipped=skip)
    limit = ["--hosts", ",".join(names), "--forks", str(len(names))]
    with tempfile.TemporaryDirectory() as tmp:
        work = Path(tmp)
        if "a" in parts:
            # A first run cleans what every run cleans (dangling images past their age); then nothing to do.
            quiet = _inventory(sb, "quiet", high_watermark="100TB", low_watermark="90TB")
            base = ["hygiene", "-i", str(quiet), "--state", str(work / "a.db"), "--yes", *limit]
            _, first = _cli(*base)
            print(f"(a) first run removed {sum(r.get('removed', 0) for r in first['hosts'])} images", flush=True)
            _cli(*base)
            _parallel_df(docker_hosts)  # both warm
            for i in range(repeat):
                t_a, result = _cli(*base)
                actions = sum(r["actions"] for r in result["hosts"])
                if actions or any(r["status"] != "succeeded" for r in result["hosts"]):
                    raise RuntimeError(f"(a) expected nothing to do, got {actions} action(s): {result['hosts'][:2]}")
                t_f = _parallel_df(docker_hosts)
                res.loads.append(os.getloadavg()[0])
                res.a_rounds.append((t_a, t_f, result.get("timings") or {}))
                print(f"(a) round {i + 1}: hygiene {t_a:.2f} s, df floor {t_f:.2f} s -> {t_a / t_f:.2f}x", flush=True)
            res.write()
        if "b" in parts:
            # Above the high watermark: evict down to a low watermark half of the smallest host's bytes.
            _reseed(sb, names)
            res.used = {h: _engine_bytes(sb, h) for h in names}
            res.low = min(res.used.values()) // 2
            high = min(res.used.values()) - 1  # every host is above it
            busy = _inventory(sb, "busy", high_watermark=f"{high}B", low_watermark=f"{res.low}B")
            _, planned = _cli("plan", "hygiene", "-i", str(busy), "--state", str(work / "plan.db"), *limit)
            plans = {p["host"]: p for p in planned["plans"]}
            res.n_images = sum(1 for p in plans.values() for a in p["actions"] if a["kind"] == "remove_image")
            print(f"(b) {res.n_images} image removals planned on {len(plans)} hosts (low {res.low} B)", flush=True)
            for i in range(repeat):
                if i:
                    _reseed(sb, names)
                state = str(work / f"b{i}.db")
                t_h, result = _cli("hygiene", "-i", str(busy), "--state", state, "--yes", *limit)
                for row in result["hosts"]:
                    if row["status"] != "succeeded":
                        raise RuntimeError(f"(b) {row['host']}: {row['status']} {row.get('messages')}")
                    want = [a["image_id"] for a in plans[row["host"]]["actions"] if a["kind"] == "remove_image"]
                    if [r["id"] for r in row["removed_images"]] != want:
                        raise RuntimeError(f"(b) {row['host']} removed other images than the plan named")
                    dev = abs(row["predicted_bytes"] - row["measured_freed"]) / max(row["measured_freed"], 1)
                    res.deviations[row["host"]] = max(res.deviations.get(row["host"], 0.0), dev)
                _reseed(sb, names)
                t_d = _direct_api(sb, plans)
                res.loads.append(os.getloadavg()[0])
                res.b_rounds.append((t_h, t_d, result.get("timings") or {}))
                print(f"(b) round {i + 1}: hygiene {t_h:.2f} s, direct API {t_d:.2f} s -> {t_h / t_d:.2f}x", flush=True)
            res.write()
    if os.environ.get("ACGS_BENCH_KEEP") != "1":
        sb.down()


@dataclass
class Results:
    """The measured rounds; :meth:`write` renders bench/results/hygiene.md from what was measured so far."""

    hosts: list[str]
    repeat: int
    skipped: list[str]
    loads: list[float] = field(default_factory=list)
    a_rounds: list[tuple[float, float, dict[str, float]]] = field(default_factory=list)
    b_rounds: list[tuple[float, float, dict[str, float]]] = field(default_factory=list)
    deviations: dict[str, float] = field(default_factory=dict)
    used: dict[str, int] = field(default_factory=dict)
    low: int = 0
    n_images: int = 0

    def write(self) -> None:
        """Write the results file (and print it)."""
        n = len(self.hosts)

        def verdict(ok: bool) -> str:
            return "ok" if ok else "**OVER the target**"

        left_out = f"; left out: {', '.join(self.skipped)}" if self.skipped else ""
        lines = [
            "# Hygiene benchmark",
            "",
            f"Command: `python -m bench hygiene` (ACGS_BENCH_HOSTS, ACGS_BENCH_REPEAT={self.repeat}: {n} hosts"
            f"{left_out}); {time.strftime('%Y-%m-%d %H:%M UTC', time.gmtime())} on {os.cpu_count()} cores shared "
            "with other engineers' runs; load average (1 min) when each round ended: "
            f"{', '.join(f'{x:.1f}' for x in self.loads)}.",
            "",
            f"Fleet: {n} sandbox hosts (scenario acgs-1). Whole CLI each time (start-up, inventory, lock, facts, the "
            "engine's events since the last run, plan, playbook when there is something to do, /system/df after, "
            "ledger, state store).",
            "",
        ]
        if self.a_rounds:
            a_ratio = _median([a / f for a, f, _ in self.a_rounds])
            lines += [
                "## (a) nothing to do (after a first run cleaned the dangling images; watermarks 100TB/90TB)",
                "",
                f"| round | `acgs-remediate hygiene --yes` s | {n} x `docker system df -v` in parallel s | ratio "
                "| inside: facts+plan |",
                "|---|---:|---:|---:|---:|",
            ]
            for i, (a, f, t) in enumerate(self.a_rounds, 1):
                inside = t.get("facts_and_plan", float("nan"))
                lines.append(f"| {i} | {a:.2f} | {f:.2f} | {a / f:.2f}x | {inside:.2f} |")
            lines += ["", f"Median ratio **{a_ratio:.2f}x** (target <= 1.5x): {verdict(a_ratio <= 1.5)}.", ""]
        if self.b_rounds:
            b_ratio = _median([h / d for h, d, _ in self.b_rounds])
            worst = max(self.deviations.values()) if self.deviations else float("nan")
            lines += [
                f"## (b) above the high watermark (high = the smallest host's {min(self.used.values())} B - 1, "
                f"low {self.low} B = half of it)",
                "",
                f"{self.n_images} image removals planned on {n} hosts; each contender on a freshly reseeded fleet; "
                "the direct script removes exactly the plan's images in the plan's order (docker SDK, one thread "
                "per host, no facts, no checks, no ledger).",
                "",
                "| round | `acgs-remediate hygiene --yes` s | direct API, parallel s | ratio | inside: facts+plan / "
                "playbook / measure |",
                "|---|---:|---:|---:|---|",
            ]
            for i, (h, d, t) in enumerate(self.b_rounds, 1):
                keys = ("facts_and_plan", "playbook", "measure_after")
                parts = " / ".join(f"{t.get(k, float('nan')):.2f}" for k in keys)
                lines.append(f"| {i} | {h:.2f} | {d:.2f} | {h / d:.2f}x | {parts} |")
            lines += [
                "",
                f"Median ratio **{b_ratio:.2f}x** (target <= 2x): {verdict(b_ratio <= 2.0)}.",
                "",
                f"Predicted vs freed (/system/df before and after), worst host over all rounds: {worst * 100:.4f} % "
                f"(target <= 1 %): {verdict(worst <= 0.01)}.",
                "",
            ]
        RESULTS.parent.mkdir(exist_ok=True)
        RESULTS.write_text("\n".join(lines))
        print("\n".join(lines), flush=True)


if __name__ == "__main__":
    main()
