"""Pure planning: a host snapshot + the policy + a phase -> ordered actions and protections.

Nothing here talks to Docker or Ansible. The plan is what ``plan`` and ``--check`` show and
exactly what a run applies (the executing module re-checks each action against the engine just
before acting, and skips — never widens — what changed meanwhile).

Decisions worth knowing:

* Removal is by image ID, with every tag of the image listed. An image with several tags only
  frees its bytes once its last tag is gone, and the engine refuses to delete a multi-tag image
  by ID without force (which we never use). So when the policy names one tag of an image, the
  plan removes *all* of that image's tags (untag one by one, the last untag deletes it) — but only
  when none of its tags is protected in any way; otherwise the whole image stays and the plan
  says which tag protected it.
* Protections, strongest first: used by a container (running *or stopped*, dangling images
  included), protected pattern, rollback retention, too young (counted from the image's ARRIVAL on the
  engine, never from Created; an unknown arrival counts as fresh), and the base of an image that stays
  (classic parent link, or — whatever builder made the child — a layer chain that is a prefix of a kept
  image's). All reasons are listed. ``decide_removals`` makes this decision once; ``analyze`` uses it too.
* Dangling means no tag AND no repository digest (``models.is_dangling``): an image pulled by digest is
  named, stays unless the policy names it, and the plan lists it as kept with that reason.
* Rollback retention: for each deployed service (one with a container, running or stopped) the
  image it runs now, plus the previous ``rollback_keep`` images of the same repository by
  creation time. Dangling images carry no repository, so an old build is only known to be a
  service's previous version when a container still references it — and then it is protected
  by use anyway.
* Volumes are never actions. Nothing is forced.
* Build cache: predicted by ``analysis.build_cache_prune``, the accounting analyze reports (records
  marked Shared free nothing: their bytes stay with an image).
* Predicted bytes: per action, what removing that image alone frees; the host total is computed
  over all removals together (layers shared only among removed images are freed once, so the
  total can exceed the sum of the per-action numbers).
"""

from __future__ import annotations

from collections.abc import Iterable, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .analysis import build_cache_prune, reclaimable_bytes
from .config import Policy, ServicePolicy
from .deploy import ROLLBACK_TAG_PREFIX
from .models import ContainerFact, HostSnapshot, ImageFact, short_digest_ref
from .units import human_size

# builds.SOURCE_HASH_LABEL: the label every image phase 2 builds carries (not imported: plan stays pure).
_PHASE2_LABEL = "org.acgs.source-hash"

PHASE1 = "phase1"
HYGIENE = "hygiene"
PHASES = (PHASE1, HYGIENE)

ActionKind = Literal["remove_image", "prune_build_cache", "repair_build_file"]
_PRIORITY_ORDER = {"CRITICAL": 0, "HIGH": 1, "MEDIUM": 2, "LOW": 3}


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Action(_Model):
    """One step of a host's plan."""

    kind: ActionKind
    reason: str
    predicted_bytes: int = 0
    # remove_image
    image_id: str | None = None
    tags: list[str] = Field(default_factory=list)
    # Repository digests naming the image (pulled by digest); a run skips an image that gained a name.
    digests: list[str] = Field(default_factory=list)
    category: Literal["oversized", "dangling", "unused"] | None = None
    # prune_build_cache: keep this many bytes of cache (the budget)
    keep_bytes: int | None = None
    # repair_build_file: service and file (absolute path on the control node)
    service: str | None = None
    path: str | None = None

    @property
    def label(self) -> str:
        """Return a short human label of what the action touches."""
        if self.kind == "remove_image":
            return image_label(self.image_id or "", self.tags, self.digests)
        if self.kind == "prune_build_cache":
            return "build cache"
        return self.path or ""


