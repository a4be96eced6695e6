"""Phase 1 against the real sandbox fleet: the safety invariants, idempotence, faults and bad input.

Read-only tests share the session fleet (``sandbox``); tests that change hosts take ``fresh_sandbox``
(reseeded after the test). Every run gets its own state store under tmp_path.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import pty
import shutil
import signal
import sqlite3
import subprocess
import sys
import tarfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml

from acgs_remediate.facts import collect
from acgs_remediate.inventory import load_fleet
from acgs_remediate.plan import plan_phase1, rollback_images
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario, prepare_sources
from acgs_remediate.state import StateStore

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "acgs-remediate")
DB_URL = "postgresql://acgs:s3cret@127.0.0.1:5432/acgs"
GOLDEN = "sb-h01"


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ACGS_DATABASE_URL")}
    env.update(
        {
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
            "NO_COLOR": "1",
            "COLUMNS": "200",
        }
    )
    env.update(extra)
    return env


def run_cli(*args: str, env: dict[str, str] | None = None, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI with stdin closed (not a terminal)."""
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        env=env or _env(DATABASE_URL=DB_URL),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def as_json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    """Return the JSON the command wrote to stdout (failing with its stderr when there is none)."""
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


def _client(sb: Sandbox, host: str) -> docker.DockerClient:
    return docker.DockerClient(base_url=sb.docker_host(host), timeout=60)


def image_ids(sb: Sandbox, host: str) -> set[str]:
    """Return the IDs of every image on ``host``."""
    return {img.id for img in _client(sb, host).images.list()}


def volume_digest(sb: Sandbox, host: str, name: str = "postgres_data") -> str:
    """Return a digest of every file's path and content in the named volume (it must be there)."""
    vol = _client(sb, host).volumes.get(name)
    root = Path(vol.attrs["Mountpoint"])
    h = hashlib.sha256()
    files = sorted(p for p in root.rglob("*") if p.is_file())
    assert files, f"volume {name} on {host} holds no data"
    for p in files:
        h.update(str(p.relative_to(root)).encode())
        h.update(p.read_bytes())
    return h.hexdigest()


def _restore_sources(sb: Sandbox) -> None:
    prepare_sources(load_scenario("acgs-1"), sb.sources_root)


@pytest.fixture
def fleet_before(fresh_sandbox: Sandbox) -> dict[str, Any]:
    """Return each host's snapshot and policy as seeded (sources restored to their defective state)."""
    _restore_sources(fresh_sandbox)
    fleet = load_fleet(fresh_sandbox.inventory_path)
    snaps = {h.name: (collect(h), fleet.policy(h)) for h in fleet.hosts}
    # Right after a full seed some images are younger than the policy's minimum ages (counted from their
    # arrival on the engine); wait them out so the test's plan and the run's plan (taken seconds later) agree.
    newest = max(max(i.created, i.arrived_at or i.created) for s, _ in snaps.values() for i in s.images)
    limit = max(max(p.fresh_min_age, p.dangling_min_age) for _, p in snaps.values())
    wait = limit + 2 - (datetime.now(UTC) - newest).total_seconds()
    if 0 < wait <= 120:
        time.sleep(wait)
        snaps = {h.name: (collect(h), fleet.policy(h)) for h in fleet.hosts}
    return snaps


# -- read-only -----------------------------------------------------------------------------------


def test_check_changes_nothing_and_reports_exactly_the_plan(sandbox: Sandbox, tmp_path: Path) -> None:
    # The check run applies the saved plan: its minimum-age decisions were taken once, when it was made,
    # so an image crossing dangling_min_age between the two commands cannot make them differ.
    inv, state, saved = str(sandbox.inventory_path), str(tmp_path / "s.db"), tmp_path / "plan.json"
    before = {h: image_ids(sandbox, h) for h in sandbox.hosts()}
    planned = as_json(run_cli("plan", "phase1", "-i", inv, "--format", "json", "-o", str(saved)))
    assert {h: d["plan"] for h, d in json.loads(saved.read_text())["hosts"].items()} == {
        p["host"]: p for p in planned["plans"]
    }
    checked = run_cli("phase1", "-i", inv, "--state", state, "--check", "--plan", str(saved), "--format", "json")
    assert checked.returncode == 0, checked.stderr
    rows = {r["host"]: r for r in as_json(checked)["hosts"]}
    for p in planned["plans"]:
        want = {a["image_id"] for a in p["actions"] if a["kind"] == "remove_image"}
        assert want, f"{p['host']}: the scenario should have something to remove"
        assert {r["id"] for r in rows[p["host"]]["removed_images"]} == want
        assert rows[p["host"]]["skipped"] == []
    assert {h: image_ids(sandbox, h) for h in sandbox.hosts()} == before
    assert as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"] == {}


