"""Phase 2 of the report, "Service optimization", as a PhaseSpec of the shared flow (``orchestrate``).

Planner (pure over the facts read, plus the service sources on the control node): per service, the
optimized build definition (``optimize.generate``: generated from its real sources, or the policy's own
``optimized_dockerfile`` built as is, or "not understood" with the reason: skipped, the host fails), its
source hash (``builds.source_hash``: context as the engine receives it + Dockerfile + build args + base
image IDs on the builder), whether the builder holds an image of that hash already and whether it passed
its gates (the builder's release tag names it), and per host whether it holds that image and whether the
service's release tag names it. Actions: "build on <builder>" (gates included), "ship to <host>",
"release tag" (only once the gates passed). A re-run with unchanged sources plans nothing and the playbook
changes nothing (changed=0).

Generated definitions are built from a content-addressed copy outside the source tree (``stage``): the
source tree is written only by ``--write`` (``write_definitions``), which never overwrites hand edits.

Playbook: ``playbooks/phase2_service_optimization.yml`` (role ``service_build``), with the builder, the
services to build, their Dockerfiles, the gates (``policy``: ``builds.policy_gate``, i.e. ``gates.run_gates`` on
the builder) and the state store as extravars;
the role writes one BuildRecord per service and host (criteria 2, 3 and 5 read them). Release tag: the
service's ``image`` of the policy (what verify's size-cap criterion reads); the image it named before keeps
``REPO:rollback-<id12>`` (``builds.release``; the same scheme as phase 3's ``deploy.rollback_tag``), so it
never turns dangling and stays available for a rollback.
"""

from __future__ import annotations

import hashlib
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal

from pydantic import BaseModel, ConfigDict, Field
from rich.markup import escape
from rich.table import Table

from ..errors import UsageError
from ..orchestrate import Fingerprint, HostOutcome, PhaseSpec
from ..units import human_duration, human_size

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..config import Policy
    from ..execute import HostResult, RunResult
    from ..inventory import Host
    from ..models import BuildRecord, HostSnapshot
    from ..optimize import BuildDefinition, WriteResult
    from ..state import StateStore

PHASE2 = "phase2"


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Phase2Action(_Model):
    """One step of phase 2 on one host: build (with its gates) on the builder, ship here, move the tag."""

    kind: Literal["build", "gate", "ship", "release_tag"]
    service: str
    target: str  # the builder (build/gate), this host (ship), the release reference (release_tag)
    reason: str
    predicted_bytes: int = 0  # phase 2 frees nothing by itself: the old image stays as its rollback

    @property
    def label(self) -> str:
        """Return the action as the plan shows it ("build on h0", "ship to h1", "release tag repo:tag")."""
        verb = {"build": "build on", "gate": "gate on", "ship": "ship to", "release_tag": "release tag"}[self.kind]
        return f"{self.service}: {verb} {self.target}"


class Phase2Service(_Model):
    """One service as phase 2 plans it on one host."""

    service: str
    release_ref: str  # the policy's image: the tag verify reads and phase 2 moves
    verdict: str  # "generated", "as is", or "not understood: <reason>"
    dockerfile: str | None = None  # absolute path of the Dockerfile built (staged or the policy's own)
    source_hash: str | None = None
    error: str | None = None  # why it cannot be built now (base image missing on the builder, ...)
    built_image: str | None = None  # ID of the builder's image of this source hash (None: not built yet)
    passed_before: bool = False  # the builder's release tag names it: its gates passed
    host_image: str | None = None  # ID of this host's image of this source hash
    release_image: str | None = None  # what the release tag names on this host now
    size_before: int | None = None  # bytes of that image
    expected_size: int | None = None  # bytes, the policy's (the report's "Expected Size")

    @property
    def buildable(self) -> bool:
        """Return True when phase 2 builds, ships and releases this service."""
        return self.source_hash is not None and self.error is None


class Phase2Plan(_Model):
    """One host's phase 2 plan (``for_run`` is what the playbook receives for it)."""

    host: str
    builder: str
    services: list[Phase2Service] = Field(default_factory=list)
    actions: list[Phase2Action] = Field(default_factory=list)
    predicted_bytes: int = 0
    notes: list[str] = Field(default_factory=list)

    def for_run(self) -> dict[str, Any]:
        """Return the services to build and their Dockerfiles, and those skipped with the reason."""
        return {
            "builder": self.builder,
            "services": [s.service for s in self.services if s.buildable],
            "dockerfiles": {s.service: s.dockerfile for s in self.services if s.buildable and s.dockerfile},
            "skipped": {s.service: _skip_reason(s) for s in self.services if not s.buildable},
        }


