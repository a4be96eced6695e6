"""Build-context doctor: what will break or bloat a service's build, found before building.

For each configured service it parses the Dockerfile with a real parser (dockerfile-parse), checks
every COPY/ADD source against the build context exactly as the engine will see it (.dockerignore
applied with Docker's own matching rules), and points at the usual causes of oversized images.
It reads files only; it never creates a missing file (safety invariant 6).
"""

from __future__ import annotations

import io
import os
import posixpath
import re
import shlex
from dataclasses import dataclass
from functools import lru_cache
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Policy, ServicePolicy
from .models import HostSnapshot
from .units import human_size

Severity = Literal["error", "warning", "info"]

# Words that give away development tooling in a production stage.
DEV_TOOLS = (
    "jupyter",
    "jupyterlab",
    "notebook",
    "ipython",
    "pytest",
    "gcc",
    "g++",
    "build-essential",
    "make",
    "cmake",
    "clang",
    "gdb",
    "vim",
    "black",
    "mypy",
    "flake8",
    "ruff",
    "pylint",
    "ipykernel",
    "-dev",
)
_REQUIREMENTS_RE = re.compile(
    r"(^|/)(requirements[^/]*\.(txt|in)|pyproject\.toml|Pipfile(\.lock)?|poetry\.lock|setup\.py)$"
)
_BIGGEST = 5


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class DoctorFinding(_Model):
    """One problem in a service's build: its severity, a title as the report words it, and where."""

    severity: Severity
    code: str  # missing-file, excluded-file, no-dockerignore, dev-tools, pip-cache, apt-lists, base-size, ...
    title: str  # "Missing requirements file", "Missing application files", ...
    message: str
    file: str | None = None  # the file concerned, relative to the context
    line: int | None = None  # 1-based line in the Dockerfile


class ContextEntry(_Model):
    """A top-level entry of the build context and the bytes it sends."""

    path: str
    bytes: int


class ServiceDoctor(_Model):
    """The doctor's verdict on one service's build."""

    service: str
    context: str
    dockerfile: str
    dockerfile_found: bool
    dockerignore: bool
    context_bytes: int = 0
    context_files: int = 0
    biggest: list[ContextEntry] = Field(default_factory=list)
    stages: int = 0
    base_image: str | None = None
    base_image_size: int | None = None
    findings: list[DoctorFinding] = Field(default_factory=list)

    @property
    def errors(self) -> list[DoctorFinding]:
        """Return the findings that make the build fail."""
        return [f for f in self.findings if f.severity == "error"]

    @property
    def ok(self) -> bool:
        """Return True when nothing found would make the build fail."""
        return not self.errors


# --- .dockerignore: Docker's pattern semantics (moby/patternmatcher) ----------------------------------


@dataclass(frozen=True)
class IgnorePattern:
    """One cleaned .dockerignore line."""

    pattern: str
    exclusion: bool  # a "!" line: re-include what earlier lines excluded
    regex: re.Pattern[str]


def _clean(pattern: str) -> str:
    # filepath.Clean + ToSlash, then an absolute pattern becomes relative to the context.
    cleaned = posixpath.normpath(pattern)
    if cleaned.startswith("//"):
        cleaned = "/" + cleaned.lstrip("/")
    if len(cleaned) > 1 and cleaned.startswith("/"):
        cleaned = cleaned[1:]
    return cleaned


@lru_cache(maxsize=4096)
def pattern_regex(pattern: str) -> re.Pattern[str]:
    """Return the regex Docker compiles a cleaned pattern to: ``*``/``?`` stop at "/", ``**`` spans dirs."""
    out = ["^"]
    i, n = 0, len(pattern)
    while i < n:
        ch = pattern[i]
        if ch == "*":
            if i + 1 < n and pattern[i + 1] == "*":
                i += 2
                if i < n and pattern[i] == "/":
                    i += 1  # "**/" is treated as "**"
                out.append(".*" if i >= n else "(.*/)?")
                continue
            out.append("[^/]*")
        elif ch == "?":
            out.append("[^/]")
        elif ch == "\\":
            if i + 1 < n:
                i += 1
                out.append(re.escape(pattern[i]))
            else:
                out.append(r"\\")
        elif ch == "[":
            # A character class as Go's filepath.Match knows it: "[^x]" negates; "!" is a plain character.
            end = pattern.find("]", i + 2)
            if end == -1:
                out.append(r"\[")
            else:
                body = pattern[i + 1 : end]
                out.append("[" + body.replace("\\", "\\\\") + "]")
                i = end
        else:
            out.append(re.escape(ch))
        i += 1
    out.append("$")
    return re.compile("".join(out), re.DOTALL)