class Protection(_Model):
    """An image that stays, and every reason why."""

    image_id: str
    tags: list[str] = Field(default_factory=list)
    digests: list[str] = Field(default_factory=list)
    reasons: list[str]

    @property
    def label(self) -> str:
        """Return the image's tags, else its digest reference(s), else its short ID marked dangling."""
        if self.tags:
            return ", ".join(self.tags)
        if self.digests:
            return ", ".join(short_digest_ref(d) for d in self.digests)
        return self.image_id.removeprefix("sha256:")[:12] + " (dangling)"


def image_label(image_id: str, tags: Sequence[str], digests: Sequence[str] = ()) -> str:
    """Return ``<short id> (<tags>)``, ``<short id> (<digest refs>)`` or ``<short id> (dangling)``."""
    short = image_id.removeprefix("sha256:")[:12]
    if tags:
        return f"{short} ({', '.join(tags)})"
    if digests:
        return f"{short} ({', '.join(short_digest_ref(d) for d in digests)})"
    return f"{short} (dangling)"


class BuildFileIssue(_Model):
    """A file a service's Dockerfile copies that is missing from its build context (control node)."""

    service: str
    path: str  # absolute path where the file should be
    kind: str  # "requirements.txt", "alembic.ini", or "other"


class WatermarkState(_Model):
    """Where a host stands against its hygiene watermarks, before and (predicted) after the plan.

    ``basis`` says what was measured: "filesystem" (statfs of the engine's data root, "85%" watermarks) or
    "engine" (the engine's own bytes: image layers once each + build cache, "20GB" watermarks). Bytes.
    """

    basis: Literal["filesystem", "engine"]
    capacity_bytes: int | None = None  # the filesystem's size (filesystem basis)
    used_bytes: int | None = None  # None: cannot be measured here (remote engine, filesystem basis)
    high_bytes: int | None = None
    low_bytes: int | None = None
    predicted_used_bytes: int | None = None  # used_bytes minus everything the plan frees
    state: Literal["below_high", "above_high", "unknown"] = "unknown"


class HostPlan(_Model):
    """Everything phase ``phase`` would do on ``host``, and everything it leaves alone and why."""

    host: str
    phase: str
    planned_at: datetime
    actions: list[Action] = Field(default_factory=list)
    protections: list[Protection] = Field(default_factory=list)
    predicted_bytes: int = 0  # all image removals together + build cache
    notes: list[str] = Field(default_factory=list)
    watermark: WatermarkState | None = None  # hygiene only

    def removals(self) -> list[Action]:
        """Return the image removals, in order."""
        return [a for a in self.actions if a.kind == "remove_image"]

    def for_run(self) -> dict[str, Any]:
        """Return the plan as the playbook receives it: every action exactly, nothing it does not act on.

        The protections (already shown, and recorded by the CLI) and unset fields are left out: the plans of
        the whole fleet travel as one extra var that ansible-playbook parses, copies and forks with; a third
        less of it was ~0.3 s of a 20-host run. ``HostPlan.model_validate`` reads it back with the same actions.
        """
        return self.model_dump(mode="json", exclude={"protections"}, exclude_none=True)


# One planned image removal: the image, why, and its category.
_Removal = tuple[ImageFact, str, Literal["oversized", "dangling"]]


class RemovalDecision(_Model):
    """Which images phase 1 removes and which it keeps, decided once for ``plan`` and ``analyze`` alike.

    ``removals``: image IDs in the order they go (children before the images they were built on), each with
    its category and reason. ``protections``: image ID -> every reason it stays. ``notes``: policy entries
    that name no image here. Analysis marks exactly ``removals`` as candidates (issue 9: the report and the
    plan must never disagree on what goes).
    """

    removals: list[tuple[str, Literal["oversized", "dangling"], str]] = Field(default_factory=list)
    protections: dict[str, list[str]] = Field(default_factory=dict)
    notes: list[str] = Field(default_factory=list)

    def ids(self, category: str | None = None) -> list[str]:
        """Return the removed image IDs in order (only ``category``'s when given)."""
        return [i for i, c, _ in self.removals if category is None or c == category]


