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
    # Phase 2 (policy services[]): a final-stage base other than build.runtime_base, run-time dirs.
    runtime_base: str | None = None
    writable_paths: list[str] = Field(default_factory=list)


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
    # After phase 1 and phase 2: success criterion id -> the verdict verify must give on such a host.
    criteria_after_phase2: dict[str, str] = Field(default_factory=dict)


class JunkFile(_Strict):
    """A file that makes a build context big (written by prepare_sources)."""

    path: str
    size: str


class Phase2Spec(_Strict):
    """How the sandbox's phase 2 builds: the policy's ``build`` block and the services' run-time contract."""

    build: dict[str, Any] = Field(default_factory=dict)  # acgs_policy.build, as written
    service_env: dict[str, str] = Field(default_factory=dict)  # services[].env of every service
    health_url: str | None = None  # services[].health_url of every service with a port


class Scenario(_Strict):
    """A validated scenario; ``directory`` is where its file lives."""

    name: str
    description: str
    scale: float = Field(gt=0, le=1)
    # Added to every service-image size (current, expected, cap) after scaling: the part of a service
    # image that does not scale (see scenario.yml).
    service_allowance: str = "0"
    phase2: Phase2Spec = Field(default_factory=Phase2Spec)
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

    def service_size(self, report_size: str | int) -> int:
        """Return a service-image size of the report (current, expected, cap) in the sandbox, in bytes.

        ``service_allowance + report_size x scale``: the interpreter and the installed packages of a
        service image are real bytes that do not scale; its bloat does (scenario.yml says why).
        """
        return parse_size(self.service_allowance) + self.scaled(report_size)

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
        """Return the 127.0.x.y address the services of host ``index`` (sb-h01 = 0) listen on."""
        return bind_for_hostname(f"sb-h{index + 1:02d}")

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


def bind_for_hostname(hostname: str) -> str:
    """Return the address services bind with ACGS_BIND=auto on an engine called ``hostname``.

    Every engine shares this machine's network namespace and the services use the host network,
    so each host gets its own 127.0.x.y: sb-hNN -> 127.0.(100 + (NN-1) // 250).(1 + (NN-1) % 250);
    any other name (the golden engine) -> 127.0.99.1. The services run with ``--uts=host``, so they
    see their engine's hostname and a copied container needs no change. Same rule as
    ``_bind()`` in the services' main.py.
    """
    import re

    match = re.search(r"(?:^|-)h(\d+)$", hostname)
    if not match or int(match.group(1)) < 1:
        return "127.0.99.1"
    n = int(match.group(1)) - 1
    return f"127.0.{100 + n // 250}.{1 + n % 250}"


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
        raise UsageError(
            f"cannot read scenario file {candidate}: {err}", hint="check the YAML syntax"
        ) from None
    if not isinstance(raw, dict):
        raise UsageError(
            f"invalid scenario file {candidate}: expected a mapping", hint="see scenarios/acgs-1/scenario.yml"
        )
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
        "size_cap": scenario.service_size(report.size_cap),
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
        "build": dict(scenario.phase2.build),
        "services": [_service_policy(scenario, svc) for svc in scenario.services],
        "criteria": {
            "storage_reduction_pct": report.criteria.storage_reduction_pct,
            "max_dangling": report.criteria.max_dangling,
            "build_time_max": report.criteria.build_time_max,
        },
    }
    Policy.model_validate(policy)  # a scenario that yields an invalid policy is a bug here, not the user's
    return policy


def _service_policy(scenario: Scenario, svc: ServiceSpec) -> dict[str, Any]:
    """Return the ``services[]`` entry of ``svc``: where it is built from, what it may weigh, how it runs."""
    entry: dict[str, Any] = {
        "name": svc.name,
        "image": svc.image,
        "context": svc.context,
        "dockerfile": svc.dockerfile,
        "expected_size": scenario.service_size(svc.expected_size),
        "compose_service": svc.compose_service,
    }
    if svc.port is not None:
        entry["port"] = svc.port
        if scenario.phase2.health_url:
            entry["health_url"] = scenario.phase2.health_url
    if scenario.phase2.service_env:
        entry["env"] = dict(scenario.phase2.service_env)
    if svc.runtime_base:
        entry["runtime_base"] = svc.runtime_base
    if svc.writable_paths:
        entry["writable_paths"] = list(svc.writable_paths)
    return entry


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


# =============================================================================================
# Seeding. Three ways bytes get into an engine, each where it fits:
# - `docker load` of image archives written here (the "pulled" third-party images, the local base
#   images, and the old builds that later became dangling): fast, and their config "created" is the
#   date the report implies, so age rules behave as on the real host;
# - classic `docker build` (DOCKER_BUILDKIT=0 behaviour via the Engine API, network none) of the
#   services' real Dockerfiles: the current service images and the multi-stage leftovers;
# - containers created and started through the Engine API.
# =============================================================================================

import datetime as _dt  # noqa: E402
import json  # noqa: E402
import os  # noqa: E402
import subprocess  # noqa: E402
import sys  # noqa: E402
import tarfile  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
import zipfile  # noqa: E402
from collections.abc import Iterable, Iterator  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402

_CHUNK = 1 << 20
_EPOCH = 1_700_000_000  # fixed file mtime in crafted layers: same content -> same diff ID on every run


@dataclass(frozen=True)
class _Entry:
    """One member of a layer: a directory, a symlink, or a file from bytes, a host file, or zeros."""

    path: str
    kind: Literal["dir", "file", "symlink"] = "file"
    data: bytes | None = None
    host_file: str | None = None
    zeros: int = 0
    target: str = ""
    mode: int = 0o644
    sparse: bool = True  # zeros written as a PAX sparse member (see _sparse_member); False: real NUL bytes

    @property
    def size(self) -> int:
        if self.kind != "file":
            return 0
        if self.data is not None:
            return len(self.data)
        if self.host_file is not None:
            return os.path.getsize(self.host_file)
        return self.zeros


def _tar_header(entry: _Entry) -> bytes:
    info = tarfile.TarInfo(entry.path.lstrip("/"))
    info.mtime = _EPOCH
    info.uname = info.gname = "root"
    if entry.kind == "dir":
        info.type, info.mode = tarfile.DIRTYPE, entry.mode if entry.mode != 0o644 else 0o755
    elif entry.kind == "symlink":
        info.type, info.linkname, info.mode = tarfile.SYMTYPE, entry.target, 0o777
    else:
        info.size, info.mode = entry.size, entry.mode
    return info.tobuf(format=tarfile.GNU_FORMAT)


