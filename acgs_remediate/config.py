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
    if not reference.is_valid_registry(value):
        raise ValueError(
            f"{value!r} is not a valid registry name: write it as host[:port][/namespace] with a lowercase "
            "namespace, like 127.0.0.55:5000/acgs"
        )
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
    # Phase 2. A hand-written optimized Dockerfile (relative to the context): built and gated as is,
    # instead of the one phase 2 generates from ``dockerfile``.
    optimized_dockerfile: str | None = None
    # The final stage's base for this service, when it differs from build.runtime_base (e.g. a service
    # that needs the full standard library where the others run on a trimmed runtime).
    runtime_base: ImageRef | None = None
    port: int | None = Field(None, ge=1, le=65535)  # where the service answers its health endpoint
    # The health endpoint the image's HEALTHCHECK asks, ${VAR} expanded in the container at check time;
    # default http://127.0.0.1:<port>/health.
    health_url: str | None = None
    # Environment the service runs with (what its compose file sets); the smoke test starts the image with
    # it. "{address}" and "{port}" are replaced by the smoke test's 127.x address and the service's port.
    env: dict[str, str] = Field(default_factory=dict)
    # Directories the service writes to at run time: created in the image, owned by build.user.
    writable_paths: list[str] = Field(default_factory=list)

    def health_url_template(self) -> str | None:
        """Return the health URL the image's HEALTHCHECK asks, or None when the service has no port or URL."""
        if self.health_url:
            return self.health_url
        return f"http://127.0.0.1:{self.port}/health" if self.port else None


class HealthcheckPolicy(_Strict):
    """The HEALTHCHECK timing written into generated Dockerfiles (seconds)."""

    interval: Seconds = 30.0
    timeout: Seconds = 5.0
    start_period: Seconds = 10.0
    retries: int = Field(3, ge=1)


class BuildPolicy(_Strict):
    """How phase 2 builds optimized images (bases, wheelhouse, user, health check, dev-file rules) and where
    (the builder host, once per distinct source; build args)."""

    builder_base: ImageRef = "python:3.11-slim"  # where dependencies are installed (needs pip)
    runtime_base: ImageRef = "python:3.11-slim"  # the small final stage
    pip: str = "pip"  # the pip command in the builder base
    # An image holding a wheelhouse (pip download): builds install with --no-index --find-links from
    # these directories of it. None: pip reaches the index.
    wheelhouse_image: ImageRef | None = None
    wheelhouse_dirs: list[str] = Field(default_factory=lambda: ["/wheels"])
    user: str = "10001:10001"  # the non-root user the final image runs as
    healthcheck: HealthcheckPolicy = Field(default_factory=HealthcheckPolicy)
    # A file of the context at least this big that the service's code never names is left out of it.
    big_file: Bytes = 1_000_000
    # The inventory host whose engine builds every service (once per distinct source); None: the first host.
    builder: str | None = None
    # Build arguments given to every service's build (``--build-arg``); part of the source hash.
    args: dict[str, str] = Field(default_factory=dict)


class Criteria(_Strict):
    """Thresholds of the report's five success criteria."""

    storage_reduction_pct: float = Field(90.0, gt=0, le=100)
    max_dangling: int = Field(0, ge=0)
    build_time_max: Seconds = 300.0


class HealthcheckSpec(_Strict):
    """A compose healthcheck (what ``healthcheck:`` of a compose service holds); durations in seconds."""

    test: list[str] | str
    interval: Seconds = 30.0
    timeout: Seconds = 30.0
    start_period: Seconds = 0.0
    retries: int = Field(3, ge=1)

    def window(self) -> float:
        """Return start_period + interval x retries (seconds): the shortest soak that sees a bad image fail."""
        return self.start_period + self.interval * self.retries


class DeployPolicy(_Strict):
    """Phase 3's rollout: where the compose stack is, canary and batches, soak, what a failure does.

    ``batch_size``: a host count (``2``) or a share of the fleet (``"25%"``, at least one host).
    ``soak``: the least time (seconds) every service must stay healthy; the rollout always soaks at least
    start_period + interval x retries of the slowest healthcheck (swarm's monitor-window pitfall).
    ``failure_policy``: ``rollback_fleet`` (every host switched in the run goes back: the fleet never stays
    on mixed versions), ``rollback_host`` (only the failed host), ``pause`` (the failed host goes back, the
    rollout stops, the others stay switched).
    """

    compose_file: str = "infrastructure/docker/docker-compose.yml"  # relative to sources_root unless absolute
    project: str | None = None  # compose project name; default: the file's ``name:``, else its directory
    canary: int = Field(1, ge=0)
    batch_size: int | str = "25%"
    soak: Seconds = 0.0
    timeout: Seconds = 120.0  # a host's services must be healthy within this (seconds), else it fails
    failure_policy: Literal["rollback_fleet", "rollback_host", "pause"] = "rollback_fleet"
    healthchecks: dict[str, HealthcheckSpec] = Field(default_factory=dict)  # compose service -> its check
    one_shot: list[str] | None = None  # compose services that must exit 0; default: those with restart "no"
    env: dict[str, str] = Field(default_factory=dict)  # variables the compose file is interpolated with
    # Compose service -> a URL the control node can reach that answers 200 while the service is up (its health
    # endpoint), ${VAR} expanded from the host's deploy environment (``env``, then the host var
    # ``acgs_deploy_env``). Polled during the switch and any rollback: seconds of unavailability per service.
    probes: dict[str, str] = Field(default_factory=dict)

    @model_validator(mode="after")
    def _batch(self) -> DeployPolicy:
        self.batch_count(1)  # raises on a bad value
        return self

    def batch_count(self, hosts: int) -> int:
        """Return how many hosts one batch takes out of ``hosts`` (at least 1)."""
        value = self.batch_size
        if isinstance(value, str):
            text = value.strip()
            try:
                if text.endswith("%"):
                    pct = float(text[:-1])
                    if not 0 < pct <= 100:
                        raise ValueError
                    return max(1, int(hosts * pct / 100))
                value = int(text)
            except ValueError:
                raise ValueError(f"batch_size must be a host count or a percentage like '25%', not {text!r}") from None
        if value < 1:
            raise ValueError("batch_size must be at least 1 host")
        return value


