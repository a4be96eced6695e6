"""Optimized build definitions for phase 2: a multi-stage Dockerfile and a .dockerignore per service.

Pure: reads a service's real sources (its Dockerfile, the requirement files it installs, the files its
build context holds) and the policy, and returns text. Nothing is written unless ``write_definition``
is called. The rules come from the seed report's Phase 2 ("Service Optimization") and its root causes:
dependencies are installed in a builder stage (pip --no-cache-dir, offline from the policy's wheelhouse
when it names one); only the installed packages and the application reach a small final stage on the
policy's runtime base; development requirements, compilers, notebook servers never do; the image runs as
a non-root user with a HEALTHCHECK that works there (python's http.client, no curl); the original CMD,
ENTRYPOINT, ENV, WORKDIR and EXPOSE are kept; the .dockerignore leaves VCS data, tests, caches,
notebooks, logs and big unnamed files out of the context, and never anything the build copies.

A Dockerfile whose steps the generator cannot account for (a RUN that is neither a dependency install nor
a known development tool, system packages, copies from stages it cannot rebuild, pyproject/poetry
installs) is not guessed at: the result says "not understood" with the reason, and phase 2 skips the
service. A service may name its own optimized Dockerfile (``services[].optimized_dockerfile``): it is used
as is.

The generated Dockerfile-specific ignore file (``<Dockerfile>.dockerignore``) is honoured by BuildKit
(measured with docker 20.10's built-in BuildKit), which phase 2 builds with; the classic builder reads
only the context's root ``.dockerignore``.
"""

from __future__ import annotations

import difflib
import hashlib
import io
import json
import os
import posixpath
import re
import shlex
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Policy, ServicePolicy
from .doctor import is_ignored, parse_dockerignore, pattern_regex
from .errors import UsageError
from .units import human_size

# The name of the generated files, next to the original Dockerfile.
OPTIMIZED_NAME = "Dockerfile.optimized"
# The first line of every file the generator writes; the hash covers everything after that line.
HEADER_PREFIX = "# acgs-remediate generated"
_HEADER_RE = re.compile(r"^# acgs-remediate generated .*\bsha256=([0-9a-f]{16})\b")

# Where the builder stage puts things (never shipped as such: the final stage copies from them).
_DEPS_STAGING = "/build/deps"
_REQS_DIR = "/build/requirements"
_WRITABLE_STAGING = "/build/writable"
_DEFAULT_DEPS = "/opt/deps"

# Development requirement files: never installed into an image that ships.
_DEV_REQ_FILE = re.compile(r"(^|[-_.])(dev|devel|develop|test|tests|testing|lint|docs?|ci)([-_.]|$)", re.I)
# Development packages: a runtime requirements file that lists one is not understood (move it out).
DEV_PACKAGES = (
    "pytest",
    "pytest-cov",
    "jupyter",
    "jupyterlab",
    "notebook",
    "ipykernel",
    "ipython",
    "black",
    "mypy",
    "flake8",
    "ruff",
    "pylint",
    "coverage",
    "tox",
    "nox",
    "hypothesis",
)
# A path component that places a development tool (compilers, notebook servers, test tools).
_DEV_COMPONENT = re.compile(r"^(jupyter\w*|ipykernel|pytest|_pytest|gcc|g\+\+|clang[\w.+-]*|cc1(plus)?)$", re.I)
# System packages that are development tools (apt/apk/yum names).
_DEV_SYSTEM_PACKAGE = re.compile(
    r"^(build-essential|gcc(-\d+)?|g\+\+(-\d+)?|cpp(-\d+)?|make|cmake|clang(-\d+)?|gdb|musl-dev|[\w.+-]+-dev|"
    r"[\w.+-]+-devel|jupyter[\w-]*|ipython3?|python3?-(pytest|dev)[\w-]*)$"
)
_PIP_RE = re.compile(r"(^|[\s/])(pip3?(\.whl/pip)?|python3?(\.\d+)?\s+-m\s+pip)\s+install\b")
_PKG_MANAGER_RE = re.compile(r"\b(apt-get|apt|apk|yum|dnf|microdnf|zypper|conda|mamba)\b\s+(-\S+\s+)*(install|add)\b")
# Where package managers keep caches: a RUN that only writes there adds nothing the service runs.
_CACHE_DIRS = ("/root/.cache/", "/home/", "/var/cache/", "/var/lib/apt/lists")
# Text files whose content tells whether the service names a file or a bundled tool.
_TEXT_SUFFIXES = {".py", ".ini", ".cfg", ".toml", ".txt", ".yml", ".yaml", ".json", ".sh", ".mako", ".conf", ".env"}

# Context entries that never belong in an image: (pattern, why). Emitted only when they match something.
_JUNK_DIRS = (
    (".git", "version control"),
    (".hg", "version control"),
    (".svn", "version control"),
    ("__pycache__", "bytecode caches"),
    (".pytest_cache", "test caches"),
    (".mypy_cache", "type-checker caches"),
    (".ruff_cache", "linter caches"),
    (".tox", "test environments"),
    (".nox", "test environments"),
    ("htmlcov", "coverage reports"),
    ("node_modules", "JavaScript dependencies (installed, not source)"),
    (".ipynb_checkpoints", "notebooks"),
    ("notebooks", "notebooks"),
    ("tests", "tests"),
    ("test", "tests"),
    ("logs", "logs"),
    (".venv", "local virtualenvs"),
    (".idea", "editor settings"),
    (".vscode", "editor settings"),
)
_JUNK_FILES = (
    ("*.pyc", "bytecode"),
    ("*.pyo", "bytecode"),
    ("*.ipynb", "notebooks"),
    ("*.log", "logs"),
    (".coverage", "coverage data"),
    (".env", "local environment (secrets)"),
    (".DS_Store", "editor litter"),
)

