"""Hygiene, the scheduled run that keeps every host clean, as a PhaseSpec of the shared flow (``orchestrate``).

Planner: ``hygiene.plan_hygiene`` — dangling images past their age and build cache above its budget on
every run; above the high watermark, unused images least recently used first down to the low watermark,
bytes counted per unique layer. What it needs beyond the facts is observed here (``observe``): the engine's
events since the previous run (bounded by ``events_lookback``; a host's first run starts the window), the
image store's arrival times, and the ledger of what earlier runs saw (first sight, last use). After a real
run the ledger keeps what this one saw (``after_run``).

Playbook: ``playbooks/hygiene.yml`` (role docker_image_cleanup with ``docker_image_cleanup_phase:
hygiene``), which receives the plans as ``acgs_hygiene_plan``. Hygiene repeats: the ledger never skips a
host because an earlier hygiene run succeeded.
"""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table
from rich.text import Text

from ..hygiene import (
    container_uses,
    engine_used_bytes,
    event_signals,
    last_used,
    plan_hygiene,
    with_arrivals,
)
from ..orchestrate import Fingerprint, HostOutcome, PhaseSpec, image_fingerprint
from ..plan import HYGIENE, HostPlan
from ..units import human_size
from .phase1 import Phase1, _predicted

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..config import Policy
    from ..execute import HostResult, RunResult
    from ..inventory import Host
    from ..models import HostSnapshot
    from ..orchestrate import RunReport
    from ..state import Sighting, StateStore


def cache_bytes(snapshot: HostSnapshot) -> int:
    """Return the bytes of the host's build cache (records not shared with another)."""
    return sum(b.size for b in snapshot.build_cache if not b.shared)


_ACTION_NAMES = {"remove_image": "remove image", "prune_build_cache": "prune build cache"}


@dataclass
class Observed:
    """What one host's engine and the ledger say about arrival and use, read just before planning."""

    until: datetime  # the end of the event window read (the next run reads from here)
    events: list[dict[str, Any]] = field(default_factory=list)
    imagedb: dict[str, datetime] = field(default_factory=dict)
    tag_times: dict[str, datetime] = field(default_factory=dict)
    engine_id: str = ""  # the engine the ledger rows belong to
    ledger: dict[str, Sighting] = field(default_factory=dict)  # the image ledger: first seen, last seen used
    notes: list[str] = field(default_factory=list)
    # Filled by plan_host: whether the host was planned, and its images' own uses (containers, events).
    planned: bool = False
    uses: dict[str, tuple[datetime, str]] = field(default_factory=dict)


def _where(plan: HostPlan) -> str:
    """Return "; <basis> X used, high H, low L -> after" for the plan's watermark, or "" when unmeasured."""
    mark = plan.watermark
    if mark is None or mark.used_bytes is None:
        return ""
    return (
        f"; {mark.basis} {human_size(mark.used_bytes)} used, high {human_size(mark.high_bytes)}, "
        f"low {human_size(mark.low_bytes)} -> {human_size(mark.predicted_used_bytes)}"
    )


def _reason_kind(reason: str) -> str:
    """Return the kind of a "why it stays" reason, for counting ("fresh", "in use", "protected pattern"...)."""
    if reason.startswith("used by"):
        return "in use"
    if reason.startswith("protected pattern"):
        return "protected pattern"
    head = reason.split(":", 1)[0]
    return head if len(head) <= 40 else " ".join(head.split()[:3])