def _skip_reason(s: Phase2Service) -> str:
    return s.error or s.verdict


# -- planning -------------------------------------------------------------------------------------------


def stage_dir() -> Path:
    """Return where generated definitions are staged for building (outside every source tree)."""
    from ..resources import cache_dir

    return cache_dir("phase2-definitions") or Path(tempfile.gettempdir()) / "acgs-remediate-phase2-definitions"


def stage(defn: BuildDefinition) -> Path:
    """Return the absolute Dockerfile to build for ``defn``: the policy's own (as is) or a staged copy.

    Staged copies are content-addressed (``<service>-<sha12>/``), so the same definition always builds from
    the same path and a re-run hashes to the same source.
    """
    from ..optimize import stage_definition

    if defn.status == "as-is":
        return (Path(defn.context) / str(defn.dockerfile_path)).resolve()
    digest = hashlib.sha256(f"{defn.dockerfile}\0{defn.dockerignore}".encode()).hexdigest()[:12]
    directory = stage_dir() / f"{defn.service}-{digest}"
    target = directory / Path(str(defn.dockerfile_path)).name
    ignore = Path(f"{target}.dockerignore")
    if (
        target.is_file()
        and target.read_text() == defn.dockerfile
        and (defn.dockerignore is None or (ignore.is_file() and ignore.read_text() == defn.dockerignore))
    ):
        return target
    return stage_definition(defn, directory)


@dataclass
class FleetBuild:
    """What every host of one policy shares: its builder, definitions, sources, hashes and builder images."""

    builder: str
    definitions: dict[str, BuildDefinition]
    services: dict[str, Phase2Service]  # service -> builder-side facts (host-side fields unset)
    notes: list[str] = field(default_factory=list)


def plan_fleet_build(
    policy: Policy, base: Path, builder: HostSnapshot, definitions: list[BuildDefinition] | None = None
) -> FleetBuild:
    """Return the builder-side plan of ``policy``'s services against the builder's facts.

    Each understood definition is staged (``stage``) and hashed with the builder's base image IDs; a
    service whose base image is missing on the builder, or whose Dockerfile does not parse, gets ``error``
    (skipped, named in the plan). Raises nothing for a bad service: one bad service never hides the others.
    """
    from ..builds import BuildError, image_for, planned_hashes, sources_from_policy
    from ..optimize import generate_all

    defs = definitions if definitions is not None else generate_all(policy, base)
    by_name = {d.service: d for d in defs}
    services: dict[str, Phase2Service] = {}
    for svc in policy.services:
        defn = by_name[svc.name]
        common: dict[str, Any] = {
            "service": svc.name,
            "release_ref": svc.image,
            "verdict": defn.verdict,
            "expected_size": svc.expected_size,
        }
        if not defn.understood:
            services[svc.name] = Phase2Service(**common)
            continue
        try:
            dockerfile = stage(defn)
            (source,) = sources_from_policy(policy, base, {svc.name: dockerfile}, [svc.name])
            digest = planned_hashes([source], builder)[svc.name]
        except (BuildError, UsageError) as exc:
            services[svc.name] = Phase2Service(**common, error=exc.message)
            continue
        img = image_for(builder, digest)
        released = builder.image(svc.image)
        services[svc.name] = Phase2Service(
            **common,
            dockerfile=str(dockerfile),
            source_hash=digest,
            built_image=img.id if img else None,
            passed_before=bool(img and released and released.id == img.id),
        )
    return FleetBuild(builder.host, by_name, services)


