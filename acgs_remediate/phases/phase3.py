"""Phase 3 of the report, "Production deployment": the flow around ``deploy`` (pure) and ``rollout`` (engines).

lock -> reconcile interrupted switches -> facts (each host's compose containers, phase 2's build records)
-> plan (per host: which services switch, from which image to which, what stays) -> show / ``--check`` /
``--diff`` -> write the pinned compose file (the previous one kept as ``FILE.previous``) -> roll out (canary,
batches, health gate, soak, failure policy) -> ledger (``succeeded``, ``rolled_back``, ``failed``, ``pending``)
and measurements (switch and rollback seconds per host).

Why its own flow rather than one playbook run through ``orchestrate``: a rollout's batches depend on each
other (a failed batch sends earlier batches back under ``rollback_fleet``), and each host's gate is a watch
of the engine over the soak window; the shared flow runs one playbook and reads results at its end.
The lock, the ledger rows and their states are the shared ones (``state``), so ``status`` shows phase 3.

Interrupted runs: a rollback unit still ``switching`` whose host lock is free belongs to a run that died
(orchestrator killed, engine down). The next run first returns that host to its unit, then plans again
from what the host runs — so a host is never left half switched.
"""

from __future__ import annotations

import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .. import monitor
from ..deploy import (
    DeployPlan,
    ServiceTarget,
    compose_diff,
    compose_services,
    healthcheck_from_image,
    plan_deploy,
    project_name,
    soak_seconds,
    target_compose,
    targets_from_records,
)
from ..errors import UsageError
from ..facts import describe_error, engine_api
from ..rollout import FleetRollout, HostRollout, observe, rollback_host, rollout
from ..state import new_run_id

if TYPE_CHECKING:
    from ..inventory import Fleet, Host
    from ..monitor import HostMonitor
    from ..state import StateStore

PHASE3 = "phase3"
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


@dataclass
class Phase3Plan:
    """Everything a phase-3 run acts on, as shown by ``plan phase3`` / ``--check``."""

    compose_path: Path
    project: str
    current_text: str  # the compose file on disk now
    target_texts: dict[str, str]  # host -> the compose file it is switched to
    previous_texts: dict[str, str]  # host -> the compose file it runs now (its rollback unit's file)
    targets: dict[str, dict[str, ServiceTarget]]
    plans: dict[str, DeployPlan]
    soak: float  # seconds
    notes: list[str] = field(default_factory=list)
    resumed: dict[str, HostRollout] = field(default_factory=dict)  # hosts an interrupted run left, put back

    def diff(self) -> str:
        """Return the unified diff of the compose file on disk to what the run writes (first host's target)."""
        first = next(iter(self.target_texts.values()), self.current_text)
        return compose_diff(self.current_text, first, str(self.compose_path))

    def to_json(self) -> dict[str, Any]:
        """Return the plan as JSON-ready data."""
        return {
            "compose_file": str(self.compose_path),
            "project": self.project,
            "soak_seconds": self.soak,
            "notes": self.notes,
            "hosts": {h: p.for_run() for h, p in self.plans.items()},
        }


def _previous_text(store: StateStore, host: str, project: str, disk_text: str) -> str:
    """Return the compose file ``host`` runs now: its last unit's target (deployed) or file (rolled back)."""
    for _uid, status, unit in store.rollback_units(host, project):
        if status == "deployed":
            return unit.target_text
        if status == "rolled_back":
            return unit.compose_text
    return disk_text


def resume_interrupted(store: StateStore, hosts: list[Host], log: Log = _quiet) -> dict[str, HostRollout]:
    """Return each host a dead run left mid-switch to its recorded unit (call with the host locks held)."""
    out: dict[str, HostRollout] = {}
    for host in hosts:
        for uid, _status, unit in store.rollback_units(host.name, statuses=["switching"]):
            log(f"{host.name}: a run ({unit.run_id}) ended mid-switch: returning the host to its rollback unit")
            out[host.name] = rollback_host(store, host, uid, unit, log=log)
            store.finish_host(
                host.name,
                PHASE3,
                unit.run_id,
                "rolled_back" if out[host.name].status == "rolled_back" else "failed",
                detail="an interrupted run was rolled back to its unit; the next run deploys again",
            )
    return out


