"""Pure analysis: a host snapshot + the policy -> findings, with bytes counted per unique layer.

Nothing here talks to Docker; everything is a function of ``HostSnapshot`` (tested from JSON case files).
The key number is what a removal really frees: the layers referenced by no image that stays. Summing
image sizes over-counts every shared layer (ANCHORS.md: 271.8 GB summed vs 70.3 GB real).
"""

from __future__ import annotations

from collections.abc import Iterable
from datetime import datetime
from typing import TYPE_CHECKING, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field

from .config import Policy
from .models import Baseline, ContainerFact, EngineFact, HostSnapshot, ImageFact

if TYPE_CHECKING:
    from .plan import RemovalDecision
from .units import human_size


def _ids(image_ids: Iterable[str]) -> set[str]:
    return set(image_ids)


def layers_kept(snapshot: HostSnapshot, removed: set[str]) -> set[str]:
    """Return the chain IDs still referenced once the images in ``removed`` are gone."""
    kept: set[str] = set()
    for img in snapshot.images:
        if img.id not in removed:
            kept.update(img.layers)
    return kept


def reclaimable_bytes(snapshot: HostSnapshot, image_ids: Iterable[str]) -> int:
    """Return the bytes freed by removing exactly ``image_ids``: layers no remaining image uses, each once."""
    removed = _ids(image_ids)
    if not removed:
        return 0
    # A layer goes when every image referencing it goes: compare reference counts (linear in layers).
    total: dict[str, int] = {}
    gone: dict[str, int] = {}
    for img in snapshot.images:
        hit = img.id in removed
        for chain in set(img.layers):
            total[chain] = total.get(chain, 0) + 1
            if hit:
                gone[chain] = gone.get(chain, 0) + 1
    return sum(snapshot.layer_sizes.get(c, 0) for c, n in gone.items() if n == total[c])


class LayerAccount:
    """``reclaimable_bytes`` one removal at a time: what each next removal frees, given what remains.

    Keeps per layer how many remaining images reference it, so each step costs the image's layer count
    (not the host's): planners that pick removals one by one (hygiene's LRU) stay linear on big hosts.
    After removing ``a, b, c`` in order, the gains sum to ``reclaimable_bytes(snapshot, [a, b, c])``.
    """

    def __init__(self, snapshot: HostSnapshot) -> None:
        self.sizes = snapshot.layer_sizes
        self.layers = {img.id: set(img.layers) for img in snapshot.images}
        self.refs: dict[str, int] = {}
        for chains in self.layers.values():
            for chain in chains:
                self.refs[chain] = self.refs.get(chain, 0) + 1
        self.removed: list[str] = []  # in order
        self._gone: set[str] = set()
        self.total = 0  # bytes freed by the removals so far

    def gain(self, image_id: str) -> int:
        """Return the bytes removing ``image_id`` next would free (0 if already removed or unknown)."""
        if image_id in self._gone:
            return 0
        return sum(self.sizes.get(c, 0) for c in self.layers.get(image_id, ()) if self.refs[c] == 1)

    def remove(self, image_id: str) -> int:
        """Record the removal of ``image_id``; return the bytes it frees."""
        gain = self.gain(image_id)
        if image_id in self.layers and image_id not in self._gone:
            for chain in self.layers[image_id]:
                self.refs[chain] -= 1
            self.removed.append(image_id)
            self._gone.add(image_id)
            self.total += gain
        return gain


def freed_alone(snapshot: HostSnapshot) -> dict[str, int]:
    """Return image ID -> bytes removing only that image frees (its layers no other image uses)."""
    refs: dict[str, int] = {}
    for img in snapshot.images:
        for chain in set(img.layers):
            refs[chain] = refs.get(chain, 0) + 1
    return {
        img.id: sum(snapshot.layer_sizes.get(c, 0) for c in set(img.layers) if refs[c] == 1)
        for img in snapshot.images
    }


def naive_bytes(snapshot: HostSnapshot, image_ids: Iterable[str]) -> int:
    """Return the summed ``docker images`` size of ``image_ids`` (what a hand-written report adds up)."""
    wanted = _ids(image_ids)
    return sum(img.size for img in snapshot.images if img.id in wanted)