def parse_dockerignore(text: str) -> list[IgnorePattern]:
    """Return the patterns of a .dockerignore file, in order (comments and blank lines dropped)."""
    patterns: list[IgnorePattern] = []
    for raw in text.splitlines():
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        exclusion = line.startswith("!")
        if exclusion:
            line = line[1:].strip()
        if not line:
            continue
        cleaned = _clean(line)
        patterns.append(IgnorePattern(cleaned, exclusion, pattern_regex(cleaned)))
    return patterns


def is_ignored(path: str, patterns: list[IgnorePattern]) -> bool:
    """Return True when ``path`` (relative, "/"-separated) is left out of the context.

    Like Docker: the last pattern that matches the path or one of its parent directories decides;
    "!" patterns re-include.
    """
    path = _clean(path)
    parents = path.split("/")[:-1]
    matched = False
    for pat in patterns:
        if pat.exclusion != matched:
            continue  # an exclusion only matters once something matched, an inclusion only before
        hit = bool(pat.regex.match(path))
        if not hit:
            for i in range(len(parents)):
                if pat.regex.match("/".join(parents[: i + 1])):
                    hit = True
                    break
        if hit:
            matched = not pat.exclusion
    return matched


# --- The build context as the engine receives it -------------------------------------------------------


@dataclass
class BuildContext:
    """The files and directories of a context that survive .dockerignore."""

    root: Path
    paths: set[str]  # every included file and directory, relative, "/"-separated
    sizes: dict[str, int]  # included file -> bytes
    patterns: list[IgnorePattern]

    def excluded(self, rel: str) -> bool:
        """Return True when ``rel`` exists on disk but .dockerignore leaves it out."""
        return (self.root / rel).exists() and is_ignored(rel, self.patterns)


def read_context(root: Path, ignore_file: Path | None = None) -> BuildContext:
    """Return the included paths and file sizes of the context at ``root``.

    ``ignore_file`` replaces ``root/.dockerignore`` (BuildKit reads ``<Dockerfile>.dockerignore`` instead when
    it exists).
    """
    ignore_file = ignore_file or root / ".dockerignore"
    patterns = parse_dockerignore(ignore_file.read_text(errors="replace")) if ignore_file.is_file() else []
    has_exceptions = any(p.exclusion for p in patterns)
    paths: set[str] = set()
    sizes: dict[str, int] = {}
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep_dirs = []
        for d in dirnames:
            rel = f"{rel_dir}/{d}" if rel_dir else d
            ignored = is_ignored(rel, patterns)
            if not ignored:
                paths.add(rel)
            # An excluded directory can only contribute files when some "!" pattern re-includes them.
            if not ignored or has_exceptions:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for f in filenames:
            rel = f"{rel_dir}/{f}" if rel_dir else f
            if is_ignored(rel, patterns):
                continue
            paths.add(rel)
            try:
                sizes[rel] = os.lstat(os.path.join(dirpath, f)).st_size
            except OSError:
                sizes[rel] = 0
            # A re-included file makes its parent directories part of the context.
            parent = rel.rpartition("/")[0]
            while parent and parent not in paths:
                paths.add(parent)
                parent = parent.rpartition("/")[0]
    return BuildContext(root=root, paths=paths, sizes=sizes, patterns=patterns)


def _has_glob(path: str) -> bool:
    return any(ch in path for ch in "*?[")


