"""The remediation policy: the seed report's budgets and lists, validated.

The policy lives in inventory group_vars as ``acgs_policy`` so that standalone playbooks
(ansible-playbook, AWX) and the CLI read the very same values.
"""

from __future__ import annotations

import fnmatch
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, BaseModel, BeforeValidator, ConfigDict, Field, ValidationError, model_validator

from . import reference
from .errors import UsageError
from .units import parse_duration, parse_size

POLICY_VAR = "acgs_policy"

Bytes = Annotated[int, BeforeValidator(parse_size)]
Seconds = Annotated[float, BeforeValidator(parse_duration)]
Priority = Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]
_REFERENCE_HINT = (
    "write image references as Docker does: [registry[:port]/]name[:tag][@digest] with a lowercase name, "
    "like nvcr.io/nvidia/tritonserver:24.10-py3; patterns may add * ? [...]"
)


def _image_reference(value: str) -> str:
    reason = reference.describe(value)
    if reason:
        raise ValueError(f"{value!r} is not a valid image reference: {reason}")
    return value


def _image_pattern(value: str) -> str:
    reason = reference.describe_pattern(value)
    if reason:
        raise ValueError(f"{value!r} is not a valid image pattern: {reason}")
    return value


def _registry_name(value: str) -> str:
    if not reference.is_valid_domain(value):
        raise ValueError(f"{value!r} is not a valid registry name: write it as host[:port], like registry.local:5000")
    return value


# Every image reference, pattern or registry name a user writes in the policy is one of these, so that a typo
# is exit 2 at load time, never a run that quietly skips the image (reference.py: Docker's grammar).
ImageRef = Annotated[str, AfterValidator(_image_reference)]
ImagePattern = Annotated[str, AfterValidator(_image_pattern)]  # fnmatch over references
RegistryName = Annotated[str, AfterValidator(_registry_name)]


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class OversizedImage(_Strict):
    """An image the report names as oversized: removed in phase 1 when nothing uses it."""

    ref: ImageRef
    priority: Priority = "HIGH"
    reason: str = ""


class ServicePolicy(_Strict):
    """One of the fleet's own services: where it is built from and what it may weigh."""

    name: str
    image: ImageRef  # repository:tag the service runs
    context: str  # build context, relative to policy.sources_root unless absolute
    dockerfile: str = "Dockerfile"
    expected_size: Bytes | None = None  # the report's "Expected Size" column
    budget: Bytes | None = None  # per-service cap; defaults to policy.size_cap
    compose_service: str | None = None  # name in the compose file, when it differs from name


class Criteria(_Strict):
    """Thresholds of the report's five success criteria."""

    storage_reduction_pct: float = Field(90.0, gt=0, le=100)
    max_dangling: int = Field(0, ge=0)
    build_time_max: Seconds = 300.0


class Policy(_Strict):
    """Everything that decides what is oversized, what may go and what must stay."""

    scale: float = Field(1.0, gt=0, description="sandbox scale factor; 1.0 on a real fleet")
    size_cap: Bytes = 300_000_000
    oversized_images: list[OversizedImage] = Field(default_factory=list)
    protected_patterns: list[ImagePattern] = Field(default_factory=list)
    rollback_keep: int = Field(2, ge=0)
    dangling_min_age: Seconds = 3600.0
    # Images created (built or pulled) more recently than this are never candidates.
    fresh_min_age: Seconds = 3600.0
    build_cache_budget: Bytes = 5_000_000_000
    services: list[ServicePolicy] = Field(default_factory=list)
    sources_root: str = "."
    wheelhouse: str | None = None
    criteria: Criteria = Field(default_factory=Criteria)

    @model_validator(mode="after")
    def _unique_services(self) -> Policy:
        names = [s.name for s in self.services]
        dupes = sorted({n for n in names if names.count(n) > 1})
        if dupes:
            raise ValueError(f"service names must be unique; repeated: {', '.join(dupes)}")
        return self

    def is_protected(self, ref: str) -> str | None:
        """Return the protected pattern that ``ref`` (a tag or ID) matches, or None."""
        for pattern in self.protected_patterns:
            if fnmatch.fnmatchcase(ref, pattern):
                return pattern
        return None

    def service_budget(self, service: ServicePolicy) -> int:
        """Return the size budget in bytes of ``service``."""
        return service.budget if service.budget is not None else self.size_cap

    def service_context(self, service: ServicePolicy, base: Path | None = None) -> Path:
        """Return the absolute build context of ``service`` (sources_root is relative to ``base``)."""
        root = Path(self.sources_root)
        if not root.is_absolute() and base is not None:
            root = base / root
        ctx = Path(service.context)
        return ctx if ctx.is_absolute() else root / ctx


def describe_validation_error(err: ValidationError, source: str) -> str:
    """Return a one-line, human description of the first problems in ``err``."""
    parts = []
    for item in err.errors()[:3]:
        key = ".".join(str(p) for p in item["loc"]) or POLICY_VAR
        msg = item["msg"].removeprefix("Value error, ")
        parts.append(f"{POLICY_VAR}.{key}: {msg}")
    more = f" (+{len(err.errors()) - 3} more)" if len(err.errors()) > 3 else ""
    return f"invalid policy in {source}: " + "; ".join(parts) + more


def parse_policy(raw: Any, source: str) -> Policy:
    """Return the validated policy from ``raw`` (the ``acgs_policy`` value); errors name ``source``."""
    if raw is None:
        raw = {}
    if not isinstance(raw, dict):
        raise UsageError(
            f"invalid policy in {source}: {POLICY_VAR} must be a mapping, not {type(raw).__name__}",
            hint="see inventory/prod/group_vars/all.yml for the expected layout",
        )
    try:
        return Policy.model_validate(raw)
    except ValidationError as err:
        message = describe_validation_error(err, source)
        hint = "fix the value in that file; sizes are written like 300MB, durations like 2h"
        if any(x in message for x in ("valid image reference", "valid image pattern", "valid registry name")):
            hint = "fix the value in that file; " + _REFERENCE_HINT
        raise UsageError(message, hint=hint) from None
