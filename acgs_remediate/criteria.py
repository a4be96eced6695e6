"""The seed report's five success criteria as named, pure checks.

``evaluate`` turns one host's recorded baseline, current snapshot and build records into five
verdicts (pass / fail / not_verified), each with the measured value, the threshold and — when it
does not pass — the causes (which dangling images, which image exceeds its cap by how much, which
service failed to build). ``rollup`` folds the hosts into one fleet-wide verdict per criterion.

"Not verified" is never a pass: a criterion that cannot be measured (no baseline, no build record,
service image absent) blocks the gate just like a failure, and says what is missing.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from enum import StrEnum
from typing import Any

from pydantic import BaseModel, ConfigDict, Field

from . import analysis
from .config import Policy
from .models import Baseline, BuildRecord, HostSnapshot, ImageFact, Unreachable
from .units import human_duration, human_size


class Status(StrEnum):
    """A criterion's verdict."""

    passed = "pass"
    failed = "fail"
    not_verified = "not_verified"


# Order of the report's "Success Criteria" list; ids are stable (JSON, JUnit, the Ansible role).
CRITERIA: dict[str, str] = {
    "storage_reduction": "Storage reduced by more than {pct:g}%",
    "services_build": "All services build",
    "image_size_cap": "Service images under the size cap",
    "zero_dangling": "At most {max_dangling} dangling images",
    "build_time": "Builds under {limit}",
}


_UNREACHABLE = "unreachable"


class CriterionResult(BaseModel):
    """One criterion's verdict on one host (or fleet-wide), with what was measured and why."""

    model_config = ConfigDict(extra="forbid")

    id: str
    title: str
    host: str  # a host name, or "fleet" for the rollup
    status: Status
    measured: str  # human text, e.g. "93.1% (12.3MB of 178MB left)"
    threshold: str  # human text, e.g. "> 90%"
    value: float | int | None = None  # the measured number (percent, bytes, seconds, count)
    limit: float | int | None = None  # the threshold as a number, same unit as value
    causes: list[str] = Field(default_factory=list)  # why it fails / is not verified; empty on pass
    # Per-item detail (per service / per image) for machine readers.
    details: list[dict[str, Any]] = Field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Return True only for a pass."""
        return self.status is Status.passed


def _worst(statuses: Iterable[Status]) -> Status:
    """Return fail if any failed, else not_verified if any, else pass (pass when empty)."""
    found = set(statuses)
    if Status.failed in found:
        return Status.failed
    if Status.not_verified in found:
        return Status.not_verified
    return Status.passed


def image_bytes(snapshot: HostSnapshot) -> int:
    """Return the bytes image layers occupy, each shared layer counted once — measured as a Baseline is.

    The engine's own /system/df LayersSize when it reported one, else the unique layers of the listed images.
    """
    if snapshot.df_layers_size is not None:
        return snapshot.df_layers_size
    return analysis.image_layer_bytes(snapshot)


def build_cache_bytes(snapshot: HostSnapshot) -> int:
    """Return the bytes of the host's build cache, counted as a Baseline counts them."""
    return analysis.storage_bytes(snapshot)["build_cache"]


def latest_records(records: Iterable[BuildRecord]) -> dict[str, BuildRecord]:
    """Return the most recent build record of each service."""
    latest: dict[str, BuildRecord] = {}
    for record in records:
        seen = latest.get(record.service)
        if seen is None or record.finished_at > seen.finished_at:
            latest[record.service] = record
    return latest


def _image_label(img: ImageFact) -> str:
    return f"{img.id.removeprefix('sha256:')[:12]}"