def _age_seconds(now: datetime, created: datetime) -> float:
    return (now - created).total_seconds()


def _repository(tag: str) -> str:
    """Return the repository part of ``repo:tag`` or ``repo@digest`` (a registry port's colon is no tag separator)."""
    tag = tag.split("@", 1)[0]
    slash = tag.rfind("/")
    colon = tag.rfind(":")
    return tag[:colon] if colon > slash else tag


def _human_limit(seconds: float) -> str:
    """Return a policy duration as people write it: whole days and hours exact ("1h", "2d"), else as an age."""
    whole = int(seconds)
    if whole == seconds and whole >= 3600:
        if whole % 86400 == 0:
            return f"{whole // 86400}d"
        if whole % 3600 == 0:
            return f"{whole // 3600}h"
    return _human_age(seconds)


def _human_age(seconds: float) -> str:
    if seconds < 120:
        return f"{int(seconds)}s"
    if seconds < 7200:
        return f"{int(seconds // 60)}m"
    if seconds < 172800:
        return f"{seconds / 3600:.1f}h"
    return f"{seconds / 86400:.1f}d"


def _service_containers(snapshot: HostSnapshot, service: ServicePolicy) -> list[ContainerFact]:
    names = {service.name, service.compose_service or service.name}
    return [
        c for c in snapshot.containers
        if c.compose_service in names or c.image_ref == service.image
    ]


def rollback_images(snapshot: HostSnapshot, policy: Policy) -> dict[str, str]:
    """Return image ID -> why it is kept for rollback (each deployed service's current image + previous N)."""
    kept: dict[str, str] = {}
    by_id = {img.id: img for img in snapshot.images}
    for service in policy.services:
        containers = _service_containers(snapshot, service)
        if not containers:
            continue  # not deployed here: nothing to roll back to
        # The image it runs now: the running container's, else the newest stopped one's.
        running = [c for c in containers if c.running]
        # Engines list creation times to the second: among containers created in the same second the one
        # with the newer image is the current deployment (ties broken by ID, so the plan is repeatable).
        current_c = max(
            running or containers,
            key=lambda c: (c.created, by_id[c.image_id].created if c.image_id in by_id else c.created, c.id),
        )
        current = by_id.get(current_c.image_id)
        kept.setdefault(current_c.image_id, f"rollback: current image of service {service.name}")
        repo = _repository(service.image)
        if current is None:
            continue
        older = sorted(
            (img for img in snapshot.images
             if img.id != current.id and img.created <= current.created
             and any(_repository(t) == repo for t in [*img.repo_tags, *img.repo_digests])),
            key=lambda img: img.created, reverse=True,
        )
        for n, img in enumerate(older[: policy.rollback_keep], start=1):
            kept.setdefault(img.id, f"rollback: previous image #{n} of service {service.name}")
    # Images a deployment retained for rollback carry REPO:rollback-<id12> of their service (phase 2 and 3
    # tag them so; phase 3's rollback unit names them): they stay until phase 3's own cleanup lets them go.
    repos = {_repository(s.image): s.name for s in policy.services}
    for img in snapshot.images:
        for tag in img.repo_tags:
            repo, _, version = tag.rpartition(":")
            if repo in repos and version.startswith(ROLLBACK_TAG_PREFIX):
                kept.setdefault(img.id, f"rollback: retained image {tag} of service {repos[repo]}")
                break
    return kept


def _protection_reasons(
    img: ImageFact, snapshot: HostSnapshot, policy: Policy, rollback: dict[str, str],
) -> list[str]:
    reasons: list[str] = []
    for c in snapshot.containers_using(img.id):
        reasons.append(f"used by {'running' if c.running else 'stopped'} container {c.name}")
    # Every reference counts (tags, registry host:port included, digests, the ID): one match keeps it whole.
    for ref in [*img.repo_tags, *img.repo_digests, img.id]:
        pattern = policy.is_protected(ref)
        if pattern:
            reasons.append(f"protected pattern {pattern!r} matches {ref}")
            break
    if img.id in rollback:
        reasons.append(rollback[img.id])
    return reasons