def _sparse_member(entry: _Entry) -> bytes:
    """Return a PAX sparse-1.0 member: a file of ``entry.zeros`` NUL bytes that is all hole.

    The archive stays a few hundred bytes, so `docker load` does not first write the padding to
    its temporary directory; the engine still writes the real bytes once, into the layer.
    (Trade-off: `docker save` of such a layer does not reproduce the same digest; these are the
    report's throw-away images.)
    """
    name = entry.path.lstrip("/")
    sparse_map = b"1\n%d\n0\n" % entry.zeros
    sparse_map += bytes(-len(sparse_map) % 512)
    info = tarfile.TarInfo(f"GNUSparseFile.0/{name}")
    info.size, info.mtime, info.mode, info.uname, info.gname = (
        len(sparse_map),
        _EPOCH,
        entry.mode,
        "root",
        "root",
    )
    info.pax_headers = {
        "GNU.sparse.major": "1",
        "GNU.sparse.minor": "0",
        "GNU.sparse.name": name,
        "GNU.sparse.realsize": str(entry.zeros),
    }
    return info.tobuf(format=tarfile.PAX_FORMAT) + sparse_map


def _is_sparse(entry: _Entry) -> bool:
    return entry.sparse and entry.kind == "file" and entry.data is None and entry.host_file is None and entry.zeros > 0


def _tar_size(entries: list[_Entry]) -> int:
    total = 1024  # end-of-archive blocks
    for e in entries:
        if _is_sparse(e):
            total += len(_sparse_member(e))
        else:
            total += len(_tar_header(e)) + (-(-e.size // 512) * 512)
    return total


def _tar_chunks(entries: list[_Entry]) -> Iterator[bytes]:
    for e in entries:
        if _is_sparse(e):
            yield _sparse_member(e)
            continue
        yield _tar_header(e)
        if e.kind != "file":
            continue
        if e.data is not None:
            yield e.data
        elif e.host_file is not None:
            with open(e.host_file, "rb") as fh:
                while chunk := fh.read(_CHUNK):
                    yield chunk
        else:  # dense zeros: the layer's tar is what a push or an export regenerates, byte for byte
            zeros = bytes(_CHUNK)
            for offset in range(0, e.zeros, _CHUNK):
                yield zeros[: min(_CHUNK, e.zeros - offset)]
        if e.size % 512:
            yield bytes(512 - e.size % 512)
    yield bytes(1024)


@dataclass
class _Layer:
    """A layer of crafted images; identical layers are written once per archive."""

    key: str
    entries: list[_Entry]
    created_by: str
    cached_tar: Path | None = None  # a pre-built layer tar (the python rootfs), streamed as is

    @property
    def content_size(self) -> int:
        """Bytes Docker counts for this layer (regular files + symlink targets)."""
        if self.cached_tar is not None:
            with tarfile.open(self.cached_tar) as tf:
                return sum(m.size if m.isfile() else len(m.linkname) if m.issym() else 0 for m in tf)
        return sum(
            e.size if e.kind == "file" else len(e.target) if e.kind == "symlink" else 0 for e in self.entries
        )


@dataclass
class _Image:
    """An image to load: its layers (base first), tags, creation date and run config."""

    layers: list[_Layer]
    created: str
    tags: list[str] = field(default_factory=list)
    config: dict[str, Any] = field(default_factory=dict)

    @property
    def size(self) -> int:
        return sum(layer.content_size for layer in self.layers)


def _archive_stream(images: list[_Image], log: Log) -> Iterator[bytes]:
    """Yield a `docker save`-format archive of ``images``: layers first, then configs and manifest.

    The daemon unpacks the whole archive before reading manifest.json, so the diff IDs the
    configs need can be computed while the layers stream (one pass, nothing held in memory).
    """
    diff_ids: dict[str, str] = {}

    def member(name: str, size: int) -> bytes:
        info = tarfile.TarInfo(name)
        info.size, info.mtime, info.mode = size, _EPOCH, 0o644
        return info.tobuf(format=tarfile.GNU_FORMAT)

    for image in images:
        for layer in image.layers:
            if layer.key in diff_ids:
                continue
            digest = hashlib.sha256()
            if layer.cached_tar is not None:
                size = layer.cached_tar.stat().st_size
                yield member(f"{layer.key}/layer.tar", size)
                with layer.cached_tar.open("rb") as fh:
                    while chunk := fh.read(_CHUNK):
                        digest.update(chunk)
                        yield chunk
            else:
                size = _tar_size(layer.entries)
                yield member(f"{layer.key}/layer.tar", size)
                for chunk in _tar_chunks(layer.entries):
                    digest.update(chunk)
                    yield chunk
            if size % 512:
                yield bytes(512 - size % 512)
            diff_ids[layer.key] = "sha256:" + digest.hexdigest()
    manifest = []
    for image in images:
        config = {
            "architecture": "amd64",
            "os": "linux",
            "created": image.created,
            "config": image.config,
            "rootfs": {"type": "layers", "diff_ids": [diff_ids[layer.key] for layer in image.layers]},
            "history": [{"created": image.created, "created_by": layer.created_by} for layer in image.layers],
        }
        blob = json.dumps(config, sort_keys=True).encode()
        name = hashlib.sha256(blob).hexdigest() + ".json"
        yield member(name, len(blob))
        yield blob + bytes(-len(blob) % 512)
        manifest.append(
            {
                "Config": name,
                "RepoTags": image.tags or None,
                "Layers": [f"{layer.key}/layer.tar" for layer in image.layers],
            }
        )
    blob = json.dumps(manifest).encode()
    yield member("manifest.json", len(blob))
    yield blob + bytes(-len(blob) % 512)
    yield bytes(1024)


def _load(client: Any, images: list[_Image], log: Log) -> list[str]:
    """Load ``images`` into the engine of ``client`` (one archive, streamed); return their image IDs."""
    resp = client.api._post(
        client.api._url("/images/load"), data=_archive_stream(images, log), params={"quiet": "1"}
    )
    client.api._raise_for_status(resp)
    loaded: list[str] = []
    for line in resp.text.splitlines():
        if not line.strip():
            continue
        msg = json.loads(line)
        if "error" in msg or "errorDetail" in msg:
            raise RuntimeError(f"docker load failed: {msg.get('error') or msg}")
        stream = msg.get("stream", "")
        if "Loaded image ID: " in stream:
            loaded.append(stream.split("Loaded image ID: ", 1)[1].strip())
        elif "Loaded image: " in stream:
            loaded.append(stream.split("Loaded image: ", 1)[1].strip())
    return loaded


# ---------------------------------------------------------------- wheelhouse and python runtime


def _wheelhouse_requirements(scenario: Scenario) -> Path:
    return scenario.directory / "wheelhouse.txt"


def ensure_wheelhouse(scenario: Scenario, cache: Path) -> Path:
    """Return a local wheelhouse with every wheel the scenario's builds need (pip download, cached)."""
    reqs = _wheelhouse_requirements(scenario)
    key = hashlib.sha256(reqs.read_bytes()).hexdigest()[:12]
    dest = Path(cache) / f"wheelhouse-{key}"
    if (dest / ".complete").exists():
        return dest
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".wheelhouse-", dir=dest.parent))
    try:
        # Pinned, binary only, no dependency resolution: the list is complete on purpose, and the
        # wheels must match the CPython 3.11 copied into the base images.
        cmd = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--quiet",
            "--disable-pip-version-check",
            "--only-binary=:all:",
            "--no-deps",
            "--python-version",
            "3.11",
            "--platform",
            "manylinux2014_x86_64",
            "--platform",
            "manylinux_2_28_x86_64",
            "--platform",
            "any",
            "-d",
            str(tmp),
            "-r",
            str(reqs),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600, check=False)
        if proc.returncode != 0:
            from .errors import EnvironmentProblem

            last = (proc.stderr.strip().splitlines() or [f"pip exited {proc.returncode}"])[-1]
            raise EnvironmentProblem(
                f"cannot download the scenario's wheels: {last}",
                hint="the sandbox needs PyPI (or an index in pip.conf) once; the wheelhouse is cached after",
            )
        (tmp / ".complete").write_text("ok\n")
        if dest.exists():
            shutil.rmtree(dest)
        os.replace(tmp, dest)
    finally:
        if tmp.exists():
            shutil.rmtree(tmp, ignore_errors=True)
    return dest


