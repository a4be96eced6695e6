"""Pure hygiene planning: keep a host under its watermarks by least recent use, bytes per unique layer.

Nothing here talks to Docker, Ansible or the state store: every function is a function of a
``HostSnapshot``, the policy, what was observed about use (events, the ledger) and ``now`` — tested from
JSON case files (tests/unit/cases/hygiene).

The rules (kubelet image GC's high/low model, docuum's LRU, and where their users got hurt, ANCHORS.md):

* Order: dangling images past ``dangling_min_age`` (every run: "zero dangling maintained"), build cache
  above its budget (every run), then — only when usage is above ``high_watermark`` — unused images least
  recently used first until usage is at ``low_watermark``. Never short of low while a candidate that frees
  bytes remains; never past low by more than the last image (kubernetes#92925).
* Bytes per unique layer, given what remains (``analysis.reclaimable_bytes``, the one accounting): removing
  one of three apps on a shared base frees only that app's own layers (kubernetes#68203). A base image whose
  layers its children still hold frees nothing now: it is deferred and goes right after its last child
  ("freed 0 bytes", kubernetes#71869, never happens by plan).
* Children before parents; an image counts as used at least as recently as any image built on it (a layer
  prefix child, or a classic-builder child).
* "Fresh" is arrival on THIS engine (``ImageFact.arrived_at``), never the image's Created date: an old image
  loaded a minute ago is fresh (docuum#177, #137). Unknown arrival counts as fresh.
* Never: an image any container uses (any state), rollback images, protected patterns (every reference),
  digest-only images, volumes, containers. Each protection is listed with its reason (plan.py's rules).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from datetime import UTC, datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict

from .analysis import LayerAccount, image_layer_bytes, reclaimable_bytes
from .config import Policy, watermark_bytes, watermark_is_percent
from .models import HostSnapshot, ImageFact
from .plan import (
    HYGIENE,
    Action,
    HostPlan,
    Protection,
    WatermarkState,
    _human_age,
    _protection_reasons,
    _without_bases_of_kept,
    plan_build_cache,
    rollback_images,
)
from .units import human_size

# Container events that mean "this image was used" (the engine's /events, type=container).
USE_EVENTS = ("create", "start", "die")
# Image events that mean "this image (re)arrived on the engine now".
ARRIVAL_EVENTS = ("pull", "load", "import", "tag")


class ImageUse(BaseModel):
    """When an image was last used (None: never seen used) and what says so."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    last_used: datetime | None = None
    source: str = ""


Observed = Mapping[str, tuple[datetime, str]]  # image ID -> (when, what says so)


def _later(into: dict[str, tuple[datetime, str]], image_id: str, when: datetime | None, source: str) -> None:
    if when is None:
        return
    if when.tzinfo is None:
        when = when.replace(tzinfo=UTC)
    current = into.get(image_id)
    if current is None or when > current[0]:
        into[image_id] = (when, source)


def container_uses(snapshot: HostSnapshot) -> dict[str, tuple[datetime, str]]:
    """Return image ID -> the latest use its containers show (running: now; else finished/started/created)."""
    uses: dict[str, tuple[datetime, str]] = {}
    for c in snapshot.containers:
        if c.running:
            _later(uses, c.image_id, snapshot.collected_at, f"container {c.name} running")
            continue
        for when, what in ((c.finished_at, "finished"), (c.started_at, "started"), (c.created, "created")):
            if when is not None and when.year > 1:
                _later(uses, c.image_id, when, f"container {c.name} {what}")
                break
    return uses


def _event_time(event: Mapping[str, Any]) -> datetime | None:
    nano = event.get("timeNano")
    if isinstance(nano, int) and nano > 0:
        return datetime.fromtimestamp(nano / 1e9, UTC)
    seconds = event.get("time")
    if isinstance(seconds, int | float) and seconds > 0:
        return datetime.fromtimestamp(seconds, UTC)
    return None