def _too_young(img: ImageFact, now: datetime, policy: Policy, dangling: bool) -> str | None:
    """Return why ``img`` is too young to remove, or None.

    Age is counted from the image's ARRIVAL on this engine (``arrived_at``: built, pulled, loaded), never
    from ``created``: an image made in 2020 and loaded a minute ago is fresh (policy: fresh_min_age). When
    the arrival is unknown the image is treated as fresh and the plan says so — never guessed old.
    """
    fresh_limit = policy.fresh_min_age
    dangling_limit = policy.dangling_min_age if dangling else 0.0
    if fresh_limit <= 0 and dangling_limit <= 0:
        return None
    if img.arrived_at is None:
        limit = _human_limit(max(fresh_limit, dangling_limit))
        what = "fresh_min_age" if fresh_limit >= dangling_limit else "dangling_min_age"
        return f"arrival unknown: treated as fresh ({what} {limit})"
    arrived = _age_seconds(now, img.arrived_at)
    if arrived < fresh_limit:
        limit = _human_limit(fresh_limit)
        if img.arrival_source == "ledger":
            return (f"too young: first seen by acgs-remediate {_human_age(max(arrived, 0))} ago, arrival "
                    f"unknown before that (fresh_min_age {limit})")
        return f"too young: arrived {_human_age(max(arrived, 0))} ago (fresh_min_age {limit})"
    # An image became dangling when its tag moved, at most as long ago as it was made or arrived.
    age = min(_age_seconds(now, img.created), arrived)
    if age < dangling_limit:
        limit = _human_limit(dangling_limit)
        return f"too young: dangling for at most {_human_age(max(age, 0))} (dangling_min_age {limit})"
    return None


def decide_removals(snapshot: HostSnapshot, policy: Policy, now: datetime | None = None) -> RemovalDecision:
    """Return phase 1's image decision for one host: what goes (in order), what stays and every reason why.

    The one decision ``plan_phase1`` and ``analysis.analyze`` share. Candidates: the images the policy's
    ``oversized_images`` names (by tag, digest reference or ID) and the dangling images (no tag AND no
    digest: ``models.is_dangling``). An image named only by digest is not dangling: it stays unless a
    policy entry names it. Protections, all listed: used by a container (running or stopped), protected
    pattern, rollback retention, too young (from arrival), and the base of an image that stays (a classic
    child's parent link, or — whatever builder made the child — a layer chain that is a prefix of a staying
    image's: removing it frees nothing and, for a tagged base, loses the tag). ``now`` defaults to the
    snapshot's time.
    """
    now = now or snapshot.collected_at
    rollback = rollback_images(snapshot, policy)
    candidates: list[tuple[ImageFact, str, Literal["oversized", "dangling"]]] = []
    seen: set[str] = set()
    notes: list[str] = []
    budgets = {s.image: policy.service_budget(s) for s in policy.services}
    for entry in sorted(policy.oversized_images, key=lambda e: _PRIORITY_ORDER[e.priority]):
        img = snapshot.image(entry.ref)
        if img is None:
            notes.append(f"{entry.ref}: not present")
            continue
        budget = budgets.get(entry.ref, policy.size_cap)
        if img.labels.get(_PHASE2_LABEL) and img.size <= budget:
            # The tag names phase 2's optimized build now, within its budget: that is the fix the report
            # asks for, never a removal candidate (phase 1 re-run after phase 2).
            notes.append(f"{entry.ref}: phase 2's build, {human_size(img.size)}, within budget {human_size(budget)}")
            continue
        if img.id in seen:
            continue
        seen.add(img.id)
        why = f"oversized ({entry.priority})" + (f": {entry.reason}" if entry.reason else "")
        candidates.append((img, why, "oversized"))
    for img in sorted((i for i in snapshot.images if i.dangling), key=lambda i: (i.created, i.id)):
        if img.id in seen:
            continue
        seen.add(img.id)
        age = _human_age(_age_seconds(now, img.created))
        candidates.append((img, f"dangling image, created {age} ago", "dangling"))

    protections: dict[str, list[str]] = {}
    removals: list[_Removal] = []
    for img, why, category in candidates:
        reasons = _protection_reasons(img, snapshot, policy, rollback)
        young = _too_young(img, now, policy, category == "dangling")
        if young:
            reasons.append(young)
        if reasons:
            protections[img.id] = reasons
        else:
            removals.append((img, why, category))
    removals, blocked = _without_bases_of_kept(snapshot, removals)
    for img, reason in blocked:
        protections[img.id] = [reason]
    # Also show every other image that is protected by use, pattern or rollback, and every image named only
    # by digest, so the operator sees the whole picture of what stays and why.
    for img in snapshot.images:
        if img.id in protections or img.id in seen:
            continue
        reasons = _protection_reasons(img, snapshot, policy, rollback)
        if img.digest_only:
            reasons.append(
                f"named by digest only ({img.repo_digests[0]}): not dangling; no policy names it"
            )
        if reasons:
            protections[img.id] = reasons
    return RemovalDecision(
        removals=[(img.id, category, why) for img, why, category in removals],
        protections=protections,
        notes=notes,
    )