def _storage(host: str, baseline: Baseline | None, snapshot: HostSnapshot, policy: Policy) -> CriterionResult:
    pct = policy.criteria.storage_reduction_pct
    title = CRITERIA["storage_reduction"].format(pct=pct)
    threshold = f"> {pct:g}%"
    now_images, now_cache = image_bytes(snapshot), build_cache_bytes(snapshot)
    now = now_images + now_cache
    base = (baseline.images_bytes + baseline.build_cache_bytes) if baseline else 0
    detail = {
        "current_bytes": now,
        "current_images_bytes": now_images,
        "current_build_cache_bytes": now_cache,
    }
    if baseline is None:
        return CriterionResult(
            id="storage_reduction",
            title=title,
            host=host,
            status=Status.not_verified,
            measured=f"no baseline ({human_size(now)} now)",
            threshold=threshold,
            limit=pct,
            causes=["no baseline recorded for this host: run 'acgs-remediate analyze' before cleaning up"],
            details=[detail],
        )
    detail |= {"baseline_bytes": base, "baseline_recorded_at": baseline.recorded_at.isoformat()}
    if base <= 0:
        return CriterionResult(
            id="storage_reduction",
            title=title,
            host=host,
            status=Status.not_verified,
            measured=f"baseline is empty ({human_size(now)} now)",
            threshold=threshold,
            limit=pct,
            causes=["the recorded baseline holds 0 bytes: there is nothing to measure a reduction against"],
            details=[detail],
        )
    reduction = (base - now) / base * 100.0
    measured = f"{reduction:.1f}% ({human_size(now)} of {human_size(base)} left)"
    # "More than 90 %": exactly 90.0 is not enough, as the report's wording says.
    if reduction > pct:
        return CriterionResult(
            id="storage_reduction",
            title=title,
            host=host,
            status=Status.passed,
            measured=measured,
            threshold=threshold,
            value=round(reduction, 3),
            limit=pct,
            details=[detail],
        )
    allowed = base * (100.0 - pct) / 100.0
    cause = (
        f"{human_size(now)} in use (images {human_size(now_images)}, build cache {human_size(now_cache)}); "
        f"must be below {human_size(allowed)} ({100 - pct:g}% of the {human_size(base)} baseline), "
        f"{human_size(now - allowed)} too much"
    )
    return CriterionResult(
        id="storage_reduction",
        title=title,
        host=host,
        status=Status.failed,
        measured=measured,
        threshold=threshold,
        value=round(reduction, 3),
        limit=pct,
        causes=[cause],
        details=[detail],
    )


def _no_services(criterion: str, title: str, host: str, threshold: str, limit: float | None = None) -> CriterionResult:
    """Return the "not verified" result of a per-service criterion when no service is configured."""
    return CriterionResult(
        id=criterion,
        title=title,
        host=host,
        status=Status.not_verified,
        measured="no services",
        threshold=threshold,
        limit=limit,
        causes=["the policy configures no services (acgs_policy.services)"],
    )


def _services_build(host: str, policy: Policy, latest: Mapping[str, BuildRecord]) -> CriterionResult:
    title = CRITERIA["services_build"]
    total = len(policy.services)
    threshold = f"{total}/{total} built"
    if not total:
        return _no_services("services_build", title, host, threshold)
    statuses, causes, details = [], [], []
    unverified: dict[str, list[str]] = {}
    built = 0
    for svc in policy.services:
        record = latest.get(svc.name)
        if record is None:
            statuses.append(Status.not_verified)
            unverified.setdefault("no build recorded (phase2 records builds) for", []).append(svc.name)
            details.append({"service": svc.name, "status": Status.not_verified.value})
            continue
        details.append(
            {
                "service": svc.name,
                "ok": record.ok,
                "image": record.image,
                "finished_at": record.finished_at.isoformat(),
                "error": record.error,
            }
        )
        if record.ok:
            built += 1
            statuses.append(Status.passed)
        else:
            statuses.append(Status.failed)
            causes.append(f"{svc.name}: build failed — {record.error or 'no error message recorded'}")
        details[-1]["status"] = statuses[-1].value
    status = _worst(statuses)
    return CriterionResult(
        id="services_build",
        title=title,
        host=host,
        status=status,
        measured=f"{built}/{total} built",
        threshold=threshold,
        value=built,
        limit=total,
        causes=_causes(causes, unverified),
        details=details,
    )


def _causes(failures: list[str], unverified: Mapping[str, list[str]]) -> list[str]:
    """Return failures first (what to fix), then one line per reason something could not be verified."""
    return failures + [f"not verified: {reason} {', '.join(names)}" for reason, names in unverified.items()]


