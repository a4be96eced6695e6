"""Phase 2's "build once, ship to the fleet": one image per distinct source, the same image ID on every host.

The rule (DESIGN.md, phase 2; issue 10 item 3): a service is built once per distinct *source* — its build
context as the engine receives it (.dockerignore honoured, doctor.py's semantics), its Dockerfile, its build
args and the image IDs of the images it is built from — on one builder engine, with BuildKit (which leaves
no stage images behind, unlike the classic builder: the report's dangling images). The image carries its
source hash as a label (``org.acgs.source-hash``), so a re-run with unchanged sources finds it and builds
nothing. It is tagged as a *candidate* (``REPO:build-<hash12>``) on every engine that holds it: an image
that arrived by digest alone is listed as dangling by the engine, so a shipped image always gets a tag.

Shipping: through the policy's registry when it names one (push once from the builder, record the
manifest digest, each host pulls by digest), else engine to engine (the builder's export streamed into each
host's load; no temp file). Hosts that already hold the image ID receive nothing. The service's release
tag (its ``image``, e.g. ``acgs-1-auth_service:latest``) moves to the new image only after the gates
passed; an image that tag leaves behind keeps a ``REPO:rollback-<id12>`` tag so it never turns dangling
(and stays available for a rollback, safety invariant 3).

Faults: a missing base image, a registry that is down, an engine dying mid-ship each raise ``BuildError``
naming the service and the host; nothing is left half-tagged (a failed push drops its registry tag, a
failed load creates no image) and a re-run finishes the work.

Engine calls go through ``facts.engine_api`` (the lean client on unix://, the docker SDK elsewhere);
builds through the docker CLI with BuildKit (``DOCKER_BUILDKIT=1 docker -H ... build``).
"""

from __future__ import annotations

import hashlib
import io
import os
import shutil
import stat
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field, replace
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .doctor import read_context
from .engine import Endpoint, local_socket, ssh_env
from .errors import EngineError, UsageError
from .facts import describe_error, engine_api
from .models import BuildRecord, GateVerdict, is_dangling

if TYPE_CHECKING:
    from .config import Policy
    from .inventory import Host
    from .models import HostSnapshot, ImageFact
    from .state import StateStore

SOURCE_HASH_LABEL = "org.acgs.source-hash"
SERVICE_LABEL = "org.acgs.service"
CANDIDATE_PREFIX = "build-"
ROLLBACK_PREFIX = "rollback-"
DOCKER_CLI_ENV = "ACGS_DOCKER_CLI"
# Bumped when what goes into the hash changes: old images are then rebuilt once, never confused.
_HASH_VERSION = b"acgs-build-source-v1"
_DEFAULT_BUILD_TIMEOUT = 1800.0

Log = Callable[[str], None]
Gate = Callable[["Host", "BuildSource", "BuiltImage"], Sequence[GateVerdict]]


def _quiet(_msg: str) -> None:
    return None


class BuildError(EngineError):
    """A build, push, pull or load failed: the message names the service and the host (exit code 1)."""

    def __init__(self, service: str, host: str, message: str, hint: str | None = None) -> None:
        super().__init__(f"service {service} on {host}: {message}", hint=hint)
        self.service = service
        self.host = host


# --------------------------------------------------------------------------------------------- sources


@dataclass(frozen=True)
class BuildSource:
    """What one service is built from (paths absolute) and the tag it is released under."""

    service: str
    release_ref: str  # repository:tag the image gets once its gates passed (the policy's service image)
    context: Path
    dockerfile: Path
    args: Mapping[str, str] = field(default_factory=dict)

    @property
    def repository(self) -> str:
        """Return the repository part of the release reference."""
        return split_ref(self.release_ref)[0]


def split_ref(ref: str) -> tuple[str, str]:
    """Return (repository, tag) of ``ref`` ("registry:5000/a/b:1" -> ("registry:5000/a/b", "1")); tag "latest"."""
    name, _, _digest = ref.partition("@")
    slash = name.rfind("/")
    colon = name.rfind(":")
    if colon > slash:
        return name[:colon], name[colon + 1 :]
    return name, "latest"