Status = Literal["generated", "as-is", "not-understood"]


class BuildDefinition(BaseModel):
    """What phase 2 builds for one service: a Dockerfile and its ignore file, or why there is none.

    Paths are relative to ``context`` ("/"-separated). ``status``:
    - "generated": ``dockerfile``/``dockerignore`` hold the generated text, to be written at
      ``dockerfile_path``/``dockerignore_path`` (see ``write_definition``) or built from there;
    - "as-is": the policy names the service's own optimized Dockerfile (``dockerfile_path``), built as is
      (``dockerignore`` holds its ignore file's text when one exists, else None);
    - "not-understood": the generator does not understand the service's build; ``reason`` says why and
      phase 2 skips the service (never guesses).
    """

    model_config = ConfigDict(extra="forbid")

    service: str
    status: Status
    context: str  # absolute build context
    source_dockerfile: str  # the Dockerfile it was generated from, relative to the context
    dockerfile_path: str | None = None  # where the optimized Dockerfile is (or goes), relative to the context
    dockerignore_path: str | None = None
    dockerfile: str | None = None
    dockerignore: str | None = None
    reason: str | None = None  # for "not-understood"
    notes: list[str] = Field(default_factory=list)  # what was dropped, kept, replaced, and why
    missing: list[str] = Field(default_factory=list)  # files the build copies that the context lacks
    runtime_base: str | None = None
    builder_base: str | None = None

    @property
    def understood(self) -> bool:
        """Return True when there is something to build."""
        return self.status != "not-understood"

    @property
    def verdict(self) -> str:
        """Return one line for reports: "generated", "as is", or "not understood: <reason>"."""
        if self.status == "not-understood":
            return f"not understood: {self.reason}"
        return "as is" if self.status == "as-is" else "generated"


class _NotUnderstood(Exception):
    pass


# ---------------------------------------------------------------- parsing the original


@dataclass
class _Copy:
    """A COPY/ADD from the build context into the image."""

    sources: list[str]  # context paths ("." = everything)
    dest: str  # absolute image path
    dest_is_dir: bool


@dataclass
class _Stage:
    name: str | None
    base: str
    items: list[dict] = field(default_factory=list)
    workdir: str = "/"
    copies: list[_Copy] = field(default_factory=list)


def _split_flags(value: str) -> tuple[dict[str, str], str]:
    flags: dict[str, str] = {}
    value = value.strip()
    while value.startswith("--"):
        head, _, value = value.partition(" ")
        key, _, val = head[2:].partition("=")
        flags[key] = val
        value = value.lstrip()
    return flags, value


def _args(value: str) -> list[str]:
    value = value.strip()
    if value.startswith("["):
        try:
            return [str(a) for a in json.loads(value)]
        except ValueError:
            pass
    try:
        return shlex.split(value, posix=True)
    except ValueError:
        return value.split()


def _abs(path: str, workdir: str) -> str:
    return posixpath.normpath(path if path.startswith("/") else posixpath.join(workdir, path))


def _ctx(path: str) -> str:
    cleaned = posixpath.normpath(path.lstrip("/")) if path not in ("", ".", "./", "/") else "."
    return "." if cleaned in ("", ".") else cleaned


def _parse(text: str) -> list[_Stage]:
    from dockerfile_parse import DockerfileParser

    parser = DockerfileParser(fileobj=io.BytesIO(text.encode()))
    stages: list[_Stage] = []
    for item in parser.structure:
        instruction = item["instruction"].upper()
        if instruction == "COMMENT":
            continue
        if instruction == "FROM":
            parts = [p for p in item["value"].split() if not p.startswith("--")]
            if not parts:
                raise _NotUnderstood(f"line {item['startline'] + 1}: FROM without an image")
            name = parts[2].lower() if len(parts) >= 3 and parts[1].lower() == "as" else None
            stages.append(_Stage(name=name, base=parts[0]))
            continue
        if not stages:
            if instruction == "ARG":
                continue
            raise _NotUnderstood(f"line {item['startline'] + 1}: {instruction} before the first FROM")
        stage = stages[-1]
        stage.items.append(item)
        if instruction == "WORKDIR":
            stage.workdir = _abs(item["value"].strip(), stage.workdir)
        elif instruction in ("COPY", "ADD"):
            flags, rest = _split_flags(item["value"])
            if "from" in flags:
                continue
            args = _args(rest)
            if len(args) < 2:
                raise _NotUnderstood(f"line {item['startline'] + 1}: {instruction} needs a source and a destination")
            for src in args[:-1]:
                if instruction == "ADD" and re.match(r"^(https?|git)://|^git@", src):
                    raise _NotUnderstood(f"line {item['startline'] + 1}: ADD of a remote source ({src})")
                if "$" in src:
                    raise _NotUnderstood(f"line {item['startline'] + 1}: {instruction} source uses a variable ({src})")
            dest = args[-1]
            stage.copies.append(
                _Copy(
                    [_ctx(s) for s in args[:-1]],
                    _abs(dest, stage.workdir),
                    dest.endswith("/") or len(args) > 2,
                )
            )
    if not stages:
        raise _NotUnderstood("the Dockerfile has no FROM")
    return stages