def event_signals(
    snapshot: HostSnapshot, events: Iterable[Mapping[str, Any]]
) -> tuple[dict[str, tuple[datetime, str]], dict[str, tuple[datetime, str]]]:
    """Return (uses, arrivals): image ID -> latest (time, source) from the engine's /events answers.

    Uses: container create/start/die (the container's image by its ID when the container still exists,
    else by the image reference the event names, resolved against the snapshot's tags and IDs).
    Arrivals: image pull/load/import/tag. Events naming an image no longer present are ignored.
    """
    by_container = {c.id: c.image_id for c in snapshot.containers}
    uses: dict[str, tuple[datetime, str]] = {}
    arrivals: dict[str, tuple[datetime, str]] = {}
    for ev in events:
        when = _event_time(ev)
        kind = ev.get("Type") or ev.get("type")
        action = str(ev.get("Action") or ev.get("status") or "")
        actor = ev.get("Actor") or {}
        attrs = actor.get("Attributes") or {}
        if when is None:
            continue
        if kind == "container" and action in USE_EVENTS:
            image_id = by_container.get(str(actor.get("ID") or ev.get("id") or ""))
            if image_id is None:
                img = snapshot.image(str(attrs.get("image") or ev.get("from") or ""))
                image_id = img.id if img is not None else None
            if image_id is not None:
                _later(uses, image_id, when, f"event {action} of container {attrs.get('name', '?')}")
        elif kind == "image" and action in ARRIVAL_EVENTS:
            img = snapshot.image(str(actor.get("ID") or ev.get("id") or ""))
            if img is not None:
                _later(arrivals, img.id, when, f"event {action}")
    return uses, arrivals


def _ancestry(snapshot: HostSnapshot) -> dict[str, set[str]]:
    """Return image ID -> IDs of the images built on it (layer-prefix children and classic children)."""
    by_chain: dict[tuple[str, ...], list[str]] = {}
    for img in snapshot.images:
        if img.layers:
            by_chain.setdefault(tuple(img.layers), []).append(img.id)
    children: dict[str, set[str]] = {img.id: set() for img in snapshot.images}
    for img in snapshot.images:
        for k in range(1, len(img.layers)):
            for base in by_chain.get(tuple(img.layers[:k]), ()):
                children[base].add(img.id)
        for ancestor in snapshot.ancestors(img.id):
            if ancestor in children:
                children[ancestor].add(img.id)
    return children


def last_used(snapshot: HostSnapshot, *observed: Observed) -> dict[str, ImageUse]:
    """Return image ID -> when it was last used, from its containers plus ``observed`` (events, the ledger).

    An image counts as used at least as recently as any image built on it. Every image of the snapshot
    has an entry (``last_used`` None when nothing shows it used).
    """
    own = container_uses(snapshot)
    for source in observed:
        for image_id, (when, what) in source.items():
            _later(own, image_id, when, what)
    children = _ancestry(snapshot)
    names = {img.id: img.display_name for img in snapshot.images}
    result: dict[str, ImageUse] = {}
    for img in snapshot.images:
        best = own.get(img.id)
        for child in children[img.id]:
            use = own.get(child)
            if use is not None and (best is None or use[0] > best[0]):
                best = (use[0], f"child image {names.get(child, child[:19])}: {use[1]}")
        result[img.id] = ImageUse(last_used=best[0], source=best[1]) if best else ImageUse()
    return result


def with_arrivals(
    snapshot: HostSnapshot,
    imagedb: Mapping[str, datetime] | None = None,
    arrivals: Observed | None = None,
    tag_times: Mapping[str, datetime] | None = None,
) -> HostSnapshot:
    """Return ``snapshot`` with each image's ``arrived_at`` (its most recent sign of arrival on the engine).

    Sources, by precedence: the engine's image store file time (``imagedb``, written once when the image
    arrives: exact, local engines only) and arrival events (pull/load/import/tag: a re-pull counts as fresh)
    — the later of them; else the engine's last tag time; else unknown (None: treated as fresh). An
    ``arrived_at`` already set is kept when later: the facts' own evidence, or when this tool first saw the
    image (the image ledger, ``StateStore.note_arrivals``, which the flow applies to every snapshot).
    """
    imagedb, arrivals = imagedb or {}, arrivals or {}
    tag_times = tag_times or {}
    images: list[ImageFact] = []
    for img in snapshot.images:
        found: dict[str, tuple[datetime, str]] = {}
        if img.arrived_at is not None:
            _later(found, img.id, img.arrived_at, img.arrival_source or "facts")
        _later(found, img.id, imagedb.get(img.id), "imagedb")
        if img.id in arrivals:
            _later(found, img.id, *arrivals[img.id])
        if img.id not in found:
            _later(found, img.id, tag_times.get(img.id), "tag time")
        when, source = found.get(img.id, (None, ""))
        images.append(img.model_copy(update={"arrived_at": when, "arrival_source": source}))
    return snapshot.model_copy(update={"images": images})