def sources_from_policy(
    policy: Policy,
    base: Path | None = None,
    dockerfiles: Mapping[str, Path] | None = None,
    services: Iterable[str] | None = None,
) -> list[BuildSource]:
    """Return the build sources of the policy's services (all, or those named in ``services``).

    ``dockerfiles`` overrides a service's Dockerfile (e.g. the optimized one phase 2 generated and staged),
    else the service's own ``optimized_dockerfile``, else its ``dockerfile``. Relative policy paths are
    resolved like doctor.py does: the Dockerfile relative to the context, the context relative to
    ``sources_root``, and that relative to ``base`` (the inventory's directory).
    Raise UsageError for an unknown service name, a missing context or Dockerfile (exit 2).
    """
    wanted = set(services) if services is not None else None
    known = {s.name for s in policy.services}
    if wanted is not None and wanted - known:
        unknown = ", ".join(sorted(wanted - known))
        raise UsageError(f"no service {unknown} in acgs_policy.services", hint=f"services: {', '.join(sorted(known))}")
    out: list[BuildSource] = []
    for svc in policy.services:
        if wanted is not None and svc.name not in wanted:
            continue
        context = policy.service_context(svc, base).resolve()
        override = (dockerfiles or {}).get(svc.name)
        if override is None and svc.optimized_dockerfile:
            override = Path(svc.optimized_dockerfile)  # the service's own optimized Dockerfile, built as is
        dockerfile = Path(override) if override is not None else Path(svc.dockerfile)
        if not dockerfile.is_absolute():
            dockerfile = context / dockerfile
        if not context.is_dir():
            raise UsageError(
                f"service {svc.name}: build context {context} does not exist",
                hint="fix acgs_policy.sources_root or the service's context",
            )
        if not dockerfile.is_file():
            raise UsageError(
                f"service {svc.name}: Dockerfile {dockerfile} does not exist",
                hint="fix the service's dockerfile in acgs_policy.services",
            )
        out.append(BuildSource(svc.name, svc.image, context, dockerfile, dict(policy.build.args)))
    return out


def _expand(text: str, variables: Mapping[str, str]) -> str:
    """Return ``text`` with $VAR / ${VAR} / ${VAR:-default} replaced (what FROM lines allow)."""
    out, i = [], 0
    while i < len(text):
        ch = text[i]
        if ch != "$":
            out.append(ch)
            i += 1
            continue
        if text.startswith("${", i):
            end = text.find("}", i)
            if end == -1:
                out.append(text[i:])
                break
            body = text[i + 2 : end]
            name, sep, default = body.partition(":-")
            value = variables.get(name, "")
            out.append(value if value or not sep else default)
            i = end + 1
            continue
        j = i + 1
        while j < len(text) and (text[j].isalnum() or text[j] == "_"):
            j += 1
        out.append(variables.get(text[i + 1 : j], ""))
        i = j
    return "".join(out)


def base_images(dockerfile_text: str, args: Mapping[str, str] | None = None) -> list[str]:
    """Return the images a Dockerfile builds from, in order, without duplicates.

    FROM images (ARG defaults before the first FROM and ``args`` substituted) and ``COPY/ADD --from=IMAGE``
    sources; stage names, stage numbers and ``scratch`` are not images. Raise UsageError when the file
    does not parse or has no FROM.
    """
    from dockerfile_parse import DockerfileParser

    try:
        structure = DockerfileParser(fileobj=io.BytesIO(dockerfile_text.encode())).structure
    except Exception as exc:  # dockerfile-parse raises several types on bad input
        raise UsageError(f"the Dockerfile does not parse: {exc}") from None
    global_args: dict[str, str] = {}
    stages: set[str] = set()
    seen_from = False
    images: list[str] = []

    def add(ref: str) -> None:
        if ref and ref.lower() != "scratch" and ref.lower() not in stages and ref not in images:
            images.append(ref)

    for item in structure:
        instruction = str(item["instruction"]).upper()
        value = str(item["value"])
        if instruction == "ARG" and not seen_from:
            name, _, default = value.partition("=")
            global_args[name.strip()] = default.strip().strip('"')
        elif instruction == "FROM":
            seen_from = True
            parts = [p for p in value.split() if not p.startswith("--")]
            if not parts:
                continue
            variables = {**global_args, **(args or {})}
            add(_expand(parts[0], variables))
            if len(parts) >= 3 and parts[1].lower() == "as":
                stages.add(parts[2].lower())
        elif instruction in ("COPY", "ADD"):
            for part in value.split():
                if part.startswith("--from="):
                    ref = part.removeprefix("--from=")
                    if not ref.isdigit():
                        add(ref)
    if not seen_from:
        raise UsageError("the Dockerfile has no FROM")
    return images


def ignore_file(source: BuildSource) -> Path | None:
    """Return the ignore file a BuildKit build of ``source`` honours: <Dockerfile>.dockerignore beside the
    Dockerfile when it exists (BuildKit prefers it), else the context's .dockerignore (None: neither)."""
    beside = source.dockerfile.with_name(source.dockerfile.name + ".dockerignore")
    if beside.is_file():
        return beside
    default = source.context / ".dockerignore"
    return default if default.is_file() else None


def _context_entries(source: BuildSource) -> list[tuple[str, Path]]:
    """Return (relative path, absolute path) of every file and directory the engine receives, sorted."""
    ctx = read_context(source.context, ignore_file(source))
    return [(rel, source.context / rel) for rel in sorted(ctx.paths)]