def plan_host_phase2(snapshot: HostSnapshot, policy: Policy, fleet: FleetBuild) -> Phase2Plan:
    """Return one host's phase 2 plan from its facts and the fleet's builder-side plan (pure).

    Builder: "build" when it holds no image of the source hash, "gate" when it holds one that never passed
    its gates. Every host: "ship" when it lacks that image (the builder never ships to itself), "release
    tag" when the policy's image tag does not name it yet. Nothing when all hold (a re-run).
    """
    is_builder = snapshot.host == fleet.builder
    services: list[Phase2Service] = []
    actions: list[Phase2Action] = []
    notes = list(fleet.notes)
    for svc in policy.services:
        planned = fleet.services[svc.name]
        current = snapshot.image(svc.image)
        fields: dict[str, Any] = {
            "release_image": current.id if current else None,
            "size_before": current.size if current else None,
        }
        if not planned.buildable:
            services.append(planned.model_copy(update=fields))
            notes.append(f"{svc.name}: skipped, {_skip_reason(planned)}")
            continue
        digest = str(planned.source_hash)
        from ..builds import image_for

        mine = image_for(snapshot, digest)
        fields["host_image"] = mine.id if mine else None
        services.append(planned.model_copy(update=fields))
        if is_builder and planned.built_image is None:
            actions.append(
                Phase2Action(
                    kind="build",
                    service=svc.name,
                    target=fleet.builder,
                    reason=f"no image of source {digest[:12]} ({planned.verdict} Dockerfile) yet; then its gates",
                )
            )
        elif is_builder and not planned.passed_before:
            actions.append(
                Phase2Action(
                    kind="gate",
                    service=svc.name,
                    target=fleet.builder,
                    reason=f"image {planned.built_image and planned.built_image[7:19]} of source {digest[:12]} "
                    "has not passed its gates yet",
                )
            )
        if not is_builder and mine is None:
            actions.append(
                Phase2Action(
                    kind="ship",
                    service=svc.name,
                    target=snapshot.host,
                    reason=f"the host lacks the image of source {digest[:12]} (once it passed its gates)",
                )
            )
        target_id = mine.id if mine else planned.built_image
        if current is None or target_id is None or current.id != target_id:
            was = f"names {current.id[7:19]} ({human_size(current.size)})" if current else "names nothing"
            actions.append(
                Phase2Action(
                    kind="release_tag",
                    service=svc.name,
                    target=svc.image,
                    reason=f"the tag {was}; moved only after the gates pass, the old image kept as rollback",
                )
            )
    return Phase2Plan(host=snapshot.host, builder=fleet.builder, services=services, actions=actions, notes=notes)


# -- the spec -------------------------------------------------------------------------------------------