def _size_cap(host: str, snapshot: HostSnapshot, policy: Policy) -> CriterionResult:
    title = CRITERIA["image_size_cap"]
    caps = {policy.service_budget(s) for s in policy.services}
    threshold = f"< {human_size(next(iter(caps)))}" if len(caps) == 1 else "< per-service budget"
    if not policy.services:
        return _no_services("image_size_cap", title, host, threshold)
    statuses, causes, details = [], [], []
    unverified: dict[str, list[str]] = {}
    largest: int | None = None
    for svc in policy.services:
        cap = policy.service_budget(svc)
        img = snapshot.image(svc.image)
        if img is None:
            statuses.append(Status.not_verified)
            unverified.setdefault("service image not on the host:", []).append(f"{svc.name} ({svc.image})")
            details.append(
                {"service": svc.name, "image": svc.image, "cap": cap, "status": Status.not_verified.value}
            )
            continue
        largest = img.size if largest is None else max(largest, img.size)
        # "Service images <300MB": the cap itself is already too big.
        st = Status.passed if img.size < cap else Status.failed
        statuses.append(st)
        if st is Status.failed:
            causes.append(
                f"{svc.name}: {svc.image} is {human_size(img.size)}, {human_size(img.size - cap)} over "
                f"the {human_size(cap)} cap ({img.size / cap:.1f}x)"
            )
        details.append(
            {
                "service": svc.name,
                "image": svc.image,
                "image_id": img.id,
                "size": img.size,
                "cap": cap,
                "status": st.value,
            }
        )
    status = _worst(statuses)
    over = sum(1 for s in statuses if s is Status.failed)
    measured = f"largest {human_size(largest)}" + (f", {over} over" if over else "")
    return CriterionResult(
        id="image_size_cap",
        title=title,
        host=host,
        status=status,
        measured=measured,
        threshold=threshold,
        value=largest,
        limit=next(iter(caps)) if len(caps) == 1 else None,
        causes=_causes(causes, unverified),
        details=details,
    )


def _dangling(host: str, snapshot: HostSnapshot, policy: Policy) -> CriterionResult:
    limit = policy.criteria.max_dangling
    title = CRITERIA["zero_dangling"].format(max_dangling=limit)
    if limit == 0:
        title = "Zero dangling images"
    dangling = sorted(analysis.dangling_images(snapshot), key=lambda i: (-i.size, i.id))
    details = []
    causes = []
    for img in dangling:
        users = snapshot.containers_using(img.id)
        details.append(
            {
                "image_id": img.id,
                "size": img.size,
                "created": img.created.isoformat(),
                "containers": [c.name for c in users],
            }
        )
        why = f" — kept by container {', '.join(c.name for c in users)}" if users else ""
        causes.append(
            f"dangling {_image_label(img)} ({human_size(img.size)}, "
            f"created {img.created:%Y-%m-%d %H:%M}){why}"
        )
    status = Status.passed if len(dangling) <= limit else Status.failed
    total = sum(i.size for i in dangling)
    measured = f"{len(dangling)}" + (f" ({human_size(total)})" if dangling else "")
    return CriterionResult(
        id="zero_dangling",
        title=title,
        host=host,
        status=status,
        measured=measured,
        threshold=f"<= {limit}",
        value=len(dangling),
        limit=limit,
        causes=causes if status is not Status.passed else [],
        details=details,
    )


def _build_time(host: str, policy: Policy, latest: Mapping[str, BuildRecord]) -> CriterionResult:
    limit = policy.criteria.build_time_max
    title = CRITERIA["build_time"].format(limit=human_duration(limit))
    threshold = f"< {human_duration(limit)}"
    if not policy.services:
        return _no_services("build_time", title, host, threshold, limit=limit)
    statuses, causes, details = [], [], []
    unverified: dict[str, list[str]] = {}
    slowest: float | None = None
    for svc in policy.services:
        record = latest.get(svc.name)
        if record is None or not record.ok:
            # A failed build proves nothing about how long a good one takes.
            statuses.append(Status.not_verified)
            why = "no build recorded for" if record is None else "latest build failed for"
            unverified.setdefault(why, []).append(svc.name)
            details.append(
                {
                    "service": svc.name,
                    "status": Status.not_verified.value,
                    "seconds": record.seconds if record else None,
                }
            )
            continue
        slowest = record.seconds if slowest is None else max(slowest, record.seconds)
        st = Status.passed if record.seconds < limit else Status.failed
        statuses.append(st)
        if st is Status.failed:
            causes.append(
                f"{svc.name}: build took {human_duration(record.seconds)}, "
                f"{human_duration(record.seconds - limit)} over the {human_duration(limit)} limit"
            )
        details.append({"service": svc.name, "seconds": record.seconds, "status": st.value})
    status = _worst(statuses)
    return CriterionResult(
        id="build_time",
        title=title,
        host=host,
        status=status,
        measured=f"slowest {human_duration(slowest)}" if slowest is not None else "no successful build",
        threshold=threshold,
        value=slowest,
        limit=limit,
        causes=_causes(causes, unverified),
        details=details,
    )