# The probe runs under the host's Debian python3.11 and writes the trimmed standard library:
# exactly the modules the small services load at run time (bottle on wsgiref, itsdangerous,
# packaging, json), compiled to .pyc in one deflated zip -> /usr/lib/python311.zip.
_STDLIB_PROBE = r"""
import sys, threading
out, wheels = sys.argv[1], sys.argv[2:]
sys.path[:0] = wheels
import site, _sitebuiltins, json, hashlib, hmac, base64, datetime
import bottle, itsdangerous, packaging.version, packaging.specifiers
from wsgiref.simple_server import make_server, WSGIRequestHandler
import http.client
app = bottle.Bottle()
app.route("/health", callback=lambda: {"status": "healthy"})
class Quiet(WSGIRequestHandler):
    def log_message(self, *a): pass
srv = make_server("127.0.0.1", 0, app, handler_class=Quiet)
threading.Thread(target=srv.handle_request, daemon=True).start()
conn = http.client.HTTPConnection("127.0.0.1", srv.server_port, timeout=10)
conn.request("GET", "/health"); assert conn.getresponse().status == 200
itsdangerous.URLSafeTimedSerializer("k").dumps({"a": 1})
packaging.version.Version("2.0") >= packaging.version.Version("1.0")
import encodings.latin_1, encodings.ascii, encodings.idna, encodings.utf_8
stdlib = sys.prefix + "/lib/python3.11/"
names = set()
for mod in list(sys.modules.values()):
    f = getattr(mod, "__file__", None) or ""
    if f.startswith(stdlib) and f.endswith(".py") and "/lib-dynload/" not in f and "-packages/" not in f:
        names.add(f[len(stdlib):])
files = [getattr(m, "__file__", "") or "" for m in list(sys.modules.values())]
dynload = sorted(f for f in files if "/lib-dynload/" in f)
# Optional accelerators and TLS stay out of the small runtime (hashlib, http.client and zipfile fall
# back without them); the full base has them.
dynload = [d for d in dynload if d.rsplit("/", 1)[1].split(".")[0] in ("_json", "_typing")]
names = {n for n in names if n not in ("ssl.py", "bz2.py", "lzma.py", "_compression.py")}
import marshal, importlib.util, zipfile
with zipfile.ZipFile(out, "w", zipfile.ZIP_DEFLATED) as zf:
    for rel in sorted(names):
        src = open(stdlib + rel, "rb").read()
        code = compile(src, stdlib + rel, "exec", dont_inherit=True)
        pyc = importlib.util.MAGIC_NUMBER + b"\0\0\0\0" + b"\0" * 8 + marshal.dumps(code)
        zi = zipfile.ZipInfo(rel[:-3] + ".pyc", (1980, 1, 1, 0, 0, 0))
        zi.compress_type = zipfile.ZIP_DEFLATED
        zf.writestr(zi, pyc)
print("\n".join(dynload))
"""

# Standard-library parts a service image never needs (the "full" base drops them too).
_STDLIB_SKIP = (
    "test/",
    "idlelib/",
    "tkinter/",
    "turtledemo/",
    "lib2to3/",
    "ensurepip/",
    "pydoc_data/",
    "distutils/",
    "config-3.11",
    "unittest/test/",
    "ctypes/test/",
    "sqlite3/test/",
    "lib-dynload/",
)
_DYNLOAD_SKIP = (
    "_ssl",
    "_hashlib",
    "_test",
    "xx",
    "_ctypes_test",
    "_curses",
    "readline",
    "_dbm",
    "nis",
    "ossaudiodev",
    "audioop",
    "_tkinter",
    "_xxsub",
    "_xxtest",
)


