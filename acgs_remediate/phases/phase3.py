"""Phase 3 of the report, "Production deployment", as a PhaseSpec of the one flow (``orchestrate``).

lock -> return hosts a dead run left mid-switch to their rollback unit (``before_plan``) -> facts -> plan
(per host: which services switch, from which image to which, what stays; ``plan_deploy_host``) -> show /
``--check`` / ``--diff`` -> ``playbooks/phase3_production_deployment.yml`` (role ``service_deploy``: per host
the rollback unit recorded, the pinned compose file written with the previous one kept, ``compose up`` of
the changed services only, health watched through the soak window, the host sent back to its unit on
failure; canary then batches with Ansible's ``serial``; the failure policy in the play) -> measure ->
ledger (``succeeded``, ``rolled_back``, ``failed``, ``pending``, ``interrupted``).

The playbook runs standalone too (``ansible-playbook``, AWX): it then plans each host itself from the same
state store. The rollout's per-host truth — which hosts switched, which went back, how long it took — is
what the role wrote to the state store (rollback units and ``phase3`` measurements of the run), so the
ledger reads it from there, not from the playbook's stats (a host sent back by another host's failure
reports "ok" to Ansible).

Interrupted runs: a rollback unit still ``switching`` whose host lock is free belongs to a run that died
(orchestrator killed, engine down). The next run first returns that host to its unit, then plans again
from what the host runs — so a host is never left half switched.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape
from rich.table import Table

from ..deploy import (
    DeployError,
    DeployPlan,
    ServiceChange,
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
from ..orchestrate import Fingerprint, HostOutcome, PhaseSpec, image_fingerprint
from ..rollout import FleetRollout, HostRollout, rollback_host

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..config import Policy
    from ..execute import HostEvent, HostResult, RunResult
    from ..inventory import Fleet, Host
    from ..models import HostSnapshot
    from ..monitor import HostMonitor
    from ..orchestrate import Planned, RunReport
    from ..state import StateStore

PHASE3 = "phase3"
PLAYBOOK = "phase3_production_deployment.yml"
MEASUREMENT = "phase3"  # the kind of the per-host measurement the role writes (status, seconds, reason)
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


class Phase3HostPlan(BaseModel):
    """One host's phase-3 plan: what the role acts on for it (``for_run``), exactly as shown."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    host: str
    project: str
    compose_path: str
    current_text: str  # the compose file on disk when planned
    previous_text: str  # the compose file the host runs now (its rollback unit's file)
    target_text: str  # the compose file it is switched to (pinned images, healthchecks)
    targets: dict[str, ServiceTarget] = Field(default_factory=dict)
    deploy: DeployPlan
    soak: float = 0.0  # seconds every switched service must stay healthy
    timeout: float = 120.0  # seconds the services have to become healthy
    canary: int = 1
    batch_size: int | str = "25%"
    failure_policy: str = "rollback_fleet"
    env: dict[str, str] = Field(default_factory=dict)  # compose interpolation variables (policy, then host var)
    probes: dict[str, str] = Field(default_factory=dict)  # compose service -> URL polled for unavailability
    predicted_bytes: int = 0  # a switch frees nothing by itself (cleanup after health is measured)
    notes: list[str] = Field(default_factory=list)

    @property
    def actions(self) -> list[ServiceChange]:
        """Return the services that switch or run once, one-shots first."""
        return self.deploy.actions

    def for_run(self) -> dict[str, Any]:
        """Return the plan as the role's module receives it (``plan``)."""
        return self.model_dump(mode="json")


# -- planning -------------------------------------------------------------------------------------------


def read_compose(policy: Policy, base: Path) -> tuple[Path, str, str]:
    """Return (path, text, project) of the compose file ``policy`` deploys; raise UsageError when unusable."""
    path = policy.compose_path(base)
    try:
        text = path.read_text()
    except OSError as exc:
        raise UsageError(
            f"cannot read the compose file {path}: {exc.strerror}",
            hint="set acgs_policy.deploy.compose_file (relative to sources_root)",
        ) from None
    try:
        compose_services(text, policy.deploy.one_shot)
        project = policy.deploy.project or project_name(text, path.parent.name)
    except DeployError as exc:
        raise UsageError(f"{path}: {exc}", hint="fix the compose file, then re-run") from None
    return path, text, project


