"""Phase 3's monitor: after a rollout, what each compose service runs on each host and how it is doing.

Per host and service (issue 11, item 5): the running image (its ID and the reference the container was
created from: ``REPO@sha256:...`` or ``sha256:...`` as phase 3 pinned it), health, restart count, memory and
CPU from ONE sample of the Engine API's ``/containers/{id}/stats?stream=false``, and the image's size before
and after (before: the image the host's rollback unit recorded for the service; bytes from the engine, else
phase 2's build record).

* :func:`shape_host` is pure: it turns what the engine answered (containers as ``rollout.observe`` reads
  them, the stats answers, image sizes) plus the ledger (rollback unit, build records) into a
  :class:`HostMonitor`; tested from a recorded snapshot, no Docker.
* :func:`memory_used` and :func:`cpu_percent` are the docker CLI's own formulas (cli/command/container/
  stats_helpers.go: memory without the inactive page cache; CPU delta over system delta x online CPUs).
* :func:`sample_host` reads one host through the project's one Engine API client (unix://, tcp+TLS, ssh://);
  :func:`sample_fleet` samples hosts in parallel; :func:`record` / :func:`latest` keep the sample in the
  ledger (measurement kind ``monitor``) for ``status`` and the HTML report.
"""

from __future__ import annotations

from collections.abc import Collection, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field

from .deploy import RollbackUnit, RunningService
from .models import BuildRecord

if TYPE_CHECKING:
    from .inventory import Host
    from .state import StateStore

MEASUREMENT = "monitor"  # the ledger's measurement kind
# Stats calls in flight per host. Over ssh each is a channel of the host's one connection, beside the client's
# own stream: sshd's default MaxSessions is 10.
_STATS_AT_ONCE = 6


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ServiceSample(_Model):
    """One compose service on one host after a rollout (bytes; CPU in percent of one core, as docker stats)."""

    service: str
    container: str  # the container's name
    container_id: str
    image_id: str  # sha256:... the container runs
    image_ref: str = ""  # what the container was created from (the compose file's pinned reference)
    state: str = ""  # running, exited, restarting, ...
    health: str | None = None  # healthy, unhealthy, starting; None without a healthcheck
    exit_code: int | None = None  # for an exited container (a one-shot: 0 is success)
    restart_count: int = 0
    started_at: str | None = None
    memory_bytes: int | None = None  # used, without the inactive page cache (what `docker stats` shows)
    memory_limit: int | None = None  # the container's limit (the host's memory when unlimited)
    cpu_percent: float | None = None  # of one core (200.0 = two full cores); None: no previous sample
    image_before: str | None = None  # image ID it ran before the rollout (the rollback unit), None: unknown
    size_before: int | None = None  # bytes of that image
    size_after: int | None = None  # bytes of the image it runs now
    note: str | None = None  # why a number is missing (stats not readable, container not running)

    @property
    def switched(self) -> bool:
        """Return whether the rollout changed this service's image."""
        return self.image_before is not None and self.image_before != self.image_id


class HostMonitor(_Model):
    """One host's services after a rollout: one sample, taken at ``sampled_at``."""

    host: str
    project: str
    sampled_at: datetime
    run_id: str | None = None  # the phase-3 run it followed
    services: list[ServiceSample] = Field(default_factory=list)
    error: str | None = None  # the engine could not be read (one line)

    @property
    def healthy(self) -> int:
        """Return how many long-running services are running and healthy (or running, without a check)."""
        return sum(1 for s in self.services if s.state == "running" and s.health in ("healthy", None))

    @property
    def running(self) -> int:
        """Return how many services are running."""
        return sum(1 for s in self.services if s.state == "running")


def memory_used(stats: Mapping[str, Any]) -> tuple[int | None, int | None]:
    """Return (bytes used without the inactive page cache, limit in bytes) of a stats answer; None when absent.

    The docker CLI's rule: cgroup v1 subtracts ``total_inactive_file``, cgroup v2 ``inactive_file``, each only
    when smaller than the usage.
    """
    mem = stats.get("memory_stats") or {}
    usage = mem.get("usage")
    if usage is None:
        return None, mem.get("limit")
    inner = mem.get("stats") or {}
    for key in ("total_inactive_file", "inactive_file"):
        value = inner.get(key)
        if value is not None:
            if value < usage:
                return int(usage - value), mem.get("limit")
            break
    return int(usage), mem.get("limit")