def _ldd(paths: Iterable[str]) -> list[str]:
    """Return the shared libraries (absolute paths) ``paths`` need, as ldd resolves them."""
    found: list[str] = []
    for path in paths:
        proc = subprocess.run(["ldd", path], capture_output=True, text=True, check=False)
        for line in proc.stdout.splitlines():
            parts = line.split()
            if "=>" in parts and len(parts) >= 3 and parts[2].startswith("/"):
                found.append(parts[2])
            elif parts and parts[0].startswith("/"):
                found.append(parts[0])
    return sorted(set(found))


def _lib_entries(libs: Iterable[str], have: set[str]) -> list[_Entry]:
    """Return entries for shared libraries at their real /usr path, plus the soname symlinks."""
    out: list[_Entry] = []
    for lib in libs:
        usr = lib if lib.startswith("/usr/") else "/usr" + lib  # merged /usr: /lib -> usr/lib
        real = os.path.realpath(lib)
        if os.path.islink(usr) and usr not in have:
            have.add(usr)
            out.append(_Entry(usr, "symlink", target=os.readlink(usr)))
        if real not in have:
            have.add(real)
            out.append(_Entry(real, host_file=real, mode=0o755))
    return out


@dataclass
class _Runtime:
    """The local base-image layers: the small python runtime, the full stdlib + busybox, and more."""

    slim: _Layer
    full: _Layer
    dynload: list[str]


def _python_runtime(cache: Path, wheelhouse: Path, log: Log) -> _Runtime:
    """Return the layers of the python base images, made from the host's Debian python3.11."""
    if not Path(PYTHON_BIN).exists():
        from .errors import EnvironmentProblem

        raise EnvironmentProblem(
            f"{PYTHON_BIN} is missing: the sandbox's base images copy it",
            hint="apt-get install python3.11 (Debian bookworm)",
        )
    wheels = [
        str(w)
        for w in sorted(wheelhouse.glob("*.whl"))
        if w.name.split("-")[0].lower() in ("bottle", "itsdangerous", "packaging")
    ]
    st = Path(PYTHON_BIN).stat()
    key = hashlib.sha256(f"{st.st_size}:{st.st_mtime}:{_STDLIB_PROBE}:{wheels}".encode()).hexdigest()[:12]
    zpath = cache / f"python311-slim-{key}.zip"
    dpath = cache / f"python311-slim-{key}.dynload"
    if not zpath.exists():
        cache.mkdir(parents=True, exist_ok=True)
        tmp = zpath.with_suffix(".tmp")
        proc = subprocess.run(
            [PYTHON_BIN, "-I", "-S", "-c", _STDLIB_PROBE, str(tmp), *wheels],
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )
        if proc.returncode != 0:
            raise RuntimeError(f"building the trimmed standard library failed: {proc.stderr[-800:]}")
        dpath.write_text(proc.stdout)
        os.replace(tmp, zpath)
    dynload = [p for p in dpath.read_text().split() if p]
    have: set[str] = set()
    slim = [
        _Entry("/usr", "dir"),
        _Entry("/usr/bin", "dir"),
        _Entry("/usr/lib", "dir"),
        _Entry("/usr/lib64", "dir"),
        _Entry("/bin", "symlink", target="usr/bin"),
        _Entry("/lib", "symlink", target="usr/lib"),
        _Entry("/lib64", "symlink", target="usr/lib64"),
        _Entry("/etc", "dir"),
        _Entry(
            "/etc/passwd",
            data=b"root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/nonexistent:/usr/sbin/nologin\n",
        ),
        _Entry("/etc/group", data=b"root:x:0:\nnogroup:x:65534:\n"),
        _Entry("/root", "dir", mode=0o700),
        _Entry("/tmp", "dir", mode=0o1777),
        _Entry("/var", "dir"),
        _Entry("/var/tmp", "dir", mode=0o1777),
        _Entry("/usr/bin/python3.11", host_file=PYTHON_BIN, mode=0o755),
        _Entry("/usr/bin/python3", "symlink", target="python3.11"),
        _Entry("/usr/bin/python", "symlink", target="python3"),
        _Entry("/usr/lib/python311.zip", host_file=str(zpath)),
        _Entry("/usr/lib/python3.11", "dir"),
        _Entry("/usr/lib/python3.11/lib-dynload", "dir"),
    ]
    slim += _lib_entries(_ldd([PYTHON_BIN, *dynload]), have)
    slim += [_Entry(p, host_file=p, mode=0o755) for p in dynload]
    # The full layer: the rest of the standard library (sources), every useful extension module and
    # its libraries, and busybox (sh, head, ...) so that RUN steps work.
    stdlib = Path("/usr/lib/python3.11")
    # A whiteout hides the slim layer's python311.zip: a package found first in a partial zip would
    # hide its other submodules (importlib._abc, ...) that only the full directory has.
    full: list[_Entry] = [_Entry("/usr/lib/.wh.python311.zip", data=b"")]
    for path in sorted(stdlib.rglob("*")):
        rel = str(path.relative_to(stdlib))
        if "__pycache__" in path.parts or any(
            rel.startswith(s) or rel == s.rstrip("/") for s in _STDLIB_SKIP
        ):
            continue
        if path.is_dir():
            full.append(_Entry(str(path), "dir"))
        elif path.suffix == ".py" and path.is_file():
            full.append(_Entry(str(path), host_file=str(path)))
    exts = [
        str(p)
        for p in sorted((stdlib / "lib-dynload").glob("*.so"))
        if not p.name.startswith(_DYNLOAD_SKIP) and str(p) not in dynload
    ]
    full += _lib_entries(_ldd(exts), have)
    full += [_Entry(p, host_file=p, mode=0o755) for p in exts]
    busybox = shutil.which("busybox") or "/bin/busybox"
    full.append(_Entry("/usr/bin/busybox", host_file=os.path.realpath(busybox), mode=0o755))
    # pip as Debian ships it (python3-pip-whl: the wheel itself, run from the zip) and a `pip`
    # command, so Dockerfiles say `pip install` like everywhere else (and linters see it).
    pip_wheel = next(iter(sorted(wheelhouse.glob("pip-*.whl"))), None)
    if pip_wheel is not None:
        full += [
            _Entry("/usr/share/python-wheels", "dir"),
            _Entry("/usr/share/python-wheels/pip.whl", host_file=str(pip_wheel)),
            _Entry("/usr/local", "dir"),
            _Entry("/usr/local/bin", "dir"),
            _Entry(
                "/usr/local/bin/pip",
                data=b'#!/bin/sh\nexec python3 /usr/share/python-wheels/pip.whl/pip "$@"\n',
                mode=0o755,
            ),
            _Entry("/usr/local/bin/pip3", "symlink", target="pip"),
        ]
    applets = subprocess.run([busybox, "--list"], capture_output=True, text=True, check=False).stdout.split()
    taken = {e.path for e in slim}
    full += [
        _Entry(f"/usr/bin/{a}", "symlink", target="busybox")
        for a in sorted(applets)
        if f"/usr/bin/{a}" not in taken and a not in ("busybox",)
    ]
    return _Runtime(
        slim=_Layer(
            "py311-slim", slim, f"COPY python3.11 + {len(have)} libraries + trimmed stdlib (python311.zip)"
        ),
        full=_Layer("py311-full", full, "COPY full standard library, extension modules, busybox"),
        dynload=dynload,
    )