def previous_text(store: StateStore | None, host: str, project: str, disk_text: str) -> str:
    """Return the compose file ``host`` runs now: its last unit's target (deployed) or file (rolled back)."""
    if store is None:
        return disk_text
    for _uid, status, unit in store.rollback_units(host, project):
        if status == "deployed":
            return unit.target_text
        if status == "rolled_back":
            return unit.compose_text
    return disk_text


def _image_targets(
    host: Host, policy: Policy, services: Mapping[str, Any], images: Mapping[str, str], api: Any
) -> dict[str, ServiceTarget]:
    """Return targets for explicitly given images (compose service -> reference on the host), pinned by ID."""
    targets: dict[str, ServiceTarget] = {}
    for name, ref in images.items():
        if name not in services:
            raise UsageError(f"the compose file defines no service {name!r}", hint="check service_deploy_images")
        try:
            info = api.inspect_image(ref)
        except Exception as exc:
            raise UsageError(f"{host.name}: image {ref} is not on the host ({exc})", hint="ship it first") from None
        one_shot = name in policy.deploy.one_shot if policy.deploy.one_shot is not None else services[name].one_shot
        hc = policy.deploy.healthchecks.get(name) or healthcheck_from_image(
            (info.get("Config") or {}).get("Healthcheck")
        )
        targets[name] = ServiceTarget(
            service=name,
            policy_service=name,
            image=ref if "@" not in ref and not ref.startswith("sha256:") else f"{name}:deployed",
            image_id=info["Id"],
            ref=info["Id"],
            healthcheck=None if one_shot else hc,
            one_shot=one_shot,
        )
    return targets


def plan_deploy_host(
    host: Host,
    policy: Policy,
    base: Path,
    store: StateStore | None,
    images: Mapping[str, str] | None = None,
) -> Phase3HostPlan:
    """Return ``host``'s phase-3 plan, read from its engine, the compose file and phase 2's build records.

    Targets: each policy service's latest released build record on this host (``deploy.targets_from_records``),
    or, when ``images`` is given (compose service -> image reference; the role's standalone
    ``service_deploy_images``), those images pinned by ID. A recorded image the host lost is left out (noted).
    Read-only. Raises UsageError (exit 2) for a missing or invalid compose file.
    """
    from ..facts import describe_error, engine_api
    from ..rollout import deploy_env, observe

    path, text, project = read_compose(policy, base)
    services = compose_services(text, policy.deploy.one_shot)
    notes: list[str] = []
    with engine_api(host) as api:
        if images:
            targets = _image_targets(host, policy, services, images, api)
        else:
            records = store.build_records(host.name) if store is not None else []
            checks: dict[str, Any] = {}
            for rec in records:
                if rec.image_id and rec.image_id not in checks:
                    try:
                        info = api.inspect_image(rec.image_id)
                    except Exception as exc:
                        if "404" in describe_error(exc) or "No such image" in describe_error(exc):
                            continue
                        raise
                    checks[rec.image_id] = healthcheck_from_image((info.get("Config") or {}).get("Healthcheck"))
            targets, notes = targets_from_records(records, policy, services, checks)
            for name in [t.service for t in targets.values() if t.image_id not in checks]:
                notes.append(f"{name}: image {targets[name].image_id[:19]} is not on the host: left as it is")
                del targets[name]
    running = observe(host, project)
    deploy = plan_deploy(host.name, project, str(path), running, services, targets)
    previous = previous_text(store, host.name, project, text)
    try:
        target = target_compose(previous, targets)
    except DeployError as exc:
        raise UsageError(f"{path}: {exc}", hint="fix the compose file, then re-run") from None
    dp = policy.deploy
    return Phase3HostPlan(
        host=host.name,
        project=project,
        compose_path=str(path),
        current_text=text,
        previous_text=previous,
        target_text=target,
        targets=targets,
        deploy=deploy,
        soak=soak_seconds(targets, dp.soak),
        timeout=dp.timeout,
        canary=dp.canary,
        batch_size=dp.batch_size,
        failure_policy=dp.failure_policy,
        # deploy.env, then the host var acgs_deploy_env (what differs per host: the address its services bind,
        # which their HEALTHCHECK asks): the module builds its own Host without inventory variables.
        env=deploy_env(host, dp),
        probes=dict(dp.probes),
        notes=notes + deploy.notes,
    )