def source_hash(source: BuildSource, base_ids: Mapping[str, str]) -> str:
    """Return the hex SHA-256 of everything a build's result depends on (deterministic across runs/machines).

    Inputs, each length-framed: a format version; the Dockerfile's bytes; the build args (sorted); each base
    image reference with its image ID on the builder (sorted); every path of the context the engine receives
    (.dockerignore honoured, sorted) with its type, executable bit and content hash (symlinks: their target).
    Timestamps, owners and the context's absolute location are not inputs: the same tree elsewhere hashes equal.
    """
    h = hashlib.sha256()

    def put(*parts: bytes) -> None:
        for part in parts:
            h.update(len(part).to_bytes(8, "big"))
            h.update(part)

    put(_HASH_VERSION, b"dockerfile", source.dockerfile.read_bytes())
    for key in sorted(source.args):
        put(b"arg", key.encode(), str(source.args[key]).encode())
    for ref in sorted(base_ids):
        put(b"base", ref.encode(), base_ids[ref].encode())
    for rel, path in _context_entries(source):
        try:
            st = os.lstat(path)
        except FileNotFoundError:
            continue  # vanished while walking: not part of what a build would send now
        if stat.S_ISLNK(st.st_mode):
            put(b"link", rel.encode(), os.readlink(path).encode())
        elif stat.S_ISDIR(st.st_mode):
            put(b"dir", rel.encode())
        elif stat.S_ISREG(st.st_mode):
            digest = hashlib.sha256()
            with open(path, "rb") as f:
                for chunk in iter(lambda: f.read(1 << 20), b""):
                    digest.update(chunk)
            put(b"file", rel.encode(), b"x" if st.st_mode & 0o111 else b"-", digest.digest())
    return h.hexdigest()


def candidate_ref(source: BuildSource, digest: str) -> str:
    """Return the candidate tag of a build of ``source`` with source hash ``digest``: REPO:build-<hash12>."""
    return f"{source.repository}:{CANDIDATE_PREFIX}{digest[:12]}"


def registry_repository(registry: str, source: BuildSource) -> str:
    """Return where ``source``'s images live in ``registry`` ("127.0.55.1:5000/acgs" -> ".../acgs/REPO")."""
    repo = source.repository
    # A repository already naming a registry keeps only its path under ours.
    first, _, rest = repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        repo = rest
    return f"{registry.rstrip('/')}/{repo}"


# --------------------------------------------------------------------------------------------- results


@dataclass(frozen=True)
class BuiltImage:
    """One service's image on the builder: what it is, where it came from, what the build cost."""

    service: str
    source_hash: str
    image_id: str  # sha256:...
    candidate: str  # REPO:build-<hash12>, on every engine that holds it
    size: int  # bytes, as the engine reports
    builder: str  # inventory name of the builder host
    built: bool  # False: an image with this source hash already existed (nothing was built)
    seconds: float | None  # wall time of the build; None when nothing was built now
    digest: str | None = None  # manifest digest in the registry (sha256:...), once pushed
    registry_repo: str | None = None  # REGISTRY/NAMESPACE/REPO it was pushed to
    pushed: bool = False  # pushed by this run


@dataclass(frozen=True)
class ShipResult:
    """What shipping one image to one host did."""

    host: str
    service: str
    image_id: str
    method: str  # "present" (the host had it), "registry" (pulled by digest), "engine" (export -> load)
    shipped: bool  # bytes moved (False in check mode or when present)
    tagged: bool  # the candidate tag was added now
    seconds: float = 0.0


@dataclass(frozen=True)
class ReleaseResult:
    """What moving a service's release tag on one host did."""

    host: str
    service: str
    release_ref: str
    image_id: str
    previous_id: str | None  # what the release tag named before (None: nothing)
    previous_size: int | None  # its size in bytes (the "before" of the build record)
    rollback_ref: str | None  # the tag the previous image kept so it never turns dangling
    changed: bool


# --------------------------------------------------------------------------------------------- engine calls


def _not_found(exc: BaseException) -> bool:
    return getattr(exc, "status_code", None) == 404 or type(exc).__name__ in ("ImageNotFound", "NotFound")


def _inspect(api: Any, ref: str) -> dict[str, Any] | None:
    """Return the engine's image inspect of ``ref``, or None when it has no such image."""
    try:
        return api.inspect_image(ref)
    except Exception as exc:
        if _not_found(exc):
            return None
        raise


def _consume(messages: Iterable[Any]) -> tuple[str | None, dict[str, Any]]:
    """Read a push/pull/load progress stream to its end; return (first error, the last aux object)."""
    error: str | None = None
    aux: dict[str, Any] = {}
    for msg in messages:
        if not isinstance(msg, dict):
            continue
        if msg.get("error") and error is None:
            error = str(msg.get("error")).strip()
        if isinstance(msg.get("aux"), dict):
            aux = msg["aux"]
    return error, aux


def _ensure_tag(api: Any, image_id: str, ref: str) -> bool:
    """Tag ``image_id`` as ``ref`` unless it already is; return whether a tag was added."""
    current = _inspect(api, ref)
    if current is not None and current.get("Id") == image_id:
        return False
    repo, tag = split_ref(ref)
    api.tag(image_id, repo, tag)
    return True