def _to_context(image_path: str, stage: _Stage, upto: int, root: Path) -> str | None:
    """Return the context path that put ``image_path`` into ``stage`` (COPYs before item ``upto``), or None."""
    copies: list[_Copy] = []
    count = 0
    for item in stage.items[:upto]:
        if item["instruction"].upper() in ("COPY", "ADD") and "--from" not in item["value"]:
            copies.append(stage.copies[count])
            count += 1
    for copy in reversed(copies):
        for src in copy.sources:
            is_dir = src == "." or (root / src).is_dir()
            if is_dir:
                prefix = copy.dest.rstrip("/") + "/"
                if image_path.startswith(prefix):
                    rest = image_path[len(prefix) :]
                    return rest if src == "." else f"{src}/{rest}"
            else:
                target = posixpath.join(copy.dest, posixpath.basename(src)) if copy.dest_is_dir else copy.dest
                if posixpath.normpath(target) == image_path:
                    return src
    return None


# ---------------------------------------------------------------- dependency installs


@dataclass
class _PipInstall:
    requirements: list[str]  # image paths of -r files
    packages: list[str]
    target: str | None
    find_links: list[str]


def _segments(run: str) -> list[str]:
    return [s.strip() for s in re.split(r"&&|\|\||;", run) if s.strip()]


def _pip_install(segment: str) -> _PipInstall | None:
    if not _PIP_RE.search(segment):
        return None
    try:
        words = shlex.split(segment, posix=True)
    except ValueError:
        words = segment.split()
    at = words.index("install") if "install" in words else len(words)
    reqs: list[str] = []
    pkgs: list[str] = []
    links: list[str] = []
    target = None
    with_value = {
        "-i",
        "--index-url",
        "--extra-index-url",
        "--root",
        "--prefix",
        "--constraint",
        "-c",
        "--platform",
        "--python-version",
        "--implementation",
        "--abi",
        "--cache-dir",
        "--src",
        "--upgrade-strategy",
        "--progress-bar",
        "--root-user-action",
        "--trusted-host",
        "--log",
    }
    i = at + 1
    while i < len(words):
        word = words[i]
        key, eq, val = word.partition("=")
        if key in ("-r", "--requirement"):
            reqs.append(val if eq else words[i + 1] if i + 1 < len(words) else "")
            i += 1 if eq else 2
            continue
        if key in ("-t", "--target"):
            target = val if eq else words[i + 1] if i + 1 < len(words) else None
            i += 1 if eq else 2
            continue
        if key in ("-f", "--find-links"):
            links.append(val if eq else words[i + 1] if i + 1 < len(words) else "")
            i += 1 if eq else 2
            continue
        if key in with_value:
            i += 1 if eq else 2
            continue
        if word.startswith("-"):
            if word in ("-e", "--editable"):
                raise _NotUnderstood(f"editable install ({segment.strip()}): not for an image that ships")
            i += 1
            continue
        pkgs.append(word)
        i += 1
    return _PipInstall(reqs, pkgs, target, links)


def _requirement_name(line: str) -> str:
    return re.split(r"[\s<>=!~;\[@]", line.strip(), maxsplit=1)[0].lower().replace("_", "-")


def _read_requirements(root: Path, rel: str, seen: set[str]) -> tuple[list[str], list[str]]:
    """Return (files, development packages) of a requirements file and the files it includes."""
    if rel in seen:
        return [], []
    seen.add(rel)
    files = [rel]
    dev: list[str] = []
    path = root / rel
    if not path.is_file():
        return files, dev
    for raw in path.read_text(errors="replace").splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        nested = re.match(r"^(-r|--requirement|-c|--constraint)\s*=?\s*(\S+)", line)
        if nested:
            include = posixpath.normpath(posixpath.join(posixpath.dirname(rel), nested.group(2)))
            more, more_dev = _read_requirements(root, include, seen)
            files += more
            dev += more_dev
            continue
        if line.startswith("-"):
            if line.startswith(("-e", "--editable")):
                raise _NotUnderstood(f"{rel} has an editable requirement ({line})")
            continue
        if _requirement_name(line) in DEV_PACKAGES:
            dev.append(_requirement_name(line))
    return files, dev


# ---------------------------------------------------------------- the generator


@dataclass
class _Deps:
    requirement_files: list[str] = field(default_factory=list)  # context paths, installed
    packages: list[str] = field(default_factory=list)
    dest: str = _DEFAULT_DEPS
    stage: str | None = None  # the original stage that installed them (its COPY --from is replaced)
    stage_target: str | None = None
    wheel_dirs: set[str] = field(default_factory=set)  # image dirs the original used as --find-links


def _referenced_text(root: Path, patterns: list, limit: int = 1_000_000) -> str:
    """Return the text of the context's code and config files (what could name a file or a tool)."""
    chunks: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames[:] = [d for d in dirnames if not is_ignored(f"{rel_dir}/{d}" if rel_dir else d, patterns)]
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if Path(name).suffix.lower() not in _TEXT_SUFFIXES and name != "Dockerfile":
                continue
            if name.startswith("Dockerfile") or is_ignored(rel, patterns):
                continue
            try:
                with open(os.path.join(dirpath, name), "rb") as fh:
                    chunks.append(fh.read(limit).decode(errors="replace"))
            except OSError:
                continue
    return "\n".join(chunks)


