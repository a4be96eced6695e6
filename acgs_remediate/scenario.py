"""Sandbox scenarios: the seed report's fleet rebuilt on real, local Docker engines.

A scenario directory (``scenarios/<name>/``) holds ``scenario.yml`` (the report's numbers, the
scale factor, per-host variants and expectations), ``sources/`` (the services' source trees with
the report's defects) and ``history/`` (files as they were at the last successful build).

- ``load_scenario`` reads and validates it; ``policy_vars`` turns it into the ``acgs_policy`` of a
  sandbox inventory (every size scaled by ``scenario.scale``).
- ``prepare_sources`` writes the pristine working copy a remediation run may repair.
- ``seed_engine`` builds the whole scenario into one empty engine (the golden engine);
  ``apply_variant`` makes the small differences between hosts after the golden data-root is copied.
"""

from __future__ import annotations

import hashlib
import shutil
from collections.abc import Callable
from pathlib import Path
from typing import Any, Literal

import yaml
from pydantic import BaseModel, ConfigDict, Field, ValidationError

from .config import Policy
from .errors import UsageError
from .resources import scenarios_dir
from .units import parse_size

Log = Callable[[str], None]

# Marks a directory written by prepare_sources: only such a directory is ever wiped and rewritten.
SOURCES_MARKER = ".acgs-scenario-sources"
# Default cache of slow-to-make artefacts (wheelhouse, python rootfs), shared by all runs.
DEFAULT_CACHE = Path("/var/cache/acgs-remediate")


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class ReportImage(_Strict):
    """One row of the report's oversized-images table (unscaled)."""

    ref: str
    size: str
    priority: Literal["CRITICAL", "HIGH", "MEDIUM", "LOW"]
    reason: str


class DanglingBucket(_Strict):
    """One line of the report's dangling breakdown: ``count`` images of ``size`` each (unscaled)."""

    size: str
    count: int = Field(ge=1)


class DanglingReport(_Strict):
    """The report's dangling-images section (unscaled)."""

    count: int
    wasted: str
    first: str
    last: str
    breakdown: list[DanglingBucket]


class ReportCriteria(_Strict):
    """The report's success criteria thresholds (not sizes: never scaled)."""

    storage_reduction_pct: float
    max_dangling: int
    build_time_max: str


class Report(_Strict):
    """The numbers of the seed report, as the report states them."""

    oversized: list[ReportImage]
    dangling: DanglingReport
    size_cap: str
    build_cache_budget: str
    criteria: ReportCriteria


class ServiceSpec(_Strict):
    """One ACGS-1 service: report sizes, where it is built from, how it is deployed on host 0."""

    name: str
    image: str
    size: str
    expected_size: str
    context: str
    dockerfile: str
    compose_service: str
    port: int | None = None
    missing_file: str | None = None
    missing_file_template: str | None = None
    deployed: bool | Literal["stopped"]


class DatabaseSpec(_Strict):
    """The compose stack's database: a locally built image and its named volume."""

    image: str
    container: str
    volume: str
    port: int


class ExtraContainer(_Strict):
    """A container a variant adds (it protects the image it uses)."""

    name: str
    image: str
    running: bool


class Variant(_Strict):
    """The small differences of one kind of host."""

    name: str
    description: str
    remove_images: list[str] = Field(default_factory=list)
    prune_dangling: int = 0
    run_images: list[ExtraContainer] = Field(default_factory=list)


class Expectation(_Strict):
    """What a freshly seeded host of one variant holds, and what phase 1 can achieve there."""

    oversized_present: list[str]
    oversized_removable: list[str]
    dangling: int
    dangling_in_use: int
    running: list[str]
    stopped: list[str]
    storage_criterion_after_phase1: bool


class JunkFile(_Strict):
    """A file that makes a build context big (written by prepare_sources)."""

    path: str
    size: str