def evaluate(
    host: str,
    baseline: Baseline | None,
    snapshot: HostSnapshot,
    build_records: Sequence[BuildRecord],
    policy: Policy,
) -> list[CriterionResult]:
    """Return the five criteria's verdicts for one host, in the report's order."""
    latest = latest_records(r for r in build_records if r.host in (host, ""))
    return [
        _storage(host, baseline, snapshot, policy),
        _services_build(host, policy, latest),
        _size_cap(host, snapshot, policy),
        _dangling(host, snapshot, policy),
        _build_time(host, policy, latest),
    ]


def unreachable_results(host: Unreachable, policy: Policy | None = None) -> list[CriterionResult]:
    """Return not-verified verdicts for every criterion of a host whose engine could not be read."""
    policy = policy or Policy()
    titles = _titles(policy)
    return [
        CriterionResult(
            id=cid,
            title=titles[cid],
            host=host.host,
            status=Status.not_verified,
            measured=_UNREACHABLE,
            threshold="-",
            causes=[f"engine unreachable: {host.reason}"],
        )
        for cid in CRITERIA
    ]


def _titles(policy: Policy) -> dict[str, str]:
    titles = {
        cid: text.format(
            pct=policy.criteria.storage_reduction_pct,
            max_dangling=policy.criteria.max_dangling,
            limit=human_duration(policy.criteria.build_time_max),
        )
        for cid, text in CRITERIA.items()
    }
    if policy.criteria.max_dangling == 0:
        titles["zero_dangling"] = "Zero dangling images"
    return titles


def rollup(per_host: Mapping[str, Sequence[CriterionResult]]) -> list[CriterionResult]:
    """Return one fleet-wide verdict per criterion: the worst host verdict, one cause line per host."""
    fleet: list[CriterionResult] = []
    for cid in CRITERIA:
        results = [r for rs in per_host.values() for r in rs if r.id == cid]
        if not results:
            continue
        status = _worst(r.status for r in results)
        counts = {s: sum(1 for r in results if r.status is s) for s in Status}
        measured = f"{counts[Status.passed]}/{len(results)} hosts pass"
        extra = [f"{counts[Status.failed]} fail"] if counts[Status.failed] else []
        extra += [f"{counts[Status.not_verified]} not verified"] if counts[Status.not_verified] else []
        if extra:
            measured += " (" + ", ".join(extra) + ")"
        # One line per host that does not pass (its first cause); the host's own result lists them all.
        causes = [_fleet_cause(r) for r in results if r.status is not Status.passed and r.causes]
        fleet.append(
            CriterionResult(
                id=cid,
                title=results[0].title,
                host="fleet",
                status=status,
                measured=measured,
                threshold=f"all {len(results)} hosts",
                value=counts[Status.passed],
                limit=len(results),
                causes=causes,
                details=[{"host": r.host, "status": r.status.value} for r in results],
            )
        )
    return fleet


def _fleet_cause(r: CriterionResult) -> str:
    if r.measured == _UNREACHABLE:
        return f"{r.host}: engine unreachable"
    more = f" (+{len(r.causes) - 1} more)" if len(r.causes) > 1 else ""
    return f"{r.host}: {r.causes[0]}{more}"


def overall(results: Iterable[CriterionResult]) -> Status:
    """Return the gate's verdict over any number of results."""
    return _worst(r.status for r in results)


__all__ = [
    "CRITERIA",
    "CriterionResult",
    "Status",
    "build_cache_bytes",
    "evaluate",
    "image_bytes",
    "latest_records",
    "overall",
    "rollup",
    "unreachable_results",
]