def _system_packages(value: str) -> list[str]:
    """Return the package names a RUN installs with apt-get/apk/yum/dnf (words after install/add)."""
    names: list[str] = []
    for segment in _segments(value):
        words = segment.split()
        for verb in ("install", "add"):
            if verb in words and _PKG_MANAGER_RE.search(segment):
                names += [w for w in words[words.index(verb) + 1 :] if not w.startswith("-")]
    return names


def _dev_tool_of(path: str) -> str | None:
    for part in path.split("/"):
        if _DEV_COMPONENT.match(part):
            return "gcc" if part.startswith(("cc1", "g++")) else part
    return None


def _classify_run(value: str, line: int, code_text: str) -> str:
    """Return why a final-stage RUN is dropped; raise _NotUnderstood when it cannot be accounted for.

    Dropped: system packages that are all development tools; a step that only places files in development
    tool locations (/usr/lib/gcc/..., /opt/jupyter/...), or only in package-manager caches; a step that only
    bundles /opt/<name> when nothing in the service's code or requirements names <name>. Anything else
    (building with make, system libraries, scripts) is not understood: never dropped on a guess.
    """
    if _PKG_MANAGER_RE.search(value):
        packages = _system_packages(value)
        dev = [p for p in packages if _DEV_SYSTEM_PACKAGE.match(p)]
        if packages and len(dev) == len(packages):
            return f"line {line}: development packages ({', '.join(dev)}) never go into the final stage"
        raise _NotUnderstood(
            f"line {line}: installs system packages ({', '.join(packages) or value.strip()[:60]}): the generator "
            "cannot tell runtime libraries from build tools; name an optimized Dockerfile in "
            "services[].optimized_dockerfile"
        )
    paths = [p for p in re.findall(r"(?<![\w.-])(/[\w./+-]+)", value) if not p.startswith(("/dev/", "/tmp"))]
    commands = {seg.split()[0] for seg in _segments(value) if seg.split()}
    places_only = commands <= {"mkdir", "head", "touch", "truncate", "dd", "echo", "printf", "cp", "ln", "rm", "chmod"}
    if paths and places_only:
        tools = [_dev_tool_of(p) for p in paths]
        if all(tools):
            return f"line {line}: development tool ({tools[0]}) never goes into the final stage"
        if all(p.startswith(_CACHE_DIRS) for p in paths):
            return f"line {line}: package-manager cache ({paths[0]}) never goes into the final stage"
        bundles = {m.group(1) for p in paths if (m := re.match(r"^/opt/([\w.+-]+)(/|$)", p))}
        if len(bundles) == 1 and all(p.startswith("/opt/") for p in paths):
            name = next(iter(bundles))
            if not re.search(rf"(?<![\w]){re.escape(name)}(?![\w])", code_text, re.I):
                return (
                    f"line {line}: bundles /opt/{name}, which nothing in the service's code or requirements "
                    "names (left out of the final stage)"
                )
    raise _NotUnderstood(
        f"line {line}: RUN {value.strip()[:80]!r} is neither a dependency install nor a known development "
        "tool; name an optimized Dockerfile in services[].optimized_dockerfile"
    )


def _duration(seconds: float) -> str:
    return f"{int(seconds)}s" if float(seconds).is_integer() else f"{seconds:g}s"


# The image's HEALTHCHECK: python's own http.client (a slim runtime has no curl, maybe no shell);
# ${VAR}s in the URL are expanded in the container at check time.
_HEALTH_SCRIPT = (
    "import os,sys,http.client as h;u=os.path.expandvars(sys.argv[1]);a,_,p=u.split('://',1)[1].partition('/');"
    "n,_,o=a.rpartition(':');c=h.HTTPConnection(n,int(o or 80),timeout={timeout});c.request('GET','/'+p);"
    "r=c.getresponse();sys.exit(0 if r.status<400 else 1)"
)


def _python_of(cmd: list[str]) -> str:
    for word in cmd[:1]:
        if re.match(r"^(/[\w./-]*/)?python3?(\.\d+)?$", word):
            return word
    return "python3"


def _header(kind: str, body: str) -> str:
    digest = hashlib.sha256(body.encode()).hexdigest()[:16]
    return (
        f"{HEADER_PREFIX} {kind} sha256={digest}: regenerate instead of editing, or set "
        "services[].optimized_dockerfile\n"
    )