def cpu_percent(stats: Mapping[str, Any]) -> float | None:
    """Return the CPU use between the answer's two samples, in percent of one core; None without a previous one.

    The docker CLI's rule: (container CPU delta / system CPU delta) x online CPUs x 100; 0.0 when the
    container used no CPU in between.
    """
    cur = stats.get("cpu_stats") or {}
    pre = stats.get("precpu_stats") or {}
    system, pre_system = cur.get("system_cpu_usage"), pre.get("system_cpu_usage")
    if not system or not pre_system:
        return None
    cpu_delta = float((cur.get("cpu_usage") or {}).get("total_usage") or 0) - float(
        (pre.get("cpu_usage") or {}).get("total_usage") or 0
    )
    system_delta = float(system) - float(pre_system)
    online = cur.get("online_cpus") or len((cur.get("cpu_usage") or {}).get("percpu_usage") or []) or 1
    if system_delta <= 0:
        return None
    return round(cpu_delta / system_delta * online * 100.0, 2) if cpu_delta > 0 else 0.0


def images_before(units: Sequence[tuple[int, str, RollbackUnit]]) -> dict[str, str]:
    """Return compose service -> the image ID it ran before the host's last deployed rollout, from its units.

    ``units``: the host's rollback units newest first (``StateStore.rollback_units``). The newest ``deployed``
    unit recorded what every service ran just before that switch; {} when the host was never switched.
    """
    for _uid, status, unit in units:
        if status == "deployed":
            return unit.images()
    return {}


def shape_host(
    host: str,
    project: str,
    sampled_at: datetime,
    running: Mapping[str, RunningService],
    stats: Mapping[str, Mapping[str, Any] | str],
    image_sizes: Mapping[str, int],
    before: Mapping[str, str],
    records: Sequence[BuildRecord] = (),
    run_id: str | None = None,
) -> HostMonitor:
    """Return one host's :class:`HostMonitor` from what its engine answered and what the ledger holds.

    ``running``: compose service -> its container (``rollout.observe``). ``stats``: container ID -> the
    engine's stats answer, or one line saying why there is none. ``image_sizes``: image ID -> bytes (image
    inspect ``Size``). ``before``: compose service -> image ID before the rollout (:func:`images_before`).
    ``records``: the host's build records: the sizes of an image the engine no longer has (``size``, and
    ``size_before`` for the image phase 2 replaced).
    """
    by_image: dict[str, BuildRecord] = {}
    for r in sorted(records, key=lambda rec: rec.finished_at):
        if r.image_id:
            by_image[r.image_id] = r  # newest last wins
    out: list[ServiceSample] = []
    for name in sorted(running):
        c = running[name]
        rec = by_image.get(c.image_id)
        after = image_sizes.get(c.image_id, rec.size if rec else None)
        prev = before.get(name)
        size_before = image_sizes.get(prev) if prev else None
        if size_before is None and prev is not None and prev == c.image_id:
            size_before = after
        if size_before is None and rec is not None and prev != c.image_id:
            size_before = rec.size_before
        sample = stats.get(c.container_id)
        mem = limit = None
        cpu = None
        note = None
        if isinstance(sample, str):
            note = f"no stats: {sample}"
        elif sample is not None:
            mem, limit = memory_used(sample)
            cpu = cpu_percent(sample)
        elif c.state != "running":
            note = f"not running ({c.state}): no stats"
        out.append(
            ServiceSample(
                service=name,
                container=c.container_name,
                container_id=c.container_id,
                image_id=c.image_id,
                image_ref=c.image_ref,
                state=c.state,
                health=c.health,
                exit_code=c.exit_code,
                restart_count=c.restart_count,
                started_at=c.started_at,
                memory_bytes=mem,
                memory_limit=limit,
                cpu_percent=cpu,
                image_before=prev,
                size_before=size_before,
                size_after=after,
                note=note,
            )
        )
    return HostMonitor(host=host, project=project, sampled_at=sampled_at, run_id=run_id, services=out)