def dangling_images(snapshot: HostSnapshot) -> list[ImageFact]:
    """Return the dangling images (no tag AND no digest: ``models.is_dangling``), oldest first.

    Not what ``docker images -f dangling=true`` lists: that filter also lists images pulled by digest.
    """
    return sorted((i for i in snapshot.images if i.dangling), key=lambda i: (i.created, i.id))


def images_in_use(snapshot: HostSnapshot) -> dict[str, list[ContainerFact]]:
    """Return image ID -> the containers (running or stopped) created from it: never candidates."""
    used: dict[str, list[ContainerFact]] = {}
    for container in snapshot.containers:
        used.setdefault(container.image_id, []).append(container)
    return used


def image_layer_bytes(snapshot: HostSnapshot) -> int:
    """Return the bytes all image layers occupy, each unique layer once."""
    chains: set[str] = set()
    for img in snapshot.images:
        chains.update(img.layers)
    return sum(snapshot.layer_sizes.get(c, 0) for c in chains)


class CachePrune(NamedTuple):
    """What a keep-storage prune of the build cache down to a budget frees (``build_cache_prune``)."""

    total_bytes: int  # cache bytes on disk: records marked Shared left out (their bytes stay with an image)
    freed_bytes: int
    record_ids: list[str]


def build_cache_prune(snapshot: HostSnapshot, budget: int) -> CachePrune:
    """Return what pruning the build cache down to ``budget`` bytes frees: THE cache accounting.

    ``analyze``'s savings row, the plan's prune action and the cleanup module's standalone plan all use this
    one function (issue 9: two accountings drifted to twice the real bytes). The engine's keep-storage prune
    (``POST /build/prune?keep-storage=N&all=1``) deletes records not in use, least recently used first, until
    the cache fits. A record marked Shared is a snapshot an image's layer also holds: deleting it frees
    nothing, so it counts neither in the total nor in what is freed. Measured on dockerd 20.10 with BuildKit:
    a two-stage build copying a 4 MB file between stages frees the unshared bytes only.
    """
    records = [r for r in snapshot.build_cache if not r.shared]
    total = sum(r.size for r in records)
    if total <= budget:
        return CachePrune(total, 0, [])
    oldest_first = sorted(
        (r for r in records if not r.in_use),
        key=lambda r: (r.last_used or r.created or snapshot.collected_at, r.id),
    )
    remaining, freed, ids = total, 0, []
    for record in oldest_first:
        if remaining <= budget:
            break
        remaining -= record.size
        freed += record.size
        ids.append(record.id)
    return CachePrune(total, freed, ids)


def storage_bytes(snapshot: HostSnapshot) -> dict[str, int]:
    """Return bytes on disk per category: images (layers once), build_cache, volumes (and their total)."""
    images = image_layer_bytes(snapshot)
    build_cache = build_cache_prune(snapshot, 0).total_bytes
    volumes = sum(v.size or 0 for v in snapshot.volumes)
    total = images + build_cache + volumes
    return {"images": images, "build_cache": build_cache, "volumes": volumes, "total": total}


def baseline_from(snapshot: HostSnapshot) -> Baseline:
    """Return the host's baseline (bytes per category and per image) as of ``snapshot``."""
    storage = storage_bytes(snapshot)
    dangling = dangling_images(snapshot)
    images_bytes = snapshot.df_layers_size if snapshot.df_layers_size is not None else storage["images"]
    return Baseline(
        host=snapshot.host,
        recorded_at=snapshot.collected_at,
        images_bytes=images_bytes,
        build_cache_bytes=storage["build_cache"],
        image_count=len(snapshot.images),
        dangling_count=len(dangling),
        dangling_bytes=reclaimable_bytes(snapshot, (i.id for i in dangling)),
        per_image={img.display_name: img.size for img in snapshot.images},
    )


# --- Findings: snapshot + policy -> what the report says about one host ---------------------------------

# Service verdicts as the seed report gives them: 258MB for a 200MB expectation (1.29x) is "Acceptable",
# 275MB (1.4x) is a warning, 30x and 58x are failures.
ACCEPTABLE_RATIO = 1.3
FAIL_RATIO = 10.0
# Dangling images whose sizes lie within this fraction of each other share one breakdown line
# ("228-232MB dangling images (20+)").
BUCKET_TOLERANCE = 0.03