def plan_phase1(
    snapshot: HostSnapshot,
    policy: Policy,
    build_files: Iterable[BuildFileIssue] = (),
    now: datetime | None = None,
) -> HostPlan:
    """Return phase 1's plan for one host: oversized + old dangling images, cache prune, file repairs."""
    now = now or snapshot.collected_at
    decision = decide_removals(snapshot, policy, now)
    by_id = {img.id: img for img in snapshot.images}
    protections = [
        Protection(image_id=image_id, tags=list(by_id[image_id].repo_tags),
                   digests=list(by_id[image_id].repo_digests), reasons=reasons)
        for image_id, reasons in decision.protections.items()
    ]
    actions = []
    for image_id, category, why in decision.removals:
        img = by_id[image_id]
        actions.append(Action(
            kind="remove_image", image_id=img.id, tags=list(img.repo_tags), digests=list(img.repo_digests),
            category=category,
            reason=why + (f"; removes all {len(img.repo_tags)} tags" if len(img.repo_tags) > 1 else ""),
            predicted_bytes=reclaimable_bytes(snapshot, [img.id]),
        ))
    removed = decision.ids()
    total = reclaimable_bytes(snapshot, removed) if removed else 0

    cache_action = plan_build_cache(snapshot, policy)
    if cache_action is not None:
        actions.append(cache_action)
        total += cache_action.predicted_bytes
    for issue in build_files:
        actions.append(Action(
            kind="repair_build_file", service=issue.service, path=issue.path,
            reason=f"missing {issue.kind} breaks the build of service {issue.service}",
        ))
    notes = list(decision.notes)
    if snapshot.engine.approximate:
        notes.append("sizes approximate: " + "; ".join(snapshot.engine.approximate))
    return HostPlan(
        host=snapshot.host, phase=PHASE1, planned_at=now, actions=actions,
        protections=sorted(protections, key=lambda p: (p.tags[:1] or p.digests[:1] or [p.image_id])[0]),
        predicted_bytes=total, notes=notes,
    )


def _names(images: list[str]) -> str:
    shown = sorted(images)
    return ", ".join(shown[:3]) + (f" and {len(shown) - 3} more" if len(shown) > 3 else "")