def generate(service: ServicePolicy, policy: Policy, base: Path | None = None) -> BuildDefinition:
    """Return the optimized build definition of ``service`` from its sources (``base``: sources_root's base).

    Reads the original Dockerfile (``services[].dockerfile``), the requirement files it installs and the
    build context; returns status "generated" with the Dockerfile and .dockerignore text, "as-is" when the
    policy names the service's own optimized Dockerfile, or "not-understood" with the reason. Never raises
    for a service it does not understand; never writes.
    """
    context = policy.service_context(service, base)
    source = service.dockerfile
    common = {"service": service.name, "context": str(context), "source_dockerfile": source}
    if not context.is_dir():
        return BuildDefinition(**common, status="not-understood", reason=f"build context {context} does not exist")
    if service.optimized_dockerfile:
        own = context / service.optimized_dockerfile
        if not own.is_file():
            return BuildDefinition(
                **common,
                status="not-understood",
                reason=f"services[{service.name}].optimized_dockerfile {own} does not exist",
            )
        ignore = Path(f"{own}.dockerignore")
        ignore = ignore if ignore.is_file() else context / ".dockerignore"
        return BuildDefinition(
            **common,
            status="as-is",
            dockerfile_path=service.optimized_dockerfile,
            dockerignore_path=str(ignore.relative_to(context)) if ignore.is_file() else None,
            dockerfile=own.read_text(),
            dockerignore=ignore.read_text() if ignore.is_file() else None,
            notes=[f"the policy names its own optimized Dockerfile ({service.optimized_dockerfile}): built as is"],
        )
    path = context / source
    if not path.is_file():
        return BuildDefinition(**common, status="not-understood", reason=f"Dockerfile not found: {path}")
    try:
        return _generate(service, policy, context, source, path.read_text(errors="replace"))
    except _NotUnderstood as exc:
        return BuildDefinition(**common, status="not-understood", reason=str(exc))