class Phase2(PhaseSpec[Phase2Plan]):
    """Phase 2: optimized images built once, gated, shipped to every host, release-tagged."""

    name = PHASE2
    title = "Phase 2 plan"
    playbook = "phase2_service_optimization.yml"
    plan_model = Phase2Plan
    summary_columns = ("released", "skipped")
    shared_step = "the build on the builder (shared by every host)"

    def __init__(self, state: Path | None = None, inventory: Path | None = None) -> None:
        """``state``: the state store the role writes build records to (None: none are written);
        ``inventory``: the run's inventory (None: the default one), to read a builder that is not planned."""
        self.state = state
        self.inventory = inventory
        self.base = Path(".")
        self._sources_memo: dict[tuple[str, str], tuple[str, list[str]]] = {}

    # -- planner ---------------------------------------------------------------------------------

    def prepare(self, policies: dict[str, Policy], inventory_base: Path) -> dict[str, Any]:
        """Remember where relative source paths are resolved from (the inventory's directory); plan later."""
        self.base = inventory_base
        return {}

    def observe(
        self,
        hosts: dict[str, Host],
        snapshots: dict[str, HostSnapshot],
        policies: dict[str, Policy],
        store: StateStore | None,
        prepared: dict[str, Any],
    ) -> dict[str, FleetBuild]:
        """Return each host's :class:`FleetBuild`, computed once per distinct policy against its builder.

        The builder: the policy's ``build.builder``; else the one phase 2's latest build records name (so a
        resumed run, where the builder finished already, ships what was built instead of building again);
        else the first planned host. A builder that is not being planned is read here. Raises UsageError
        (exit 2) when it is not in the inventory or cannot be read.
        """
        groups: dict[str, list[str]] = {}
        for host in hosts:  # inventory order
            groups.setdefault(policies[host].model_dump_json(), []).append(host)
        out: dict[str, FleetBuild] = {}
        for names in groups.values():
            policy = policies[names[0]]
            builder = policy.build.builder or _recorded_builder(store, names) or names[0]
            snap = snapshots.get(builder) or self._read_builder(builder)
            built = plan_fleet_build(policy, self.base, snap)
            for name in names:
                out[name] = built
        return out

    def _read_builder(self, builder: str) -> HostSnapshot:
        """Return the facts of a builder that is not among the planned hosts (it finished phase 2 already)."""
        from ..facts import collect_many
        from ..inventory import load_fleet

        try:
            host = load_fleet(self.inventory, builder).hosts[0]
        except UsageError:
            raise UsageError(
                f"phase 2's builder {builder} is not in the inventory",
                hint="set acgs_policy.build.builder to an inventory host",
            ) from None
        read, unreachable = collect_many([host])
        if unreachable:
            raise UsageError(
                f"phase 2's builder {builder} cannot be read: {unreachable[0].reason}",
                hint="bring its engine back, or name another builder in acgs_policy.build.builder",
            )
        return read[builder]

    def plan_host(self, snapshot: HostSnapshot, policy: Policy, prepared: Any) -> Phase2Plan:
        """Return ``plan_host_phase2`` of the host against its fleet's build plan."""
        return plan_host_phase2(snapshot, policy, prepared)

    def playbook_vars(self, plans: dict[str, Phase2Plan]) -> dict[str, Any]:
        """Return the role's variables (builder, services, Dockerfiles, gate, state store) and the plans.

        Raises UsageError when the hosts of the run disagree on the build (one builder, one set of sources
        per run: run phase 2 per policy group with --hosts).
        """
        runs = {json_key(p.for_run()) for p in plans.values()}
        if len(runs) > 1:
            raise UsageError(
                "the hosts of this run have different build policies (builder, services or Dockerfiles)",
                hint="run phase 2 once per group of hosts sharing acgs_policy (--hosts GROUP)",
            )
        first = next(iter(plans.values())).for_run()
        return {
            # Every host holds every released image already (the plan has no action): the role is skipped,
            # so a forced re-run with unchanged sources costs a playbook start, not a re-hash of every context.
            "acgs_phase2_nothing_to_do": not any(p.actions for p in plans.values()),
            "acgs_phase2_plan": {n: p.for_run() for n, p in plans.items()},
            "acgs_phase2_skipped": first["skipped"],
            "service_build_builder": first["builder"],
            "service_build_services": first["services"],
            "service_build_dockerfiles": first["dockerfiles"],
            "service_build_gate": "policy",  # the policy's gates (builds.policy_gate -> gates.run_gates)
            "service_build_state_db": str(self.state) if self.state is not None else "",
        }

    def fingerprint(self, plan: Phase2Plan, snapshot: HostSnapshot, policy: Policy) -> Fingerprint:
        """Return engine, policy and, per service of ``plan``, the hash of its sources as they are NOW.

        Recomputed from the source tree each time (never copied from the plan): the definition generated
        again and staged, the context as the engine would receive it, the build args, and the IDs of its base
        images on this host (``builds.source_hash``). So ``phase2 --plan FILE`` refuses a plan whose service
        sources changed since it was saved, one line per host and service. Memoized per policy and service
        within one run (the contexts are hashed once, not once per host).
        """
        base = super().fingerprint(plan, snapshot, policy)
        extra = {
            f"the sources of service {s.service}": self._sources_now(policy, s.service, snapshot) for s in plan.services
        }
        return base.model_copy(update={"extra": extra})

    def _sources_now(self, policy: Policy, service: str, snapshot: HostSnapshot) -> str:
        """Return the hex hash of ``service``'s current sources with this host's base image IDs, or its verdict."""
        from ..builds import BuildError, base_images_of, source_hash, sources_from_policy
        from ..optimize import generate

        key = (policy.model_dump_json(), service)
        if key not in self._sources_memo:
            svc = next(s for s in policy.services if s.name == service)
            try:
                defn = generate(svc, policy, self.base)
                if not defn.understood:
                    self._sources_memo[key] = (defn.verdict, [])
                else:
                    (source,) = sources_from_policy(policy, self.base, {service: stage(defn)}, [service])
                    self._sources_memo[key] = (source_hash(source, {}), base_images_of(source))
            except (BuildError, UsageError) as exc:
                self._sources_memo[key] = (exc.message, [])
        content, refs = self._sources_memo[key]
        if not refs:
            return content
        ids = {ref: (img.id if (img := snapshot.image(ref)) else "absent") for ref in refs}
        return hashlib.sha256(f"{content}\0{json_key(ids)}".encode()).hexdigest()

    # -- renderer --------------------------------------------------------------------------------

    def plan_tables(self, plan: Phase2Plan) -> list[RenderableType]:
        """Return the per-service table and the actions table of one host."""
        role = "builder" if plan.host == plan.builder else f"builder {plan.builder}"
        svc = Table(title=f"{plan.host} ({role}): {len(plan.services)} service(s)", title_justify="left")
        for col in ("service", "definition", "source", "built", "here", "release tag now", "expected"):
            svc.add_column(col, justify="right" if col == "expected" else "left")
        for s in plan.services:
            now = f"{s.release_image[7:19]} {human_size(s.size_before)}" if s.release_image else "-"
            svc.add_row(
                escape(s.service),
                escape(s.error or s.verdict),
                (s.source_hash or "-")[:12],
                ("passed" if s.passed_before else "not gated") if s.built_image else "no",
                "yes" if s.host_image else "no",
                escape(now),
                human_size(s.expected_size),
            )
        actions = Table(title=f"{plan.host}: {len(plan.actions)} action(s)", title_justify="left")
        for col in ("#", "action", "reason"):
            actions.add_column(col, justify="right" if col == "#" else "left")
        for i, a in enumerate(plan.actions, 1):
            actions.add_row(str(i), escape(a.label), escape(a.reason))
        return [svc, actions]

    def plan_markdown(self, plan: Phase2Plan) -> list[str]:
        """Return one host's section: the services and the actions."""
        lines = [
            f"## {plan.host}",
            "",
            f"Builder: **{plan.builder}**",
            "",
            "| service | definition | source | built | here | release tag now |",
            "|---|---|---|---|---|---|",
        ]
        for s in plan.services:
            built = ("passed" if s.passed_before else "not gated") if s.built_image else "no"
            now = f"{(s.release_image or '-')[7:19]} {human_size(s.size_before)}" if s.release_image else "-"
            lines.append(
                f"| {s.service} | {s.error or s.verdict} | {(s.source_hash or '-')[:12]} | {built} | "
                f"{'yes' if s.host_image else 'no'} | {now} |"
            )
        lines += ["", "| # | action | reason |", "|---|---|---|"]
        lines += [f"| {i} | {a.label} | {a.reason} |" for i, a in enumerate(plan.actions, 1)]
        return lines

    def outcome(self, plan: Phase2Plan, before: HostSnapshot, result: HostResult, check: bool) -> HostOutcome:
        """Return per service what the host got: before -> after size, shrink, build time, gates, release."""
        records, befores = ({}, {}) if check or self.state is None else self._records(plan)
        rows = [service_row(s, records.get(s.service), befores.get(s.service)) for s in plan.services]
        released = sum(1 for r in rows if r["released"])
        skipped = [r for r in rows if r["skipped"]]
        notes = [f"{r['service']}: skipped, {r['skipped']}" for r in skipped]
        notes += [
            f"{r['service']}: not released, gates failed: {'; '.join(r['failed_gates'])}"
            for r in rows
            if r["failed_gates"] and not r["released"]
        ]
        notes += [f"{r['service']}: {r['error']}" for r in rows if r["error"] and not r["skipped"]]
        return HostOutcome(
            predicted_bytes=0,
            fields={"builder": plan.builder, "services": rows},
            cells=(f"{released}/{len(rows)}", str(len(skipped))),
            notes=notes,
            ledger_items=[
                {"service": r["service"], "image_id": r["image_id"], "released": r["released"]}
                for r in rows
                if r["image_id"]
            ],
        )

    def diff_lines(self, result: RunResult) -> list[tuple[str, str]]:
        """Return per host the release tags moved: old image (red) -> new image (green)."""
        lines: list[tuple[str, str]] = []
        for name, hr in sorted(result.hosts.items()):
            res = hr.results.get("acgs_service_build") or {}
            diff = res.get("diff") or {}
            for service, after in sorted((diff.get("after") or {}).items()):
                was = (diff.get("before") or {}).get(service)
                if was != after:
                    lines.append(("red", f"{name}: - {service} {was}"))
                    lines.append(("green", f"{name}: + {service} {after}"))
        return lines

    # -- run -------------------------------------------------------------------------------------

    def applied(self, result: HostResult) -> bool:
        """Return whether the host's ship/release step ran, or had nothing to do (its bytes are worth measuring)."""
        if result.status == "unreachable":
            return False
        return "acgs_service_build" in result.results or result.status in ("ok", "changed")

    def shared_failure(self, result: RunResult) -> str | None:
        """Return why the run-once build step itself failed (not one service: the module), else None."""
        for hr in result.hosts.values():
            res = hr.results.get("acgs_service_build") or {}
            if res.get("failed") and not res.get("failures") and "images" in res and not res.get("images"):
                return str(res.get("msg") or "failed").strip().splitlines()[0]
        return None

    def _records(self, plan: Phase2Plan) -> tuple[dict[str, BuildRecord], dict[str, int]]:
        """Return the host's latest BuildRecord per service, and per service its size before phase 2.

        "Before" is what the release tag named when phase 2 first moved it (its oldest record saying so),
        else the host's baseline (the first analyze) for the service's image: phase 1 may have removed the
        oversized original before phase 2 ran.
        """
        from ..criteria import latest_records
        from ..state import StateStore

        assert self.state is not None
        if not self.state.exists():
            return {}, {}
        store = StateStore(self.state)
        try:
            records = store.build_records(plan.host)
            baseline = store.baseline(plan.host)
        finally:
            store.close()
        befores: dict[str, int] = {}
        for r in reversed(records):  # oldest first
            if r.size_before and r.service not in befores:
                befores[r.service] = r.size_before
        for svc in plan.services:
            if svc.service not in befores and baseline is not None and svc.release_ref in baseline.per_image:
                befores[svc.service] = baseline.per_image[svc.release_ref]
        return latest_records(records), befores

    # -- writing into the source tree ------------------------------------------------------------

    @staticmethod
    def write_definitions(policies: dict[str, Policy], base: Path, *, dry_run: bool) -> list[WriteResult]:
        """Write (or with ``dry_run`` only diff) every generated definition next to its original Dockerfile.

        Once per distinct service source. Raises UsageError (exit 2, nothing written) when a file there was
        edited by hand or not written by acgs-remediate: every definition is checked before any is written.
        """
        from ..optimize import generate_all, write_definition

        seen: set[tuple[str, str]] = set()
        defs: list[BuildDefinition] = []
        for policy in policies.values():
            for defn in generate_all(policy, base):
                key = (defn.context, str(defn.dockerfile_path))
                if defn.status == "generated" and key not in seen:
                    seen.add(key)
                    defs.append(defn)
        checked = [write_definition(d, dry_run=True) for d in defs]  # raises before anything is written
        if dry_run:
            return checked
        return [write_definition(d) for d in defs]