class _Finding(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ContainerRef(_Finding):
    """A container that keeps an image in use."""

    name: str
    state: str
    running: bool


class OversizedFinding(_Finding):
    """An image over its budget, named by the policy's list, a service budget or the global cap."""

    ref: str
    image_id: str | None  # None: named by the policy but not present on this host
    present: bool
    size: int | None
    budget: int
    ratio: float | None
    priority: str
    reason: str
    source: Literal["policy", "service", "cap"]
    containers: list[ContainerRef] = Field(default_factory=list)
    protected_by: str | None = None  # the protected pattern matching one of its names
    # Phase 1 removes it: exactly the plan's decision (plan.decide_removals), shared by plan and analyze.
    candidate: bool = False
    kept_because: list[str] = Field(default_factory=list)  # why phase 1 keeps a policy-named image
    freed_alone: int = 0  # bytes removing only this image frees

    @property
    def in_use(self) -> bool:
        """Return True when a container (running or stopped) uses the image."""
        return bool(self.containers)


class SizeBucket(_Finding):
    """One line of the dangling-images size breakdown."""

    label: str
    min_size: int
    max_size: int
    count: int


class DanglingImage(_Finding):
    """One untagged image."""

    image_id: str
    size: int
    created: datetime
    containers: list[ContainerRef] = Field(default_factory=list)


class DanglingSummary(_Finding):
    """The report's "dangling images waste" section, with the bytes really freed."""

    count: int
    naive_bytes: int  # summed sizes, as `docker images` adds them up
    freed_bytes: int  # what removing every dangling image no container uses frees (unique layers)
    oldest: datetime | None
    newest: datetime | None
    in_use_count: int  # dangling yet used by a (stopped) container: protected
    buckets: list[SizeBucket] = Field(default_factory=list)
    images: list[DanglingImage] = Field(default_factory=list)


class ImageUse(_Finding):
    """A tagged image and who uses it."""

    ref: str
    image_id: str
    size: int
    created: datetime
    containers: list[ContainerRef] = Field(default_factory=list)
    freed_alone: int = 0


class SavingsRow(_Finding):
    """One row of the expected-savings table: bytes really freed beside the naive sum."""

    action: str
    image_ids: list[str] = Field(default_factory=list)
    freed_bytes: int
    naive_bytes: int
    impact: str
    estimate: bool = False  # True for what only a rebuild can tell (service optimisation)


class BuildCacheSummary(_Finding):
    """Build cache usage against the policy's budget."""

    records: int
    total_bytes: int
    in_use_bytes: int
    shared_bytes: int
    budget: int
    over_budget_bytes: int
    prune_freed_bytes: int = 0  # what a prune down to the budget frees (whole records; = the plan's prediction)


class VolumeUse(_Finding):
    """A volume: reported with its size and users, never a removal candidate."""

    name: str
    size: int | None
    ref_count: int | None
    anonymous: bool
    containers: list[str] = Field(default_factory=list)


class ServiceImage(_Finding):
    """The report's service image analysis row: current vs expected size and a verdict."""

    service: str
    image: str
    present: bool
    size: int | None
    expected: int | None
    budget: int
    ratio: float | None  # size / expected (or / budget when no expectation)
    verdict: Literal["ok", "warn", "fail", "missing"]
    symbol: str  # ✅ ⚠️ ❌ ❓
    efficiency: str  # "❌ 30x oversized", "✅ Acceptable", ...
    over_budget: bool
    containers: list[ContainerRef] = Field(default_factory=list)


class StorageSummary(_Finding):
    """Bytes per category, layers counted once, next to what summing `docker images` says."""

    images: int
    build_cache: int
    volumes: int
    total: int
    naive_images: int  # sum of every image's size (over-counts shared layers)
    df_layers_size: int | None  # the engine's own figure
    fs_total: int | None = None
    fs_used: int | None = None
    fs_free: int | None = None


class HostAnalysis(_Finding):
    """Everything the report says about one host."""

    host: str
    collected_at: datetime
    engine: EngineFact
    storage: StorageSummary
    image_count: int
    container_count: int
    running_count: int
    oversized: list[OversizedFinding] = Field(default_factory=list)
    dangling: DanglingSummary
    in_use: list[ImageUse] = Field(default_factory=list)
    unused: list[ImageUse] = Field(default_factory=list)
    savings: list[SavingsRow] = Field(default_factory=list)
    build_cache: BuildCacheSummary
    volumes: list[VolumeUse] = Field(default_factory=list)
    services: list[ServiceImage] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)  # why numbers are approximate, and similar caveats