def engine_used_bytes(snapshot: HostSnapshot) -> int:
    """Return the engine's own bytes: image layers (each once; /system/df LayersSize) + build cache."""
    layers = snapshot.df_layers_size if snapshot.df_layers_size is not None else image_layer_bytes(snapshot)
    return int(layers) + sum(b.size for b in snapshot.build_cache if not b.shared)


def measure(snapshot: HostSnapshot, policy: Policy) -> WatermarkState:
    """Return where ``snapshot`` stands against the hygiene watermarks (before any removal)."""
    hyg = policy.hygiene
    if watermark_is_percent(hyg.high_watermark):
        total, used = snapshot.engine.fs_total_bytes, snapshot.engine.fs_used_bytes
        if total is None or used is None:
            return WatermarkState(basis="filesystem", state="unknown")
        high = watermark_bytes(hyg.high_watermark, total)
        low = watermark_bytes(hyg.low_watermark, total)
        basis: Literal["filesystem", "engine"] = "filesystem"
    else:
        total, used = None, engine_used_bytes(snapshot)
        high = watermark_bytes(hyg.high_watermark, None)
        low = watermark_bytes(hyg.low_watermark, None)
        basis = "engine"
    assert high is not None and low is not None
    return WatermarkState(
        basis=basis,
        capacity_bytes=total,
        used_bytes=used,
        high_bytes=high,
        low_bytes=low,
        predicted_used_bytes=used,
        state="above_high" if used > high else "below_high",
    )


def _age(now: datetime, then: datetime) -> float:
    return (now - then).total_seconds()


def _not_yet(img: ImageFact, now: datetime, policy: Policy, use: ImageUse | None) -> list[str]:
    """Return why ``img`` is too fresh (arrival) or too recently used to go now (empty: it may go)."""
    hyg = policy.hygiene
    if img.arrived_at is None:
        return ["arrival on this engine unknown: treated as fresh"]
    age = _age(now, img.arrived_at)
    src = f" ({img.arrival_source})" if img.arrival_source else ""
    if age < hyg.fresh_min_age:
        return [
            f"fresh: arrived on this engine {_human_age(max(age, 0))} ago{src} "
            f"(fresh_min_age {_human_age(hyg.fresh_min_age)})"
        ]
    if img.dangling:
        if age < hyg.dangling_min_age:
            return [
                f"too young: dangling image on this engine for {_human_age(age)} "
                f"(dangling_min_age {_human_age(hyg.dangling_min_age)})"
            ]
        return []
    if use is not None and use.last_used is not None and _age(now, use.last_used) < hyg.unused_min_age:
        return [
            f"recently used: {_human_age(max(_age(now, use.last_used), 0))} ago ({use.source}; "
            f"unused_min_age {_human_age(hyg.unused_min_age)})"
        ]
    return []


def _lru_key(img: ImageFact, uses: Mapping[str, ImageUse]) -> tuple[datetime, int, str]:
    # Never used: as old as its arrival. Ties: longer layer chains (children) first, then ID (repeatable).
    use = uses.get(img.id)
    when = use.last_used if use is not None and use.last_used is not None else img.arrived_at
    return (when or datetime.max.replace(tzinfo=UTC), -len(img.layers), img.id)


