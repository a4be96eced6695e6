"""Sandbox fleet timings: 20 empty hosts, 3 and 20 seeded hosts (cold and warm golden cache), reseed.

Run: ``python -m bench sandbox`` (root, dockerd). Targets from the issue: 20 hosts ready (empty) < 60 s,
3 hosts seeded < 2 min, 20 seeded < 5 min. Writes bench/results/bench_sandbox.md.
Environment: ACGS_BENCH_SCENARIO (default acgs-1), ACGS_BENCH_DIR (default /var/lib/acgs-bn).
"""

from __future__ import annotations

import os
import shutil
import time
from collections.abc import Callable
from pathlib import Path

from acgs_remediate.sandbox import GOLDEN_CACHE_ENV, Sandbox, _golden_cache

RESULTS = Path(__file__).parent / "results" / "bench_sandbox.md"


def _content_hash(scenario: str) -> str:
    from acgs_remediate.scenario import load_scenario

    return load_scenario(scenario).content_hash()


def _timed(
    label: str,
    rows: list[tuple[str, float, str]],
    target: float | None,
    fn: Callable[[], object],
    scenario: str | None = None,
) -> None:
    before = _content_hash(scenario) if scenario else ""
    t0 = time.monotonic()
    fn()
    seconds = time.monotonic() - t0
    verdict = "" if target is None else ("ok" if seconds < target else f"OVER {target:.0f} s")
    if scenario and _content_hash(scenario) != before:
        # Someone edited the scenario meanwhile: this step seeded a new golden engine (a cold number).
        verdict += " (scenario changed during the step: not comparable)"
    rows.append((label, seconds, verdict))
    print(f"{label:<48} {seconds:7.1f} s  {verdict}", flush=True)


def _clear_golden(scenario: str) -> None:
    from acgs_remediate.scenario import load_scenario

    scen = load_scenario(scenario)
    path = _golden_cache() / f"{scen.name}-{scen.content_hash()[:12]}"
    shutil.rmtree(path, ignore_errors=True)


def main() -> None:
    """Measure and print the sandbox timings; write them to bench/results/bench_sandbox.md."""
    scenario = os.environ.get("ACGS_BENCH_SCENARIO", "acgs-1")
    # Cold runs delete the golden engine: use a cache of our own so no one else's sandbox loses its copy.
    own_cache = GOLDEN_CACHE_ENV not in os.environ
    if own_cache:
        os.environ[GOLDEN_CACHE_ENV] = "/var/cache/acgs-remediate/bench-golden"
    sb = Sandbox(os.environ.get("ACGS_BENCH_DIR", "/var/lib/acgs-bn"))
    rows: list[tuple[str, float, str]] = []
    sb.down()
    try:
        _timed("up 20 hosts, empty (--scenario none)", rows, 60, lambda: sb.up(20, None))
        _timed("down 20 hosts", rows, None, sb.down)
        _clear_golden(scenario)
        _timed(f"up 3 hosts, {scenario}, cold golden cache", rows, 120, lambda: sb.up(3, scenario), scenario)
        _timed("down 3 hosts", rows, None, sb.down)
        _timed(f"up 3 hosts, {scenario}, warm golden cache", rows, 120, lambda: sb.up(3, scenario), scenario)
        _timed("reseed 1 host", rows, 10, lambda: sb.reseed(["sb-h02"]), scenario)
        sb.down()
        _timed(
            f"up 20 hosts, {scenario}, warm golden cache", rows, 300, lambda: sb.up(20, scenario), scenario
        )
        _timed("reseed 20 hosts", rows, None, lambda: sb.reseed(), scenario)
        _timed("down 20 hosts, seeded", rows, None, sb.down)
        _clear_golden(scenario)
        _timed(
            f"up 20 hosts, {scenario}, cold golden cache", rows, 300, lambda: sb.up(20, scenario), scenario
        )
    finally:
        sb.down()
        if own_cache:
            shutil.rmtree(_golden_cache(), ignore_errors=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    lines = [
        "# Sandbox fleet timings",
        "",
        f"`python -m bench sandbox` on {os.cpu_count()} cores, scenario {scenario}, "
        f"{time.strftime('%Y-%m-%d')}.",
        "",
        "| step | seconds | target |",
        "|---|---:|---|",
    ]
    lines += [f"| {label} | {seconds:.1f} | {verdict} |" for label, seconds, verdict in rows]
    RESULTS.write_text("\n".join(lines) + "\n")
    print(f"written: {RESULTS}")


if __name__ == "__main__":
    main()