def times_label(ratio: float) -> str:
    """Return a ratio as the report writes it: "30x", "4x", "1.4x"."""
    return f"{ratio:.0f}x" if ratio >= 2 else f"{ratio:.1f}x"


def _refs(snapshot: HostSnapshot, image_id: str, used: dict[str, list[ContainerFact]]) -> list[ContainerRef]:
    return [ContainerRef(name=c.name, state=c.state, running=c.running) for c in used.get(image_id, [])]


def _cap_priority(ratio: float) -> str:
    return "CRITICAL" if ratio >= 50 else "HIGH" if ratio >= 10 else "MEDIUM" if ratio >= 2 else "LOW"


def _pattern(policy: Policy, img: ImageFact) -> str | None:
    return next((p for p in (policy.is_protected(n) for n in img.names) if p), None)


def _decision(snapshot: HostSnapshot, policy: Policy) -> RemovalDecision:
    from .plan import decide_removals  # plan builds on this module; the decision is one, shared

    return decide_removals(snapshot, policy)


def oversized_findings(
    snapshot: HostSnapshot, policy: Policy, decision: RemovalDecision | None = None
) -> list[OversizedFinding]:
    """Return oversized images: the policy's list (present or not), services over budget, others over the cap.

    Only the policy's listed images are removal candidates, and exactly those phase 1 removes
    (``plan.decide_removals``, ``decision`` when already made): ``kept_because`` says why the others stay.
    Images over a budget or the cap are reported so that someone rebuilds them.
    """
    decision = decision or _decision(snapshot, policy)
    removed = set(decision.ids("oversized"))
    used = images_in_use(snapshot)
    alone = freed_alone(snapshot)
    findings: list[OversizedFinding] = []
    seen: set[str] = set()
    budgets = {s.image: policy.service_budget(s) for s in policy.services}
    for item in policy.oversized_images:
        img = snapshot.image(item.ref)
        budget = budgets.get(item.ref, policy.size_cap)
        if img is None:
            findings.append(
                OversizedFinding(
                    ref=item.ref,
                    image_id=None,
                    present=False,
                    size=None,
                    budget=budget,
                    ratio=None,
                    priority=item.priority,
                    reason=item.reason or "named by the policy",
                    source="policy",
                )
            )
            continue
        seen.add(img.id)
        containers = _refs(snapshot, img.id, used)
        protected = _pattern(policy, img)
        findings.append(
            OversizedFinding(
                ref=item.ref,
                image_id=img.id,
                present=True,
                size=img.size,
                budget=budget,
                ratio=img.size / budget,
                priority=item.priority,
                reason=item.reason or "named by the policy",
                source="policy",
                containers=containers,
                protected_by=protected,
                candidate=img.id in removed,
                kept_because=[] if img.id in removed else list(decision.protections.get(img.id, [])),
                freed_alone=alone.get(img.id, 0),
            )
        )
    for service in policy.services:
        img = snapshot.image(service.image)
        budget = policy.service_budget(service)
        if img is None or img.id in seen or img.size <= budget:
            continue
        seen.add(img.id)
        ratio = img.size / budget
        findings.append(
            OversizedFinding(
                ref=service.image,
                image_id=img.id,
                present=True,
                size=img.size,
                budget=budget,
                ratio=ratio,
                priority=_cap_priority(ratio),
                reason=f"service {service.name} over its {human_size(budget)} budget",
                source="service",
                containers=_refs(snapshot, img.id, used),
                protected_by=_pattern(policy, img),
                freed_alone=alone.get(img.id, 0),
            )
        )
    for img in sorted(snapshot.images, key=lambda i: -i.size):
        if img.dangling or img.id in seen or img.size <= policy.size_cap:
            continue
        ratio = img.size / policy.size_cap
        findings.append(
            OversizedFinding(
                ref=img.display_name,
                image_id=img.id,
                present=True,
                size=img.size,
                budget=policy.size_cap,
                ratio=ratio,
                priority=_cap_priority(ratio),
                reason=f"over the {human_size(policy.size_cap)} cap",
                source="cap",
                containers=_refs(snapshot, img.id, used),
                protected_by=_pattern(policy, img),
                freed_alone=alone.get(img.id, 0),
            )
        )
    return findings