# -- reading the engines -----------------------------------------------------------------------------------


def sample_host(host: Host, project: str, store: StateStore, run_id: str | None = None) -> HostMonitor:
    """Return one sample of ``host``'s ``project`` services (read-only; any transport the client speaks).

    Stats are asked for every running container at once (each answer takes the engine ~1 s). An engine that
    cannot be read gives a HostMonitor with ``error`` set (one line), never an exception.
    """
    from .facts import describe_error, engine_api
    from .rollout import observe

    now = datetime.now(UTC)
    try:
        running = observe(host, project)
        before = images_before(store.rollback_units(host.name, project))
        with engine_api(host) as api:
            ids = [c.container_id for c in running.values() if c.state == "running"]

            def one(cid: str) -> Mapping[str, Any] | str:
                try:
                    return api.stats(cid)
                except Exception as exc:  # gone or refused: say so in the row, keep the others
                    return describe_error(exc)

            with ThreadPoolExecutor(max_workers=max(1, min(_STATS_AT_ONCE, len(ids)))) as pool:
                stats = dict(zip(ids, pool.map(one, ids), strict=True))
            sizes: dict[str, int] = {}
            for image_id in {c.image_id for c in running.values()} | set(before.values()):
                try:
                    sizes[image_id] = int(api.inspect_image(image_id).get("Size") or 0)
                except Exception as exc:
                    text = describe_error(exc)
                    if "404" not in text and "No such image" not in text:
                        raise
        records = store.build_records(host.name)
    except Exception as exc:
        return HostMonitor(host=host.name, project=project, sampled_at=now, run_id=run_id, error=describe_error(exc))
    return shape_host(host.name, project, now, running, stats, sizes, before, records, run_id)


def sample_fleet(
    hosts: Sequence[Host], project: str, store: StateStore, run_id: str | None = None, forks: int = 10
) -> dict[str, HostMonitor]:
    """Return host name -> :func:`sample_host` of each host, sampled in parallel (``forks`` at a time)."""
    if not hosts:
        return {}
    with ThreadPoolExecutor(max_workers=max(1, min(forks, len(hosts)))) as pool:
        samples = list(pool.map(lambda h: sample_host(h, project, store, run_id), hosts))
    return {m.host: m for m in samples}


def after_rollout(
    store: StateStore,
    hosts: Sequence[Host],
    project: str,
    run_id: str | None = None,
    changed: Collection[str] | None = None,
) -> dict[str, HostMonitor]:
    """Sample the hosts a rollout acted on and record each sample in the ledger; return them by host.

    ``changed``: the hosts the rollout switched, rolled back or failed (None: every host). A host the run left
    unchanged is sampled only when the ledger has no sample of it yet: a re-run with nothing to do stays fast
    (each stats answer takes the engine ~1-2 s) and ``status`` keeps the last sample, with its time.
    """
    if changed is not None:
        seen = latest(store, [h.name for h in hosts])
        hosts = [h for h in hosts if h.name in changed or h.name not in seen]
    samples = sample_fleet(hosts, project, store, run_id)
    for sample in samples.values():
        record(store, sample)
    return samples


def record(store: StateStore, sample: HostMonitor) -> None:
    """Append ``sample`` to the ledger (measurement kind ``monitor``) for ``status`` and the report."""
    store.add_measurement(sample.host, MEASUREMENT, sample.model_dump(mode="json"), run_id=sample.run_id)


def latest(store: StateStore, hosts: Sequence[str]) -> dict[str, HostMonitor]:
    """Return host -> its latest recorded sample, for the hosts of ``hosts`` that have one."""
    out: dict[str, HostMonitor] = {}
    for host in hosts:
        rows = store.measurements(host, MEASUREMENT, limit=1)
        if rows:
            out[host] = HostMonitor.model_validate(rows[0]["data"])
    return out