class Hygiene(PhaseSpec[HostPlan]):
    """Hygiene: keep each host under its watermarks, least recently used first, never touching what must stay."""

    name = HYGIENE
    title = "Hygiene plan"
    playbook = "hygiene.yml"
    plan_model = HostPlan
    summary_columns = ("images", "skipped", "watermark before")
    repeats = True
    skip_idle_hosts = True  # playbooks/hygiene.yml does the plan's actions and nothing else

    def __init__(self) -> None:
        self.observed: dict[str, Observed] = {}

    # -- planner ---------------------------------------------------------------------------------

    def observe(
        self,
        hosts: dict[str, Host],
        snapshots: dict[str, HostSnapshot],
        policies: dict[str, Policy],
        store: StateStore | None,
        prepared: dict[str, Any],
    ) -> dict[str, Any]:
        """Return host -> :class:`Observed`: the event window since the previous run, arrivals, the ledger.

        A host whose events cannot be read is planned from its containers and the ledger alone (noted).
        """
        from ..facts import describe_error, usage_signals

        now = datetime.now(UTC)
        names = sorted(snapshots)
        # The store's one connection is read here, before the engines are asked in parallel.
        ledgers = {
            n: (store.events_cursor(n), store.image_ledger(n, snapshots[n].engine.engine_id))
            if store is not None
            else (None, {})
            for n in names
        }

        def one(name: str) -> tuple[str, Observed]:
            cursor, ledger = ledgers[name]
            since = None
            if cursor is not None:
                since = max(cursor, now - timedelta(seconds=policies[name].hygiene.events_lookback))
            obs = Observed(until=now, engine_id=snapshots[name].engine.engine_id, ledger=ledger)
            if cursor is None:
                obs.notes.append("first hygiene run here: the engine's event window starts now")
            try:
                signals = usage_signals(hosts[name], snapshots[name], since, now)
            except Exception as exc:  # the engine went away after its facts were read: plan from what we have
                obs.notes.append(f"engine events and arrival times unreadable: {describe_error(exc)}")
                obs.until = cursor or now
                return name, obs
            obs.events, obs.imagedb, obs.tag_times = signals["events"], signals["imagedb"], signals["tag_times"]
            return name, obs

        with ThreadPoolExecutor(max_workers=max(1, min(8, len(names)))) as pool:
            self.observed = dict(pool.map(one, names))
        return dict(self.observed)

    def plan_host(self, snapshot: HostSnapshot, policy: Policy, prepared: Any) -> HostPlan:
        """Return ``hygiene.plan_hygiene`` of the host, with arrival and last use from what was observed."""
        obs: Observed = prepared if prepared is not None else Observed(until=snapshot.collected_at)
        event_uses, arrivals = event_signals(snapshot, obs.events)
        ledger_uses = {
            i: (s.last_used, s.last_used_source or "ledger") for i, s in obs.ledger.items() if s.last_used is not None
        }
        # First sightings (the image ledger) already date what the engine does not: the flow's facts carry them.
        dated = with_arrivals(snapshot, obs.imagedb, arrivals, obs.tag_times)
        plan = plan_hygiene(dated, policy, last_used(dated, event_uses, ledger_uses), snapshot.collected_at)
        own = container_uses(snapshot)
        for image_id, (when, what) in event_uses.items():
            if image_id not in own or when > own[image_id][0]:
                own[image_id] = (when, what)
        obs.planned, obs.uses = True, own
        if obs.notes:
            plan = plan.model_copy(update={"notes": [*plan.notes, *obs.notes]})
        return plan

    def playbook_vars(self, plans: dict[str, HostPlan]) -> dict[str, Any]:
        """Return ``acgs_hygiene_plan`` (host -> plan)."""
        return {"acgs_hygiene_plan": {n: p.for_run() for n, p in plans.items()}}

    def fingerprint(self, plan: HostPlan, snapshot: HostSnapshot, policy: Policy) -> Fingerprint:
        """Return engine, policy and, per image the plan removes, its tags and the containers using it."""
        base = super().fingerprint(plan, snapshot, policy)
        images = image_fingerprint(snapshot, [a.image_id for a in plan.removals() if a.image_id])
        return base.model_copy(update={"images": images})

    # -- renderer --------------------------------------------------------------------------------

    def plan_tables(self, plan: HostPlan) -> list[RenderableType]:
        """Return the watermark line, the actions table and the table of what stays and why."""
        where = _where(plan)
        actions = Table(
            title=f"{plan.host}: {len(plan.actions)} action(s), {human_size(plan.predicted_bytes)} predicted{where}",
            title_justify="left",
        )
        for col in ("#", "action", "target", "reason", "predicted"):
            actions.add_column(col, justify="right" if col in ("#", "predicted") else "left")
        for i, a in enumerate(plan.actions, 1):
            actions.add_row(
                str(i),
                _ACTION_NAMES.get(a.kind, a.kind),
                escape(a.label),
                escape(a.reason),
                human_size(a.predicted_bytes),
            )
        kept = Table(title=f"{plan.host}: {len(plan.protections)} image(s) stay", title_justify="left")
        kept.add_column("image")
        kept.add_column("why it stays")
        for pr in plan.protections:
            name = ", ".join(pr.tags) or pr.image_id.removeprefix("sha256:")[:12] + " (untagged)"
            kept.add_row(escape(name), escape("; ".join(pr.reasons)))
        return [actions, kept]

    def run_tables(self, plan: HostPlan) -> list[RenderableType]:
        """Return the actions table (when there are actions) and one line counting what stays, by reason.

        A scheduled run's log names what it removes; the image-by-image list of what stays and why is what
        ``plan hygiene`` shows (a fleet of 20 hosts keeps ~1,000 images: listing them on every run buries
        the actions and costs more than reading the facts).
        """
        tables = self.plan_tables(plan)
        counts: dict[str, int] = {}
        for pr in plan.protections:
            kind = _reason_kind(pr.reasons[0]) if pr.reasons else "other"
            counts[kind] = counts.get(kind, 0) + 1
        kinds = ", ".join(f"{n} {k}" for k, n in sorted(counts.items(), key=lambda kv: (-kv[1], kv[0])))
        stays = Text(
            f"{plan.host}: {len(plan.protections)} image(s) stay ({kinds or 'none'}); "
            f"`acgs-remediate plan hygiene` lists each with its reasons"
        )
        if not plan.actions:
            return [Text(f"{plan.host}: nothing to do{_where(plan)}"), stays]
        return [tables[0], stays]

    def plan_markdown(self, plan: HostPlan) -> list[str]:
        """Return one host's section: watermark, predicted bytes, actions, what stays and why."""
        lines = Phase1().plan_markdown(plan)
        mark = plan.watermark
        if mark is not None:
            lines[1:1] = [
                "",
                f"Watermark ({mark.basis}): used {mark.used_bytes}, high {mark.high_bytes}, low {mark.low_bytes}, "
                f"after the plan {mark.predicted_used_bytes} bytes ({mark.state})",
            ]
        return lines

    def outcome(self, plan: HostPlan, before: HostSnapshot, result: HostResult, check: bool) -> HostOutcome:
        """Return the images removed per category, those skipped at run time and why, the watermark state."""
        mod = result.results.get("acgs_image_cleanup", {})
        removed = mod.get("would_remove" if check else "removed") or []
        skipped = mod.get("skipped_images") or []
        category = {a.image_id: a.category for a in plan.removals()}
        by_category: dict[str, int] = {}
        for r in removed:
            by_category[category.get(r["id"]) or "other"] = by_category.get(category.get(r["id"]) or "other", 0) + 1
        cache = mod.get("build_cache") or {}
        from ..analysis import reclaimable_bytes

        images_bytes = reclaimable_bytes(before, [r["id"] for r in removed]) if removed else 0
        mark = plan.watermark
        removed_images = [{"id": r["id"], "tags": r["tags"]} for r in removed]
        return HostOutcome(
            predicted_bytes=_predicted(before, removed, cache, check),
            fields={
                "removed": len(removed),
                "removed_by_category": by_category,
                "used_before": {
                    "images": engine_used_bytes(before) - cache_bytes(before),
                    "build_cache": cache_bytes(before),
                },
                "predicted_by_category": {
                    "images": images_bytes,
                    "build_cache": _predicted(before, [], cache, check),
                },
                "planned_images": [a.image_id for a in plan.removals()],
                "removed_images": removed_images,
                "skipped": skipped,
                "watermark": mark.model_dump(mode="json") if mark is not None else None,
            },
            cells=(str(len(removed)), str(len(skipped)), mark.state if mark is not None else "-"),
            notes=[f"{s['id'].removeprefix('sha256:')[:12]}: {s['reason']}" for s in skipped],
            ledger_items=removed_images,
        )

    def diff_lines(self, result: RunResult) -> list[tuple[str, str]]:
        """Return per host the images gone (red)."""
        return Phase1().diff_lines(result)

    # -- run -------------------------------------------------------------------------------------

    def applied(self, result: HostResult) -> bool:
        """Return whether the host's cleanup ran to its end."""
        return Phase1().applied(result)

    def after_run(self, store: StateStore, report: RunReport) -> None:
        """Record per planned host its images' last use, forget the images removed, and how far events were read."""
        for row in report.rows:
            obs = self.observed.get(row["host"])
            if obs is None or not obs.planned:
                continue
            gone = [r["id"] for r in row.get("removed_images") or []]
            store.record_uses(row["host"], obs.engine_id, obs.uses, gone)
            store.set_events_cursor(row["host"], obs.until)