def _generate(service: ServicePolicy, policy: Policy, root: Path, source: str, text: str) -> BuildDefinition:
    build = policy.build
    stages = _parse(text)
    final = stages[-1]
    names = {s.name: s for s in stages if s.name}
    notes: list[str] = []
    deps = _Deps()
    # Dependency installs, in any stage.
    for index, stage in enumerate(stages):
        for pos, item in enumerate(stage.items):
            if item["instruction"].upper() != "RUN":
                continue
            for segment in _segments(item["value"]):
                pip = _pip_install(segment)
                if pip is None:
                    continue
                line = item["startline"] + 1
                deps.wheel_dirs |= {_abs(d, stage.workdir) for d in pip.find_links}
                for pkg in pip.packages:
                    if pkg in (".", "..") or pkg.startswith(("/", "./", "../")):
                        raise _NotUnderstood(
                            f"line {line}: installs a local project ({pkg}); pyproject/setup.py installs are not "
                            "generated yet: name an optimized Dockerfile in services[].optimized_dockerfile"
                        )
                    if _requirement_name(pkg) in DEV_PACKAGES:
                        notes.append(f"line {line}: development package {pkg} is not installed")
                    else:
                        deps.packages.append(pkg)
                for req in pip.requirements:
                    ctx_path = _to_context(_abs(req, stage.workdir), stage, pos, root)
                    if ctx_path is None:
                        raise _NotUnderstood(f"line {line}: cannot tell where {req} comes from in the context")
                    if _DEV_REQ_FILE.search(
                        posixpath.basename(ctx_path).removesuffix(".txt").removeprefix("requirements")
                    ):
                        notes.append(f"line {line}: development requirements {ctx_path} are not installed")
                        continue
                    files, dev = _read_requirements(root, ctx_path, set())
                    if dev:
                        raise _NotUnderstood(
                            f"{ctx_path} lists development packages ({', '.join(sorted(set(dev)))}): move them to "
                            "a requirements-dev.txt so that they stay out of the image"
                        )
                    deps.requirement_files += [f for f in files if f not in deps.requirement_files]
                if index < len(stages) - 1:
                    if stage.name is None:
                        raise _NotUnderstood(f"line {line}: dependencies installed in an unnamed stage")
                    deps.stage, deps.stage_target = stage.name, pip.target and _abs(pip.target, stage.workdir)
                elif pip.target:
                    deps.dest = _abs(pip.target, stage.workdir)
    if not deps.requirement_files and not deps.packages:
        conventional = posixpath.join(posixpath.dirname(source), "requirements.txt").lstrip("/")
        if (root / conventional).is_file() and "pip" not in text:
            deps.requirement_files.append(_ctx(conventional))
            notes.append(f"dependencies from {_ctx(conventional)} (the original installs none)")
        elif any(
            (root / posixpath.dirname(source) / f).is_file() for f in ("pyproject.toml", "poetry.lock", "Pipfile")
        ):
            raise _NotUnderstood("dependencies come from pyproject/poetry/Pipfile: not generated yet")

    code_text = _referenced_text(root, parse_dockerignore(_junk_ignore_lines(root)))
    # The final stage, instruction by instruction.
    kept: list[str] = []
    cmd_items: list[str] = []
    cmd_words: list[str] = []
    env_pythonpath: str | None = None
    pythonpath_at: int | None = None
    exposed: set[str] = set()
    user: str | None = None
    for item in final.items:
        instruction = item["instruction"].upper()
        line = item["startline"] + 1
        content = item["content"] if item["content"].endswith("\n") else item["content"] + "\n"
        if instruction == "RUN":
            if any(_pip_install(s) for s in _segments(item["value"])):
                rest = [s for s in _segments(item["value"]) if not _pip_install(s)]
                if rest:
                    notes.append(_classify_run(" && ".join(rest), line, code_text))
                notes.append(f"line {line}: dependencies are installed in the builder stage")
                continue
            notes.append(_classify_run(item["value"], line, code_text))
            continue
        if instruction in ("COPY", "ADD"):
            flags, rest = _split_flags(item["value"])
            src_stage = flags.get("from", "").lower()
            if src_stage:
                args = _args(rest)
                if deps.stage and src_stage == deps.stage:
                    if deps.stage_target and posixpath.normpath(args[0]) == deps.stage_target:
                        deps.dest = _abs(args[-1], final.workdir)
                        continue
                    raise _NotUnderstood(f"line {line}: copies {args[0]} from stage {src_stage}, not its packages")
                if src_stage in names or src_stage.isdigit():
                    raise _NotUnderstood(f"line {line}: copies from stage {src_stage}, which only installs {args[0]}")
                if (
                    _abs(args[-1], final.workdir) in deps.wheel_dirs
                    or any(_abs(args[-1], final.workdir).startswith(d.rstrip("/") + "/") for d in deps.wheel_dirs)
                    or (build.wheelhouse_image and src_stage == build.wheelhouse_image.lower())
                ):
                    notes.append(f"line {line}: the wheelhouse is only needed by the builder stage")
                    continue
            kept.append(content)
            continue
        if instruction in ("CMD", "ENTRYPOINT"):
            cmd_items.append(content)
            if instruction == "CMD" or not cmd_words:
                cmd_words = _args(item["value"])
            continue
        if instruction == "HEALTHCHECK":
            notes.append(f"line {line}: the original HEALTHCHECK is replaced by one that works in the runtime base")
            continue
        if instruction == "USER":
            value = item["value"].strip()
            if value.split(":")[0] in ("root", "0"):
                notes.append(f"line {line}: USER {value} replaced by the non-root {build.user}")
                continue
            user = value
            continue
        if instruction == "ENV":
            pairs = re.findall(r"(\w+)=(\"[^\"]*\"|\S+)", item["value"])
            for key, value in pairs:
                if key == "PYTHONPATH":
                    env_pythonpath = value.strip('"')
            if "=" not in item["value"] and item["value"].split()[0] == "PYTHONPATH":
                env_pythonpath = item["value"].split(None, 1)[1].strip()
                pairs = [("PYTHONPATH", env_pythonpath)]
            if [k for k, _ in pairs] == ["PYTHONPATH"]:
                pythonpath_at = len(kept)  # an ENV of PYTHONPATH alone: the merged value replaces it
        if instruction == "EXPOSE":
            exposed |= set(item["value"].split())
        if instruction in ("ONBUILD", "SHELL"):
            raise _NotUnderstood(f"line {line}: {instruction} is not generated")
        kept.append(content)
    user = user or build.user
    runtime = service.runtime_base or build.runtime_base
    wheel_dirs = list(build.wheelhouse_dirs) if build.wheelhouse_image else []

    # The builder stage.
    lines: list[str] = []
    writable = [posixpath.normpath("/" + p.strip("/")) for p in service.writable_paths]
    need_builder = bool(deps.requirement_files or deps.packages or writable)
    if need_builder:
        lines.append("# Builder: the runtime dependencies only, installed where the final stage copies them from.\n")
        lines.append(f"FROM {build.builder_base} AS deps\n")
        for d in wheel_dirs:
            lines.append(f"COPY --from={build.wheelhouse_image} {d} {d}\n")
        for req in deps.requirement_files:
            lines.append(f"COPY {req} {_REQS_DIR}/{req}\n")
        steps: list[str] = []
        if deps.requirement_files or deps.packages:
            pip = [build.pip, "install", "--no-cache-dir", "--no-compile", "--disable-pip-version-check"]
            if wheel_dirs:
                pip += ["--no-index"] + [f"--find-links {d}" for d in wheel_dirs]
            pip += [f"--target {_DEPS_STAGING}"]
            pip += [f"-r {_REQS_DIR}/{r}" for r in deps.requirement_files]
            pip += [shlex.quote(p) for p in deps.packages]
            steps.append(" ".join(pip))
        if writable:
            steps.append("mkdir -p " + " ".join(f"{_WRITABLE_STAGING}{p}" for p in writable))
        lines.append("RUN " + " \\\n && ".join(steps) + "\n")
        lines.append("\n")
    lines.append("# Final stage: the runtime, the installed packages and the application; no build tools.\n")
    lines.append(f"FROM {runtime}\n")
    if deps.requirement_files or deps.packages:
        lines.append(f"COPY --from=deps {_DEPS_STAGING} {deps.dest}\n")
    if (deps.requirement_files or deps.packages) and deps.dest not in (env_pythonpath or "").split(":"):
        value = f"{deps.dest}:{env_pythonpath}" if env_pythonpath else deps.dest
        if pythonpath_at is not None:
            kept[pythonpath_at] = f"ENV PYTHONPATH={value}\n"
        else:
            kept.append(f"ENV PYTHONPATH={value}\n")
    lines += kept
    for p in writable:
        lines.append(f"COPY --from=deps --chown={user} {_WRITABLE_STAGING}{p} {p}\n")
    if service.port and str(service.port) not in {e.split("/")[0] for e in exposed}:
        lines.append(f"EXPOSE {service.port}\n")
    lines.append(f"USER {user}\n")
    url = service.health_url_template()
    hc = build.healthcheck
    if url:
        script = _HEALTH_SCRIPT.format(timeout=max(1, int(hc.timeout) - 1))
        test = json.dumps([_python_of(cmd_words), "-c", script, url])
        lines.append(
            f"HEALTHCHECK --interval={_duration(hc.interval)} --timeout={_duration(hc.timeout)} "
            f"--start-period={_duration(hc.start_period)} --retries={hc.retries} CMD {test}\n"
        )
    else:
        notes.append("no HEALTHCHECK: the policy gives the service no port or health_url")
    if not cmd_items:
        notes.append("the original sets no CMD/ENTRYPOINT: the runtime base's is used")
    lines += cmd_items
    body = "".join(lines)
    dockerfile_path = posixpath.join(posixpath.dirname(source), OPTIMIZED_NAME).lstrip("/")
    must_keep = _must_keep(body, root, deps.requirement_files, cmd_words, final)
    ignore_body, ignore_notes = _dockerignore(root, policy, must_keep, code_text)
    notes += ignore_notes
    missing = [p for p in must_keep if p != "." and not (root / p).exists()]
    for p in missing:
        notes.append(f"{p} is missing from the context: the build fails until it exists (phase 1 repairs it)")
    return BuildDefinition(
        service=service.name,
        status="generated",
        context=str(root),
        source_dockerfile=source,
        dockerfile_path=dockerfile_path,
        dockerignore_path=f"{dockerfile_path}.dockerignore",
        dockerfile=_header("Dockerfile", body) + body,
        dockerignore=_header(".dockerignore", ignore_body) + ignore_body,
        notes=notes,
        missing=missing,
        runtime_base=runtime,
        builder_base=build.builder_base if need_builder else None,
    )