# ---------------------------------------------------------------- the images of the report

_MB = 1_000_000
_ENV = [
    "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin",
    "PYTHONHOME=/usr",
    "LANG=C.UTF-8",
    "PYTHONDONTWRITEBYTECODE=1",
]
# Wheels the small services install (the rest go to /wheels/db: the alembic runner's).
_COMMON_WHEELS = ("bottle", "itsdangerous", "packaging", "pytest", "pluggy", "iniconfig")
# Historical dates: the third-party images were pulled long ago; old builds span the report's range.
_PULLED = {
    "rocm/pytorch:latest": "2024-11-19T08:12:40Z",
    "nvcr.io/nvidia/tritonserver:24.10-py3": "2024-10-29T17:03:11Z",
    "llm-router-router-builder:latest": "2025-05-20T09:41:05Z",
    "router-server:latest": "2025-05-20T09:44:52Z",
}
_BASES_CREATED = "2025-05-02T06:00:00Z"


def _pad(path: str, size: int, *, sparse: bool = True) -> _Entry:
    return _Entry(path, zeros=max(size, 0), sparse=sparse)


def _fill(
    layers_before: list[_Layer],
    target: int,
    key: str,
    path: str,
    created_by: str,
    extra: list[_Entry] | None = None,
) -> _Layer:
    """Return a layer that brings the image made of ``layers_before`` + it to ``target`` bytes."""
    have = sum(layer.content_size for layer in layers_before)
    entries = list(extra or [])
    used = sum(e.size for e in entries) + sum(len(e.target) for e in entries if e.kind == "symlink")
    entries.append(_pad(path, target - have - used))
    return _Layer(key, entries, created_by)


def _wheel_entries(wheels: Iterable[Path], prefix: str) -> list[_Entry]:
    """Return the files of installed pure wheels (unzipped under ``prefix``), as pip --target does."""
    out: list[_Entry] = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for info in zf.infolist():
                if not info.is_dir():
                    out.append(_Entry(f"{prefix}/{info.filename}", data=zf.read(info)))
    return out


def _app_entries(scenario: Scenario, service: ServiceSpec, dest: str, version: int) -> list[_Entry]:
    """Return the service's app files (as an old build copied them), stamped with a build number."""
    base = scenario.sources_dir / (
        service.context if service.context != "." else str(Path(service.dockerfile).parent)
    )
    out = [
        _Entry(f"{dest}/{p.relative_to(base)}", data=p.read_bytes())
        for p in sorted(base.rglob("*"))
        if p.is_file() and "__pycache__" not in p.parts
    ]
    out.append(_Entry(f"{dest}/BUILD", data=f"{service.name} build {version}\n".encode()))
    return out


def _date(day: _dt.date, n: int) -> str:
    return f"{day.isoformat()}T{(8 + n * 7) % 24:02d}:{(n * 13) % 60:02d}:{(n * 29) % 60:02d}Z"


@dataclass
class _Plan:
    """What the two `docker load`s bring in: what the builds need first, then the bulk."""

    images: list[_Image]  # bases and the services' old builds (the builds below retag them)
    bulk: list[_Image]  # third-party images and the router's old build stage (loaded during the builds)
    pgc_old_tag: str