def source_present(ctx: BuildContext, source: str) -> bool:
    """Return True when a COPY/ADD source (a path or a glob) names something the context holds."""
    rel = _clean(source.lstrip("/")) if source not in ("", ".", "/") else "."
    if rel == ".":
        return True
    if _has_glob(rel):
        regex = pattern_regex(rel)
        return any(regex.match(p) for p in ctx.paths)
    return rel in ctx.paths


# --- Dockerfile checks ---------------------------------------------------------------------------------

_VAR_RE = re.compile(r"\$(?:\{(\w+)(?::?[-+]([^}]*))?\}|(\w+))")


def _expand(text: str, env: dict[str, str]) -> str | None:
    """Return ``text`` with $VAR/${VAR}/${VAR:-default} replaced; None if a variable has no known value."""
    unknown = False

    def sub(m: re.Match[str]) -> str:
        nonlocal unknown
        name = m.group(1) or m.group(3)
        if name in env:
            return env[name]
        if m.group(2) is not None:
            return m.group(2)
        unknown = True
        return ""

    result = _VAR_RE.sub(sub, text)
    return None if unknown else result


def _copy_args(value: str) -> tuple[dict[str, str], list[str]]:
    """Return the --flags and the positional arguments of a COPY/ADD value (shell or JSON form)."""
    value = value.strip()
    flags: dict[str, str] = {}
    while value.startswith("--"):
        head, _, value = value.partition(" ")
        key, _, val = head[2:].partition("=")
        flags[key] = val
        value = value.lstrip()
    if value.startswith("["):
        import json

        try:
            args = [str(a) for a in json.loads(value)]
        except ValueError:
            args = value.split()
    else:
        try:
            args = shlex.split(value, posix=True)
        except ValueError:
            args = value.split()
    return flags, args


def _title_for(source: str) -> str:
    return "Missing requirements file" if _REQUIREMENTS_RE.search(source) else "Missing application files"


def _contains_tool(text: str, tool: str) -> bool:
    if tool == "-dev":
        return bool(re.search(r"\b[\w.+]+-dev\b", text))
    return bool(re.search(rf"(?<![\w.-]){re.escape(tool)}(?![\w.-])", text, re.IGNORECASE))


def check_service(
    service: ServicePolicy, policy: Policy, base: Path | None = None, snapshot: HostSnapshot | None = None
) -> ServiceDoctor:
    """Return the doctor's findings for one service (``policy.sources_root`` is relative to ``base``)."""
    context = policy.service_context(service, base)
    dockerfile = (
        context / service.dockerfile
        if not Path(service.dockerfile).is_absolute()
        else Path(service.dockerfile)
    )
    result = ServiceDoctor(
        service=service.name,
        context=str(context),
        dockerfile=str(dockerfile),
        dockerfile_found=dockerfile.is_file(),
        dockerignore=(context / ".dockerignore").is_file(),
    )
    findings = result.findings
    if not context.is_dir():
        findings.append(
            DoctorFinding(
                severity="error",
                code="missing-context",
                title="Missing build context",
                message=f"build context {context} does not exist "
                f"(policy.sources_root + services[{service.name}].context)",
            )
        )
        return result
    ctx = read_context(context)
    result.context_bytes = sum(ctx.sizes.values())
    result.context_files = len(ctx.sizes)
    top: dict[str, int] = {}
    for rel, size in ctx.sizes.items():
        first = rel.split("/", 1)[0]
        top[first + ("/" if "/" in rel else "")] = top.get(first + ("/" if "/" in rel else ""), 0) + size
    result.biggest = [
        ContextEntry(path=p, bytes=b) for p, b in sorted(top.items(), key=lambda kv: -kv[1])[:_BIGGEST]
    ]
    if not result.dockerignore:
        findings.append(
            DoctorFinding(
                severity="warning",
                code="no-dockerignore",
                title="No .dockerignore",
                message=f"no .dockerignore: the whole context ({human_size(result.context_bytes)}, "
                f"{result.context_files} files) is sent to the engine on every build",
            )
        )
    if not result.dockerfile_found:
        findings.append(
            DoctorFinding(
                severity="error",
                code="missing-dockerfile",
                title="Missing Dockerfile",
                message=f"Dockerfile not found: {dockerfile}",
                file=service.dockerfile,
            )
        )
        return result
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(dockerfile.read_bytes()))
    _check_instructions(parser.structure, ctx, service, policy, snapshot, result)
    return result