def plan_hygiene(
    snapshot: HostSnapshot,
    policy: Policy,
    uses: Mapping[str, ImageUse] | None = None,
    now: datetime | None = None,
) -> HostPlan:
    """Return the hygiene plan of one host: ordered removals with predicted bytes, protections, watermark.

    ``snapshot`` should carry ``arrived_at`` per image (see ``with_arrivals``; None counts as fresh);
    ``uses`` is ``last_used(...)`` (default: from the snapshot's containers alone); ``now`` defaults to
    the snapshot's time. Bytes are decimal bytes; the plan's ``predicted_bytes`` is image bytes (layers
    once each, given what remains) + build cache.
    """
    now = now or snapshot.collected_at
    uses = uses if uses is not None else last_used(snapshot)
    rollback = rollback_images(snapshot, policy)
    protections: dict[str, list[str]] = {}
    dangling: list[ImageFact] = []
    unused: list[ImageFact] = []
    for img in snapshot.images:
        reasons = _protection_reasons(img, snapshot, policy, rollback)
        if not img.repo_tags and img.repo_digests:
            reasons.append("digest-only image (pulled by digest, no tag): deployed by digest, never junk")
        reasons += _not_yet(img, now, policy, uses.get(img.id))
        if reasons:
            protections[img.id] = reasons
        elif img.dangling:
            dangling.append(img)
        else:
            unused.append(img)
    dangling.sort(key=lambda i: (i.arrived_at or now, i.created, i.id))
    unused.sort(key=lambda i: _lru_key(i, uses))

    hyg_policy = policy
    if policy.hygiene.build_cache_budget is not None:
        hyg_policy = policy.model_copy(update={"build_cache_budget": policy.hygiene.build_cache_budget})
    cache_action = plan_build_cache(snapshot, hyg_policy)
    cache_bytes = cache_action.predicted_bytes if cache_action is not None else 0
    mark = measure(snapshot, policy)

    # Selection, then the engine's own rule (an image with a child image that stays cannot go without
    # force); an image so blocked is protected and the selection is made again without it.
    while True:
        chosen, kept_reasons = _select(snapshot, dangling, unused, uses, mark, cache_bytes, now)
        removals = [(img, why, cat) for img, why, cat in chosen]
        ordered, blocked = _without_bases_of_kept(snapshot, removals)  # type: ignore[arg-type]
        if not blocked:
            break
        for img, reason in blocked:
            # "parent of image(s) that stay (...)" (classic child) or "base of image(s) that stay (...)" (a named
            # image whose layer chain is a prefix of a kept image's, whatever builder made it: frees 0 B).
            protections[img.id] = [reason]
        gone = {img.id for img, _ in blocked}
        dangling = [i for i in dangling if i.id not in gone]
        unused = [i for i in unused if i.id not in gone]

    # Predicted bytes in the final order (children first), each given what remains after the ones before.
    freed = LayerAccount(snapshot)
    actions: list[Action] = []
    for img, why, category in ordered:
        gain = freed.remove(img.id)
        tags = f"; removes all {len(img.repo_tags)} tags" if len(img.repo_tags) > 1 else ""
        actions.append(
            Action(
                kind="remove_image",
                image_id=img.id,
                tags=list(img.repo_tags),
                category=category,
                reason=why + tags,
                predicted_bytes=gain,
            )
        )
    if cache_action is not None:
        actions.append(cache_action)
    total = freed.total + cache_bytes
    if mark.used_bytes is not None:
        mark = mark.model_copy(update={"predicted_used_bytes": mark.used_bytes - total})
    for image_id, why in kept_reasons.items():
        protections.setdefault(image_id, [why])
    by_id = {img.id: img for img in snapshot.images}
    notes = _notes(mark, policy, snapshot)
    if snapshot.engine.approximate:
        notes.append("sizes approximate: " + "; ".join(snapshot.engine.approximate))
    return HostPlan(
        host=snapshot.host,
        phase=HYGIENE,
        planned_at=now,
        actions=actions,
        protections=sorted(
            (Protection(image_id=i, tags=list(by_id[i].repo_tags), reasons=r) for i, r in protections.items()),
            key=lambda p: (p.tags[:1] or [p.image_id])[0],
        ),
        predicted_bytes=total,
        notes=notes,
        watermark=mark,
    )