def plan_phase3(fleet: Fleet, store: StateStore, log: Log = _quiet) -> Phase3Plan:
    """Return the phase-3 plan of the fleet (read-only: reads the compose file, the engines, the build records).

    Raises UsageError (exit 2) when the compose file is missing or invalid or the hosts' policies name
    different compose files.
    """
    from ..deploy import DeployError

    if not fleet.hosts:
        raise UsageError("no hosts selected", hint="check --hosts against the inventory")
    base = fleet.source.parent if fleet.source.is_file() else fleet.source
    policies = {h.name: fleet.policy(h) for h in fleet.hosts}
    paths = {policies[h.name].compose_path(base) for h in fleet.hosts}
    if len(paths) > 1:
        raise UsageError(
            "the selected hosts deploy different compose files", hint="run phase 3 per group of hosts sharing one"
        )
    compose_path = paths.pop()
    try:
        text = compose_path.read_text()
    except OSError as exc:
        raise UsageError(
            f"cannot read the compose file {compose_path}: {exc.strerror}",
            hint="set acgs_policy.deploy.compose_file (relative to sources_root)",
        ) from None
    first_policy = policies[fleet.hosts[0].name]
    try:
        services = compose_services(text, first_policy.deploy.one_shot)
        project = first_policy.deploy.project or project_name(text, compose_path.parent.name)
    except DeployError as exc:
        raise UsageError(f"{compose_path}: {exc}", hint="fix the compose file, then re-run") from None
    plan = Phase3Plan(compose_path, project, text, {}, {}, {}, {}, 0.0)
    for host in fleet.hosts:
        policy = policies[host.name]
        records = store.build_records(host.name)
        with engine_api(host) as api:
            checks = {}
            for rec in records:
                if rec.image_id and rec.image_id not in checks:
                    try:
                        checks[rec.image_id] = healthcheck_from_image(
                            (api.inspect_image(rec.image_id).get("Config") or {}).get("Healthcheck")
                        )
                    except Exception as exc:
                        if "404" in describe_error(exc) or "No such image" in describe_error(exc):
                            continue
                        raise
        targets, notes = targets_from_records(records, policy, services, checks)
        missing = [
            t.service for t in targets.values() if t.image_id not in checks
        ]  # phase 2 recorded it, the host lost it
        for name in missing:
            notes.append(f"{name}: image {targets[name].image_id[:19]} is not on the host: left as it is")
            del targets[name]
        plan.notes += [f"{host.name}: {n}" for n in notes]
        running = observe(host, project)
        plan.targets[host.name] = targets
        plan.plans[host.name] = plan_deploy(host.name, project, str(compose_path), running, services, targets)
        previous = _previous_text(store, host.name, project, text)
        plan.previous_texts[host.name] = previous
        try:
            plan.target_texts[host.name] = target_compose(previous, targets)
        except DeployError as exc:
            raise UsageError(f"{compose_path}: {exc}", hint="fix the compose file, then re-run") from None
    plan.soak = max(soak_seconds(plan.targets[h.name], policies[h.name].deploy.soak) for h in fleet.hosts)
    return plan


@dataclass
class Phase3Result:
    """A phase-3 run: its plan, the rollout, the run id."""

    run_id: str
    plan: Phase3Plan
    rollout: FleetRollout | None = None
    check: bool = False
    monitor: dict[str, HostMonitor] = field(default_factory=dict)  # host -> one sample after the rollout

    @property
    def exit_code(self) -> int:
        """Return 0 when every host ended deployed or unchanged (or in check mode), else 1."""
        if self.check or self.rollout is None:
            return 0
        return 0 if self.rollout.ok else 1


_LEDGER = {"deployed": "succeeded", "unchanged": "succeeded", "rolled_back": "rolled_back", "failed": "failed"}


