"""Phase 1 of the report, "Emergency cleanup", as a PhaseSpec of the shared flow (``orchestrate``).

Planner: ``plan.plan_phase1`` (oversized unused and old dangling images, build cache above its budget,
missing build files). Playbook: ``playbooks/phase1_emergency_cleanup.yml`` (roles docker_image_cleanup and
build_file_repair), which receives the plans as ``acgs_phase1_plan`` and the files to repair as
``acgs_phase1_build_files``. The build files are shared by every host's services and repaired once on the
control node: when that fails, no host of the run finished phase 1.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from rich.markup import escape
from rich.table import Table

from ..orchestrate import Fingerprint, HostOutcome, PhaseSpec, image_fingerprint
from ..plan import PHASE1, BuildFileIssue, HostPlan, plan_phase1
from ..units import human_size

if TYPE_CHECKING:
    from rich.console import RenderableType

    from ..config import Policy
    from ..execute import HostResult, RunResult
    from ..models import HostSnapshot

_ACTION_NAMES = {
    "remove_image": "remove image",
    "prune_build_cache": "prune build cache",
    "repair_build_file": "repair build file",
}


class Phase1(PhaseSpec[HostPlan]):
    """Phase 1: remove oversized unused and old dangling images, prune build cache, repair build files."""

    name = PHASE1
    title = "Phase 1 plan"
    playbook = "phase1_emergency_cleanup.yml"
    plan_model = HostPlan
    summary_columns = ("images", "skipped")
    shared_step = "build files (shared, on the control node)"

    # -- planner ---------------------------------------------------------------------------------

    def prepare(self, policies: dict[str, Policy], inventory_base: Path) -> dict[str, list[BuildFileIssue]]:
        """Return the missing build files per host (scanned once per distinct policy; sources are shared)."""
        from ..buildfiles import scan

        cache: dict[str, list[BuildFileIssue]] = {}
        result: dict[str, list[BuildFileIssue]] = {}
        for host, policy in policies.items():
            key = policy.model_dump_json()
            if key not in cache:
                cache[key] = scan(policy, inventory_base)
            result[host] = cache[key]
        return result

    def plan_host(self, snapshot: HostSnapshot, policy: Policy, prepared: Any) -> HostPlan:
        """Return ``plan.plan_phase1`` of the host, with its missing build files."""
        return plan_phase1(snapshot, policy, prepared or [])

    def playbook_vars(self, plans: dict[str, HostPlan]) -> dict[str, Any]:
        """Return ``acgs_phase1_plan`` (host -> plan) and ``acgs_phase1_build_files`` (paths, once)."""
        return {
            "acgs_phase1_plan": {n: p.for_run() for n, p in plans.items()},
            "acgs_phase1_build_files": sorted(
                {a.path for p in plans.values() for a in p.actions if a.kind == "repair_build_file" and a.path}
            ),
        }

    def fingerprint(self, plan: HostPlan, snapshot: HostSnapshot, policy: Policy) -> Fingerprint:
        """Return engine, policy and, per image the plan removes, its tags and the containers using it.

        The build-cache prune (down to a budget) and file repairs depend on nothing the engine could change
        under the plan: the cache is pruned to the budget whatever it holds then, and a file is only written
        where it is still missing.
        """
        base = super().fingerprint(plan, snapshot, policy)
        images = image_fingerprint(snapshot, [a.image_id for a in plan.removals() if a.image_id])
        return base.model_copy(update={"images": images})

    # -- renderer --------------------------------------------------------------------------------

    def plan_tables(self, plan: HostPlan) -> list[RenderableType]:
        """Return the actions table and the protected-images table of one host."""
        actions = Table(
            title=f"{plan.host}: {len(plan.actions)} action(s), {human_size(plan.predicted_bytes)} predicted",
            title_justify="left",
            show_lines=False,
        )
        for col in ("#", "action", "target", "reason", "predicted"):
            actions.add_column(col, justify="right" if col in ("#", "predicted") else "left")
        for i, a in enumerate(plan.actions, 1):
            predicted = human_size(a.predicted_bytes) if a.kind != "repair_build_file" else "-"
            actions.add_row(str(i), _ACTION_NAMES[a.kind], escape(a.label), escape(a.reason), predicted)
        kept = Table(title=f"{plan.host}: {len(plan.protections)} image(s) protected", title_justify="left")
        kept.add_column("image")
        kept.add_column("why it stays")
        for pr in plan.protections:
            name = pr.label
            kept.add_row(escape(name), escape("; ".join(pr.reasons)))
        return [actions, kept]

    def plan_markdown(self, plan: HostPlan) -> list[str]:
        """Return one host's section: predicted bytes, the actions table, the protected-images table."""
        lines = [
            f"## {plan.host}",
            "",
            f"Predicted: **{human_size(plan.predicted_bytes)}** ({plan.predicted_bytes} bytes)",
            "",
            "| # | action | target | reason | predicted |",
            "|---|---|---|---|---|",
        ]
        for i, a in enumerate(plan.actions, 1):
            lines.append(f"| {i} | {a.kind} | `{a.label}` | {a.reason} | {human_size(a.predicted_bytes)} |")
        lines += ["", "| protected image | why |", "|---|---|"]
        for pr in plan.protections:
            lines.append(f"| `{pr.label}` | {'; '.join(pr.reasons)} |")
        return lines

    def outcome(self, plan: HostPlan, before: HostSnapshot, result: HostResult, check: bool) -> HostOutcome:
        """Return the images removed (or that would be), those skipped at run time and why, files written."""
        mod = result.results.get("acgs_image_cleanup", {})
        files = [f["path"] for f in (result.results.get("acgs_build_files", {}).get("repaired") or [])]
        removed = mod.get("would_remove" if check else "removed") or []
        skipped = mod.get("skipped_images") or []
        removed_images = [{"id": r["id"], "tags": r["tags"]} for r in removed]
        return HostOutcome(
            predicted_bytes=_predicted(before, removed, mod.get("build_cache") or {}, check),
            fields={
                "removed": len(removed),
                "planned_images": [a.image_id for a in plan.removals()],
                "removed_images": removed_images,
                "skipped": skipped,
                "files": files,
            },
            cells=(str(len(removed)), str(len(skipped))),
            notes=[f"{s['id'].removeprefix('sha256:')[:12]}: {s['reason']}" for s in skipped]
            + [f"wrote {f}" for f in files],
            ledger_items=removed_images + [{"file": f} for f in files],
        )

    def diff_lines(self, result: RunResult) -> list[tuple[str, str]]:
        """Return per host the images gone (red) and the files written with their content (green)."""
        lines: list[tuple[str, str]] = []
        for name, hr in sorted(result.hosts.items()):
            diff = (hr.results.get("acgs_image_cleanup") or {}).get("diff") or {}
            gone = sorted(set(diff.get("before", "").splitlines()) - set(diff.get("after", "").splitlines()))
            lines += [("red", f"{name}: - image {line}") for line in gone]
            for entry in (hr.results.get("acgs_build_files") or {}).get("diff") or []:
                lines.append(("green", f"{name}: + file {entry.get('after_header')}"))
                lines += [("green", f"    + {line}") for line in str(entry.get("after", "")).splitlines()]
        return lines

    # -- run -------------------------------------------------------------------------------------

    def applied(self, result: HostResult) -> bool:
        """Return whether the host's image cleanup ran to its end (whatever else failed in the run)."""
        res = result.results.get("acgs_image_cleanup")
        return res is not None and not res.get("failed") and result.status != "unreachable"

    def shared_failure(self, result: RunResult) -> str | None:
        """Return why the (run-once) build-file repair failed, or None when it did not fail."""
        for hr in result.hosts.values():
            res = hr.results.get("acgs_build_files") or {}
            if res.get("failed"):
                return str(res.get("msg") or "failed").strip().splitlines()[0]
        return None


def _predicted(snapshot: HostSnapshot, removed: list[dict[str, Any]], cache: dict[str, Any], check: bool) -> int:
    """Return the bytes the plan predicted for what was actually removed (layers shared among them once)."""
    from ..analysis import reclaimable_bytes

    total = reclaimable_bytes(snapshot, [r["id"] for r in removed]) if removed else 0
    if cache.get("planned") and (check or cache.get("reclaimed_bytes")):
        total += int(cache.get("predicted_bytes") or 0)
    return total