def _select(
    snapshot: HostSnapshot,
    dangling: list[ImageFact],
    unused: list[ImageFact],
    uses: Mapping[str, ImageUse],
    mark: WatermarkState,
    cache_bytes: int,
    now: datetime,
) -> tuple[list[tuple[ImageFact, str, Literal["dangling", "unused"]]], dict[str, str]]:
    """Return the removals in LRU order and why each unused candidate left out stays."""
    freed = LayerAccount(snapshot)
    chosen: list[tuple[ImageFact, str, Literal["dangling", "unused"]]] = []
    for img in dangling:
        freed.remove(img.id)
        age = _human_age(_age(now, img.arrived_at)) if img.arrived_at else "?"
        chosen.append((img, f"dangling image, on this engine for {age}", "dangling"))
    kept: dict[str, str] = {}
    if mark.state != "above_high" or mark.used_bytes is None or mark.low_bytes is None:
        why = (
            "not needed: usage is below the high watermark"
            if mark.state == "below_high"
            else "not needed: usage against the watermark cannot be measured here"
        )
        kept.update({img.id: why for img in unused})
        return chosen, kept
    low = mark.low_bytes

    def projected() -> int:
        assert mark.used_bytes is not None
        return mark.used_bytes - freed.total - cache_bytes

    def take(img: ImageFact, rank: int) -> None:
        freed.remove(img.id)
        use = uses.get(img.id)
        when = (
            f"last used {_human_age(_age(now, use.last_used))} ago ({use.source})"
            if use is not None and use.last_used is not None
            else "never seen used"
        )
        chosen.append((img, f"unused image, {when}; least recently used #{rank}", "unused"))

    deferred: list[ImageFact] = []
    rank = 0
    for img in unused:
        if projected() <= low:
            kept[img.id] = "not needed: usage reaches the low watermark without removing it"
            continue
        if freed.gain(img.id) == 0:
            deferred.append(img)  # its layers are still held by others: it goes with the last of them
            continue
        rank += 1
        take(img, rank)
        for base in list(deferred):  # a base whose last child just went follows it
            if projected() > low and freed.gain(base.id) > 0:
                rank += 1
                take(base, rank)
                deferred.remove(base)
    # Images that free bytes only together (same layers, different IDs): take them while that helps.
    if (
        deferred
        and projected() > low
        and reclaimable_bytes(snapshot, [*freed.removed, *(d.id for d in deferred)]) > freed.total
    ):
        for img in list(deferred):
            if projected() <= low:
                break
            rank += 1
            take(img, rank)
            deferred.remove(img)
    gone = set(freed.removed)
    for img in deferred:
        layers = set(img.layers)
        holders = sorted(
            o.display_name for o in snapshot.images if o.id not in gone and o.id != img.id and layers & set(o.layers)
        )
        names = ", ".join(holders[:3]) + (f" and {len(holders) - 3} more" if len(holders) > 3 else "")
        kept[img.id] = f"removing it frees nothing: its layers stay with images that stay ({names})"
    return chosen, kept


def remote_percent_note(policy: Policy, data_root: str, engine_bytes: int) -> str:
    """Return the plan's note for "%" watermarks on an engine whose filesystem cannot be measured (remote).

    Why it cannot be measured, decided once (README, "Hygiene"): the Engine API reports no filesystem size
    (/info's DriverStatus names the backing filesystem only, /system/df counts the engine's own bytes); the
    ssh:// channel is often a forced ``docker system dial-stdio`` command and tcp+TLS has no shell, so this
    tool never runs ``df`` on the host; and measuring from a container would start one (hygiene never creates
    containers) from an image that may hold no ``df``. So no unused image is evicted against "%" there.
    """
    hyg = policy.hygiene
    return (
        f"watermark {hyg.high_watermark}/{hyg.low_watermark} is a share of the filesystem holding the engine's "
        f"data root ({data_root or '?'}), which cannot be measured for a remote engine: the Engine API reports "
        "no filesystem size and acgs-remediate runs nothing on the host; no unused image is evicted by LRU "
        "(dangling images and build cache still go). For this host write the watermarks in bytes of the "
        f"engine's own accounting (it holds {human_size(engine_bytes)} now), e.g. high_watermark: 20GB, "
        "low_watermark: 16GB"
    )


def _notes(mark: WatermarkState, policy: Policy, snapshot: HostSnapshot) -> list[str]:
    hyg = policy.hygiene
    if mark.used_bytes is None:
        return [remote_percent_note(policy, snapshot.engine.data_root, engine_used_bytes(snapshot))]
    what = (
        "filesystem of the data root (statfs)"
        if mark.basis == "filesystem"
        else "engine bytes (image layers once each + build cache)"
    )
    return [
        f"watermark basis: {what}: used {mark.used_bytes}, high {mark.high_bytes} ({hyg.high_watermark}), "
        f"low {mark.low_bytes} ({hyg.low_watermark}), after the plan {mark.predicted_used_bytes}"
    ]