def _without_bases_of_kept(
    snapshot: HostSnapshot, removals: list[_Removal]
) -> tuple[list[_Removal], list[tuple[ImageFact, str]]]:
    """Return the removals the engine accepts and that free something, children first, and the blocked ones.

    An image stays when an image built on it stays, whatever builder made that child:

    * classic builder: the child records its parent (directly or through intermediate build images); the
      engine refuses, without force, to delete a parent ("parent of image(s) that stay");
    * any builder (BuildKit records no parent): a named image (policy-named, or hygiene's unused) whose layer
      chain is a prefix of (or equal to) a staying image's chain. A chain ID names the whole stack below it,
      so that holds iff its top chain ID is one of the other image's layers — exactly when removing it frees
      0 B. It would only lose its name ("base of image(s) that stay"). A dangling image in that position is
      still removed: nothing names it, and it is the junk the zero-dangling criterion counts.

    Planned classic children are removed before their parents (the engine's order; chains need none).
    """
    ancestors = (
        {img.id: set(snapshot.ancestors(img.id)) for img in snapshot.images} if snapshot.image_parents else {}
    )
    holders: dict[str, set[str]] = {}
    for img in snapshot.images:
        for chain in img.layers:
            holders.setdefault(chain, set()).add(img.id)
    by_id = {img.id: img for img in snapshot.images}
    planned = {img.id for img, _, _ in removals}
    classic = {
        img.id: {other for other, anc in ancestors.items() if other != img.id and img.id in anc}
        for img, _, _ in removals
    }
    on_top = {
        img.id: (holders.get(img.layers[-1], set()) - {img.id}) if img.layers and category != "dangling" else set()
        for img, _, category in removals
    }
    blocked: set[str] = set()

    def staying(ids: set[str]) -> list[str]:
        return [
            by_id[i].display_name if i in by_id else i.removeprefix("sha256:")[:12]
            for i in ids
            if i not in planned or i in blocked
        ]

    changed = True
    while changed:  # an image that stays may block the images it was built on in turn
        changed = False
        for img, _, _ in removals:
            if img.id not in blocked and (staying(classic[img.id]) or staying(on_top[img.id])):
                blocked.add(img.id)
                changed = True
    reasons: dict[str, str] = {}
    for image_id in blocked:  # said once the set is final: every image that stays on it is named
        kept_children = staying(classic[image_id])
        if kept_children:
            reasons[image_id] = (
                f"parent of image(s) that stay ({_names(kept_children)}): the engine refuses to delete an "
                "image with dependent child images, and a removal is never forced"
            )
        else:
            reasons[image_id] = (
                f"base of image(s) that stay ({_names(staying(on_top[image_id]))}): all its layers are part of "
                "them, so removing it would free 0 B and only lose its name"
            )
    kept = [r for r in removals if r[0].id not in blocked]
    # Children first: move each image after the last planned image built on it (classic parent links).
    ordered = list(kept)
    moved = bool(ancestors)
    while moved:
        moved = False
        for i, (img, _, _) in enumerate(ordered):
            last_child = max(
                (j for j, (other, _, _) in enumerate(ordered) if other.id in classic[img.id]), default=-1
            )
            if last_child > i:
                ordered.insert(last_child, ordered.pop(i))
                moved = True
                break
    return ordered, [(r[0], reasons[r[0].id]) for r in removals if r[0].id in blocked]


def plan_build_cache(snapshot: HostSnapshot, policy: Policy) -> Action | None:
    """Return a prune of build cache down to the budget, or None when the cache fits it or nothing would go.

    Predicted bytes come from ``analysis.build_cache_prune``, the accounting ``analyze`` reports too:
    records not in use, least recently used first, until the cache fits the budget; records marked Shared
    free nothing (their bytes stay with the image that holds them).
    """
    prune = build_cache_prune(snapshot, policy.build_cache_budget)
    if prune.freed_bytes == 0:
        return None
    return Action(
        kind="prune_build_cache", keep_bytes=policy.build_cache_budget, predicted_bytes=prune.freed_bytes,
        reason=f"build cache {prune.total_bytes} bytes is above the budget of {policy.build_cache_budget} bytes",
    )