def _docker_cli() -> str:
    """Return the docker CLI that builds: $ACGS_DOCKER_CLI, else /usr/bin/docker (20.10: BuildKit built in)."""
    explicit = os.environ.get(DOCKER_CLI_ENV)
    for candidate in (explicit, "/usr/bin/docker", shutil.which("docker")):
        if candidate and os.access(candidate, os.X_OK):
            return candidate
    raise UsageError("the docker CLI is not installed (phase 2 builds with it)", hint="apt-get install docker.io")


def _cli_args(host: Host) -> list[str]:
    """Return the docker CLI's global options reaching ``host`` (endpoint and TLS, as the SDK would)."""
    args = ["-H", host.docker_host]
    if host.validate_certs:
        args.append("--tlsverify")
    elif host.tls:
        args.append("--tls")
    for flag, value in (("--tlscacert", host.ca_path), ("--tlscert", host.client_cert), ("--tlskey", host.client_key)):
        if value:
            args += [flag, value]
    return args


def resolve_bases(api: Any, source: BuildSource, host: str) -> dict[str, str]:
    """Return {base image reference: image ID} on the builder; raise BuildError naming the missing one."""
    refs = base_images_of(source)
    ids: dict[str, str] = {}
    for ref in refs:
        info = _inspect(api, ref)
        if info is None:
            raise BuildError(
                source.service,
                host,
                f"base image {ref} is not on the builder's engine",
                hint=f"load or build {ref} on {host} (builds have no registry to pull from), "
                "or name another builder in acgs_policy.build.builder",
            )
        ids[ref] = str(info["Id"])
    return ids


def base_images_of(source: BuildSource) -> list[str]:
    """Return the images ``source``'s Dockerfile builds from; UsageError names the service when it does not parse."""
    try:
        return base_images(source.dockerfile.read_text(errors="replace"), source.args)
    except UsageError as exc:
        raise UsageError(f"service {source.service}: {source.dockerfile}: {exc.message}") from None


def find_built(api: Any, digest: str) -> dict[str, Any] | None:
    """Return the inspect of an image on this engine labelled with source hash ``digest``, or None."""
    listed = api.images(filters={"label": f"{SOURCE_HASH_LABEL}={digest}"}) or []
    for item in sorted(listed, key=lambda i: str(i.get("Id"))):
        info = _inspect(api, str(item["Id"]))
        if info is not None:
            return info
    return None


def build(
    builder: Host,
    source: BuildSource,
    *,
    check: bool = False,
    timeout: float = _DEFAULT_BUILD_TIMEOUT,
    log: Log = _quiet,
) -> BuiltImage:
    """Return ``source``'s image on ``builder``: the existing one with the same source hash, else a new build.

    The build runs ``DOCKER_BUILDKIT=1 docker -H <docker_host> build --network none --iidfile F -t
    REPO:build-<hash12> --label org.acgs.source-hash=HASH`` (BuildKit: no stage images left behind); the
    candidate tag is the only tag it gets. In check mode nothing is built: an image that would be built comes
    back with ``image_id == ""`` and ``built=True``. ``seconds`` is the build's wall time (seconds).
    Raise BuildError (service + builder named) when a base image is missing or the build fails or times out.
    """
    with engine_api(builder) as api:
        try:
            bases = resolve_bases(api, source, builder.name)
            digest = source_hash(source, bases)
            tag = candidate_ref(source, digest)
            existing = find_built(api, digest)
            if existing is not None:
                image_id = str(existing["Id"])
                if not check:
                    _ensure_tag(api, image_id, tag)
                return BuiltImage(
                    source.service, digest, image_id, tag, int(existing.get("Size") or 0), builder.name, False, None
                )
        except BuildError:
            raise
        except UsageError:
            raise
        except Exception as exc:
            raise BuildError(
                source.service, builder.name, f"cannot read the builder's images: {describe_error(exc)}"
            ) from None
        if check:
            return BuiltImage(source.service, digest, "", tag, 0, builder.name, True, None)
        log(f"building {source.service} on {builder.name} ({tag})")
        image_id, seconds = _run_build(builder, source, tag, digest, timeout)
        try:
            info = api.inspect_image(image_id)
        except Exception as exc:
            raise BuildError(source.service, builder.name, f"the built image vanished: {describe_error(exc)}") from None
        return BuiltImage(
            source.service, digest, image_id, tag, int(info.get("Size") or 0), builder.name, True, seconds
        )


