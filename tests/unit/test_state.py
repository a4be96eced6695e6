"""The state store: baselines recorded once, build records, the phase ledger and crash-safe host locks."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import textwrap
import time
from datetime import UTC, datetime, timedelta
from pathlib import Path

import pytest

from acgs_remediate.errors import LockedError
from acgs_remediate.models import Baseline, BuildRecord
from acgs_remediate.state import StateStore

T0 = datetime(2026, 1, 1, tzinfo=UTC)


def _baseline(host: str, images_bytes: int) -> Baseline:
    return Baseline(host=host, recorded_at=T0, images_bytes=images_bytes, build_cache_bytes=0, image_count=3,
                    dangling_count=1, dangling_bytes=10)


def test_baseline_is_recorded_once_and_survives_reopen(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    store = StateStore(db)
    assert store.record_baseline(_baseline("h1", 1000)) is True
    # A later analysis must not move the yardstick "reduced by 90 %" is measured against.
    assert store.record_baseline(_baseline("h1", 5)) is False
    store.close()
    again = StateStore(db)
    assert again.baseline("h1") == _baseline("h1", 1000)
    assert again.baseline("h2") is None


def test_build_records_newest_first(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    for i, ok in enumerate([False, True]):
        store.add_build_record(BuildRecord(host="h1", service="pgc", image="pgc:latest", ok=ok,
                                           seconds=1.0 + i, finished_at=T0 + timedelta(minutes=i)))
    store.add_build_record(BuildRecord(host="h2", service="pgc", image="pgc:latest", ok=False, seconds=1,
                                       finished_at=T0))
    records = store.build_records("h1")
    assert [r.ok for r in records] == [True, False]
    assert all(r.host == "h1" for r in records)


def test_ledger_keeps_current_state_and_history(tmp_path: Path) -> None:
    store = StateStore(tmp_path / "s.db")
    store.begin_run("r1", "phase1", ["h1"])
    with store.lock_hosts(["h1"], "r1"):
        store.mark_running("h1", "phase1", "r1", bytes_before=100)
        store.finish_host("h1", "phase1", "r1", "succeeded", bytes_after=40, bytes_freed=60,
                          removed=[{"id": "sha256:a", "tags": ["x:1"]}])
    store.finish_run("r1", "succeeded")
    rec = store.phase_status("h1", "phase1")
    assert rec is not None and rec.status == "succeeded"
    assert (rec.bytes_before, rec.bytes_after, rec.bytes_freed) == (100, 40, 60)
    assert rec.removed == [{"id": "sha256:a", "tags": ["x:1"]}]
    assert [h.status for h in store.history("h1", "phase1")] == ["succeeded", "running"]
    assert store.runs()[0].status == "succeeded"


def test_second_lock_on_overlapping_hosts_refuses_at_once(tmp_path: Path) -> None:
    first = StateStore(tmp_path / "s.db")
    second = StateStore(tmp_path / "s.db")
    with first.lock_hosts(["h1", "h2"], "r1"):
        start = time.monotonic()
        with pytest.raises(LockedError) as exc:
            second.lock_hosts(["h2", "h3"], "r2")
        assert time.monotonic() - start < 1
        assert "h2" in exc.value.message and "r1" in exc.value.message
        # All-or-nothing: h3 was not left locked by the refused attempt.
        assert not first.is_locked("h3")
    # Released: the other run may go now.
    second.lock_hosts(["h2", "h3"], "r2").release()


def test_sigkilled_run_leaves_host_interrupted_and_lock_free(tmp_path: Path) -> None:
    db = tmp_path / "s.db"
    code = textwrap.dedent(f"""
        import sys, time
        from pathlib import Path
        from acgs_remediate.state import StateStore
        s = StateStore(Path({str(db)!r}))
        s.begin_run("r1", "phase1", ["h1"])
        locks = s.lock_hosts(["h1"], "r1")
        s.mark_running("h1", "phase1", "r1")
        print("ready", flush=True)
        time.sleep(60)
    """)
    proc = subprocess.Popen([sys.executable, "-c", code], stdout=subprocess.PIPE, text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "ready"
        store = StateStore(db)
        # While the owner lives, its row is really running.
        assert store.reconcile() == []
        assert store.phase_status("h1", "phase1").status == "running"  # type: ignore[union-attr]
        os.kill(proc.pid, signal.SIGKILL)
        proc.wait(10)
        assert store.reconcile() == [("h1", "phase1")]
        assert store.phase_status("h1", "phase1").status == "interrupted"  # type: ignore[union-attr]
        assert store.runs()[0].status == "interrupted"
        store.lock_hosts(["h1"], "r2").release()  # the dead run's lock is gone with it
    finally:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def test_state_store_and_its_locks_are_owner_only_whatever_the_umask(tmp_path: Path) -> None:
    old = os.umask(0o022)  # the usual umask: files 0644, directories 0755
    try:
        store = StateStore(tmp_path / "s.db")
        with store.lock_hosts(["web-1"], "phase1-test"):
            locks = list(store.lock_dir.iterdir())
            modes = {p.name: p.stat().st_mode & 0o777 for p in [store.path, store.lock_dir, *locks]}
        store.close()
    finally:
        os.umask(old)
    assert modes == {"s.db": 0o600, "s.db.locks": 0o700, "web-1.lock": 0o600}


def test_threads_sharing_one_store_write_without_interleaving_transactions(tmp_path: Path) -> None:
    """Phase 3 switches a batch's hosts in parallel threads, each writing the ledger through one store."""
    from concurrent.futures import ThreadPoolExecutor

    store = StateStore(tmp_path / "state.db")
    store.begin_run("phase3-t", "phase3", [f"h{i}" for i in range(8)])

    def host(i: int) -> None:
        for n in range(25):
            store.add_measurement(f"h{i}", "monitor", {"n": n}, run_id="phase3-t")
            store.finish_host(f"h{i}", "phase3", "phase3-t", "succeeded", detail=str(n))

    with ThreadPoolExecutor(max_workers=8) as pool:
        list(pool.map(host, range(8)))  # before the fix: "cannot start a transaction within a transaction"
    assert all(len(store.measurements(f"h{i}", "monitor")) == 25 for i in range(8))
    assert {store.phase_status(f"h{i}", "phase3").detail for i in range(8)} == {"24"}


def test_a_refused_command_leaves_no_new_state_store_but_never_discards_a_used_one(tmp_path: Path) -> None:
    """Bad input changes nothing anywhere (exit 2): a store the refused command itself created goes again."""
    fresh = StateStore(tmp_path / "new.db")
    with fresh.lock_hosts(["web-1"], "phase3-t"):
        pass
    assert fresh.discard_if_unused()
    assert sorted(p.name for p in tmp_path.iterdir()) == []

    used = StateStore(tmp_path / "used.db")
    used.begin_run("phase1-t", "phase1", ["web-1"])
    assert not used.discard_if_unused()
    used.close()
    assert (tmp_path / "used.db").exists()