def plan(
    snapshot: HostSnapshot, policy: Policy, phase: str, build_files: Iterable[BuildFileIssue] = (),
) -> HostPlan:
    """Return the plan of ``phase`` for one host."""
    if phase == PHASE1:
        return plan_phase1(snapshot, policy, build_files)
    raise ValueError(f"unknown phase {phase!r}; known: {', '.join(PHASES)}")


# -- phase 3: cleanup after health ------------------------------------------------------------------


_CANDIDATE_PREFIX = "build-"  # phase 2's candidate tag REPO:build-<hash12> (builds.CANDIDATE_PREFIX)


def plan_cleanup_after_health(
    snapshot: HostSnapshot, policy: Policy, unit_images: Iterable[str]
) -> list[tuple[str, list[str], str]]:
    """Return what phase 3 removes once a host passed its soak: ``(image ID, tags to drop, why)`` in order.

    The images a deployment replaced carry ``REPO:rollback-<id12>`` of their service (``deploy.rollback_tag``)
    and are kept by rollback retention until this cleanup lets them go (issue 11 item 4: only after the new
    deployment passed its soak). Per service, the ``rollback_keep`` newest rollback-tagged images stay, the
    images of the host's recorded rollback unit (``unit_images``) always among them; the others lose their
    rollback tags and phase 2's candidate tags of the service's repository (``REPO:build-<hash12>``), and an
    image goes only when, without those tags, :func:`decide_removals` removes it as
    dangling — the same rules as phase 1: never an image a container uses (running or stopped), never a
    protected pattern, never the current or previous images of rollback retention, never the base of an
    image that stays, never an image with another name (a second tag or a digest). Ages do not hold these
    images back: the deployment itself replaced them. Pure: the caller re-checks use before acting.
    """
    keep = set(unit_images)
    drop: dict[str, list[str]] = {}
    for service in policy.services:
        repo = _repository(service.image)
        prefix = f"{repo}:{ROLLBACK_TAG_PREFIX}"
        tagged = sorted(
            (img for img in snapshot.images if any(t.startswith(prefix) for t in img.repo_tags)),
            key=lambda img: (img.created, img.id),
            reverse=True,
        )
        kept = [img.id for img in tagged if img.id in keep]
        for img in tagged:
            if img.id in keep or img.id in kept:
                continue
            if len(kept) < policy.rollback_keep:
                kept.append(img.id)
                continue
            # Its rollback tag and phase 2's candidate tags of the same repository (builds.CANDIDATE_PREFIX): a
            # build beyond retention is no longer a candidate for anything.
            ours = (prefix, f"{repo}:{_CANDIDATE_PREFIX}")
            drop.setdefault(img.id, []).extend(t for t in img.repo_tags if t.startswith(ours))
    if not drop:
        return []
    images = [
        img.model_copy(update={"repo_tags": [t for t in img.repo_tags if t not in drop.get(img.id, [])]})
        for img in snapshot.images
    ]
    after = snapshot.model_copy(update={"images": images})
    ageless = policy.model_copy(update={"dangling_min_age": 0.0, "fresh_min_age": 0.0, "oversized_images": []})
    decision = decide_removals(after, ageless)
    by_id = {img.id: img for img in snapshot.images}
    out: list[tuple[str, list[str], str]] = []
    for image_id, category, _why in decision.removals:
        img = by_id[image_id]
        if any(policy.is_protected(ref) for ref in [*img.repo_tags, *img.repo_digests, img.id]):
            continue  # a protected pattern that named it by the rollback tag dropped above still holds
        if category == "dangling" and image_id in drop and image_id not in keep:
            tags = sorted(drop[image_id])
            out.append((image_id, tags, f"replaced by phase 3, beyond rollback retention ({policy.rollback_keep})"))
    return out