def serial(canary: int, batch: int) -> list[int]:
    """Return Ansible's ``serial`` for a rollout: ``[canary, batch]`` (the last value repeats), or ``[batch]``."""
    return [canary, batch] if canary > 0 else [batch]


def max_fail_percentage(failure_policy: str) -> int:
    """Return the play's ``max_fail_percentage``: 100 under rollback_host (the rollout goes on), else 0."""
    return 100 if failure_policy == "rollback_host" else 0


def resume_interrupted(store: StateStore, hosts: list[Host], log: Log = _quiet) -> dict[str, HostRollout]:
    """Return each host a dead run left mid-switch to its recorded unit (call with the host locks held)."""
    out: dict[str, HostRollout] = {}
    for host in hosts:
        # "switching": the run died mid-switch; "rollback_failed": its rollback could not finish (the engine went
        # away): either way the host may be half switched; back to the unit first, then the plan starts afresh.
        for uid, _status, unit in store.rollback_units(host.name, statuses=["switching", "rollback_failed"]):
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


def host_rollout(store: StateStore, host: str, run_id: str, result: HostResult | None) -> HostRollout:
    """Return what run ``run_id`` did on ``host``, from the state store the role wrote (units, measurements).

    ``deployed``/``rolled_back``/``failed`` from the host's rollback unit of the run; ``unchanged`` when the
    run switched nothing there; ``pending`` when the play never reached the host (``result`` not run).
    """
    hr = HostRollout(host=host)
    units = [(uid, st, u) for uid, st, u in store.rollback_units(host) if u.run_id == run_id]
    # The flow records its bytes before/after under the same kind: the role's entries are those with a status.
    of_run = [
        m["data"] for m in store.measurements(host, MEASUREMENT) if m["run_id"] == run_id and "status" in m["data"]
    ]
    data: dict[str, Any] = of_run[0] if of_run else {}
    switch = next((d for d in of_run if "switch_seconds" in d), data)
    # Seconds a service's probe saw it down: its own switch (and rollback) plus a rollback with the fleet.
    for d in of_run:
        for svc, secs in (d.get("unavailable_seconds") or {}).items():
            hr.unavailable_seconds[svc] = round(hr.unavailable_seconds.get(svc, 0.0) + float(secs), 2)
    hr.reason = str(data.get("reason") or "")
    hr.switch_seconds = float(switch.get("switch_seconds") or 0.0)
    rb = data.get("rollback_seconds")
    hr.rollback_seconds = float(rb) if rb is not None else None
    if units:
        uid, status, unit = units[0]
        hr.unit_id = uid
        hr.switched = list(unit.switched)
        hr.status = {"deployed": "deployed", "rolled_back": "rolled_back"}.get(status, "failed")
        if status == "switching" and not hr.reason:
            hr.reason = "the switch did not finish (engine gone or run cut short): the next run rolls it back"
    elif result is None or result.status == "not_run":
        hr.status = "pending"
        hr.reason = hr.reason or "not reached: the rollout stopped before this host's batch (failure policy)"
    elif result.status in ("ok", "changed"):
        hr.status = "unchanged"
    else:
        hr.status = "failed"
        hr.reason = hr.reason or "; ".join(result.messages)
    return hr