def size_buckets(sizes: Iterable[int], tolerance: float = BUCKET_TOLERANCE) -> list[SizeBucket]:
    """Return the dangling-size breakdown: sizes within ``tolerance`` of a group's largest share one line."""
    buckets: list[list[int]] = []
    for size in sorted(sizes, reverse=True):
        if buckets and size >= buckets[-1][0] * (1 - tolerance):
            buckets[-1].append(size)
        else:
            buckets.append([size])
    result = []
    for group in buckets:
        low, high = human_size(min(group)), human_size(max(group))
        label = (
            low
            if low == high
            else f"{low.rstrip('kMGTB')}-{high}"
            if low[-2:] == high[-2:]
            else f"{low}-{high}"
        )
        result.append(SizeBucket(label=label, min_size=min(group), max_size=max(group), count=len(group)))
    return result


def dangling_summary(snapshot: HostSnapshot) -> DanglingSummary:
    """Return the dangling images with their real reclaimable bytes, date range and size breakdown."""
    used = images_in_use(snapshot)
    dangling = dangling_images(snapshot)
    free = [i.id for i in dangling if i.id not in used]
    return DanglingSummary(
        count=len(dangling),
        naive_bytes=sum(i.size for i in dangling),
        freed_bytes=reclaimable_bytes(snapshot, free),
        oldest=min((i.created for i in dangling), default=None),
        newest=max((i.created for i in dangling), default=None),
        in_use_count=sum(1 for i in dangling if i.id in used),
        buckets=size_buckets(i.size for i in dangling),
        images=[
            DanglingImage(
                image_id=i.id, size=i.size, created=i.created, containers=_refs(snapshot, i.id, used)
            )
            for i in dangling
        ],
    )


def service_images(snapshot: HostSnapshot, policy: Policy) -> list[ServiceImage]:
    """Return the report's service image analysis: each service's image against its expected size."""
    used = images_in_use(snapshot)
    rows = []
    for service in policy.services:
        img = snapshot.image(service.image)
        budget = policy.service_budget(service)
        if img is None:
            rows.append(
                ServiceImage(
                    service=service.name,
                    image=service.image,
                    present=False,
                    size=None,
                    expected=service.expected_size,
                    budget=budget,
                    ratio=None,
                    verdict="missing",
                    symbol="❓",
                    efficiency="❓ not on this host",
                    over_budget=False,
                )
            )
            continue
        reference = service.expected_size or budget
        ratio = img.size / reference
        over = img.size > budget
        if ratio >= FAIL_RATIO:
            verdict, symbol, text = "fail", "❌", f"{times_label(ratio)} oversized"
        elif ratio >= ACCEPTABLE_RATIO or over:
            verdict, symbol, text = "warn", "⚠️", f"{times_label(ratio)} oversized"
        else:
            verdict, symbol, text = "ok", "✅", "Acceptable"
        rows.append(
            ServiceImage(
                service=service.name,
                image=service.image,
                present=True,
                size=img.size,
                expected=service.expected_size,
                budget=budget,
                ratio=ratio,
                verdict=verdict,
                symbol=symbol,
                efficiency=f"{symbol} {text}",
                over_budget=over,
                containers=_refs(snapshot, img.id, used),
            )
        )
    return rows


def build_cache_summary(snapshot: HostSnapshot, policy: Policy) -> BuildCacheSummary:
    """Return build cache usage against ``policy.build_cache_budget``."""
    prune = build_cache_prune(snapshot, policy.build_cache_budget)
    total = prune.total_bytes
    return BuildCacheSummary(
        records=len(snapshot.build_cache),
        total_bytes=total,
        in_use_bytes=sum(b.size for b in snapshot.build_cache if b.in_use),
        shared_bytes=sum(b.size for b in snapshot.build_cache if b.shared),
        budget=policy.build_cache_budget,
        over_budget_bytes=max(0, total - policy.build_cache_budget),
        prune_freed_bytes=prune.freed_bytes,
    )