def _must_keep(body: str, root: Path, requirement_files: list[str], cmd: list[str], final: _Stage) -> list[str]:
    """Return the context paths the generated build copies or runs: none of them may be ignored."""
    keep: list[str] = []
    for stage in _parse(body):
        for copy in stage.copies:
            keep += [s for s in copy.sources if s not in keep]
    keep += [r for r in requirement_files if r not in keep]
    for word in cmd:
        if word.startswith("/") and re.search(r"\.(py|sh|ini)$", word):
            ctx_path = _to_context(word, final, len(final.items), root)
            if ctx_path and ctx_path not in keep:
                keep.append(ctx_path)
    return keep


def _junk_ignore_lines(root: Path) -> str:
    lines = [d for d, _ in _JUNK_DIRS] + [f for f, _ in _JUNK_FILES]
    return "\n".join(f"**/{p}" for p in lines)


def _dockerignore(root: Path, policy: Policy, must_keep: list[str], code_text: str) -> tuple[str, list[str]]:
    """Return the .dockerignore text computed from the context, and notes."""
    matched: dict[str, tuple[str, int]] = {}  # pattern -> (why, bytes)
    big: list[tuple[str, int]] = []
    dir_rules = {name: why for name, why in _JUNK_DIRS}
    file_rules = [(pat, why, pattern_regex(pat)) for pat, why in _JUNK_FILES]
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        keep_dirs = []
        for d in sorted(dirnames):
            if d in dir_rules:
                pattern = f"**/{d}"
                why, size = matched.get(pattern, (dir_rules[d], 0))
                matched[pattern] = (why, size + _tree_size(Path(dirpath) / d))
            else:
                keep_dirs.append(d)
        dirnames[:] = keep_dirs
        for name in sorted(filenames):
            rel = f"{rel_dir}/{name}" if rel_dir else name
            try:
                size = os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                continue
            hit = next(((pat, why) for pat, why, rx in file_rules if rx.match(name)), None)
            if hit:
                pattern = f"**/{hit[0]}"
                why, total = matched.get(pattern, (hit[1], 0))
                matched[pattern] = (why, total + size)
                continue
            if size >= policy.build.big_file and not name.endswith(".py") and name.startswith("Dockerfile") is False:
                if not re.search(rf"(?<![\w.-]){re.escape(name)}(?![\w-])", code_text):
                    big.append((rel, size))
    lines = [
        "# Computed from the build context: what never belongs in the image. The build copies nothing listed here.\n"
    ]
    for pattern, (why, size) in matched.items():
        lines.append(f"# {why} ({human_size(size)})\n{pattern}\n")
    notes = []
    if matched:
        summary = ", ".join(sorted({why for why, _ in matched.values()}))
        total = sum(size for _, size in matched.values())
        notes.append(f".dockerignore leaves out {summary} ({human_size(total)})")
    for rel, size in big:
        lines.append(f"# {human_size(size)}, named nowhere in the service's code or configuration\n{rel}\n")
        notes.append(f".dockerignore leaves out {rel} ({human_size(size)}): the service's code never names it")
    text = "".join(lines)
    patterns = parse_dockerignore(text)
    for path in must_keep:
        if path != "." and is_ignored(path, patterns):
            text += f"!{path}\n"
            notes.append(f".dockerignore re-includes {path}: the build copies it")
            patterns = parse_dockerignore(text)
    still = [p for p in must_keep if p != "." and is_ignored(p, patterns)]
    if still:  # a re-include cannot fix it: a bug here, never a silently broken build
        raise _NotUnderstood(f"the computed .dockerignore would exclude {', '.join(still)}, which the build copies")
    return text, notes


def _tree_size(path: Path) -> int:
    total = 0
    for dirpath, _, filenames in os.walk(path):
        for name in filenames:
            try:
                total += os.lstat(os.path.join(dirpath, name)).st_size
            except OSError:
                pass
    return total


def generate_all(policy: Policy, base: Path | None = None) -> list[BuildDefinition]:
    """Return the build definition of every service of ``policy``, in policy order."""
    return [generate(s, policy, base) for s in policy.services]


# ---------------------------------------------------------------- writing into the source tree