_LEDGER = {"deployed": "succeeded", "unchanged": "succeeded", "rolled_back": "rolled_back", "pending": "pending"}


class Phase3(PhaseSpec[Phase3HostPlan]):
    """Phase 3: the compose stack pinned to phase 2's images, canary then batches, health-gated, rolled back."""

    name = PHASE3
    title = "Phase 3 plan"
    playbook = PLAYBOOK
    plan_model = Phase3HostPlan
    summary_columns = ("switched", "switch s", "rollback s")
    shared_step = "the rollout"
    # A deployment is re-checked on every run: a healthy, unchanged stack plans nothing and changes nothing.
    repeats = True

    def __init__(self, log: Log = _quiet) -> None:
        """``log``: where progress lines of the resume step go (the CLI prints them dim on stderr)."""
        self.log = log
        self.base = Path(".")
        self.run_id: str | None = None
        self.store: StateStore | None = None
        self.resumed: dict[str, HostRollout] = {}
        self.plans: dict[str, Phase3HostPlan] = {}
        self.policies: dict[str, Policy] = {}
        self.hosts: list[Host] = []
        self.monitor: dict[str, HostMonitor] = {}  # host -> one sample after the rollout (after_run)

    # -- planner ---------------------------------------------------------------------------------

    def prepare(self, policies: dict[str, Policy], inventory_base: Path) -> dict[str, Any]:
        """Check every selected host deploys the same compose file (else exit 2); remember the base."""
        self.base = inventory_base
        self.policies = dict(policies)
        paths = {p.compose_path(inventory_base) for p in policies.values()}
        if len(paths) > 1:
            raise UsageError(
                "the selected hosts deploy different compose files", hint="run phase 3 per group of hosts sharing one"
            )
        return {}

    def before_plan(self, store: StateStore, hosts: list[Host], run_id: str, check: bool) -> None:
        """Return the hosts a dead run left mid-switch to their units (not in check mode)."""
        self.store = store
        self.run_id = run_id
        self.hosts = list(hosts)
        self.resumed = {} if check else resume_interrupted(store, hosts, self.log)

    def after_run(self, store: StateStore, report: RunReport) -> None:
        """Sample the hosts the rollout acted on (image, health, restarts, memory, CPU) into the ledger (monitor).

        A host the run left unchanged is sampled only when the ledger has none of it yet, so a re-run with
        nothing to do stays fast and ``status`` keeps the last sample with its time (issue 11, item 5).
        """
        from .. import monitor

        if report.check or not self.plans or not self.hosts:
            return
        rollout = fleet_rollout(report, [h.name for h in self.hosts])
        acted = {h for h, r in rollout.hosts.items() if r.status not in ("unchanged", "pending")}
        project = next(iter(self.plans.values())).project
        self.monitor = monitor.after_rollout(store, self.hosts, project, report.run_id, changed=acted)

    def observe(
        self,
        hosts: dict[str, Host],
        snapshots: dict[str, HostSnapshot],
        policies: dict[str, Policy],
        store: StateStore | None,
        prepared: dict[str, Any],
    ) -> dict[str, Phase3HostPlan]:
        """Return each reachable host's plan (``plan_deploy_host``: its engine, compose file, build records)."""
        from concurrent.futures import ThreadPoolExecutor

        names = sorted(hosts)
        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            plans = pool.map(lambda n: plan_deploy_host(hosts[n], policies[n], self.base, store), names)
            return dict(zip(names, plans, strict=True))

    def plan_host(self, snapshot: HostSnapshot, policy: Policy, prepared: Any) -> Phase3HostPlan:
        """Return the plan ``observe`` made for the host."""
        plan: Phase3HostPlan = prepared
        return plan

    def fingerprint(self, plan: Phase3HostPlan, snapshot: HostSnapshot, policy: Policy) -> Fingerprint:
        """Return the facts the plan depends on: the compose file, each service's running image, the targets."""
        base = super().fingerprint(plan, snapshot, policy)
        try:
            disk = Path(plan.compose_path).read_bytes()
        except OSError:
            disk = b""
        extra = {f"the compose file {plan.compose_path}": hashlib.sha256(disk).hexdigest()}
        running: dict[str, tuple[Any, str]] = {}
        for c in snapshot.containers:
            if c.labels.get("com.docker.compose.project") != plan.project:
                continue
            if c.labels.get("com.docker.compose.oneoff") == "True" or not c.compose_service:
                continue
            svc = c.compose_service
            if svc not in running or c.created > running[svc][0]:
                running[svc] = (c.created, c.image_id)
        for change in plan.deploy.changes:
            extra[f"the image service {change.service} runs"] = running.get(change.service, (None, "none"))[1]
        images = image_fingerprint(snapshot, sorted({c.to_image for c in plan.actions if c.to_image}))
        return base.model_copy(update={"extra": extra, "images": images})

    def needs_confirmation(self, planned: Planned) -> bool:
        """Ask only when some host switches (an unchanged fleet is just re-checked)."""
        return planned.action_count() > 0

    def playbook_vars(self, plans: dict[str, Phase3HostPlan]) -> dict[str, Any]:
        """Return the plans, the rollout's ``serial`` and ``max_fail_percentage``, the run id and state store."""
        from ..config import DeployPolicy
        from ..state import new_run_id

        self.plans = plans
        first = plans[sorted(plans)[0]]
        batch = DeployPolicy(batch_size=first.batch_size).batch_count(len(plans))
        return {
            "acgs_phase3_plans": {h: p.for_run() for h, p in plans.items()},
            # The policies as validated for this run (rollback_keep, protected patterns: cleanup after health).
            "acgs_phase3_policies": {h: self.policies[h].model_dump(mode="json") for h in plans if h in self.policies},
            "acgs_phase3_serial": serial(first.canary, batch),
            "acgs_phase3_max_fail_percentage": max_fail_percentage(first.failure_policy),
            "acgs_phase3_failure_policy": first.failure_policy,
            "acgs_phase3_run_id": self.run_id or new_run_id(PHASE3),
            "acgs_phase3_state_db": str(self.store.path) if self.store is not None else "",
        }

    # -- renderer --------------------------------------------------------------------------------

    def plan_tables(self, plan: Phase3HostPlan) -> list[RenderableType]:
        """Return the host's table: each service, switch / run once / keep, from which image to which, why."""
        hp = plan.deploy
        table = Table(
            title=f"{plan.host}: {len(hp.actions)} service(s) change, {len(hp.kept)} stay; soak {plan.soak:g} s",
            title_justify="left",
        )
        for col in ("service", "change", "from", "to", "why"):
            table.add_column(col)
        for c in [*hp.actions, *hp.kept]:
            table.add_row(escape(c.service), c.kind, _short(c.from_image), _short(c.to_image), escape(c.reason))
        return [table]

    def plan_markdown(self, plan: Phase3HostPlan) -> list[str]:
        """Return the host's plan as Markdown."""
        lines = [f"## {plan.host} (compose {plan.compose_path}, project {plan.project}, soak {plan.soak:g} s)", ""]
        lines += ["| service | change | from | to | why |", "|---|---|---|---|---|"]
        for c in [*plan.deploy.actions, *plan.deploy.kept]:
            why = c.reason.replace("|", "/")
            lines.append(f"| {c.service} | {c.kind} | {_short(c.from_image)} | {_short(c.to_image)} | {why} |")
        return [*lines, ""]

    def outcome(self, plan: Phase3HostPlan, before: HostSnapshot, result: HostResult, check: bool) -> HostOutcome:
        """Return the host's rollout outcome, from what the role recorded in the state store for this run."""
        if check or self.store is None or self.run_id is None:
            switched = [c.service for c in plan.actions]
            return HostOutcome(0, {"switched": switched}, (", ".join(switched) or "-", "-", "-"))
        hr = host_rollout(self.store, plan.host, self.run_id, result)
        rb = f"{hr.rollback_seconds:.1f}" if hr.rollback_seconds is not None else "-"
        fields = {
            "rollout_status": hr.status,
            "switched": hr.switched,
            "switch_seconds": round(hr.switch_seconds, 2),
            "rollback_seconds": None if hr.rollback_seconds is None else round(hr.rollback_seconds, 2),
            "unavailable_seconds": dict(hr.unavailable_seconds),
            "reason": hr.reason,
        }
        status = (
            _LEDGER.get(hr.status, "failed") if not (hr.status == "failed" and result.status == "unreachable") else None
        )
        return HostOutcome(
            0,
            fields,
            (", ".join(hr.switched) or "-", f"{hr.switch_seconds:.1f}", rb),
            notes=[f"{hr.status}: {hr.reason}"] if hr.reason else [],
            ledger_items=[{"service": s} for s in hr.switched],
            status=status,
        )

    def diff_lines(self, result: RunResult) -> list[tuple[str, str]]:
        """Return the compose file's unified diff, from the file on disk to what the run deploys."""
        if not self.plans:
            return []
        first = self.plans[sorted(self.plans)[0]]
        text = compose_diff(first.current_text, first.target_text, first.compose_path)
        if not text:
            return [("dim", "compose file unchanged")]
        out: list[tuple[str, str]] = []
        for line in text.splitlines():
            style = "green" if line.startswith("+") else "red" if line.startswith("-") else ""
            out.append((style, line))
        return out