def run_phase3(
    fleet: Fleet,
    store: StateStore,
    *,
    check: bool = False,
    log: Log = _quiet,
    confirm: Callable[[Phase3Plan], bool] | None = None,
) -> Phase3Result:
    """Run phase 3 on ``fleet``: lock, resume interrupted hosts, plan, (check stops here), roll out, ledger.

    ``confirm`` is shown the plan under the host locks (so what is confirmed is what runs); returning False
    stops before anything changes. Raises LockedError when another run holds a host, UsageError for bad
    input (nothing changed).
    """
    run_id = new_run_id(PHASE3)
    names = [h.name for h in fleet.hosts]
    with store.lock_hosts(names, run_id):
        store.reconcile()
        resumed = {} if check else resume_interrupted(store, fleet.hosts, log)
        plan = plan_phase3(fleet, store, log)
        plan.resumed = resumed
        result = Phase3Result(run_id, plan, check=check)
        if check or (confirm is not None and not confirm(plan)):
            result.check = True
            return result
        policy = fleet.policy(fleet.hosts[0]).deploy
        store.begin_run(run_id, PHASE3, names)
        changing = any(p.actions for p in plan.plans.values())
        target = next(iter(plan.target_texts.values()), plan.current_text)
        if changing and target != plan.current_text:
            _write_keeping_previous(plan.compose_path, plan.current_text, target)
        for h in names:
            store.mark_running(h, PHASE3, run_id)

        def record(hr: HostRollout) -> None:
            if hr.status == "pending":
                return
            detail = hr.reason or ("switched: " + ", ".join(hr.switched) if hr.switched else "nothing to change")
            store.finish_host(
                hr.host,
                PHASE3,
                run_id,
                _LEDGER[hr.status],  # type: ignore[arg-type]
                removed=[{"service": s} for s in hr.switched],
                detail=detail,
            )
            store.add_measurement(
                hr.host,
                "phase3",
                {
                    "status": hr.status,
                    "switch_seconds": round(hr.switch_seconds, 2),
                    "rollback_seconds": None if hr.rollback_seconds is None else round(hr.rollback_seconds, 2),
                },
                run_id=run_id,
            )

        t0 = time.monotonic()
        out = rollout(
            store,
            fleet.hosts,
            plan.plans,
            plan.targets,
            plan.previous_texts,
            plan.target_texts,
            policy,
            plan.soak,
            run_id,
            log=log,
            on_host=record,
        )
        for h, hr in out.hosts.items():
            if hr.status == "pending":
                store.finish_host(h, PHASE3, run_id, "pending", detail=f"not reached: {out.stopped}")
        if policy.failure_policy == "rollback_fleet" and out.stopped and changing:
            # The fleet went back: so does the file on disk (the pinned one stays as FILE.rejected to read).
            _write_keeping_previous(plan.compose_path, target, plan.current_text, suffix=".rejected")
        store.finish_run(
            run_id,
            "succeeded" if out.ok else "failed",
            detail=out.stopped or f"rollout took {time.monotonic() - t0:.1f} s",
        )
        result.rollout = out
        acted = {h for h, r in out.hosts.items() if r.status not in ("unchanged", "pending")}
        result.monitor = monitor.after_rollout(store, fleet.hosts, plan.project, run_id, changed=acted)
        return result


def _write_keeping_previous(path: Path, old: str, new: str, suffix: str = ".previous") -> None:
    """Write ``new`` to ``path`` atomically, keeping ``old`` as ``path`` + ``suffix``."""
    keep = path.with_name(path.name + suffix)
    keep.write_text(old)
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(new)
    tmp.replace(path)


def rollback_hosts(fleet: Fleet, store: StateStore, log: Log = _quiet) -> dict[str, HostRollout]:
    """Return each selected host to its latest deployed rollback unit (``acgs-remediate rollback``), pulling nothing.

    A host without a deployed unit is reported ``failed`` with the reason; nothing is changed on it.
    """
    run_id = new_run_id("rollback")
    out: dict[str, HostRollout] = {}
    with store.lock_hosts([h.name for h in fleet.hosts], run_id):
        for host in fleet.hosts:
            units = store.rollback_units(host.name, statuses=["deployed"])
            if not units:
                out[host.name] = HostRollout(host.name, "failed", "no deployed rollback unit recorded for this host")
                continue
            uid, _st, unit = units[0]
            out[host.name] = rollback_host(store, host, uid, unit, log=log)
            status = "rolled_back" if out[host.name].status == "rolled_back" else "failed"
            store.finish_host(host.name, PHASE3, run_id, status, detail=f"rollback on demand to unit of {unit.run_id}")
    return out