def _image_plan(scenario: Scenario, runtime: _Runtime, wheelhouse: Path) -> _Plan:
    """Return the crafted images: bases, the four third-party images and the old builds."""
    s = scenario.scaled
    wheels = sorted(wheelhouse.glob("*.whl"))
    common = [w for w in wheels if w.name.split("-")[0].lower() in _COMMON_WHEELS]
    db = [w for w in wheels if w not in common and not w.name.startswith("pip-")]
    pip = next(w for w in wheels if w.name.startswith("pip-"))
    env = {"Env": _ENV, "Cmd": ["python3"]}
    slim, full = runtime.slim, runtime.full
    # The fat base is written with real NUL bytes, not sparse members: the gs and alembic originals build on it,
    # so a push or an export must regenerate its layers' exact digests ("could not verify layer data" else).
    fat_layers = [
        slim,
        full,
        _Layer(
            "fat-toolchain",
            [
                _pad("/usr/lib/gcc/x86_64-linux-gnu/11/cc1plus", 31 * _MB, sparse=False),
                _pad("/usr/lib/x86_64-linux-gnu/libLLVM-14.so.1", 44 * _MB, sparse=False),
            ],
            "RUN apt-get update && apt-get install -y build-essential python3-dev llvm-14 (stand-in)",
        ),
        _Layer(
            "fat-packages",
            [
                _pad("/usr/share/doc/all-packages.tar", 7 * _MB, sparse=False),
                _pad("/usr/lib/x86_64-linux-gnu/libicudata.so.70", 11 * _MB, sparse=False),
            ],
            "RUN apt-get install -y curl git vim less locales tzdata (stand-in)",
        ),
        _Layer(
            "fat-apt-lists",
            [
                _pad(
                    f"/var/lib/apt/lists/archive.ubuntu.com_ubuntu_dists_jammy_{c}_binary-amd64_Packages",
                    1_400_000,
                    sparse=False,
                )
                for c in ("main", "universe", "restricted", "multiverse", "updates_main")
            ],
            "apt lists left behind (no rm -rf /var/lib/apt/lists/*)",
        ),
    ]
    wheels_layer = _Layer(
        "wheels",
        [_Entry(f"/wheels/common/{w.name}", host_file=str(w)) for w in common]
        + [_Entry(f"/wheels/db/{w.name}", host_file=str(w)) for w in db]
        + [_Entry("/pip/pip.whl", host_file=str(pip))],
        "COPY wheelhouse (pip download)",
    )
    images = [
        _Image([slim], _BASES_CREATED, ["acgs-base/python:3.11-slim"], env),
        _Image([slim, full], _BASES_CREATED, ["acgs-base/python:3.11-full"], {"Env": _ENV, "Cmd": ["sh"]}),
        _Image(fat_layers, _BASES_CREATED, ["acgs-base/ubuntu-fat:22.04"], {"Env": _ENV, "Cmd": ["sh"]}),
        _Image(
            [wheels_layer], _BASES_CREATED, ["acgs-base/wheels:py311"], {"Env": _ENV, "Cmd": ["/pip/pip.whl"]}
        ),
    ]
    # --- third-party images: an "ubuntu:22.04" layer they share, then their own big layers.
    busybox = os.path.realpath(shutil.which("busybox") or "/bin/busybox")
    ubuntu = _Layer(
        "ubuntu-jammy",
        [
            _Entry("/etc", "dir"),
            _Entry("/etc/os-release", data=b'NAME="Ubuntu"\nVERSION_ID="22.04"\n'),
            _Entry("/bin", "dir"),
            _Entry("/bin/busybox", host_file=busybox, mode=0o755),
            _Entry("/bin/sh", "symlink", target="busybox"),
            _Entry("/tmp", "dir", mode=0o1777),
            _pad("/usr/lib/x86_64-linux-gnu/libc-jammy.so", 3_900_000 - os.path.getsize(busybox)),
        ],
        "ADD ubuntu-jammy-rootfs.tar.gz /",
    )
    sizes = {img.ref: s(img.size) for img in scenario.report.oversized}
    rocm_ref, server_ref, builder_ref, triton_ref = (img.ref for img in scenario.report.oversized[:4])
    rocm = [
        ubuntu,
        _Layer(
            "rocm-runtime",
            [_pad("/opt/rocm-6.2.0/lib/librocblas.so.4", 1_600 * _MB)],
            "RUN install ROCm 6.2 (stand-in)",
        ),
        _Layer(
            "rocm-torch",
            [_pad("/opt/conda/lib/python3.10/site-packages/torch/lib/libtorch_hip.so", 1_500 * _MB)],
            "RUN pip install torch (stand-in)",
        ),
    ]
    rocm.append(
        _fill(
            rocm,
            sizes[rocm_ref],
            "rocm-extras",
            "/opt/conda/pkgs/cache.tar",
            "RUN conda install ... (stand-in)",
        )
    )
    triton = [
        ubuntu,
        _Layer(
            "triton-server",
            [_pad("/opt/tritonserver/lib/libtritonserver.so", 550 * _MB)],
            "COPY tritonserver (stand-in)",
        ),
    ]
    triton.append(
        _fill(
            triton,
            sizes[triton_ref],
            "triton-backends",
            "/opt/tritonserver/backends/python/libtriton_python.so",
            "COPY backends (stand-in)",
        )
    )
    builder = [
        ubuntu,
        _Layer(
            "router-cuda",
            [_pad("/usr/local/cuda-12.4/lib64/libcublasLt.so.12", 950 * _MB)],
            "RUN install CUDA toolkit (stand-in)",
        ),
    ]
    builder.append(
        _fill(
            builder,
            sizes[builder_ref],
            "router-build",
            "/src/target/release/deps/router.rlib",
            "RUN cargo build --release (stand-in)",
        )
    )
    server = builder + [
        _fill(
            builder,
            sizes[server_ref],
            "router-server",
            "/usr/local/bin/router-server",
            "COPY router-server (stand-in)",
        )
    ]
    run_cfg = {"Env": _ENV, "Cmd": ["sh"]}
    bulk = [
        _Image(rocm, _PULLED[rocm_ref], [rocm_ref], run_cfg),
        _Image(triton, _PULLED[triton_ref], [triton_ref], run_cfg),
        _Image(builder, _PULLED[builder_ref], [builder_ref], run_cfg),
        _Image(server, _PULLED[server_ref], [server_ref], run_cfg),
    ]

    # --- old builds that are (or become, when the seed rebuilds their tag) dangling images.
    buckets = scenario.report.dangling.breakdown
    first = _dt.date.fromisoformat(scenario.report.dangling.first)
    last = _dt.date.fromisoformat(scenario.report.dangling.last)
    span = (last - first).days
    gs, alembic = scenario.service("gs"), scenario.service("alembic-runner")
    old_gs = fat_layers + [
        _Layer(
            "gs-old-wheels",
            _wheel_entries(common, "/usr/local/lib/python3.11/dist-packages"),
            "RUN pip install -r requirements.txt -r requirements-dev.txt",
        ),
        _Layer("gs-old-app", _app_entries(scenario, gs, "/app", 41), "COPY . /app"),
    ]
    old_gs.append(
        _fill(
            old_gs,
            s(buckets[0].size),
            "gs-old-jupyter",
            "/opt/jupyter/lab/bundle.js",
            "RUN pip install jupyterlab (stand-in)",
        )
    )
    old_alembic = fat_layers + [
        _Layer(
            "alembic-old-wheels",
            _wheel_entries(db, "/usr/local/lib/python3.11/dist-packages"),
            "RUN pip install -r requirements.txt",
        ),
        _Layer("alembic-old-app", _app_entries(scenario, alembic, "/app", 17), "COPY . /app"),
    ]
    old_alembic.append(
        _fill(
            old_alembic,
            s(buckets[1].size),
            "alembic-old-jupyter",
            "/opt/jupyter/lab/bundle.js",
            "RUN pip install jupyterlab (stand-in)",
        )
    )
    old_router_stage = [ubuntu]
    old_router_stage.append(
        _fill(
            old_router_stage,
            s(buckets[2].size),
            "router-old-stage",
            "/src/target/release/build/router-build.tar",
            "RUN cargo build (build stage, left behind)",
        )
    )
    bulk.append(_Image(old_router_stage, _date(first + _dt.timedelta(days=5), 1), [], run_cfg))
    images += [
        _Image(
            old_gs,
            _date(last - _dt.timedelta(days=2), 2),
            [gs.image],
            {"Env": _ENV, "Cmd": ["python3", "/app/app/main.py"], "WorkingDir": "/app"},
        ),
        _Image(
            old_alembic,
            _date(last - _dt.timedelta(days=1), 3),
            [alembic.image],
            {"Env": _ENV, "Cmd": ["python3", "/app/run.py"], "WorkingDir": "/app"},
        ),
    ]
    # The "228-232MB" bucket: old builds of the three small services (multi-stage, slim runtime).
    # Their deps layer is shared per service (same wheels), their app layer differs per build.
    small = buckets[-1].count
    shares = {"auth": small - 2 * (small // 3), "integrity": small // 3, "pgc": small // 3}
    wheel_sets = {
        "auth": ("bottle", "itsdangerous"),
        "integrity": ("bottle",),
        "pgc": ("bottle", "packaging"),
    }
    n = 0
    pgc_old_tag = ""
    for name, count in shares.items():
        svc = scenario.service(name)
        deps = _Layer(
            f"{name}-old-deps",
            _wheel_entries(
                [w for w in common if w.name.split("-")[0].lower() in wheel_sets[name]], "/app/deps"
            ),
            "COPY --from=deps /deps /app/deps",
        )
        for k in range(count):
            n += 1
            day = first + _dt.timedelta(days=(n * span) // small)
            target = round(s(buckets[-1].size) * (0.99 + 0.02 * ((n * 7) % 11) / 10))  # 228-232MB scaled
            layers = [slim, deps]
            app = _Layer(f"{name}-old-app-{k}", _app_entries(scenario, svc, "/app", k + 1), "COPY . /app")
            layers.append(app)
            if sum(layer.content_size for layer in layers) < target:
                layers[-1] = _fill(
                    [slim, deps],
                    target,
                    f"{name}-old-app-{k}",
                    "/app/static/bundle.js",
                    "COPY . /app",
                    extra=app.entries,
                )
            tag = [svc.image] if k == count - 1 else []
            cfg = {
                "Env": [*_ENV, "PYTHONPATH=/app/deps"],
                "Cmd": ["python3", "/app/app/main.py"],
                "WorkingDir": "/app",
            }
            images.append(_Image(layers, _date(day, n), tag, cfg))
            if name == "pgc" and k == count - 1:
                pgc_old_tag = svc.image
    return _Plan(images=images, bulk=bulk, pgc_old_tag=pgc_old_tag)


# ---------------------------------------------------------------- builds, containers, variants

SCENARIO_LABEL = "acgs.scenario"


def _client(docker_host: str) -> Any:
    import docker

    return docker.DockerClient(base_url=docker_host, timeout=600)


def _build(client: Any, context: Path, dockerfile: str, tag: str, log: Log) -> str:
    """Build ``tag`` with the classic builder, network none; return the image ID or raise with the error."""
    t0 = time.monotonic()
    image_id, error = "", ""
    for chunk in client.api.build(
        path=str(context),
        dockerfile=dockerfile,
        tag=tag,
        network_mode="none",
        rm=True,
        forcerm=True,
        decode=True,
    ):
        if "error" in chunk:
            error = chunk["error"].strip()
        elif "aux" in chunk and "ID" in chunk["aux"]:
            image_id = chunk["aux"]["ID"]
    if error or not image_id:
        raise RuntimeError(f"building {tag} from {context}/{dockerfile} failed: {error or 'no image'}")
    log(f"  built {tag} in {time.monotonic() - t0:.1f} s")
    return image_id


def _compose_labels(scenario: Scenario, service: str) -> dict[str, str]:
    return {
        "com.docker.compose.project": "acgs-1",
        "com.docker.compose.service": service,
        "com.docker.compose.container-number": "1",
        "com.docker.compose.oneoff": "False",
        SCENARIO_LABEL: scenario.name,
    }


def _service_container(
    client: Any,
    scenario: Scenario,
    svc: ServiceSpec,
    name: str | None = None,
    image: str | None = None,
    **extra: Any,
) -> Any:
    """Create (not start) the container of ``svc`` as its compose file would run it."""
    return client.containers.create(
        image or svc.image,
        name=name or f"acgs-1-{svc.compose_service}-1",
        environment={
            "ACGS_BIND": "auto",
            "ACGS_PORT": str(svc.port),
            "DATABASE_URL": "sqlite:////var/lib/acgs/acgs.db",
        },
        network_mode="host",
        uts_mode="host",
        init=True,
        restart_policy={"Name": "unless-stopped"},
        labels=_compose_labels(scenario, svc.compose_service),
        **extra,
    )


def _wait_health(urls: list[str], timeout: float = 30.0) -> list[str]:
    """Return the URLs of ``urls`` that did not answer 200 within ``timeout`` seconds."""
    import urllib.request

    pending = list(urls)
    deadline = time.monotonic() + timeout
    while pending and time.monotonic() < deadline:
        for url in list(pending):
            try:
                with urllib.request.urlopen(url, timeout=2) as resp:  # noqa: S310 (loopback only)
                    if resp.status == 200:
                        pending.remove(url)
            except OSError:
                pass
        if pending:
            time.sleep(0.3)
    return pending


def seed_engine(docker_host: str, scenario: Scenario, work: Path, log: Log) -> None:
    """Build the whole scenario into the empty engine at ``docker_host`` (the golden engine)."""
    from concurrent.futures import ThreadPoolExecutor

    from .errors import EnvironmentProblem

    for tool, package in (("busybox", "busybox-static"), ("ldd", "libc-bin")):
        if shutil.which(tool) is None:
            raise EnvironmentProblem(
                f"{tool} is missing: the scenario's base images need it", hint=f"apt-get install {package}"
            )
    t0 = time.monotonic()
    cache = DEFAULT_CACHE
    client = _client(docker_host)
    wheelhouse = ensure_wheelhouse(scenario, cache)
    runtime = _python_runtime(cache, wheelhouse, log)
    plan = _image_plan(scenario, runtime, wheelhouse)
    log(f"loading {len(plan.images)} images (bases, old builds)")
    _load(client, plan.images, log)
    log(f"  loaded in {time.monotonic() - t0:.1f} s")
    # The third-party bytes are disk-bound and the builds mostly CPU-bound: overlap them.
    pool = ThreadPoolExecutor(max_workers=3)
    bulk = pool.submit(_load, _client(docker_host), plan.bulk, log)

    # The pgc container ran the build before the last one, crashed and stayed stopped: once pgc is
    # rebuilt below, its image is dangling and still in use.
    pgc = scenario.service("pgc")
    old_pgc = _service_container(client, scenario, pgc, image=plan.pgc_old_tag)
    old_pgc.start()

    # The tree as it was at the last successful builds: the missing files still there.
    sources = Path(work) / "sources"
    prepare_sources(scenario, sources)
    for svc in scenario.services:
        if svc.missing_file:
            # history/<parent dir>.<file name>, or history/<file name> for a file at the root.
            missing = Path(svc.missing_file)
            name = f"{missing.parent.name}.{missing.name}" if missing.parent.name else missing.name
            shutil.copyfile(scenario.history_dir / name, sources / missing)
    old_pgc.stop(timeout=5)

    t1 = time.monotonic()
    jobs = [(sources / "infrastructure/docker/postgres", "Dockerfile", scenario.database.image)]
    # The big ones first, so the two build slots stay busy.
    for svc in sorted(scenario.services, key=lambda x: -parse_size(x.size)):
        jobs.append((sources / svc.context, svc.dockerfile, svc.image))
    log(f"building {len(jobs)} images (classic builder, network none) while loading {len(plan.bulk)} more")
    try:
        builds = [pool.submit(_build, client, ctx, dockerfile, tag, log) for ctx, dockerfile, tag in jobs[:1]]
        builds[0].result()  # the database image first: a quick sanity check of the build path
        queue = iter(jobs[1:])
        workers = [pool.submit(lambda: [_build(client, *job, log) for job in queue]) for _ in range(2)]
        for worker in workers:
            worker.result()
        log(f"  builds done in {time.monotonic() - t1:.1f} s")
        bulk.result()
        log(f"  third-party images loaded ({time.monotonic() - t0:.1f} s)")
    finally:
        pool.shutdown(wait=True)

    # The compose stack as it runs on the report's host: the database with its named volume, the
    # deployed services (gs is not deployed there; the alembic runner ran with --rm).
    db = scenario.database
    client.volumes.create(
        db.volume,
        labels={
            "com.docker.compose.project": "acgs-1",
            "com.docker.compose.volume": db.volume,
            SCENARIO_LABEL: scenario.name,
        },
    )
    client.containers.create(
        db.image,
        name=db.container,
        environment={"ACGS_BIND": "auto", "ACGS_PORT": str(db.port)},
        network_mode="host",
        uts_mode="host",
        init=True,
        restart_policy={"Name": "unless-stopped"},
        volumes={db.volume: {"bind": "/var/lib/postgresql/data", "mode": "rw"}},
        labels=_compose_labels(scenario, "postgres"),
    ).start()
    for svc in scenario.services:
        if svc.deployed is True:
            _service_container(client, scenario, svc).start()
    integrity = scenario.service("integrity")
    backfill = client.containers.create(
        integrity.image,
        ["python3", "-c", "print('integrity backfill: 0 records to fix')"],
        name="acgs-1-integrity-backfill",
        network_mode="none",
        init=True,
        labels={**_compose_labels(scenario, integrity.compose_service), "com.docker.compose.oneoff": "True"},
    )
    backfill.start()
    backfill.wait(timeout=60)

    host = client.info()["Name"]
    urls = [
        f"http://{bind_for_hostname(host)}:{svc.port}/health"
        for svc in scenario.services
        if svc.deployed is True
    ]
    failed = _wait_health(urls)
    if failed:
        raise RuntimeError(f"services did not answer their health check after seeding: {', '.join(failed)}")
    df = client.df()
    naive = sum(img["Size"] for img in df["Images"])
    log(
        f"golden engine seeded in {time.monotonic() - t0:.1f} s: {len(df['Images'])} images, "
        f"layers {df['LayersSize'] / 1e9:.2f} GB real vs {naive / 1e9:.2f} GB summed"
    )


def _remove_image(client: Any, ref: str, log: Log) -> None:
    import docker

    try:
        client.images.remove(ref)  # never force: a used image must fail loudly here
        log(f"  removed {ref[:24]}")
    except docker.errors.ImageNotFound:
        pass


def apply_variant(docker_host: str, scenario: Scenario, index: int, count: int, log: Log) -> None:
    """Make host ``index`` (of ``count``) differ a little from the golden one; index 0 stays golden."""
    client = _client(docker_host)
    # Whatever ran in the golden engine runs here too (no-op when the sandbox already started it).
    for name in scenario.expectations["golden"].running:
        container = client.containers.get(name)
        if container.status != "running":
            container.start()
    variant = scenario.variant(index)
    if variant is None:
        return
    log(f"host {index}: variant {variant.name}")
    for ref in variant.remove_images:
        _remove_image(client, ref, log)
    if variant.prune_dangling:
        used = {c.attrs["Image"] for c in client.containers.list(all=True)}
        # Dangling = no tag and no digest (models.is_dangling), not the engine's filter (it lists digest-only images).
        from .models import is_dangling

        dangling = [
            img
            for img in client.images.list()
            if img.id not in used and is_dangling(img.attrs.get("RepoTags") or [], img.attrs.get("RepoDigests") or [])
        ]
        dangling.sort(key=lambda img: img.attrs["Created"])
        for img in dangling[: variant.prune_dangling]:
            _remove_image(client, img.id, log)
    for extra in variant.run_images:
        svc = next((s for s in scenario.services if s.image == extra.image), None)
        if svc is not None and svc.port is not None:
            container = _service_container(client, scenario, svc, name=extra.name)
        else:
            container = client.containers.create(
                extra.image,
                ["sh", "-c", "echo notebook stopped"],
                name=extra.name,
                network_mode="none",
                init=True,
                labels={SCENARIO_LABEL: scenario.name},
            )
        container.start()
        if not extra.running:
            container.wait(timeout=60)
        elif svc is not None and svc.port is not None:
            # The host is ready when its services answer, like the golden engine's after seeding.
            url = f"http://{bind_for_hostname(client.info()['Name'])}:{svc.port}/health"
            if _wait_health([url]):
                raise RuntimeError(f"{extra.name} on host {index} did not answer {url}")