def _short(image: str | None) -> str:
    return image.removeprefix("sha256:")[:12] if image else "-"


# -- the Python API (a fleet loaded in memory; tests and scripts) ------------------------------------------


@dataclass
class Phase3Plan:
    """The fleet's phase-3 plans side by side (what ``plan_phase3`` returns and a run reports)."""

    compose_path: Path
    project: str
    current_text: str  # the compose file on disk
    target_texts: dict[str, str]  # host -> the compose file it is switched to
    previous_texts: dict[str, str]  # host -> the compose file it runs now (its rollback unit's file)
    targets: dict[str, dict[str, ServiceTarget]]
    plans: dict[str, DeployPlan]
    soak: float  # seconds
    notes: list[str] = field(default_factory=list)
    resumed: dict[str, HostRollout] = field(default_factory=dict)  # hosts an interrupted run left, put back
    soaks: dict[str, float] = field(default_factory=dict)  # host -> its soak window (seconds)

    @classmethod
    def of(cls, plans: Mapping[str, Phase3HostPlan], resumed: dict[str, HostRollout] | None = None) -> Phase3Plan:
        """Return the fleet view of per-host plans."""
        first = next(iter(plans.values()))
        return cls(
            compose_path=Path(first.compose_path),
            project=first.project,
            current_text=first.current_text,
            target_texts={h: p.target_text for h, p in plans.items()},
            previous_texts={h: p.previous_text for h, p in plans.items()},
            targets={h: dict(p.targets) for h, p in plans.items()},
            plans={h: p.deploy for h, p in plans.items()},
            soak=max(p.soak for p in plans.values()),
            soaks={h: p.soak for h, p in plans.items()},
            notes=[f"{h}: {n}" for h, p in plans.items() for n in p.notes],
            resumed=resumed or {},
        )

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
            "soak_seconds_per_host": dict(self.soaks),
            "notes": self.notes,
            "hosts": {h: p.for_run() for h, p in self.plans.items()},
        }