class Scenario(_Strict):
    """A validated scenario; ``directory`` is where its file lives."""

    name: str
    description: str
    scale: float = Field(gt=0, le=1)
    report: Report
    services: list[ServiceSpec]
    database: DatabaseSpec
    protected_patterns: list[str]
    rollback_keep: int = Field(ge=0)
    dangling_min_age: str
    fresh_min_age: str
    variants: list[Variant]
    expectations: dict[str, Expectation]
    context_junk: list[JunkFile] = Field(default_factory=list)
    directory: Path = Field(default=Path("."), exclude=True)

    def scaled(self, report_size: str | int) -> int:
        """Return ``report_size`` (e.g. "70.7GB") x scale, in bytes."""
        return round(parse_size(report_size) * self.scale)

    @property
    def sources_dir(self) -> Path:
        """Return the pristine source trees shipped with the scenario."""
        return self.directory / "sources"

    @property
    def history_dir(self) -> Path:
        """Return the files as they were at the last successful builds."""
        return self.directory / "history"

    def service(self, name: str) -> ServiceSpec:
        """Return the service called ``name``."""
        for svc in self.services:
            if svc.name == name:
                return svc
        raise KeyError(name)

    def variant_name(self, index: int) -> str:
        """Return the variant of host ``index`` ("golden" for index 0)."""
        if index == 0 or not self.variants:
            return "golden"
        return self.variants[(index - 1) % len(self.variants)].name

    def variant(self, index: int) -> Variant | None:
        """Return the Variant of host ``index``, or None for the golden host."""
        name = self.variant_name(index)
        return next((v for v in self.variants if v.name == name), None)

    def expectation(self, index: int) -> Expectation:
        """Return what a freshly seeded host ``index`` holds."""
        return self.expectations[self.variant_name(index)]

    def bind_address(self, index: int) -> str:
        """Return the 127.0.x.y address the services of host ``index`` listen on (host network)."""
        # One address per host: every engine shares this machine's network namespace.
        return f"127.0.{100 + index // 250}.{1 + index % 250}"

    def health_url(self, service: str, index: int) -> str:
        """Return the health URL of ``service`` on host ``index``."""
        port = self.service(service).port
        if port is None:
            raise KeyError(f"{service} has no port")
        return f"http://{self.bind_address(index)}:{port}/health"

    def content_hash(self) -> str:
        """Return a digest of everything that shapes the seeded engine (the golden cache key)."""
        digest = hashlib.sha256()
        files = [p for p in sorted(self.directory.rglob("*")) if p.is_file() and "__pycache__" not in p.parts]
        for path in files:
            digest.update(str(path.relative_to(self.directory)).encode() + b"\0")
            digest.update(path.read_bytes())
        # The seeding code itself, and the host Python copied into the base images.
        digest.update(Path(__file__).read_bytes())
        for binary in (Path(PYTHON_BIN),):
            if binary.exists():
                st = binary.stat()
                digest.update(f"{binary}:{st.st_size}:{int(st.st_mtime)}".encode())
        return digest.hexdigest()[:16]


PYTHON_BIN = "/usr/bin/python3.11"


def load_scenario(name_or_path: str) -> Scenario:
    """Return the scenario named ``name_or_path`` (shipped) or read from that file or directory."""
    candidate = Path(name_or_path)
    if candidate.is_dir():
        candidate = candidate / "scenario.yml"
    if not candidate.is_file():
        shipped = scenarios_dir() / name_or_path / "scenario.yml"
        if "/" in name_or_path or not shipped.is_file():
            known = sorted(p.name for p in scenarios_dir().glob("*") if (p / "scenario.yml").is_file())
            raise UsageError(
                f"unknown scenario {name_or_path!r}",
                hint=f"use one of: {', '.join(known) or '(none shipped)'}, or a path to a scenario.yml",
            )
        candidate = shipped
    try:
        raw = yaml.safe_load(candidate.read_text())
    except (OSError, yaml.YAMLError) as err:
        raise UsageError(f"cannot read scenario file {candidate}: {err}", hint="check the YAML syntax") from None
    if not isinstance(raw, dict):
        raise UsageError(f"invalid scenario file {candidate}: expected a mapping", hint="see scenarios/acgs-1/scenario.yml")
    try:
        scenario = Scenario.model_validate(raw)
    except ValidationError as err:
        first = err.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise UsageError(
            f"invalid scenario file {candidate}: {where}: {first['msg']}",
            hint="see scenarios/acgs-1/scenario.yml for the expected layout",
        ) from None
    scenario.directory = candidate.parent.resolve()
    missing = [v.name for v in scenario.variants if v.name not in scenario.expectations]
    if "golden" not in scenario.expectations or missing:
        raise UsageError(
            f"invalid scenario file {candidate}: expectations lack {', '.join(['golden', *missing])}",
            hint="give `expectations:` an entry for golden and for every variant",
        )
    return scenario