def _run_build(builder: Host, source: BuildSource, tag: str, digest: str, timeout: float) -> tuple[str, float]:
    """Run the BuildKit build through the docker CLI; return (image ID, wall seconds)."""
    with tempfile.TemporaryDirectory(prefix="acgs-build-") as tmp:
        iidfile = Path(tmp) / "iid"
        argv = [
            _docker_cli(),
            *_cli_args(builder),
            "build",
            "--network",
            "none",
            "--progress",
            "plain",
            "--iidfile",
            str(iidfile),
            "-t",
            tag,
            "--label",
            f"{SOURCE_HASH_LABEL}={digest}",
            "--label",
            f"{SERVICE_LABEL}={source.service}",
            "-f",
            str(source.dockerfile),
        ]
        for key in sorted(source.args):
            argv += ["--build-arg", f"{key}={source.args[key]}"]
        argv.append(str(source.context))
        # The CLI's own config dir: no user's credentials helpers or contexts change what it does.
        # Over ssh:// the CLI's `ssh` honours docker_ssh_config and joins the host's connection (engine.ssh_env).
        env = {
            **ssh_env(Endpoint.of(builder)),
            "DOCKER_BUILDKIT": "1",
            "DOCKER_CONFIG": tmp,
            "BUILDKIT_PROGRESS": "plain",
        }
        env.pop("DOCKER_CONTEXT", None)
        t0 = time.monotonic()
        try:
            proc = subprocess.run(argv, capture_output=True, text=True, timeout=timeout, env=env, check=False)
        except subprocess.TimeoutExpired:
            raise BuildError(
                source.service, builder.name, f"the build did not finish within {timeout:.0f} s", hint="re-run"
            ) from None
        seconds = time.monotonic() - t0
        if proc.returncode != 0 or not iidfile.is_file():
            lines = [ln for ln in (proc.stderr or proc.stdout).splitlines() if ln.strip()]
            detail = next((ln for ln in reversed(lines) if "error" in ln.lower()), lines[-1] if lines else "")
            raise BuildError(source.service, builder.name, f"the build failed: {detail.strip()[:400]}")
        return iidfile.read_text().strip(), seconds


def publish(builder: Host, image: BuiltImage, source: BuildSource, registry: str, *, check: bool = False) -> BuiltImage:
    """Return ``image`` with its registry digest: pushed from the builder unless the registry already holds it.

    The image is tagged REGISTRY/.../REPO:build-<hash12> on the builder for the push; a failed push removes
    that tag again (nothing half-tagged). Already pushed (the builder's RepoDigests names it and the registry
    still serves that digest): nothing is sent. Raise BuildError naming the service and the builder.
    """
    repo = registry_repository(registry, source)
    tag = split_ref(image.candidate)[1]
    ref = f"{repo}:{tag}"
    with engine_api(builder) as api:
        try:
            info = _inspect(api, image.image_id) if image.image_id else None
            known = [d for d in (info or {}).get("RepoDigests") or [] if d.startswith(f"{repo}@")]
            for entry in known:
                digest = entry.partition("@")[2]
                if _registry_has(api, f"{repo}@{digest}"):
                    return replace(image, digest=digest, registry_repo=repo)
        except Exception as exc:
            raise BuildError(
                image.service, builder.name, f"cannot read the builder's image: {describe_error(exc)}"
            ) from None
        if check:
            return replace(image, registry_repo=repo)
        had_tag = ref in ((info or {}).get("RepoTags") or [])
        try:
            api.tag(image.image_id, repo, tag)
            error, aux = _consume(api.push(repo, tag=tag, stream=True, decode=True))
        except Exception as exc:
            error, aux = describe_error(exc), {}
        if error or not aux.get("Digest"):
            if not had_tag:
                _untag_quietly(api, ref)
            raise BuildError(
                image.service,
                builder.name,
                f"pushing {ref} to the registry failed: {error or 'the registry returned no digest'}",
                hint=f"check that the registry {registry} answers (GET /v2/), then re-run: the build is kept",
            )
        return replace(image, digest=str(aux["Digest"]), registry_repo=repo, pushed=True)


def _registry_has(api: Any, ref: str) -> bool:
    """Return whether the registry serves ``ref`` (the engine asks it: GET /distribution/{ref}/json)."""
    try:
        if hasattr(api, "inspect_distribution"):
            api.inspect_distribution(ref)
        else:
            api._get(f"/distribution/{ref}/json")
        return True
    except Exception:
        return False


def _untag_quietly(api: Any, ref: str) -> None:
    try:
        api.remove_image(ref, noprune=True)
    except Exception:
        pass  # best effort: the engine may be the thing that failed; a re-run tags and pushes again