def plan_phase3(fleet: Fleet, store: StateStore) -> Phase3Plan:
    """Return the fleet's phase-3 plan (read-only). Raises UsageError (exit 2) for a bad compose file."""
    if not fleet.hosts:
        raise UsageError("no hosts selected", hint="check --hosts against the inventory")
    base = fleet.source.parent if fleet.source.is_file() else fleet.source
    spec = Phase3()
    policies = {h.name: fleet.policy(h) for h in fleet.hosts}
    spec.prepare(policies, base)
    return Phase3Plan.of({h.name: plan_deploy_host(h, policies[h.name], base, store) for h in fleet.hosts})


@dataclass
class Phase3Result:
    """A phase-3 run: its plan, the rollout per host, the run id and the flow's report."""

    run_id: str | None
    plan: Phase3Plan | None
    rollout: FleetRollout | None = None
    check: bool = False
    report: RunReport | None = None
    monitor: dict[str, HostMonitor] = field(default_factory=dict)  # host -> one sample after the rollout

    @property
    def exit_code(self) -> int:
        """Return 0 when every host ended deployed or unchanged (or in check mode), else 1."""
        if self.check or self.rollout is None:
            return 0
        return 0 if self.rollout.ok else 1


class _Declined(Exception):
    pass


class _Callbacks:
    """The flow's Interaction for the Python API: log lines, an optional confirm callback, no terminal."""

    def __init__(self, log: Log, confirm: Callable[[Phase3Plan], bool] | None) -> None:
        self.log = log
        self.ask = confirm

    def reconciled(self, host: str, phase: str) -> None:
        self.log(f"{host}: the {phase} run that had it ended without a result; marked interrupted")

    def skipping(self, phase: str, hosts: list[str]) -> None:
        self.log(f"skipping {', '.join(hosts)}")

    def show(self, planned: Planned) -> None:
        for plan in planned.ordered:
            self.log(
                f"{plan.host}: {len(plan.actions)} service(s) change: {', '.join(c.service for c in plan.actions)}"
            )

    def confirm(self, planned: Planned) -> None:
        if self.ask is not None and not self.ask(Phase3Plan.of(planned.plans)):
            raise _Declined

    @contextmanager
    def progress(self, hosts: list[str]) -> Iterator[Callable[[HostEvent], None]]:
        def on_event(ev: HostEvent) -> None:
            if ev.event == "runner_on_failed":
                self.log(f"{ev.host}: {ev.task}: {ev.msg}")

        yield on_event