def _check_instructions(
    structure: list[dict],
    ctx: BuildContext,
    service: ServicePolicy,
    policy: Policy,
    snapshot: HostSnapshot | None,
    result: ServiceDoctor,
) -> None:
    findings = result.findings
    env: dict[str, str] = {}
    global_args: dict[str, str] = {}
    stage_names: set[str] = set()
    stages: list[tuple[str, list[dict]]] = []  # (base image, instructions)
    # The report names files from the sources root ("COPY services/.../pgc_service/requirements.txt").
    context_label = str(service.context)
    for item in structure:
        instruction = item["instruction"].upper()
        value = item["value"]
        line = int(item["startline"]) + 1
        if instruction == "ARG":
            name, _, default = value.partition("=")
            target = global_args if not stages else env
            target[name.strip()] = default.strip().strip('"')
            continue
        if instruction == "FROM":
            parts = value.split()
            parts = [p for p in parts if not p.startswith("--")]
            image = _expand(parts[0], global_args) or parts[0] if parts else ""
            if len(parts) >= 3 and parts[1].lower() == "as":
                stage_names.add(parts[2].lower())
            stages.append((image, []))
            env = dict(global_args)
            continue
        if not stages:
            continue
        stages[-1][1].append(item)
        if instruction == "ENV":
            for m in re.finditer(r"(\w+)=(\"[^\"]*\"|\S+)", value):
                env[m.group(1)] = m.group(2).strip('"')
            if "=" not in value and " " in value:
                key, _, val = value.partition(" ")
                env[key] = val.strip()
            continue
        if instruction not in ("COPY", "ADD"):
            continue
        flags, args = _copy_args(value)
        if "from" in flags or len(args) < 2 or any(a.startswith("<<") for a in args):
            continue  # from another stage/image, or a heredoc: nothing to find in the context
        for source in args[:-1]:
            if instruction == "ADD" and re.match(r"^(https?://|git@|git://)", source):
                continue
            expanded = _expand(source, env)
            if expanded is None:
                findings.append(
                    DoctorFinding(
                        severity="info",
                        code="unresolved-source",
                        title="Unchecked source",
                        message=f"{instruction} {source}: uses a build argument without a default",
                        line=line,
                    )
                )
                continue
            if source_present(ctx, expanded):
                continue
            rel = _clean(expanded.lstrip("/"))
            shown = f"{instruction} {posixpath.normpath(posixpath.join(context_label, rel))}"
            why = "No file matches" if _has_glob(rel) else "File not found"
            if not _has_glob(rel) and ctx.excluded(rel):
                findings.append(
                    DoctorFinding(
                        severity="error",
                        code="excluded-file",
                        title=_title_for(rel),
                        message=f"{shown}\nExcluded by .dockerignore: {rel}",
                        file=rel,
                        line=line,
                    )
                )
            else:
                findings.append(
                    DoctorFinding(
                        severity="error",
                        code="missing-file",
                        title=_title_for(rel),
                        message=f"{shown}\n{why}: {rel}",
                        file=rel,
                        line=line,
                    )
                )
    result.stages = len(stages)
    if not stages:
        findings.append(
            DoctorFinding(
                severity="error", code="no-from", title="No FROM", message="the Dockerfile has no FROM"
            )
        )
        return
    final_base, final_items = stages[-1]
    # Base of the final stage, followed through stage names to a real image.
    by_name = {}
    for item in structure:
        if item["instruction"].upper() == "FROM":
            parts = [p for p in item["value"].split() if not p.startswith("--")]
            if len(parts) >= 3 and parts[1].lower() == "as":
                by_name[parts[2].lower()] = parts[0]
    base = final_base
    for _ in range(len(by_name) + 1):
        if base.lower() in by_name:
            base = by_name[base.lower()]
    result.base_image = base
    if snapshot is not None and base.lower() != "scratch":
        img = snapshot.image(base)
        if img is not None:
            result.base_image_size = img.size
            budget = policy.service_budget(service)
            if img.size > budget:
                findings.append(
                    DoctorFinding(
                        severity="warning",
                        code="base-size",
                        title="Large base image",
                        message=f"base image {base} alone is {human_size(img.size)}, over the service's "
                        f"{human_size(budget)} budget: no build on it can meet the budget",
                    )
                )
            elif service.expected_size and img.size > service.expected_size:
                findings.append(
                    DoctorFinding(
                        severity="info",
                        code="base-size",
                        title="Large base image",
                        message=f"base image {base} is {human_size(img.size)}, above the expected "
                        f"{human_size(service.expected_size)}",
                    )
                )
    _check_final_stage(final_items, ctx, len(stages), findings)
    for _, items in stages:
        for item in items:
            if item["instruction"].upper() == "RUN":
                _check_run(item, findings)