def _import_unrelated_image(sb: Sandbox, host: str) -> str:
    """Import a new one-file image on ``host`` (a fact no plan depends on); return its ID."""
    data = io.BytesIO()
    with tarfile.open(fileobj=data, mode="w") as tar:
        payload = b"unrelated\n"
        info = tarfile.TarInfo("unrelated.txt")
        info.size = len(payload)
        tar.addfile(info, io.BytesIO(payload))
    client = _client(sb, host)
    client.api.import_image_from_data(data.getvalue(), repository="acgs-test/unrelated", tag="1")
    return client.images.get("acgs-test/unrelated:1").id


def test_a_saved_plan_is_applied_exactly_and_an_unrelated_change_does_not_refuse_it(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, inv, state, saved = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db"), tmp_path / "p"
    _restore_sources(sb)
    before = {h: image_ids(sb, h) for h in sb.hosts()}
    made = run_cli("plan", "phase1", "-i", inv, "-o", str(saved))
    assert made.returncode == 0, made.stderr[-2000:]
    assert f"--plan {saved}" in made.stderr
    plans = {h: d["plan"] for h, d in json.loads(saved.read_text())["hosts"].items()}
    unrelated = _import_unrelated_image(sb, GOLDEN)

    run = run_cli("phase1", "-i", inv, "--state", state, "--plan", str(saved), "--yes", "--format", "json")
    assert run.returncode == 0, run.stderr[-3000:]
    rows = {r["host"]: r for r in as_json(run)["hosts"]}
    assert sorted(rows) == sb.hosts()
    for host, plan in plans.items():
        planned = {a["image_id"] for a in plan["actions"] if a["kind"] == "remove_image"}
        assert planned, host
        assert {r["id"] for r in rows[host]["removed_images"]} == planned
        # Exactly the plan: every image it did not name is still there (young dangling images included:
        # the plan kept them, however old they have become since), and the new image is untouched.
        assert image_ids(sb, host) == before[host] - planned | ({unrelated} if host == GOLDEN else set())
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert {h: s["phase1"]["status"] for h, s in status.items()} == {h: "succeeded" for h in sb.hosts()}


def test_a_saved_plan_is_refused_when_an_image_in_it_became_used_and_nothing_changes(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, inv, state, saved = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db"), tmp_path / "p"
    _restore_sources(sb)
    assert run_cli("plan", "phase1", "-i", inv, "-o", str(saved)).returncode == 0
    plan = json.loads(saved.read_text())["hosts"][GOLDEN]["plan"]
    target = next(a for a in plan["actions"] if a["kind"] == "remove_image" and a["tags"])
    _client(sb, GOLDEN).containers.create(target["image_id"], name="web-1", network_mode="none", command=["true"])
    before = {h: image_ids(sb, h) for h in sb.hosts()}

    run = run_cli("phase1", "-i", inv, "--state", state, "--plan", str(saved), "--yes", "--format", "json")
    assert run.returncode == 2, run.stderr[-3000:]
    assert run.stdout == ""
    lines = [ln for ln in run.stderr.splitlines() if ln.startswith(f"{GOLDEN}: ")]
    assert lines == [
        f"{GOLDEN}: image {target['image_id'][:19]}… ({', '.join(sorted(target['tags']))}) is now used by "
        "container web-1"
    ]
    assert "nothing was changed" in run.stderr and "Traceback" not in run.stderr
    # Nothing changed on any host, no file was repaired, and the ledger holds no run.
    assert {h: image_ids(sb, h) for h in sb.hosts()} == before
    assert not (sb.sources_root / "alembic.ini").exists()
    assert as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"] == {}


def test_two_runs_at_once_second_refuses_at_once(sandbox: Sandbox, tmp_path: Path) -> None:
    inv, state = str(sandbox.inventory_path), str(tmp_path / "s.db")
    before = image_ids(sandbox, GOLDEN)
    # The first run waits at its confirmation prompt (a real terminal) while holding its host locks.
    primary, secondary = pty.openpty()
    first = subprocess.Popen(
        [CLI, "phase1", "-i", inv, "--state", state],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=_env(),
        start_new_session=True,
    )
    try:
        _read_until(primary, b"Apply ", timeout=120)
        t0 = time.monotonic()
        second = run_cli("phase1", "-i", inv, "--hosts", GOLDEN, "--state", state, "--yes")
        assert time.monotonic() - t0 < 15
        assert second.returncode == 2
        assert "locked by another run" in second.stderr and GOLDEN in second.stderr
        os.write(primary, b"n\n")
        _drain_until_exit(primary, first, timeout=60)
        assert first.returncode == 2  # declined: nothing changed
    finally:
        if first.poll() is None:
            first.kill()
        os.close(primary)
        os.close(secondary)
    assert image_ids(sandbox, GOLDEN) == before


def _read_until(fd: int, marker: bytes, timeout: float) -> bytes:
    buf = b""
    deadline = time.monotonic() + timeout
    while marker not in buf:
        assert time.monotonic() < deadline, buf.decode(errors="replace")[-2000:]
        import select

        ready, _, _ = select.select([fd], [], [], 1)
        if ready:
            buf += os.read(fd, 65536)
    return buf


def _drain_until_exit(fd: int, proc: subprocess.Popen[bytes], timeout: float) -> str:
    """Read the terminal until ``proc`` exits (a full pty would block its live progress display)."""
    import select

    buf = b""
    deadline = time.monotonic() + timeout
    while proc.poll() is None:
        assert time.monotonic() < deadline, buf.decode(errors="replace")[-2000:]
        ready, _, _ = select.select([fd], [], [], 0.5)
        if ready:
            try:
                buf += os.read(fd, 65536)
            except OSError:
                break
    proc.wait(30)
    return buf.decode(errors="replace")


def test_malformed_policy_exits_2_and_changes_nothing(sandbox: Sandbox, tmp_path: Path) -> None:
    inv_dir = tmp_path / "inv"
    shutil.copytree(sandbox.inventory_path.parent / "group_vars", inv_dir / "group_vars")
    shutil.copy(sandbox.inventory_path, inv_dir / "inventory.yml")
    gv = inv_dir / "group_vars" / "all.yml"
    data = yaml.safe_load(gv.read_text())
    data["acgs_policy"]["rollback_keep"] = -1
    data["acgs_policy"]["build_cache_budget"] = "lots"
    gv.write_text(yaml.safe_dump(data))
    before = {h: image_ids(sandbox, h) for h in sandbox.hosts()}
    proc = run_cli("phase1", "-i", str(inv_dir / "inventory.yml"), "--state", str(tmp_path / "s.db"), "--yes")
    assert proc.returncode == 2
    assert "invalid policy" in proc.stderr and str(gv) in proc.stderr
    assert "Traceback" not in proc.stderr
    assert {h: image_ids(sandbox, h) for h in sandbox.hosts()} == before


def test_shell_metacharacters_in_image_references_are_inert(sandbox: Sandbox, tmp_path: Path) -> None:
    inv_dir = tmp_path / "inv"
    shutil.copytree(sandbox.inventory_path.parent / "group_vars", inv_dir / "group_vars")
    shutil.copy(sandbox.inventory_path, inv_dir / "inventory.yml")
    gv = inv_dir / "group_vars" / "all.yml"
    data = yaml.safe_load(gv.read_text())
    canary = tmp_path / "pwned"
    evil = [f"x:latest; touch {canary}", f"$(touch {canary})", f"`touch {canary}`", "a' || rm -rf / #", "*"]
    data["acgs_policy"]["oversized_images"] = [{"ref": r, "priority": "LOW"} for r in evil]
    data["acgs_policy"]["protected_patterns"] = ["$(touch /tmp/x)", "postgres:*"]
    gv.write_text(yaml.safe_dump(data))
    inv = str(inv_dir / "inventory.yml")
    plans = as_json(run_cli("plan", "phase1", "-i", inv, "--format", "json"))["plans"]
    for p in plans:
        oversized = [a for a in p["actions"] if a.get("category") == "oversized"]
        assert oversized == []  # none of those strings names an image: nothing but dangling images planned
        assert any(ref in " ".join(p["notes"]) for ref in evil)
    before = {h: image_ids(sandbox, h) for h in sandbox.hosts()}
    # The playbook standalone, in check mode, with the same policy: the references go to the API as data.
    proc = subprocess.run(
        [
            str(Path(sys.executable).parent / "ansible-playbook"),
            "-i",
            inv,
            str(Path(__file__).resolve().parents[2] / "playbooks" / "phase1_emergency_cleanup.yml"),
            "--check",
        ],
        capture_output=True,
        text=True,
        env=_env(DATABASE_URL=DB_URL, ANSIBLE_ROLES_PATH=str(Path(__file__).resolve().parents[2] / "roles")),
        check=False,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stdout[-3000:]
    assert not canary.exists() and not Path("/tmp/x").exists()
    assert {h: image_ids(sandbox, h) for h in sandbox.hosts()} == before


def test_missing_database_url_fails_naming_the_file_and_never_writes_it(sandbox: Sandbox, tmp_path: Path) -> None:
    _restore_sources(sandbox)
    alembic = sandbox.sources_root / "alembic.ini"
    assert not alembic.exists()
    proc = run_cli(
        "phase1",
        "-i",
        str(sandbox.inventory_path),
        "--state",
        str(tmp_path / "s.db"),
        "--check",
        "--format",
        "json",
        env=_env(),
    )
    assert proc.returncode == 1
    text = proc.stdout + proc.stderr
    assert "alembic.ini" in text and "DATABASE_URL" in text
    assert not alembic.exists()


# -- changing hosts ------------------------------------------------------------------------------


def test_run_keeps_everything_protected_and_second_run_changes_nothing(
    fresh_sandbox: Sandbox,
    fleet_before: dict[str, Any],
    tmp_path: Path,
) -> None:
    sb, inv, state = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db")
    volumes = {h: volume_digest(sb, h) for h in sb.hosts()}
    first = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json")
    assert first.returncode == 0, first.stderr[-3000:]
    rows = {r["host"]: r for r in as_json(first)["hosts"]}
    for host, (snap, policy) in fleet_before.items():
        planned = {a.image_id for a in plan_phase1(snap, policy).removals()}
        after = image_ids(sb, host)
        assert {r["id"] for r in rows[host]["removed_images"]} == set(rows[host]["planned_images"]) == planned
        assert not planned & after, f"{host}: planned images still present"
        # Invariant 1: every image a container (running or stopped) used is still there.
        used = {c.image_id for c in snap.containers}
        assert used <= after, f"{host}: removed an image in use: {used - after}"
        assert any(not i.repo_tags for i in snap.images if i.id in used), "scenario: a dangling image in use"
        # Invariants 3 and 4: rollback images and protected patterns kept.
        assert set(rollback_images(snap, policy)) <= after
        protected = {i.id for i in snap.images if any(policy.is_protected(t) for t in i.repo_tags)}
        assert protected and protected <= after
        # Invariant 2: volumes untouched, their data intact.
        assert volume_digest(sb, host) == volumes[host]
        assert rows[host]["measured_freed"] > 0
    # Build files repaired from real sources, never empty.
    req = sb.sources_root / "services/core/policy-governance/pgc_service/requirements.txt"
    assert any(ln and not ln.startswith("#") and "==" in ln for ln in req.read_text().splitlines())
    assert DB_URL in (sb.sources_root / "alembic.ini").read_text()
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert {h: s["phase1"]["status"] for h, s in status.items()} == {h: "succeeded" for h in sb.hosts()}

    # Idempotence: forced again, nothing changes on any host (ansible-runner stats).
    again = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--force", "--format", "json")
    assert again.returncode == 0, again.stderr[-3000:]
    assert {r["host"]: r["changed"] for r in as_json(again)["hosts"]} == {h: 0 for h in sb.hosts()}
    # Ledger skip: a plain re-run has nothing to do.
    t0 = time.monotonic()
    skip = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json")
    assert skip.returncode == 0 and sorted(as_json(skip)["skipped_done"]) == sb.hosts()
    assert time.monotonic() - t0 < 10


def test_image_used_between_plan_and_run_is_skipped_and_reported(
    fresh_sandbox: Sandbox,
    fleet_before: dict[str, Any],
) -> None:
    from acgs_remediate.execute import run_playbook
    from acgs_remediate.resources import playbooks_dir

    sb = fresh_sandbox
    snap, policy = fleet_before[GOLDEN]
    host_plan = plan_phase1(snap, policy)
    target = next(a for a in host_plan.removals() if a.category == "oversized")
    # After the plan, someone creates a (stopped) container from a planned image.
    _client(sb, GOLDEN).containers.create(target.image_id, name="late-user", network_mode="none", command=["true"])
    result = run_playbook(
        playbooks_dir() / "phase1_emergency_cleanup.yml",
        sb.inventory_path,
        [GOLDEN],
        extravars={
            "acgs_phase1_plan": {GOLDEN: host_plan.model_dump(mode="json")},
            "acgs_phase1_build_files": [],
        },
    )
    assert result.status == "successful"
    mod = result.hosts[GOLDEN].results["acgs_image_cleanup"]
    assert [s["id"] for s in mod["skipped_images"]] == [target.image_id]
    assert "late-user" in mod["skipped_images"][0]["reason"]
    after = image_ids(sb, GOLDEN)
    assert target.image_id in after
    others = {a.image_id for a in host_plan.removals()} - {target.image_id}
    assert others and not others & after


def test_engine_stopped_mid_run_fails_that_host_and_rerun_completes(
    fresh_sandbox: Sandbox,
    fleet_before: dict[str, Any],
    tmp_path: Path,
) -> None:
    sb, inv, state = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db")
    victim = "sb-h02"
    primary, secondary = pty.openpty()
    proc = subprocess.Popen(
        [CLI, "phase1", "-i", inv, "--state", state],
        stdin=secondary,
        stdout=secondary,
        stderr=secondary,
        env=_env(DATABASE_URL=DB_URL),
        start_new_session=True,
    )
    try:
        _read_until(primary, b"Apply ", timeout=120)  # planned and shown; now the engine goes down
        sb.stop_engine(victim)
        os.write(primary, b"y\n")
        output = _drain_until_exit(primary, proc, timeout=300)
        assert proc.returncode == 1, output[-3000:]
    finally:
        if proc.poll() is None:
            proc.kill()
        os.close(primary)
        os.close(secondary)
        sb.start_engine(victim)
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert status[victim]["phase1"]["status"] == "failed"
    assert all(status[h]["phase1"]["status"] == "succeeded" for h in sb.hosts() if h != victim)
    rerun = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    data = as_json(rerun)
    assert [r["host"] for r in data["hosts"]] == [victim]
    snap, policy = fleet_before[victim]
    assert not {a.image_id for a in plan_phase1(snap, policy).removals()} & image_ids(sb, victim)


def test_orchestrator_sigkilled_leaves_hosts_interrupted_and_rerun_completes(
    fresh_sandbox: Sandbox,
    fleet_before: dict[str, Any],
    tmp_path: Path,
) -> None:
    sb, inv, state = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db")
    proc = subprocess.Popen(
        [CLI, "phase1", "-i", inv, "--state", state, "--yes"],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
        env=_env(DATABASE_URL=DB_URL),
        start_new_session=True,
    )
    try:
        deadline = time.monotonic() + 120
        while True:  # wait until the run has marked its hosts running, then kill everything it started
            assert time.monotonic() < deadline and proc.poll() is None
            if Path(state).exists():
                try:
                    with sqlite3.connect(state) as db:
                        n = db.execute("SELECT count(*) FROM phase_status WHERE status = 'running'").fetchone()[0]
                except sqlite3.OperationalError:
                    n = 0  # the store is being created right now
                if n == len(sb.hosts()):
                    break
            time.sleep(0.05)
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(30)
    finally:
        if proc.poll() is None:
            proc.kill()
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert {h: s["phase1"]["status"] for h, s in status.items()} == {h: "interrupted" for h in sb.hosts()}
    rerun = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json")
    assert rerun.returncode == 0, rerun.stderr[-3000:]
    assert sorted(r["host"] for r in as_json(rerun)["hosts"]) == sb.hosts()
    store = StateStore(Path(state))
    assert all(store.phase_status(h, "phase1").status == "succeeded" for h in sb.hosts())  # type: ignore[union-attr]
    for host, (snap, policy) in fleet_before.items():
        assert not {a.image_id for a in plan_phase1(snap, policy).removals()} & image_ids(sb, host)
        assert {c.image_id for c in snap.containers} <= image_ids(sb, host)


def test_an_image_a_kept_child_was_built_on_is_protected_not_refused_at_run_time(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, inv, state = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db")
    fleet = load_fleet(sb.inventory_path, GOLDEN)
    target = next(
        a
        for a in plan_phase1(collect(fleet.hosts[0]), fleet.policy(fleet.hosts[0])).removals()
        if a.category == "oversized"
    )
    # Someone builds an image on that oversized image with the classic builder, which records the parent.
    # (An untagged image with a child is no longer listed, nor dangling: only tagged parents are candidates.)
    context = io.BytesIO()
    with tarfile.open(fileobj=context, mode="w") as tar:
        dockerfile = f"FROM {target.image_id}\nLABEL acgs.test=child\n".encode()
        info = tarfile.TarInfo("Dockerfile")
        info.size = len(dockerfile)
        tar.addfile(info, io.BytesIO(dockerfile))
    context.seek(0)
    client = _client(sb, GOLDEN)
    child, _ = client.images.build(
        fileobj=context, custom_context=True, tag="acgs-test/child:1", network_mode="none", rm=True
    )
    assert child.attrs.get("Parent") == target.image_id

    planned = as_json(run_cli("plan", "phase1", "-i", inv, "--hosts", GOLDEN, "--format", "json"))["plans"][0]
    assert target.image_id not in [a["image_id"] for a in planned["actions"]]
    reasons = {p["image_id"]: p["reasons"] for p in planned["protections"]}
    assert "acgs-test/child:1" in reasons[target.image_id][0]
    assert "dependent child images" in reasons[target.image_id][0]

    run = run_cli("phase1", "-i", inv, "--hosts", GOLDEN, "--state", state, "--yes", "--format", "json")
    assert run.returncode == 0, run.stderr[-3000:]
    row = as_json(run)["hosts"][0]
    assert row["skipped"] == []  # nothing refused at run time: the plan already knew
    assert {target.image_id, child.id} <= image_ids(sb, GOLDEN)


def test_a_failed_shared_build_file_repair_leaves_every_host_unfinished_and_a_rerun_finishes(
    fresh_sandbox: Sandbox, tmp_path: Path
) -> None:
    sb, inv, state = fresh_sandbox, str(fresh_sandbox.inventory_path), str(tmp_path / "s.db")
    _restore_sources(sb)
    first = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json", env=_env())  # no DB URL
    assert first.returncode == 1, first.stderr[-2000:]
    rows = {r["host"]: r for r in as_json(first)["hosts"]}
    assert sorted(rows) == sb.hosts()
    for host, row in rows.items():
        # The sources are shared: the phase is unfinished on every host, not only where Ansible ran the repair.
        assert row["status"] == "failed", host
        assert any("alembic.ini" in m and "DATABASE_URL" in m for m in row["messages"]), row["messages"]
        # Each host's own cleanup did happen, and is measured.
        assert row["removed"] > 0 and row["measured_freed"] > 0, host
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert {h: s["phase1"]["status"] for h, s in status.items()} == {h: "failed" for h in sb.hosts()}
    assert not (sb.sources_root / "alembic.ini").exists()

    again = run_cli("phase1", "-i", inv, "--state", state, "--yes", "--format", "json", env=_env(DATABASE_URL=DB_URL))
    assert again.returncode == 0, again.stderr[-2000:]
    assert {r["host"]: (r["status"], r["removed"]) for r in as_json(again)["hosts"]} == {
        h: ("succeeded", 0) for h in sb.hosts()
    }
    assert DB_URL in (sb.sources_root / "alembic.ini").read_text()
    status = as_json(run_cli("status", "--state", state, "--format", "json"))["hosts"]
    assert {h: s["phase1"]["status"] for h, s in status.items()} == {h: "succeeded" for h in sb.hosts()}
