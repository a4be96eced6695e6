"""The state store: per-host phase ledger with history, baselines, build records, measurements, locks.

One SQLite file (WAL, so readers never block the writer and several processes can share it).
Per-host locks are ``flock`` locks on small files next to the database: the kernel releases
them when the owning process dies, so a lock can never be left "stale" by a crash (SIGKILL
included). A ledger row still saying ``running`` whose host lock is free therefore belongs to
a dead run: :meth:`StateStore.reconcile` marks it ``interrupted``, and a re-run completes it.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import sqlite3
import threading
import uuid
from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Literal
from urllib.parse import quote

from .deploy import RollbackUnit
from .errors import LockedError, UsageError
from .models import Baseline, BuildRecord, HostSnapshot

PhaseState = Literal["pending", "running", "succeeded", "failed", "interrupted", "rolled_back"]
# "rolled_back": phase 3 switched the host, it failed its health gate (or the fleet's policy sent it back)
# and it runs its recorded rollback unit again.
PHASE_STATES: tuple[str, ...] = ("pending", "running", "succeeded", "failed", "interrupted", "rolled_back")
# States a re-run must (re)do; "succeeded" is skipped unless forced.
RETRY_STATES = frozenset({"pending", "failed", "interrupted", "rolled_back"})
# A rollback unit's life: recorded before the switch ("switching"), then "deployed" once the host passed its
# gate, "rolled_back" once it went back to it, "rollback_failed" when going back did not come up healthy.
UNIT_STATES: tuple[str, ...] = ("switching", "deployed", "rolled_back", "rollback_failed")

_SCHEMA = """
CREATE TABLE IF NOT EXISTS baselines (
    host TEXT PRIMARY KEY,
    recorded_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE TABLE IF NOT EXISTS build_records (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    service TEXT NOT NULL,
    finished_at TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS build_records_host ON build_records (host, finished_at);
CREATE TABLE IF NOT EXISTS measurements (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    kind TEXT NOT NULL,
    taken_at TEXT NOT NULL,
    run_id TEXT,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS measurements_host ON measurements (host, kind, taken_at);
CREATE TABLE IF NOT EXISTS runs (
    run_id TEXT PRIMARY KEY,
    phase TEXT NOT NULL,
    started_at TEXT NOT NULL,
    finished_at TEXT,
    status TEXT NOT NULL,
    pid INTEGER NOT NULL,
    check_mode INTEGER NOT NULL DEFAULT 0,
    hosts TEXT NOT NULL,
    detail TEXT
);
CREATE TABLE IF NOT EXISTS phase_status (
    host TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT,
    pid INTEGER,
    started_at TEXT,
    finished_at TEXT,
    bytes_before INTEGER,
    bytes_after INTEGER,
    bytes_freed INTEGER,
    removed TEXT NOT NULL DEFAULT '[]',
    detail TEXT,
    PRIMARY KEY (host, phase)
);
CREATE TABLE IF NOT EXISTS phase_history (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    phase TEXT NOT NULL,
    status TEXT NOT NULL,
    run_id TEXT,
    at TEXT NOT NULL,
    bytes_before INTEGER,
    bytes_after INTEGER,
    bytes_freed INTEGER,
    removed TEXT NOT NULL DEFAULT '[]',
    detail TEXT
);
CREATE INDEX IF NOT EXISTS phase_history_host ON phase_history (host, phase, id);
CREATE TABLE IF NOT EXISTS image_ledger (
    host TEXT NOT NULL,
    engine_id TEXT NOT NULL,
    image_id TEXT NOT NULL,
    first_seen TEXT NOT NULL,
    last_used TEXT,
    last_used_source TEXT,
    PRIMARY KEY (host, engine_id, image_id)
);
CREATE TABLE IF NOT EXISTS rollback_units (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    host TEXT NOT NULL,
    project TEXT NOT NULL,
    run_id TEXT NOT NULL,
    recorded_at TEXT NOT NULL,
    status TEXT NOT NULL,
    data TEXT NOT NULL
);
CREATE INDEX IF NOT EXISTS rollback_units_host ON rollback_units (host, project, id);
CREATE TABLE IF NOT EXISTS event_cursor (
    host TEXT PRIMARY KEY,
    until TEXT NOT NULL
);
"""


def _now() -> datetime:
    return datetime.now(UTC)


def _iso(dt: datetime | None) -> str | None:
    return dt.isoformat() if dt is not None else None


def _parse_dt(text: str | None) -> datetime | None:
    return datetime.fromisoformat(text) if text else None


def new_run_id(phase: str) -> str:
    """Return a fresh, sortable run id such as ``phase1-20260101T120000-1a2b3c``."""
    return f"{phase}-{_now().strftime('%Y%m%dT%H%M%S')}-{uuid.uuid4().hex[:6]}"


@dataclass(frozen=True)
class Sighting:
    """What the image ledger knows of one image on one engine: first seen by this tool, last seen used."""

    first_seen: datetime
    last_used: datetime | None = None  # None: never seen used
    last_used_source: str = ""  # what showed the use ("event die of container web", "container db running")


@dataclass(frozen=True)
class PhaseRecord:
    """One host's state in one phase (the current row, or one history entry)."""

    host: str
    phase: str
    status: str
    run_id: str | None = None
    started_at: datetime | None = None
    finished_at: datetime | None = None
    bytes_before: int | None = None
    bytes_after: int | None = None
    bytes_freed: int | None = None
    removed: list[Any] = field(default_factory=list)
    detail: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """Return the record as JSON-ready data."""
        return {
            "host": self.host, "phase": self.phase, "status": self.status, "run_id": self.run_id,
            "started_at": _iso(self.started_at), "finished_at": _iso(self.finished_at),
            "bytes_before": self.bytes_before, "bytes_after": self.bytes_after,
            "bytes_freed": self.bytes_freed,
            "removed": self.removed, "detail": self.detail,
        }


@dataclass(frozen=True)
class RunRecord:
    """One orchestrator run of a phase."""

    run_id: str
    phase: str
    status: str
    started_at: datetime
    finished_at: datetime | None
    pid: int
    check_mode: bool
    hosts: list[str]
    detail: str | None


class HostLocks:
    """Exclusive per-host locks held by this process (released on close or process death)."""

    def __init__(self, files: dict[str, int]) -> None:
        self._fds = files

    @property
    def hosts(self) -> list[str]:
        """Return the hosts this object holds locked."""
        return sorted(self._fds)

    def release(self) -> None:
        """Release every lock."""
        for fd in self._fds.values():
            with contextlib.suppress(OSError):
                fcntl.flock(fd, fcntl.LOCK_UN)
            with contextlib.suppress(OSError):
                os.close(fd)
        self._fds = {}

    def __enter__(self) -> HostLocks:
        return self

    def __exit__(self, *exc: object) -> None:
        self.release()


class StateStore:
    """The SQLite state store (created on first use; safe for concurrent processes)."""

    def __init__(self, path: Path) -> None:
        self.path = Path(path).expanduser()
        # One connection serves every thread of a run (phase 3 switches a batch's hosts in parallel threads):
        # two threads' BEGIN on it would interleave ("cannot start a transaction within a transaction").
        # Set before the schema migration, the first transaction.
        self._tx_lock = threading.RLock()
        try:
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._db = sqlite3.connect(
                str(self.path), timeout=30.0, isolation_level=None, check_same_thread=False
            )
            self._db.execute("PRAGMA journal_mode=WAL")
            self._db.execute("PRAGMA busy_timeout=30000")
            self._db.execute("PRAGMA synchronous=NORMAL")
            self._db.executescript(_SCHEMA)
            self._migrate()
            # Owner only: the ledger names hosts, images and paths of the fleet. SQLite gives the WAL and
            # shared-memory files the database file's mode when it creates them.
            for suffix in ("", "-wal", "-shm"):
                with contextlib.suppress(FileNotFoundError):
                    os.chmod(f"{self.path}{suffix}", 0o600)
        except (OSError, sqlite3.Error) as exc:
            raise UsageError(f"cannot open state store {self.path}: {exc}",
                             hint="pass --state with a writable path, or set ACGS_REMEDIATE_STATE") from None
        self.lock_dir = self.path.parent / f"{self.path.name}.locks"

    def _migrate(self) -> None:
        """Fold the tables of earlier versions into today's (idempotent; a store of any earlier version opens).

        Before the one image ledger there were two "first seen" tables: ``image_arrivals`` (host, engine ID,
        image ID, first seen; every phase's facts) and hygiene's ``image_use`` (host, image ID, first seen, last
        use; no engine ID). Their rows merge into ``image_ledger`` keeping the earliest first sighting and the
        latest use; an ``image_use`` row takes the engine ID its host's arrival rows name, else "" (adopted by
        the next sighting of the host, :meth:`note_arrivals`). The old tables are dropped afterwards.
        """
        old = {"image_arrivals", "image_use"}
        found = {r[0] for r in self._db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} & old
        if not found:
            return
        with self._tx() as db:  # re-read under the write lock: another process may have migrated meanwhile
            found = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type = 'table'")} & old
            if "image_arrivals" in found:
                db.execute(
                    "INSERT INTO image_ledger (host, engine_id, image_id, first_seen) "
                    "SELECT host, engine_id, image_id, first_seen FROM image_arrivals WHERE true "
                    "ON CONFLICT (host, engine_id, image_id) DO UPDATE SET "
                    "first_seen = MIN(first_seen, excluded.first_seen)"
                )
                db.execute("DROP TABLE image_arrivals")
            if "image_use" in found:
                db.execute(
                    "INSERT INTO image_ledger (host, engine_id, image_id, first_seen, last_used, last_used_source) "
                    "SELECT u.host, COALESCE("
                    " (SELECT l.engine_id FROM image_ledger l WHERE l.host = u.host AND l.image_id = u.image_id"
                    "  ORDER BY l.first_seen DESC LIMIT 1),"
                    " (SELECT l.engine_id FROM image_ledger l WHERE l.host = u.host"
                    "  ORDER BY l.first_seen DESC LIMIT 1),"
                    " ''), u.image_id, u.first_seen, u.last_used, u.last_used_source FROM image_use u WHERE true "
                    "ON CONFLICT (host, engine_id, image_id) DO UPDATE SET "
                    "first_seen = MIN(first_seen, excluded.first_seen), "
                    "last_used_source = CASE WHEN last_used IS NULL OR excluded.last_used > last_used "
                    "THEN excluded.last_used_source ELSE last_used_source END, "
                    "last_used = CASE WHEN last_used IS NULL OR excluded.last_used > last_used "
                    "THEN excluded.last_used ELSE last_used END"
                )
                db.execute("DROP TABLE image_use")

    def close(self) -> None:
        """Close the database connection."""
        self._db.close()

    def discard_if_unused(self) -> bool:
        """Close the store and delete it (its -wal/-shm files and lock dir) when it records no run and no phase.

        For a command that created the store and then refused its input (exit 2): bad input changes nothing
        anywhere, not even a new state store. A store any run or phase was recorded in (by this process or
        another) is kept. Returns whether it was deleted. Raises nothing (a file already gone is fine).
        """
        try:
            # What a run records; the image ledger and the event cursor are observations a next run re-reads.
            tables = ("runs", "phase_status", "phase_history", "baselines", "build_records", "measurements",
                      "rollback_units")
            used = sum(self._db.execute(f"SELECT COUNT(*) FROM {t}").fetchone()[0] for t in tables)  # noqa: S608
        except sqlite3.Error:
            return False
        if used:
            return False
        self._db.close()
        for suffix in ("", "-wal", "-shm"):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(f"{self.path}{suffix}")
        with contextlib.suppress(OSError):
            for lock in self.lock_dir.iterdir():
                lock.unlink()
            self.lock_dir.rmdir()
        return True

    @contextlib.contextmanager
    def _tx(self) -> Iterator[sqlite3.Connection]:
        # BEGIN IMMEDIATE takes the write lock up front: no upgrade deadlocks between processes; the thread lock
        # keeps this process's threads to one transaction at a time on the shared connection.
        with self._tx_lock:
            self._db.execute("BEGIN IMMEDIATE")
            try:
                yield self._db
            except BaseException:
                self._db.execute("ROLLBACK")
                raise
            self._db.execute("COMMIT")

    # -- baselines -------------------------------------------------------------------------

    def record_baseline(self, b: Baseline) -> bool:
        """Record ``b`` only when its host has no baseline yet; return whether it was recorded."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT OR IGNORE INTO baselines (host, recorded_at, data) VALUES (?, ?, ?)",
                (b.host, _iso(b.recorded_at), b.model_dump_json()),
            )
            return cur.rowcount == 1

    def baseline(self, host: str) -> Baseline | None:
        """Return the baseline of ``host``, or None."""
        row = self._db.execute("SELECT data FROM baselines WHERE host = ?", (host,)).fetchone()
        return Baseline.model_validate_json(row[0]) if row else None

    # -- the image ledger: when this tool first saw each image on a host's engine, and when it last saw it used ---

    def note_arrivals(self, snapshot: HostSnapshot) -> HostSnapshot:
        """Record when this tool first saw each of the snapshot's images; return it with that as last evidence.

        The one "first seen" ledger (table ``image_ledger``), shared by every phase's facts, ``analyze`` and
        hygiene. Rows are keyed by host, engine ID and image ID; an image gone from the host's engine loses its
        row, and so does every row of another engine ID for the host (the host now points at another engine),
        so a later re-pull starts afresh. The first sighting bounds the arrival from above (the image was there
        by then at the latest), so it never makes an image look older than it is. Images whose arrival the
        engine already told (``arrival_source`` set) keep it: the ledger only fills the unknown ones.
        """
        seen_at = _iso(snapshot.collected_at)
        host, engine = snapshot.host, snapshot.engine.engine_id
        ids = [img.id for img in snapshot.images]
        current = set(ids)
        with self._tx() as db:
            if engine:
                # Rows migrated from a version that did not record the engine ID belong to this engine.
                db.execute(
                    "UPDATE OR IGNORE image_ledger SET engine_id = ? WHERE host = ? AND engine_id = ''", (engine, host)
                )
            db.executemany(
                "INSERT OR IGNORE INTO image_ledger (host, engine_id, image_id, first_seen) VALUES (?, ?, ?, ?)",
                [(host, engine, i, seen_at) for i in ids],
            )
            rows = db.execute(
                "SELECT engine_id, image_id, first_seen FROM image_ledger WHERE host = ?", (host,)
            ).fetchall()
            gone = [(host, e, i) for e, i, _ in rows if e != engine or i not in current]
            db.executemany("DELETE FROM image_ledger WHERE host = ? AND engine_id = ? AND image_id = ?", gone)
        first_seen = {i: _parse_dt(f) for e, i, f in rows if e == engine and i in current}
        return snapshot.with_ledger({k: v for k, v in first_seen.items() if v is not None})

    def image_ledger(self, host: str, engine_id: str) -> dict[str, Sighting]:
        """Return image ID -> :class:`Sighting` (first seen, last seen used) of the images on ``host``'s engine."""
        rows = self._db.execute(
            "SELECT image_id, first_seen, last_used, last_used_source FROM image_ledger "
            "WHERE host = ? AND engine_id = ?",
            (host, engine_id),
        ).fetchall()
        return {r[0]: Sighting(_parse_dt(r[1]) or _now(), _parse_dt(r[2]), r[3] or "") for r in rows}

    def record_uses(
        self, host: str, engine_id: str, uses: dict[str, tuple[datetime, str]], gone: Iterable[str] = ()
    ) -> None:
        """Record when each image of ``host``'s engine was last seen used; forget the images ``gone``.

        ``uses``: image ID -> (last use, what showed it); a use never moves back in time, and only images
        already in the ledger (seen by :meth:`note_arrivals`) are updated. ``gone``: image IDs a run just
        removed (if one comes back, it is a new arrival).
        """
        with self._tx() as db:
            db.executemany(
                "UPDATE image_ledger SET last_used = ?, last_used_source = ? "
                "WHERE host = ? AND engine_id = ? AND image_id = ? AND (last_used IS NULL OR last_used < ?)",
                [(_iso(when), src, host, engine_id, i, _iso(when)) for i, (when, src) in uses.items()],
            )
            db.executemany(
                "DELETE FROM image_ledger WHERE host = ? AND engine_id = ? AND image_id = ?",
                [(host, engine_id, i) for i in gone],
            )

    # -- build records ---------------------------------------------------------------------

    def add_build_record(self, r: BuildRecord) -> None:
        """Append one build record."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO build_records (host, service, finished_at, data) VALUES (?, ?, ?, ?)",
                (r.host, r.service, _iso(r.finished_at), r.model_dump_json()),
            )

    def build_records(self, host: str) -> list[BuildRecord]:
        """Return every build record of ``host``, newest first (so the first per service is its latest)."""
        rows = self._db.execute(
            "SELECT data FROM build_records WHERE host = ? ORDER BY finished_at DESC, id DESC", (host,)
        ).fetchall()
        return [BuildRecord.model_validate_json(r[0]) for r in rows]

    # -- rollback units (phase 3) ----------------------------------------------------------

    def add_rollback_unit(self, unit: RollbackUnit) -> int:
        """Record ``unit`` (status ``switching``) before its host is switched; return its id."""
        with self._tx() as db:
            cur = db.execute(
                "INSERT INTO rollback_units (host, project, run_id, recorded_at, status, data) "
                "VALUES (?, ?, ?, ?, 'switching', ?)",
                (unit.host, unit.project, unit.run_id, _iso(unit.recorded_at), unit.model_dump_json()),
            )
            return int(cur.lastrowid or 0)

    def set_rollback_unit_status(self, unit_id: int, status: str) -> None:
        """Set the status of rollback unit ``unit_id`` (one of UNIT_STATES)."""
        if status not in UNIT_STATES:
            raise ValueError(f"unknown rollback unit state {status!r}")
        with self._tx() as db:
            db.execute("UPDATE rollback_units SET status = ? WHERE id = ?", (status, unit_id))

    def rollback_unit(self, unit_id: int) -> RollbackUnit:
        """Return rollback unit ``unit_id``; raise KeyError when there is none."""
        row = self._db.execute("SELECT data FROM rollback_units WHERE id = ?", (unit_id,)).fetchone()
        if row is None:
            raise KeyError(unit_id)
        return RollbackUnit.model_validate_json(row[0])

    def rollback_units(
        self, host: str, project: str | None = None, statuses: Iterable[str] | None = None
    ) -> list[tuple[int, str, RollbackUnit]]:
        """Return ``(id, status, unit)`` of ``host``'s rollback units, newest first (optionally filtered)."""
        sql = "SELECT id, status, data FROM rollback_units WHERE host = ?"
        args: list[Any] = [host]
        if project is not None:
            sql += " AND project = ?"
            args.append(project)
        wanted = set(statuses) if statuses is not None else None
        rows = self._db.execute(sql + " ORDER BY id DESC", args).fetchall()
        return [(int(i), st, RollbackUnit.model_validate_json(d)) for i, st, d in rows
                if wanted is None or st in wanted]

    # -- measurements ----------------------------------------------------------------------

    def add_measurement(self, host: str, kind: str, data: dict[str, Any], run_id: str | None = None) -> None:
        """Append a measurement (e.g. storage bytes before/after a run) for ``host``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO measurements (host, kind, taken_at, run_id, data) VALUES (?, ?, ?, ?, ?)",
                (host, kind, _iso(_now()), run_id, json.dumps(data, default=str)),
            )

    def measurements(self, host: str, kind: str | None = None, limit: int | None = None) -> list[dict[str, Any]]:
        """Return the measurements of ``host`` (optionally one kind; the newest ``limit`` only), newest first."""
        sql = "SELECT kind, taken_at, run_id, data FROM measurements WHERE host = ?"
        args: list[Any] = [host]
        if kind is not None:
            sql += " AND kind = ?"
            args.append(kind)
        sql += " ORDER BY id DESC"
        if limit is not None:
            sql += " LIMIT ?"
            args.append(limit)
        rows = self._db.execute(sql, args).fetchall()
        return [{"kind": k, "taken_at": t, "run_id": r, "data": json.loads(d)} for k, t, r, d in rows]

    # -- how far hygiene read each engine's event stream ------------------------------------------------------

    def events_cursor(self, host: str) -> datetime | None:
        """Return up to when ``host``'s engine events were read by the last hygiene run, or None."""
        row = self._db.execute("SELECT until FROM event_cursor WHERE host = ?", (host,)).fetchone()
        return _parse_dt(row[0]) if row else None

    def set_events_cursor(self, host: str, until: datetime) -> None:
        """Record that ``host``'s engine events were read up to ``until``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO event_cursor (host, until) VALUES (?, ?) ON CONFLICT (host) DO UPDATE SET until = ?",
                (host, _iso(until), _iso(until)),
            )

    # -- locks -----------------------------------------------------------------------------

    def _lock_file(self, host: str) -> Path:
        return self.lock_dir / f"{quote(host, safe='')}.lock"

    def lock_hosts(self, hosts: Iterable[str], run_id: str) -> HostLocks:
        """Lock every host in ``hosts`` at once or none; raise LockedError naming who holds one."""
        self.lock_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
        os.chmod(self.lock_dir, 0o700)  # lock files name the runs and their PIDs: owner only
        held: dict[str, int] = {}
        try:
            for host in sorted(set(hosts)):
                fd = os.open(self._lock_file(host), os.O_RDWR | os.O_CREAT, 0o600)
                os.fchmod(fd, 0o600)
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                except BlockingIOError:
                    owner = os.pread(fd, 200, 0).decode(errors="replace").strip() or "another process"
                    os.close(fd)
                    raise LockedError(
                        f"host {host} is locked by another run ({owner})",
                        hint="wait for that run to finish; a run that died releases its locks by itself",
                    ) from None
                os.ftruncate(fd, 0)
                os.pwrite(fd, f"run {run_id}, pid {os.getpid()}".encode(), 0)
                held[host] = fd
        except BaseException:
            HostLocks(held).release()
            raise
        return HostLocks(held)

    def is_locked(self, host: str) -> bool:
        """Return True when some live process holds ``host``'s lock."""
        path = self._lock_file(host)
        if not path.exists():
            return False
        fd = os.open(path, os.O_RDWR)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            return True
        finally:
            os.close(fd)  # closing drops a lock we may just have taken
        return False

    # -- the phase ledger ------------------------------------------------------------------

    def reconcile(self) -> list[tuple[str, str]]:
        """Mark ``running`` rows whose run died (lock free) as interrupted; return (host, phase) pairs."""
        rows = self._db.execute(
            "SELECT host, phase, run_id FROM phase_status WHERE status = 'running'"
        ).fetchall()
        marked: list[tuple[str, str]] = []
        for host, phase, run_id in rows:
            if self.is_locked(host):
                continue
            with self._tx() as db:
                cur = db.execute(
                    "UPDATE phase_status SET status = 'interrupted', finished_at = ?, "
                    "detail = 'the run ended without a result (killed or crashed)' "
                    "WHERE host = ? AND phase = ? AND status = 'running' AND run_id IS ?",
                    (_iso(_now()), host, phase, run_id),
                )
                if cur.rowcount:
                    self._history(db, host, phase)
                    marked.append((host, phase))
                    db.execute(
                        "UPDATE runs SET status = 'interrupted', finished_at = COALESCE(finished_at, ?) "
                        "WHERE run_id = ? AND status = 'running'", (_iso(_now()), run_id),
                    )
        return marked

    def begin_run(self, run_id: str, phase: str, hosts: list[str], check_mode: bool = False) -> None:
        """Record the start of a run over ``hosts``."""
        with self._tx() as db:
            db.execute(
                "INSERT INTO runs (run_id, phase, started_at, status, pid, check_mode, hosts) "
                "VALUES (?, ?, ?, 'running', ?, ?, ?)",
                (run_id, phase, _iso(_now()), os.getpid(), int(check_mode), json.dumps(sorted(hosts))),
            )

    def finish_run(self, run_id: str, status: str, detail: str | None = None) -> None:
        """Record the end of a run."""
        with self._tx() as db:
            db.execute("UPDATE runs SET status = ?, finished_at = ?, detail = ? WHERE run_id = ?",
                       (status, _iso(_now()), detail, run_id))

    def runs(self, limit: int = 20) -> list[RunRecord]:
        """Return the latest runs, newest first."""
        rows = self._db.execute(
            "SELECT run_id, phase, status, started_at, finished_at, pid, check_mode, hosts, detail "
            "FROM runs ORDER BY started_at DESC LIMIT ?", (limit,)
        ).fetchall()
        return [RunRecord(r[0], r[1], r[2], _parse_dt(r[3]) or _now(), _parse_dt(r[4]), r[5], bool(r[6]),
                          json.loads(r[7]), r[8]) for r in rows]

    def set_pending(self, host: str, phase: str, run_id: str) -> None:
        """Mark ``host`` pending in ``phase`` for ``run_id`` (planned, not started)."""
        self._set(host, phase, "pending", run_id=run_id, started_at=None, finished_at=None)

    def mark_running(self, host: str, phase: str, run_id: str, bytes_before: int | None = None) -> None:
        """Mark ``host`` running in ``phase`` (call with the host's lock held)."""
        self._set(host, phase, "running", run_id=run_id, started_at=_now(), finished_at=None,
                  bytes_before=bytes_before, bytes_after=None, bytes_freed=None, removed=[], detail=None)

    def finish_host(
        self, host: str, phase: str, run_id: str, status: PhaseState, *,
        bytes_before: int | None = None, bytes_after: int | None = None, bytes_freed: int | None = None,
        removed: list[Any] | None = None, detail: str | None = None,
    ) -> None:
        """Record the outcome of ``host`` in ``phase`` for ``run_id``."""
        if status not in PHASE_STATES:
            raise ValueError(f"unknown phase state {status!r}")
        values: dict[str, Any] = {"run_id": run_id, "finished_at": _now(), "bytes_after": bytes_after,
                                  "bytes_freed": bytes_freed, "removed": removed or [], "detail": detail}
        if bytes_before is not None:
            values["bytes_before"] = bytes_before
        self._set(host, phase, status, **values)

    def _set(self, host: str, phase: str, status: str, **values: Any) -> None:
        cols = {"status": status, "pid": os.getpid(), **values}
        if "removed" in cols:
            cols["removed"] = json.dumps(cols["removed"], default=str)
        for key in ("started_at", "finished_at"):
            if key in cols and isinstance(cols[key], datetime):
                cols[key] = _iso(cols[key])
        with self._tx() as db:
            db.execute("INSERT OR IGNORE INTO phase_status (host, phase, status) VALUES (?, ?, ?)",
                       (host, phase, status))
            assignments = ", ".join(f"{k} = ?" for k in cols)
            db.execute(f"UPDATE phase_status SET {assignments} WHERE host = ? AND phase = ?",  # noqa: S608
                       [*cols.values(), host, phase])
            self._history(db, host, phase)

    @staticmethod
    def _history(db: sqlite3.Connection, host: str, phase: str) -> None:
        db.execute(
            "INSERT INTO phase_history (host, phase, status, run_id, at, bytes_before, bytes_after, "
            "bytes_freed, removed, detail) SELECT host, phase, status, run_id, ?, bytes_before, bytes_after, "
            "bytes_freed, removed, detail FROM phase_status WHERE host = ? AND phase = ?",
            (_iso(_now()), host, phase),
        )

    @staticmethod
    def _record(row: tuple[Any, ...]) -> PhaseRecord:
        return PhaseRecord(
            host=row[0], phase=row[1], status=row[2], run_id=row[3], started_at=_parse_dt(row[4]),
            finished_at=_parse_dt(row[5]), bytes_before=row[6], bytes_after=row[7], bytes_freed=row[8],
            removed=json.loads(row[9] or "[]"), detail=row[10],
        )

    _COLS = ("host, phase, status, run_id, started_at, finished_at, bytes_before, bytes_after, bytes_freed, "
             "removed, detail")

    def phase_status(self, host: str, phase: str) -> PhaseRecord | None:
        """Return ``host``'s current state in ``phase``, or None when it never ran."""
        row = self._db.execute(f"SELECT {self._COLS} FROM phase_status WHERE host = ? AND phase = ?",  # noqa: S608
                               (host, phase)).fetchone()
        return self._record(row) if row else None

    def all_status(self) -> list[PhaseRecord]:
        """Return the current state of every (host, phase) pair, sorted by host then phase."""
        rows = self._db.execute(f"SELECT {self._COLS} FROM phase_status ORDER BY host, phase").fetchall()  # noqa: S608
        return [self._record(r) for r in rows]

    def history(
        self, host: str | None = None, phase: str | None = None, limit: int = 200
    ) -> list[PhaseRecord]:
        """Return ledger history entries (newest first), optionally for one host and/or phase."""
        sql = ("SELECT host, phase, status, run_id, NULL, at, bytes_before, bytes_after, bytes_freed, "
               "removed, detail FROM phase_history WHERE 1=1")
        args: list[Any] = []
        if host is not None:
            sql += " AND host = ?"
            args.append(host)
        if phase is not None:
            sql += " AND phase = ?"
            args.append(phase)
        rows = self._db.execute(sql + " ORDER BY id DESC LIMIT ?", [*args, limit]).fetchall()
        return [self._record(r) for r in rows]
