"""`acgs-remediate analyze` against real engines (the sandbox fleet): accuracy, partial fleets, bad input."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import docker
import pytest
import yaml

from acgs_remediate.sandbox import Sandbox

pytestmark = pytest.mark.integration
GOLDEN = "sb-h01"  # host index 0 is exactly the golden scenario


def _cli(*args: str, cwd: Path | None = None) -> subprocess.CompletedProcess[str]:
    exe = Path(sys.executable).with_name("acgs-remediate")
    env = {**os.environ, "ANSIBLE_NOCOLOR": "1"}
    return subprocess.run([str(exe), *args], capture_output=True, text=True, timeout=600, env=env, cwd=cwd)


def _analyze_json(inventory: Path, state: Path, *extra: str) -> tuple[int, dict]:
    proc = _cli("analyze", "-i", str(inventory), "--state", str(state), "--format", "json", *extra)
    assert proc.returncode in (0, 3), proc.stderr
    return proc.returncode, json.loads(proc.stdout)


def _host(report: dict, name: str) -> dict:
    return next(h["analysis"] for h in report["hosts"] if h["analysis"]["host"] == name)


def test_predicted_bytes_match_what_removal_really_frees(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    """Remove the unused oversized images + every dangling image no container uses; compare with df."""
    rc, report = _analyze_json(fresh_sandbox.inventory_path, tmp_path / "state.db", "--hosts", GOLDEN)
    assert rc == 0
    host = _host(report, GOLDEN)
    phase1 = next(r for r in host["savings"] if r["action"].startswith("Phase 1"))
    predicted = phase1["freed_bytes"]
    assert predicted > 0 and phase1["naive_bytes"] > predicted  # shared layers: the naive sum over-counts

    client = docker.DockerClient(base_url=fresh_sandbox.docker_host(GOLDEN), timeout=300)
    try:
        used = {c.attrs["Image"] for c in client.containers.list(all=True)}
        assert not used & set(phase1["image_ids"]), "a candidate is used by a container"
        before = client.api.df()["LayersSize"]
        for image_id in phase1["image_ids"]:
            client.api.remove_image(image_id, force=False)  # never forced: a conflict would fail the test
        after = client.api.df()["LayersSize"]
    finally:
        client.close()
    freed = before - after
    print(f"predicted {predicted} B, engine freed {freed} B ({len(phase1['image_ids'])} images)")
    assert freed > 0
    assert abs(predicted - freed) <= 0.01 * freed, f"predicted {predicted} B, engine freed {freed} B"


def test_golden_host_findings_match_the_scenario(sandbox: Sandbox, tmp_path: Path) -> None:
    from acgs_remediate.scenario import load_scenario

    expected = load_scenario("acgs-1").expectations["golden"]
    rc, report = _analyze_json(sandbox.inventory_path, tmp_path / "state.db")
    assert rc == 0 and report["unreachable"] == []
    assert len(report["hosts"]) == 3  # the shared fleet: sb-h01..sb-h03
    host = _host(report, GOLDEN)
    present = sorted(f["ref"] for f in host["oversized"] if f["source"] == "policy" and f["present"])
    assert present == sorted(expected.oversized_present)
    assert sorted(f["ref"] for f in host["oversized"] if f["candidate"]) == sorted(
        expected.oversized_removable
    )
    assert host["dangling"]["count"] == expected.dangling
    assert host["dangling"]["in_use_count"] == expected.dangling_in_use
    # Every image a container uses (running or stopped) is reported in use and is never a candidate.
    in_use = {u["image_id"] for u in host["in_use"]} | {
        d["image_id"] for d in host["dangling"]["images"] if d["containers"]
    }
    assert not in_use & {i for r in host["savings"] for i in r["image_ids"]}
    names = {c["name"] for u in host["in_use"] for c in u["containers"]}
    assert set(expected.running) <= names | {
        c["name"] for d in host["dangling"]["images"] for c in d["containers"]
    }
    # The layer graph agrees with the engine's own count of layer bytes.
    assert host["storage"]["images"] == host["storage"]["df_layers_size"]
    assert host["engine"]["fs_total_bytes"] and host["notes"] == []
    # The doctor finds the scenario's build defects, naming the files.
    missing = {
        (b["service"], f["file"]) for b in report["builds"] for f in b["findings"] if f["severity"] == "error"
    }
    files = {Path(f).name for _, f in missing if f}
    assert {"requirements.txt", "alembic.ini"} <= files


def test_baseline_recorded_once_then_reports_show_the_change(sandbox: Sandbox, tmp_path: Path) -> None:
    state = tmp_path / "state.db"
    _, first = _analyze_json(sandbox.inventory_path, state, "--hosts", GOLDEN)
    _, second = _analyze_json(sandbox.inventory_path, state, "--hosts", GOLDEN)
    h1, h2 = first["hosts"][0], second["hosts"][0]
    assert h1["baseline_recorded"] and h1["change"] is None
    assert not h2["baseline_recorded"] and h2["baseline"]["recorded_at"] == h1["baseline"]["recorded_at"]
    assert h2["change"]["images_bytes"]["delta"] == 0 and h2["change"]["dangling_count"]["current"] == 41


def _inventory_with_dead_host(sandbox: Sandbox, tmp_path: Path) -> Path:
    inv = tmp_path / "inv"
    inv.mkdir()
    shutil.copy(sandbox.inventory_path, inv / "sandbox.yml")
    if (sandbox.inventory_path.parent / "group_vars").is_dir():
        shutil.copytree(sandbox.inventory_path.parent / "group_vars", inv / "group_vars")
    (inv / "dead.yml").write_text(
        yaml.safe_dump(
            {
                "sandbox": {
                    "hosts": {
                        "sb-dead": {
                            "docker_host": f"unix://{tmp_path}/no-engine.sock",
                            "ansible_connection": "local",
                        }
                    }
                }
            }
        )
    )
    return inv


def test_unreachable_host_exits_3_and_the_others_are_reported(sandbox: Sandbox, tmp_path: Path) -> None:
    inv = _inventory_with_dead_host(sandbox, tmp_path)
    proc = _cli(
        "analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"), "--format", "json", "--timeout", "10"
    )
    assert proc.returncode == 3, proc.stderr
    report = json.loads(proc.stdout)
    assert [u["host"] for u in report["unreachable"]] == ["sb-dead"]
    assert "No such file or directory" in report["unreachable"][0]["reason"]
    assert GOLDEN in {h["analysis"]["host"] for h in report["hosts"]}
    assert "Traceback" not in proc.stderr and "sb-dead" in proc.stderr
    # The other forms write the whole report too, with the dead host in it.
    page = tmp_path / "report.html"
    proc = _cli(
        "analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"), "-o", str(page), "--timeout", "10"
    )
    assert proc.returncode == 3 and "sb-dead" in page.read_text() and "<svg" in page.read_text()


def test_bad_input_is_one_line_and_exit_2(sandbox: Sandbox, tmp_path: Path) -> None:
    proc = _cli(
        "analyze",
        "-i",
        str(sandbox.inventory_path),
        "--hosts",
        "no-such-host*",
        "--state",
        str(tmp_path / "s"),
    )
    assert proc.returncode == 2 and "matches no host" in proc.stderr and "Traceback" not in proc.stderr
    inv = tmp_path / "bad"
    (inv / "group_vars").mkdir(parents=True)
    (inv / "hosts.yml").write_text("all:\n  hosts:\n    h1: {docker_host: 'unix:///nonexistent.sock'}\n")
    (inv / "group_vars" / "all.yml").write_text("acgs_policy:\n  size_cap: huge\n")
    proc = _cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert "all.yml" in proc.stderr and "size_cap" in proc.stderr
    (inv / "hosts.yml").write_text("all: [unclosed\n")
    proc = _cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s"))
    assert proc.returncode == 2 and "Traceback" not in proc.stderr and "inventory" in proc.stderr