def _check_final_stage(
    items: list[dict], ctx: BuildContext, n_stages: int, findings: list[DoctorFinding]
) -> None:
    """Flag development tools installed in the final (shipped) stage."""
    found: list[str] = []
    lines: list[int] = []
    for item in items:
        if item["instruction"].upper() != "RUN":
            continue
        text = item["value"]
        if not re.search(r"\b(apt-get|apt|apk|yum|dnf|pip3?|python3? -m pip|conda|uv)\b", text):
            continue
        hits = [t for t in DEV_TOOLS if _contains_tool(text, t)]
        # Tools pulled in by a requirements file installed here count too.
        for req in re.findall(r"-r\s+(\S+)", text):
            name = req.split("/")[-1]
            candidates = [
                p for p in ctx.sizes if p == req.lstrip("./") or p.endswith("/" + name) or p == name
            ]
            for cand in candidates[:1]:
                try:
                    content = (ctx.root / cand).read_text(errors="replace")
                except OSError:
                    continue
                for tool in DEV_TOOLS:
                    if tool != "-dev" and re.search(
                        rf"^\s*{re.escape(tool)}\b", content, re.IGNORECASE | re.MULTILINE
                    ):
                        hits.append(f"{tool} (in {cand})")
        if hits:
            found.extend(h for h in hits if h not in found)
            lines.append(int(item["startline"]) + 1)
    if found:
        kind = "single-stage build" if n_stages == 1 else "final stage"
        findings.append(
            DoctorFinding(
                severity="warning",
                code="dev-tools",
                title="Development tools in production",
                message=f"{kind} installs development tools: {', '.join(found)} — build them in an "
                "earlier stage and copy only the results",
                line=lines[0],
            )
        )


def _check_run(item: dict, findings: list[DoctorFinding]) -> None:
    """Flag package installs that leave caches in the layer (pip cache, apt lists)."""
    text = item["value"]
    line = int(item["startline"]) + 1
    cache_mount = "--mount=type=cache" in text
    if (
        re.search(r"\bpip3?\s+install\b|-m\s+pip\s+install\b", text)
        and "--no-cache-dir" not in text
        and not cache_mount
    ):
        if "PIP_NO_CACHE_DIR" not in text:
            findings.append(
                DoctorFinding(
                    severity="warning",
                    code="pip-cache",
                    title="pip cache left in the image",
                    message="pip install without --no-cache-dir keeps the wheel cache in the layer "
                    "(hadolint DL3042)",
                    line=line,
                )
            )
    if (
        re.search(r"\bapt-get\s+(-\S+\s+)*install\b|\bapt\s+install\b", text)
        and not re.search(r"rm\s+-(rf|fr|r)\s+/var/lib/apt/lists", text)
        and not cache_mount
    ):
        findings.append(
            DoctorFinding(
                severity="warning",
                code="apt-lists",
                title="apt lists left in the image",
                message="apt-get install without 'rm -rf /var/lib/apt/lists/*' in the same RUN keeps the "
                "package lists in the layer (hadolint DL3009)",
                line=line,
            )
        )


def check_services(
    policy: Policy, base: Path | None = None, snapshot: HostSnapshot | None = None
) -> list[ServiceDoctor]:
    """Return the doctor's findings for every service of ``policy``."""
    return [check_service(s, policy, base, snapshot) for s in policy.services]