class WriteResult(BaseModel):
    """What ``write_definition`` did (or would do): the unified diff and the files written."""

    model_config = ConfigDict(extra="forbid")

    service: str
    diff: str  # unified diff of every file against what is on disk ("" when nothing changes)
    written: list[str] = Field(default_factory=list)  # absolute paths written (empty with dry_run)
    unchanged: list[str] = Field(default_factory=list)

    @property
    def changed(self) -> bool:
        """Return True when a file differs from what is on disk."""
        return bool(self.diff)


def _ours_and_untouched(text: str) -> bool | None:
    """Return True for a file we generated and nobody edited, False if edited, None if not ours."""
    first, _, body = text.partition("\n")
    match = _HEADER_RE.match(first)
    if not match:
        return None
    return hashlib.sha256(body.encode()).hexdigest()[:16] == match.group(1)


def write_definition(defn: BuildDefinition, *, force: bool = False, dry_run: bool = False) -> WriteResult:
    """Write a generated definition next to the original Dockerfile; return the diff and what was written.

    Only "generated" definitions are written (an "as-is" one is the user's own file). A file on disk that
    the generator did not write, or that was edited since (its header hash no longer matches), is never
    overwritten silently: raises UsageError naming it, unless ``force``. ``dry_run`` computes the diff only.
    Each file is replaced atomically (temp file + rename).
    """
    if defn.status != "generated" or defn.dockerfile is None or defn.dockerignore is None:
        raise UsageError(
            f"{defn.service}: nothing to write ({defn.verdict})",
            hint="only generated definitions are written into the source tree",
        )
    root = Path(defn.context)
    files = [
        (root / str(defn.dockerfile_path), defn.dockerfile),
        (root / str(defn.dockerignore_path), defn.dockerignore),
    ]
    diffs: list[str] = []
    for path, text in files:
        old = path.read_text(errors="replace") if path.exists() else None
        if old == text:
            continue
        if old is not None and not force:
            state = _ours_and_untouched(old)
            if state is None:
                raise UsageError(
                    f"{defn.service}: {path} exists and was not generated by acgs-remediate; refusing to overwrite it",
                    hint="move it away, name it in services[].optimized_dockerfile to build it as is, or use --force",
                )
            if state is False:
                raise UsageError(
                    f"{defn.service}: {path} was edited by hand since it was generated; refusing to overwrite it",
                    hint="keep your edits by naming it in services[].optimized_dockerfile, or use --force",
                )
        rel = path.relative_to(root)
        diffs.append(
            "".join(
                difflib.unified_diff(
                    (old or "").splitlines(keepends=True),
                    text.splitlines(keepends=True),
                    fromfile=f"a/{rel}" if old is not None else "/dev/null",
                    tofile=f"b/{rel}",
                )
            )
        )
    result = WriteResult(service=defn.service, diff="".join(diffs))
    for path, text in files:
        if path.exists() and path.read_text(errors="replace") == text:
            result.unchanged.append(str(path))
            continue
        if dry_run:
            continue
        tmp = path.with_name(f".{path.name}.tmp")
        tmp.write_text(text)
        os.replace(tmp, path)
        result.written.append(str(path))
    return result


# ---------------------------------------------------------------- building without touching the source tree


def stage_definition(defn: BuildDefinition, directory: Path) -> Path:
    """Write the definition's Dockerfile and its ignore file into ``directory``; return the Dockerfile's path.

    For a build that must not write into the source tree: ``docker build -f <returned path> <context>``
    with BuildKit reads ``<Dockerfile>.dockerignore`` next to the Dockerfile even outside the context
    (measured on docker 20.10). Raises UsageError for a "not-understood" definition.
    """
    if not defn.understood or defn.dockerfile is None:
        raise UsageError(f"{defn.service}: nothing to build ({defn.verdict})", hint="see the reason above")
    directory = Path(directory)
    directory.mkdir(parents=True, exist_ok=True)
    dockerfile = directory / posixpath.basename(str(defn.dockerfile_path))
    dockerfile.write_text(defn.dockerfile)
    ignore = Path(f"{dockerfile}.dockerignore")
    if defn.dockerignore is not None:
        ignore.write_text(defn.dockerignore)
    elif ignore.exists():
        ignore.unlink()
    return dockerfile


def context_paths(defn: BuildDefinition) -> list[str]:
    """Return the context files the build sends (its ignore file applied), relative and sorted.

    What a content hash of the build's inputs covers (with the Dockerfile text and build args); an "as-is"
    definition without its own ignore file sends the whole context minus the root .dockerignore.
    """
    root = Path(defn.context)
    text = defn.dockerignore
    if text is None and (root / ".dockerignore").is_file():
        text = (root / ".dockerignore").read_text(errors="replace")
    patterns = parse_dockerignore(text or "")
    has_exceptions = any(p.exclusion for p in patterns)
    out: list[str] = []
    for dirpath, dirnames, filenames in os.walk(root):
        rel_dir = os.path.relpath(dirpath, root)
        rel_dir = "" if rel_dir == "." else rel_dir.replace(os.sep, "/")
        dirnames[:] = sorted(
            d for d in dirnames if has_exceptions or not is_ignored(f"{rel_dir}/{d}" if rel_dir else d, patterns)
        )
        for name in filenames:
            rel = f"{rel_dir}/{name}" if rel_dir else name
            if not is_ignored(rel, patterns):
                out.append(rel)
    return sorted(out)