def fleet_rollout(report: RunReport, order: list[str]) -> FleetRollout:
    """Return the per-host rollout of a phase-3 run's report (hosts in ``order``), and why it stopped."""
    out = FleetRollout()
    rows = {r["host"]: r for r in report.rows}
    for h in order:
        r = rows.get(h)
        if r is None:
            continue
        out.hosts[h] = HostRollout(
            host=h,
            status=str(r.get("rollout_status") or ("failed" if r["status"] != "succeeded" else "unchanged")),
            reason=str(r.get("reason") or "; ".join(r.get("messages") or [])),
            switched=list(r.get("switched") or []),
            switch_seconds=float(r.get("switch_seconds") or 0.0),
            rollback_seconds=r.get("rollback_seconds"),
        )
        out.hosts[h].unavailable_seconds.update(r.get("unavailable_seconds") or {})
    bad = [
        h for h, hr in out.hosts.items() if hr.status in ("rolled_back", "failed") and "with the fleet" not in hr.reason
    ]
    if bad or any(hr.status == "pending" for hr in out.hosts.values()):
        first = bad[0] if bad else next(h for h, hr in out.hosts.items() if hr.status == "pending")
        out.stopped = (
            f"{', '.join(bad) or first} failed: {out.hosts[first].reason}" if bad else "not every host was reached"
        )
    return out


def rollout_json(spec: Phase3, report: RunReport, order: list[str] | None = None) -> dict[str, Any]:
    """Return a phase-3 run as the CLI's JSON: the plan, per host its rollout (status, seconds), why it stopped."""
    data: dict[str, Any] = {"phase": PHASE3, "run_id": report.run_id, "check": report.check}
    if spec.plans:
        data["plan"] = Phase3Plan.of(spec.plans, spec.resumed).to_json()
    if report.check:
        data["hosts"] = {r["host"]: {"status": r["status"], "switched": r.get("switched") or []} for r in report.rows}
        return data
    rollout = fleet_rollout(report, order or [r["host"] for r in report.rows])
    data["stopped"] = rollout.stopped
    data["hosts"] = {
        h: {
            "status": r.status,
            "reason": r.reason,
            "switched": r.switched,
            "switch_seconds": round(r.switch_seconds, 2),
            "rollback_seconds": r.rollback_seconds,
            "unavailable_seconds": dict(r.unavailable_seconds),
        }
        for h, r in rollout.hosts.items()
    }
    data["unreachable"] = [u.model_dump() for u in report.unreachable]
    data["monitor"] = {h: m.model_dump(mode="json") for h, m in spec.monitor.items()}
    return data