def volume_usage(snapshot: HostSnapshot) -> list[VolumeUse]:
    """Return every volume with its size and the containers mounting it (never candidates)."""
    users: dict[str, list[str]] = {}
    for c in snapshot.containers:
        for v in c.volumes:
            users.setdefault(v, []).append(c.name)
    return [
        VolumeUse(
            name=v.name,
            size=v.size,
            ref_count=v.ref_count,
            anonymous=v.anonymous,
            containers=sorted(users.get(v.name, [])),
        )
        for v in sorted(snapshot.volumes, key=lambda v: -(v.size or 0))
    ]


def analyze(snapshot: HostSnapshot, policy: Policy) -> HostAnalysis:
    """Return every finding of the report for one host."""
    used = images_in_use(snapshot)
    alone = freed_alone(snapshot)
    storage = storage_bytes(snapshot)
    decision = _decision(snapshot, policy)
    oversized = oversized_findings(snapshot, policy, decision)
    dangling = dangling_summary(snapshot)
    services = service_images(snapshot, policy)
    cache = build_cache_summary(snapshot, policy)

    in_use, unused = [], []
    for img in sorted(snapshot.images, key=lambda i: -i.size):
        if img.dangling:
            continue
        row = ImageUse(
            ref=img.display_name,
            image_id=img.id,
            size=img.size,
            created=img.created,
            containers=_refs(snapshot, img.id, used),
        )
        if row.containers:
            in_use.append(row)
        else:
            unused.append(row.model_copy(update={"freed_alone": alone.get(img.id, 0)}))

    # Exactly the plan's removals (one decision): what the savings rows promise is what phase 1 does.
    over_ids = decision.ids("oversized")
    dangling_ids = decision.ids("dangling")
    both = decision.ids()
    savings = [
        SavingsRow(
            action="Remove unused oversized images",
            image_ids=over_ids,
            freed_bytes=reclaimable_bytes(snapshot, over_ids),
            naive_bytes=naive_bytes(snapshot, over_ids),
            impact="Immediate",
        ),
        SavingsRow(
            action="Remove dangling images",
            image_ids=dangling_ids,
            freed_bytes=reclaimable_bytes(snapshot, dangling_ids),
            naive_bytes=naive_bytes(snapshot, dangling_ids),
            impact="Immediate",
        ),
        SavingsRow(
            action="Phase 1 together (shared layers counted once)",
            image_ids=both,
            freed_bytes=reclaimable_bytes(snapshot, both),
            naive_bytes=naive_bytes(snapshot, both),
            impact="Immediate",
        ),
    ]
    if cache.prune_freed_bytes:
        savings.append(
            SavingsRow(
                action="Prune build cache down to its budget",
                freed_bytes=cache.prune_freed_bytes,
                naive_bytes=cache.prune_freed_bytes,
                impact="Immediate",
            )
        )
    rebuild = sum(max(0, (s.size or 0) - (s.expected or s.budget)) for s in services if s.present)
    if rebuild:
        savings.append(
            SavingsRow(
                action="Optimise service images (rebuild to expected size)",
                freed_bytes=rebuild,
                naive_bytes=rebuild,
                impact="After rebuild",
                estimate=True,
            )
        )

    notes = list(snapshot.engine.approximate)
    if snapshot.df_layers_size is not None and snapshot.df_layers_size != storage["images"]:
        notes.append(
            f"layers counted from the layer graph ({human_size(storage['images'])}) differ from the engine's "
            f"own figure ({human_size(snapshot.df_layers_size)}); reclaimable bytes may be approximate"
        )
    engine = snapshot.engine
    return HostAnalysis(
        host=snapshot.host,
        collected_at=snapshot.collected_at,
        engine=engine,
        storage=StorageSummary(
            images=storage["images"],
            build_cache=storage["build_cache"],
            volumes=storage["volumes"],
            total=storage["total"],
            naive_images=sum(i.size for i in snapshot.images),
            df_layers_size=snapshot.df_layers_size,
            fs_total=engine.fs_total_bytes,
            fs_used=engine.fs_used_bytes,
            fs_free=engine.fs_free_bytes,
        ),
        image_count=len(snapshot.images),
        container_count=len(snapshot.containers),
        running_count=sum(1 for c in snapshot.containers if c.running),
        oversized=oversized,
        dangling=dangling,
        in_use=in_use,
        unused=unused,
        savings=savings,
        build_cache=cache,
        volumes=volume_usage(snapshot),
        services=services,
        notes=notes,
    )