def ship(
    builder: Host,
    target: Host,
    image: BuiltImage,
    *,
    check: bool = False,
) -> ShipResult:
    """Put ``image`` on ``target`` (tagged with its candidate tag); nothing moves when the host holds its ID.

    Through the registry when ``image.digest`` is set (pull REPO@DIGEST, then tag), else engine to engine:
    the builder's GET /images/{candidate}/get streamed into the target's POST /images/load (no temp file; the
    archive names the candidate tag, so the load tags it). The loaded/pulled image's ID is checked against
    the built one. Raise BuildError naming the service and the target host; a failed transfer creates no
    image, and a re-run finishes it.
    """
    if target.docker_host == builder.docker_host and image.image_id:
        with engine_api(target) as api:
            tagged = False if check else _ensure_tag(api, image.image_id, image.candidate)
        return ShipResult(target.name, image.service, image.image_id, "present", False, tagged)
    t0 = time.monotonic()
    with engine_api(target) as tapi:
        try:
            present = _inspect(tapi, image.image_id) if image.image_id else None
            if present is not None:
                tagged = False if check else _ensure_tag(tapi, image.image_id, image.candidate)
                return ShipResult(target.name, image.service, image.image_id, "present", False, tagged)
        except Exception as exc:
            raise BuildError(
                image.service, target.name, f"cannot read the host's images: {describe_error(exc)}"
            ) from None
        method = "registry" if image.digest or image.registry_repo else "engine"
        if check:
            return ShipResult(target.name, image.service, image.image_id, method, False, False)
        if image.digest:
            ref = f"{image.registry_repo}@{image.digest}"
            try:
                error, _aux = _consume(tapi.pull(ref, stream=True, decode=True))
            except Exception as exc:
                error = describe_error(exc)
            if error:
                raise BuildError(
                    image.service,
                    target.name,
                    f"pulling {ref} from the registry failed: {error}",
                    hint="check that the registry answers from this host's engine, then re-run",
                )
        else:
            with engine_api(builder) as bapi:
                try:
                    error, _aux = _consume(tapi.load_image(bapi.get_image(image.candidate)))
                except Exception as exc:
                    error = describe_error(exc)
            if error:
                raise BuildError(
                    image.service,
                    target.name,
                    f"streaming {image.candidate} from {builder.name} failed: {error}",
                    hint="check both engines answer, then re-run",
                )
        try:
            got = _inspect(tapi, image.image_id)
            if got is None:
                raise BuildError(
                    image.service, target.name, f"{image.image_id[:19]} is not on the host after the transfer"
                )
            # Pulled by digest it has no tag yet (the engine lists it as dangling): give it its candidate tag.
            _ensure_tag(tapi, image.image_id, image.candidate)
        except BuildError:
            raise
        except Exception as exc:
            raise BuildError(
                image.service, target.name, f"tagging {image.candidate} failed: {describe_error(exc)}"
            ) from None
    return ShipResult(target.name, image.service, image.image_id, method, True, True, time.monotonic() - t0)


def policy_gate(policy: Policy, address: str = "127.0.98.1") -> Gate:
    """Return the phase-2 gates of ``policy`` as a Gate: ``gates.run_gates`` on the builder's engine (size cap,
    expected size, build time, smoke test with the image's HEALTHCHECK, dev-tool scan), each result as a
    GateVerdict. An image found already built (no build time measured now) skips the build-time gate.
    ``address``: the 127.x address the smoke-tested service binds on the builder."""

    def gate(builder: Host, source: BuildSource, image: BuiltImage) -> list[GateVerdict]:
        import docker

        from .gates import run_gates

        service = next(s for s in policy.services if s.name == source.service)
        # The SDK's own ssh:// needs paramiko: over ssh:// it gets a local socket piped through our ssh instead
        # (engine.local_socket: docker_ssh_config honoured, the host's one connection joined).
        with local_socket(Endpoint.of(builder)) as url:
            kwargs = builder.docker_client_kwargs()
            if url != builder.docker_host:
                kwargs.update(base_url=url, use_ssh_client=False)
            client = docker.DockerClient(**kwargs)
            try:
                report = run_gates(
                    client, image.image_id, service, policy, build_seconds=image.seconds, address=address
                )
            finally:
                client.close()
        return [GateVerdict(name=r.gate, passed=r.passed, detail=r.reason) for r in report.results]

    return gate


def gated_before(builder: Host, source: BuildSource, image: BuiltImage) -> bool:
    """Return whether ``image`` already passed its gates: it was found (not built now) and the builder's release
    tag names it (a release tag only ever moves after the gates passed). Spares re-running a smoke test on a
    re-run with unchanged sources; a changed gate policy therefore applies to the next new build."""
    if image.built or not image.image_id:
        return False
    with engine_api(builder) as api:
        try:
            current = _inspect(api, source.release_ref)
        except Exception:
            return False
    return current is not None and current.get("Id") == image.image_id


def release(target: Host, image: BuiltImage, source: BuildSource, *, check: bool = False) -> ReleaseResult:
    """Point the service's release tag at ``image`` on ``target`` (call it only once the gates passed).

    The image the tag named before keeps a REPO:rollback-<id12> tag when the release tag was its last one,
    so it never becomes dangling (zero-dangling criterion; rollback retention). Raise BuildError naming the
    service and the host.
    """
    ref = source.release_ref
    with engine_api(target) as api:
        try:
            before = _inspect(api, ref)
            previous_id = str(before["Id"]) if before else None
            previous_size = int(before.get("Size") or 0) if before else None
            if previous_id == image.image_id:
                return ReleaseResult(
                    target.name, image.service, ref, image.image_id, previous_id, previous_size, None, False
                )
            rollback = None
            if before is not None:
                tags = [t for t in before.get("RepoTags") or [] if t and t != "<none>:<none>"]
                if tags == [ref]:
                    rollback = f"{source.repository}:{ROLLBACK_PREFIX}{previous_id.removeprefix('sha256:')[:12]}"
            if not check:
                if rollback is not None:
                    _ensure_tag(api, previous_id, rollback)
                repo, tag = split_ref(ref)
                api.tag(image.image_id, repo, tag)
        except Exception as exc:
            raise BuildError(image.service, target.name, f"tagging {ref} failed: {describe_error(exc)}") from None
    return ReleaseResult(target.name, image.service, ref, image.image_id, previous_id, previous_size, rollback, True)