def policy_vars(scenario: Scenario, sources_root: Path, wheelhouse: Path | None) -> dict[str, Any]:
    """Return the ``acgs_policy`` mapping of a sandbox inventory: the report's policy, sizes scaled."""
    report = scenario.report
    policy: dict[str, Any] = {
        "scale": scenario.scale,
        "size_cap": scenario.scaled(report.size_cap),
        "oversized_images": [
            {"ref": img.ref, "priority": img.priority, "reason": img.reason} for img in report.oversized
        ],
        "protected_patterns": list(scenario.protected_patterns),
        "rollback_keep": scenario.rollback_keep,
        "dangling_min_age": scenario.dangling_min_age,
        "fresh_min_age": scenario.fresh_min_age,
        "build_cache_budget": scenario.scaled(report.build_cache_budget),
        "sources_root": str(sources_root),
        "wheelhouse": str(wheelhouse) if wheelhouse is not None else None,
        "services": [
            {
                "name": svc.name,
                "image": svc.image,
                "context": svc.context,
                "dockerfile": svc.dockerfile,
                "expected_size": scenario.scaled(svc.expected_size),
                "compose_service": svc.compose_service,
            }
            for svc in scenario.services
        ],
        "criteria": {
            "storage_reduction_pct": report.criteria.storage_reduction_pct,
            "max_dangling": report.criteria.max_dangling,
            "build_time_max": report.criteria.build_time_max,
        },
    }
    Policy.model_validate(policy)  # a scenario that yields an invalid policy is a bug here, not the user's
    return policy


def _junk_block() -> bytes:
    """Return 1 MiB of deterministic, incompressible-looking bytes (so contexts are not all zeros)."""
    seed = hashlib.sha256(b"acgs-1 context junk").digest()
    return (seed * (1024 * 1024 // len(seed) + 1))[: 1024 * 1024]


def prepare_sources(scenario: Scenario, dest: Path) -> None:
    """Write the pristine working copy of the services' sources (with the report's defects) to ``dest``."""
    dest = Path(dest)
    if dest.exists():
        if not dest.is_dir():
            raise UsageError(f"{dest} exists and is not a directory", hint="choose another sources directory")
        if any(dest.iterdir()) and not (dest / SOURCES_MARKER).exists():
            # Never wipe a directory we did not write: it may be someone's real checkout.
            raise UsageError(
                f"{dest} is not empty and was not written by prepare_sources",
                hint="point the sandbox at an empty directory",
            )
        shutil.rmtree(dest)
    shutil.copytree(scenario.sources_dir, dest, ignore=shutil.ignore_patterns("__pycache__"))
    block = _junk_block()
    for junk in scenario.context_junk:
        path = dest / junk.path
        path.parent.mkdir(parents=True, exist_ok=True)
        remaining = parse_size(junk.size)
        with path.open("wb") as fh:
            while remaining > 0:
                fh.write(block[: min(remaining, len(block))])
                remaining -= len(block)
    (dest / SOURCES_MARKER).write_text(f"{scenario.name} {scenario.content_hash()}\n")