def parse_watermark(value: Any) -> str:
    """Return a watermark written "85%" (of the data root's filesystem) or "20GB" (engine bytes), normalised.

    Normalised forms: ``"85%"`` or a byte count such as ``"20000000000"``. Raises ValueError when unreadable.
    """
    if isinstance(value, bool) or value is None:
        raise ValueError(f"{value!r} is not a watermark; write it like 85% or 20GB")
    text = str(value).strip()
    if text.endswith("%"):
        try:
            pct = float(text[:-1])
        except ValueError:
            raise ValueError(f"{value!r} is not a percentage; write it like 85%") from None
        if not 0 < pct <= 100:
            raise ValueError(f"{value!r} must be above 0% and at most 100%")
        return f"{pct:g}%"
    return str(parse_size(text if isinstance(value, str) else value))


Watermark = Annotated[str, BeforeValidator(parse_watermark)]


def watermark_is_percent(value: str) -> bool:
    """Return True for a watermark of the filesystem ("85%"), False for one in engine bytes."""
    return value.endswith("%")


def watermark_bytes(value: str, capacity: int | None) -> int | None:
    """Return the watermark in bytes: a percentage of ``capacity`` (None when unknown), or its byte count."""
    if watermark_is_percent(value):
        return None if capacity is None else int(capacity * float(value[:-1]) / 100)
    return int(value)


class Hygiene(_Strict):
    """The scheduled hygiene run: watermarks, per-category budgets and ages (kubelet image GC's model).

    Above ``high_watermark`` the run evicts unused images, least recently used first, down to
    ``low_watermark``. "85%" is a share of the filesystem holding the engine's data root (measured with
    statfs where the engine is local); "20GB" counts the engine's own accounting (image layers once each
    + build cache). Both watermarks must use the same kind. Dangling images past their age and build cache
    above its budget go on every run, whatever the watermark says.
    """

    high_watermark: Watermark = "85%"
    low_watermark: Watermark = "80%"
    # Nothing that arrived on the engine (pull, load, build) more recently than this is a candidate.
    fresh_min_age: Seconds = 3600.0
    # Dangling images go once they have been on the engine this long (a build may still need them).
    dangling_min_age: Seconds = 3600.0
    # Unused images go (under watermark pressure) only when last used longer ago than this.
    unused_min_age: Seconds = 86400.0
    # Build cache above this is pruned, least recently used first; None: the policy's build_cache_budget.
    build_cache_budget: Bytes | None = None
    # The engine event stream is read since the previous run, but never further back than this.
    events_lookback: Seconds = 7 * 86400.0

    @model_validator(mode="after")
    def _consistent(self) -> Hygiene:
        if watermark_is_percent(self.high_watermark) != watermark_is_percent(self.low_watermark):
            raise ValueError("high_watermark and low_watermark must both be percentages or both be sizes")
        high = float(self.high_watermark.rstrip("%"))
        low = float(self.low_watermark.rstrip("%"))
        if low >= high:
            raise ValueError(
                f"low_watermark ({self.low_watermark}) must be below high_watermark ({self.high_watermark})"
            )
        if self.fresh_min_age < 120:
            raise ValueError("fresh_min_age must be at least 2m: a fresh pull or build must survive until used")
        return self


class Policy(_Strict):
    """Everything that decides what is oversized, what may go and what must stay."""

    scale: float = Field(1.0, gt=0, description="sandbox scale factor; 1.0 on a real fleet")
    size_cap: Bytes = 300_000_000
    oversized_images: list[OversizedImage] = Field(default_factory=list)
    protected_patterns: list[ImagePattern] = Field(default_factory=list)
    rollback_keep: int = Field(2, ge=0)
    dangling_min_age: Seconds = 3600.0
    # Images that ARRIVED on the engine (built, pulled, loaded) more recently than this are never candidates;
    # the age counts from arrival (ImageFact.arrived_at), never from Created; an unknown arrival counts as fresh.
    fresh_min_age: Seconds = 3600.0
    build_cache_budget: Bytes = 5_000_000_000
    services: list[ServicePolicy] = Field(default_factory=list)
    sources_root: str = "."
    wheelhouse: str | None = None
    build: BuildPolicy = Field(default_factory=BuildPolicy)
    criteria: Criteria = Field(default_factory=Criteria)
    deploy: DeployPolicy = Field(default_factory=DeployPolicy)


    hygiene: Hygiene = Field(default_factory=Hygiene)
    # Where phase 2 pushes built images for the other hosts to pull ("host:port/namespace"); None ships
    # them engine to engine (export from the builder, load into each host).
    registry: RegistryName | None = None

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

    def compose_path(self, base: Path | None = None) -> Path:
        """Return the absolute path of the compose file phase 3 deploys (sources_root is relative to ``base``)."""
        root = Path(self.sources_root)
        if not root.is_absolute() and base is not None:
            root = base / root
        path = Path(self.deploy.compose_file)
        return path if path.is_absolute() else root / path

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