# --------------------------------------------------------------------------------------------- the fleet


@dataclass
class ServiceOutcome:
    """One service across the fleet: its image, its gates, and what each host got."""

    source: BuildSource
    image: BuiltImage | None = None
    error: str | None = None  # the build's (or push's) failure, with service and host named
    gates: list[GateVerdict] = field(default_factory=list)
    shipped: dict[str, ShipResult] = field(default_factory=dict)
    released: dict[str, ReleaseResult] = field(default_factory=dict)
    host_errors: dict[str, str] = field(default_factory=dict)  # host -> why it did not get the image

    @property
    def gates_passed(self) -> bool:
        """Return whether every gate passed (no gates: True)."""
        return all(g.passed for g in self.gates)

    @property
    def changed(self) -> bool:
        """Return whether anything was built, pushed, shipped or tagged."""
        img = self.image
        return bool(
            (img and (img.built or img.pushed))
            or any(s.shipped or s.tagged for s in self.shipped.values())
            or any(r.changed for r in self.released.values())
        )


def pick_builder(hosts: Sequence[Host], policy: Policy, builder: str | None = None) -> Host:
    """Return the builder host: ``builder``, else the policy's ``build.builder``, else the first host.

    Raise UsageError when the named builder is not among ``hosts``.
    """
    if not hosts:
        raise UsageError("no hosts to build for")
    name = builder or policy.build.builder
    if name is None:
        return hosts[0]
    for h in hosts:
        if h.name == name:
            return h
    raise UsageError(
        f"builder {name} is not among the selected hosts",
        hint=f"set acgs_policy.build.builder to one of: {', '.join(h.name for h in hosts)}",
    )


def build_and_ship(
    hosts: Sequence[Host],
    policy: Policy,
    base: Path | None = None,
    *,
    builder: str | None = None,
    registry: str | None = None,
    use_registry: bool = True,
    gate: Gate | None = None,
    dockerfiles: Mapping[str, Path] | None = None,
    services: Iterable[str] | None = None,
    check: bool = False,
    store: StateStore | None = None,
    workers: int = 8,
    log: Log = _quiet,
) -> list[ServiceOutcome]:
    """Build each service once on the builder, gate it, ship it to every host, release it; return the outcomes.

    ``registry`` defaults to ``policy.registry`` (``use_registry=False`` ships engine to engine even when the
    policy names one). ``gate(builder, source, image)`` returns the gate verdicts of a built image; a
    service whose gates fail is neither shipped nor released (its candidate stays on the builder). Hosts are
    served in parallel (``workers``). With ``store``, one BuildRecord per service and host that holds the
    image is written (see ``build_record``). Failures never raise: they are in each outcome's ``error`` /
    ``host_errors`` with service and host named; a re-run finishes the work.
    """
    chosen = pick_builder(hosts, policy, builder)
    reg = (registry or policy.registry) if use_registry else None
    sources = sources_from_policy(policy, base, dockerfiles, services)
    outcomes = [ServiceOutcome(s) for s in sources]

    def build_one(outcome: ServiceOutcome) -> None:
        try:
            image = build(chosen, outcome.source, check=check, log=log)
            if gate is not None and image.image_id and not gated_before(chosen, outcome.source, image):
                outcome.gates = list(gate(chosen, outcome.source, image))
            if reg and outcome.gates_passed and image.image_id:
                image = publish(chosen, image, outcome.source, reg, check=check)
            outcome.image = image
        except BuildError as exc:
            outcome.error = exc.message
        except UsageError as exc:
            outcome.error = exc.message

    # Two builds at a time: BuildKit parallelises inside a build, and the builder is one machine.
    with ThreadPoolExecutor(max_workers=2) as pool:
        list(pool.map(build_one, outcomes))

    ready = [o for o in outcomes if o.image is not None and o.error is None and o.gates_passed]

    def serve(target: Host) -> None:
        for outcome in ready:
            assert outcome.image is not None
            if not outcome.image.image_id:  # check mode, not built yet: it would be shipped
                method = "registry" if reg else "engine"
                outcome.shipped[target.name] = ShipResult(target.name, outcome.source.service, "", method, False, False)
                continue
            try:
                outcome.shipped[target.name] = ship(chosen, target, outcome.image, check=check)
                outcome.released[target.name] = release(target, outcome.image, outcome.source, check=check)
            except BuildError as exc:
                outcome.host_errors[target.name] = exc.message

    with ThreadPoolExecutor(max_workers=max(1, min(workers, len(hosts)))) as pool:
        list(pool.map(serve, hosts))

    if store is not None and not check:
        for outcome in outcomes:
            for record in records_for(outcome, [h.name for h in hosts], store):
                store.add_build_record(record)
    return outcomes