def run_phase3(
    fleet: Fleet,
    store: StateStore,
    *,
    check: bool = False,
    log: Log = _quiet,
    confirm: Callable[[Phase3Plan], bool] | None = None,
    forks: int = 5,
) -> Phase3Result:
    """Run phase 3 on an already loaded ``fleet`` through the one flow (``orchestrate.run_on_fleet``).

    ``confirm`` is shown the plan under the host locks (so what is confirmed is what runs); returning False
    stops before anything changes. Raises LockedError when another run holds a host, UsageError for bad
    input (nothing changed).
    """
    from ..orchestrate import RunOptions, run_on_fleet

    spec = Phase3(log=log)
    options = RunOptions(check=check, yes=confirm is None, forks=forks)
    try:
        report = run_on_fleet(spec, fleet, store, options, _Callbacks(log, confirm))
    except _Declined:
        return Phase3Result(spec.run_id, Phase3Plan.of(spec.plans, spec.resumed) if spec.plans else None, check=True)
    plan = Phase3Plan.of(spec.plans, spec.resumed) if spec.plans else None
    if check:
        return Phase3Result(report.run_id, plan, check=True, report=report)
    rollout = fleet_rollout(report, [h.name for h in fleet.hosts])
    return Phase3Result(report.run_id, plan, rollout, report=report, monitor=spec.monitor)


def rollback_hosts(fleet: Fleet, store: StateStore, log: Log = _quiet, forks: int = 5) -> dict[str, HostRollout]:
    """Return each selected host to its latest deployed rollback unit (``acgs-remediate rollback``), pulling nothing.

    Runs the phase-3 playbook with ``state=rolled_back`` under the host locks; a host without a deployed unit
    is reported ``failed`` with the reason and nothing is changed on it. Ledger: ``rolled_back`` or ``failed``.
    """
    from ..execute import run_playbook
    from ..resources import playbooks_dir
    from ..state import new_run_id

    run_id = new_run_id("rollback")
    names = [h.name for h in fleet.hosts]
    out: dict[str, HostRollout] = {}
    with store.lock_hosts(names, run_id):
        store.reconcile()
        result = run_playbook(
            playbooks_dir() / PLAYBOOK,
            fleet.source,
            names,
            extravars={
                "acgs_phase3_state": "rolled_back",
                "acgs_phase3_run_id": run_id,
                "acgs_phase3_state_db": str(store.path),
                "acgs_phase3_serial": [len(names)],
                "acgs_phase3_max_fail_percentage": 100,
            },
            forks=forks,
        )
        for name in names:
            data = next(
                (
                    m["data"]
                    for m in store.measurements(name, MEASUREMENT)
                    if m["run_id"] == run_id and "status" in m["data"]
                ),
                None,
            )
            hr = HostRollout(host=name, status="failed")
            if data is not None:
                hr.status = str(data.get("status") or "failed")
                hr.reason = str(data.get("reason") or "")
                rb = data.get("rollback_seconds")
                hr.rollback_seconds = float(rb) if rb is not None else None
            else:
                hr.reason = "; ".join(result.hosts[name].messages) or "the rollback did not run on this host"
            out[name] = hr
            if hr.reason and hr.status != "rolled_back":
                log(f"{name}: {hr.reason}")
            store.finish_host(
                name,
                PHASE3,
                run_id,
                "rolled_back" if hr.status == "rolled_back" else "failed",
                detail=hr.reason or "rollback on demand to the latest deployed unit",
            )
    return out