def _recorded_builder(store: StateStore | None, hosts: list[str]) -> str | None:
    """Return the builder phase 2's latest build record on one of ``hosts`` names, or None."""
    if store is None:
        return None
    latest = None
    for host in hosts:
        for record in store.build_records(host)[:1]:  # newest first
            if record.builder and (latest is None or record.finished_at > latest.finished_at):
                latest = record
    return latest.builder if latest is not None else None


def json_key(data: dict[str, Any]) -> str:
    """Return ``data`` as canonical JSON (for comparing plans)."""
    import json

    return json.dumps(data, sort_keys=True)


def service_row(planned: Phase2Service, record: BuildRecord | None, before: int | None = None) -> dict[str, Any]:
    """Return one service's result row: before -> after bytes, shrink factor, build seconds, gates, release.

    ``record``: the host's latest BuildRecord of the service (None: nothing recorded, e.g. check mode);
    ``before``: bytes of the service's image before phase 2 (None: the record's or the plan's).
    """
    failed = [f"{g.name}: {g.detail}" for g in (record.gates if record else []) if not g.passed]
    if before is None:
        before = record.size_before if record and record.size_before is not None else planned.size_before
    after = record.size if record else None
    return {
        "service": planned.service,
        "image": planned.release_ref,
        "definition": planned.verdict,
        "skipped": None if planned.buildable else _skip_reason(planned),
        "source_hash": planned.source_hash,
        "image_id": record.image_id if record else None,
        "size_before": before,
        "size_after": after,
        "expected_size": planned.expected_size,
        "shrink": round(before / after, 1) if before and after else None,
        "build_seconds": record.seconds if record else None,
        "gates": [g.model_dump() for g in record.gates] if record else [],
        "failed_gates": failed,
        "released": bool(record and record.released),
        "shipped_via": record.shipped_via if record else None,
        "error": record.error if record else planned.error,
    }


def services_table_rows(rows: list[dict[str, Any]]) -> list[list[str]]:
    """Return the before/after table's cells of ``service_row`` rows (service, before, after, x, time, gates)."""
    out = []
    for r in rows:
        if r["skipped"]:
            gates = f"skipped: {r['skipped']}"
        elif r["gates"]:
            gates = ", ".join(("✓ " if g["passed"] else "✗ ") + g["name"] for g in r["gates"])
        else:
            gates = r["error"] or "-"
        out.append(
            [
                r["service"],
                human_size(r["size_before"]),
                human_size(r["size_after"]),
                f"{r['shrink']}x" if r["shrink"] else "-",
                human_duration(r["build_seconds"]) if r["build_seconds"] is not None else "-",
                "released" if r["released"] else "not released",
                gates,
            ]
        )
    return out