def build_record(
    outcome: ServiceOutcome,
    host: str,
    finished_at: datetime | None = None,
    seconds: float | None = None,
) -> BuildRecord:
    """Return the BuildRecord of ``outcome`` on ``host`` (criteria 2, 3 and 5 read these).

    ``ok`` is the build's success; ``seconds`` the build's wall time (for an image found already built, pass
    the time recorded when it was built); ``size`` the image's bytes; ``size_before`` what the service's
    release tag named on the host before; ``released`` whether the release tag now names this image there.
    """
    img = outcome.image
    rel = outcome.released.get(host)
    ship_result = outcome.shipped.get(host)
    return BuildRecord(
        host=host,
        service=outcome.source.service,
        image=outcome.source.release_ref,
        ok=img is not None and outcome.error is None,
        seconds=float(seconds if seconds is not None else (img.seconds if img and img.seconds is not None else 0.0)),
        size=img.size if img else None,
        finished_at=finished_at or datetime.now(UTC),
        error=outcome.error or outcome.host_errors.get(host),
        image_id=img.image_id if img else None,
        digest=img.digest if img else None,
        source_hash=img.source_hash if img else None,
        size_before=rel.previous_size if rel else None,
        builder=img.builder if img else None,
        shipped_via=ship_result.method if ship_result else None,
        gates=list(outcome.gates),
        released=bool(rel and outcome.image and rel.image_id == outcome.image.image_id),
    )


def records_for(outcome: ServiceOutcome, hosts: Sequence[str], store: StateStore | None = None) -> list[BuildRecord]:
    """Return the build records to write for ``outcome``: one per host that holds the image (every host when
    the build failed or its gates did). Nothing when nothing changed and the store already records this
    source hash.

    An image found already built takes its build seconds from the store's earlier record of the same
    source hash (no record: none is written — a build time never measured is not invented).
    """
    img = outcome.image
    if img is None:
        return [build_record(outcome, h) for h in hosts] if outcome.error else []
    if not outcome.gates_passed and img.built:
        # Built, then gated out: every host learns why its service image did not change.
        return [build_record(outcome, h) for h in hosts]
    seconds = img.seconds
    if not img.built:
        earlier = _recorded(store, outcome.source.service, img.source_hash, hosts) if store else None
        if earlier is None:
            return []
        if not outcome.changed:
            return []
        seconds = earlier.seconds
        if not outcome.gates:
            outcome.gates = list(earlier.gates)  # gated when it was built (see gated_before)
    return [
        build_record(outcome, h, seconds=seconds) for h in hosts if h in outcome.shipped or h in outcome.host_errors
    ]


def _recorded(store: StateStore, service: str, digest: str, hosts: Sequence[str]) -> BuildRecord | None:
    for host in hosts:
        for record in store.build_records(host):
            if record.service == service and record.source_hash == digest and record.ok:
                return record
    return None


# --------------------------------------------------------------------------------------------- planning (pure)


def planned_hashes(sources: Sequence[BuildSource], builder: HostSnapshot) -> dict[str, str]:
    """Return service -> source hash, from the builder's snapshot (its base image IDs); no engine call.

    Raise UsageError naming the service when its Dockerfile does not parse, BuildError naming the service and
    the builder when a base image is not on the builder's engine. For ``plan phase2``.
    """
    out: dict[str, str] = {}
    for source in sources:
        ids: dict[str, str] = {}
        for ref in base_images_of(source):
            img = builder.image(ref)
            if img is None:
                raise BuildError(source.service, builder.host, f"base image {ref} is not on the builder's engine")
            ids[ref] = img.id
        out[source.service] = source_hash(source, ids)
    return out


def image_for(snapshot: HostSnapshot, digest: str) -> ImageFact | None:
    """Return the image on this host built from source hash ``digest`` (its label says so), or None.

    ``plan phase2`` with it: the builder lacking it -> "build"; another host lacking it -> "ship";
    present but the service's release tag elsewhere -> "release"; else nothing to do.
    """
    for img in sorted(snapshot.images, key=lambda i: i.id):
        if img.labels.get(SOURCE_HASH_LABEL) == digest:
            return img
    return None


def dangling_ids(host: Host) -> set[str]:
    """Return the IDs of ``host``'s dangling images: no tag and no repository digest (``models.is_dangling``).

    Not the engine's ``dangling=true`` filter: it also lists images pulled by digest, which are named.
    """
    with engine_api(host) as api:
        return {
            str(i["Id"]) for i in api.images() or [] if is_dangling(i.get("RepoTags") or [], i.get("RepoDigests") or [])
        }
