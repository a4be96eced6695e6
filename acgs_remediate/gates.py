"""Phase 2's gates: may this freshly built image become the service's release image?

Per the seed report's success criteria and Phase 2 ("Test builds and functionality"): the image is under
the size cap (criterion 3: 300MB) and within its expected size (the report's "Expected Size" column); the
build took less than the build-time cap (criterion 5: 5 minutes); a smoke test starts the image and its
own HEALTHCHECK reports healthy; and the final image's filesystem holds no compilers, package-manager
caches, test frameworks or notebook servers ("Development tools in production").

The size and time gates and the filesystem classification are pure (``size_gates``, ``build_time_gate``,
``scan_paths``); ``smoke_test`` and ``scan_image`` talk to an engine through the docker SDK and leave
nothing behind (their containers are removed, also on failure). ``run_gates`` runs them all.
"""

from __future__ import annotations

import io
import posixpath
import re
import secrets
import tarfile
import time
from collections.abc import Callable, Iterable, Iterator
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import Policy, ServicePolicy
from .units import human_size

GateName = Literal["size_cap", "expected_size", "build_time", "smoke_test", "dev_tools"]
SMOKE_LABEL = "acgs.smoke-test"
_NS = 1_000_000_000


class GateResult(BaseModel):
    """One gate's verdict: passed or not, and why, with the measured value and the limit (bytes/seconds)."""

    model_config = ConfigDict(extra="forbid")

    gate: GateName
    passed: bool
    reason: str
    measured: float | None = None
    limit: float | None = None
    details: list[str] = Field(default_factory=list)


class GateReport(BaseModel):
    """Every gate of one service's image; the image may be released only when all passed."""

    model_config = ConfigDict(extra="forbid")

    service: str
    image: str  # the image ID (sha256:...) or reference that was gated
    size: int | None = None  # bytes
    build_seconds: float | None = None
    results: list[GateResult] = Field(default_factory=list)

    @property
    def passed(self) -> bool:
        """Return True when every gate passed."""
        return bool(self.results) and all(r.passed for r in self.results)

    @property
    def failures(self) -> list[GateResult]:
        """Return the gates that failed."""
        return [r for r in self.results if not r.passed]

    @property
    def reasons(self) -> list[str]:
        """Return one line per failed gate ("smoke_test: ...")."""
        return [f"{r.gate}: {r.reason}" for r in self.failures]

    @property
    def passed_gates(self) -> list[str]:
        """Return the names of the gates that passed (what a BuildRecord lists)."""
        return [r.gate for r in self.results if r.passed]


# ---------------------------------------------------------------- pure gates


def size_gates(size: int, cap: int, expected: int | None) -> list[GateResult]:
    """Return the size-cap gate and, when the service has one, the expected-size gate (sizes in bytes).

    The cap is strict ("images <300MB": criterion 3); the expected size is an upper bound (the report's
    "~200MB" is met by anything at or below it).
    """
    results = [
        GateResult(
            gate="size_cap",
            passed=size < cap,
            reason=(
                f"{human_size(size)} is under the {human_size(cap)} cap"
                if size < cap
                else f"{human_size(size)} is {human_size(size - cap)} over the {human_size(cap)} cap"
            ),
            measured=size,
            limit=cap,
        )
    ]
    if expected is not None:
        ok = size <= expected
        results.append(
            GateResult(
                gate="expected_size",
                passed=ok,
                reason=(
                    f"{human_size(size)} is within the expected {human_size(expected)}"
                    if ok
                    else f"{human_size(size)} is {size / expected:.1f}x the expected {human_size(expected)}"
                ),
                measured=size,
                limit=expected,
            )
        )
    return results


def build_time_gate(seconds: float, cap: float) -> GateResult:
    """Return the build-time gate: ``seconds`` strictly under ``cap`` (criterion 5: builds < 5 minutes)."""
    ok = seconds < cap
    return GateResult(
        gate="build_time",
        passed=ok,
        reason=f"built in {seconds:.1f} s, {'under' if ok else 'over'} the {cap:.0f} s cap",
        measured=seconds,
        limit=cap,
    )


# What a shipped image must not hold, by kind: (kind, test on a normalized member path).
_BIN_DIRS = ("bin/", "sbin/", "usr/bin/", "usr/sbin/", "usr/local/bin/", "usr/local/sbin/")
_COMPILERS = {"gcc", "g++", "cc", "c++", "cc1", "cc1plus", "collect2", "lto1", "clang", "clang++", "make", "gmake"}
_COMPILER_ANYWHERE = {"cc1", "cc1plus", "collect2", "lto1"}


def _kind(path: str) -> str | None:
    parts = path.split("/")
    base = parts[-1]
    if base in _COMPILER_ANYWHERE or path.startswith(("usr/lib/gcc/", "usr/libexec/gcc/")):
        return "compiler"
    if base in _COMPILERS or re.match(r"^(gcc|g\+\+|cc|clang)-\d+(\.\d+)*$", base):
        if path.startswith(_BIN_DIRS):
            return "compiler"
    if "/.cache/pip/" in f"/{path}" or path.startswith(("var/cache/apk/", "var/cache/apt/archives/")) and base:
        return "package-manager cache"
    if path.startswith("var/lib/apt/lists/") and base not in ("", "lock", "partial") and "/partial" not in path:
        return "package-manager cache"
    if any(p in ("pytest", "_pytest", "py.test", "nose", "nose2") for p in parts):
        return "test framework"
    if any(p.startswith("jupyter") or p in ("ipykernel", "notebook", "IPython") for p in parts[:-1]) or base in (
        "jupyter",
        "jupyter-lab",
        "jupyter-notebook",
        "ipython",
    ):
        return "notebook server"
    return None


def scan_paths(names: Iterable[str], *, show: int = 3) -> GateResult:
    """Return the dev-tools gate from an image's file paths (tar member names of its exported filesystem).

    Flags compilers (gcc, cc1, g++, make, the gcc library tree), package-manager caches (pip's cache,
    apt archives and lists, apk's cache), test frameworks (pytest) and notebook servers (jupyter,
    ipykernel); ``details`` lists up to ``show`` paths per kind.
    """
    found: dict[str, list[str]] = {}
    for raw in names:
        path = posixpath.normpath("/" + raw).lstrip("/")
        if not path:
            continue
        kind = _kind(path)
        if kind:
            found.setdefault(kind, []).append("/" + path)
    if not found:
        return GateResult(
            gate="dev_tools",
            passed=True,
            reason="no compilers, package-manager caches, test frameworks or notebook servers",
        )
    details = [f"{kind}: {p}" for kind, paths in sorted(found.items()) for p in paths[:show]]
    summary = ", ".join(f"{kind} ({len(paths)} files, e.g. {paths[0]})" for kind, paths in sorted(found.items()))
    return GateResult(gate="dev_tools", passed=False, reason=f"the image holds {summary}", details=details)


# ---------------------------------------------------------------- gates on an engine


class _Chunks(io.RawIOBase):
    """A read-only file over an iterator of byte chunks (the export stream)."""

    def __init__(self, chunks: Iterator[bytes]) -> None:
        self._chunks = chunks
        self._buf = b""

    def readable(self) -> bool:
        return True

    def readinto(self, b: Any) -> int:
        while not self._buf:
            try:
                self._buf = next(self._chunks)
            except StopIteration:
                return 0
        n = min(len(b), len(self._buf))
        b[:n] = self._buf[:n]
        self._buf = self._buf[n:]
        return n


def image_paths(client: Any, image: str) -> list[str]:
    """Return every path of ``image``'s filesystem (a created, never started container, exported).

    The container is removed afterwards, also when the export fails. Raises docker.errors.APIError.
    """
    container = client.containers.create(
        image, command=["/nonexistent"], entrypoint=[], network_mode="none", labels={SMOKE_LABEL: "scan"}
    )
    try:
        stream = io.BufferedReader(_Chunks(iter(container.export(chunk_size=1 << 20))), buffer_size=1 << 20)
        with tarfile.open(fileobj=stream, mode="r|") as tar:
            return [member.name for member in tar]
    finally:
        container.remove(v=True)


def scan_image(client: Any, image: str) -> GateResult:
    """Return the dev-tools gate of ``image`` on the engine of ``client`` (docker.DockerClient)."""
    return scan_paths(image_paths(client, image))


def _health_config(attrs: dict[str, Any]) -> dict[str, Any] | None:
    hc = (attrs.get("Config") or {}).get("Healthcheck") or {}
    test = hc.get("Test") or []
    if not test or test[0] == "NONE":
        return None
    return hc


def smoke_test(
    client: Any,
    image: str,
    *,
    env: dict[str, str] | None = None,
    name: str | None = None,
    interval: float | None = 1.0,
    margin: float = 10.0,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> GateResult:
    """Start ``image`` (``--init``, host network, ``env``), wait for its HEALTHCHECK, then remove it.

    Runs the image's own HEALTHCHECK command; ``interval`` (seconds) replaces its interval so that the first
    check comes quickly (None keeps the image's), and the image's failure budget (interval x retries) is
    added to the start period so that a slow start is judged as the image would judge it. Waits at most
    start_period + (interval + timeout) x retries + ``margin`` seconds. Fails when the image has no
    HEALTHCHECK, the container exits, the check reports unhealthy, or the time is up; the reason quotes the
    last check output or the container's last log lines. The container is stopped and removed in every
    case (nothing is left behind).
    """
    attrs = client.images.get(image).attrs
    hc = _health_config(attrs)
    if hc is None:
        return GateResult(gate="smoke_test", passed=False, reason="the image has no HEALTHCHECK")
    image_interval = hc.get("Interval", 30 * _NS) / _NS or 30.0
    timeout = hc.get("Timeout", 30 * _NS) / _NS or 30.0
    retries = hc.get("Retries", 3) or 3
    every = interval if interval is not None else image_interval
    # Probing every ``interval`` seconds must not judge sooner than the image's own check would: the
    # image tolerates start_period + interval x retries of failures, so that much becomes the start period.
    start_period = hc.get("StartPeriod", 0) / _NS + (image_interval * retries if interval is not None else 0)
    bound = start_period + (every + timeout) * retries + margin
    config = {
        "test": hc["Test"],
        "interval": int(every * _NS),
        "timeout": int(timeout * _NS),
        "retries": retries,
        "start_period": int(start_period * _NS),
    }
    container = client.containers.create(
        image,
        name=name or f"acgs-smoke-{secrets.token_hex(4)}",
        environment=env or {},
        network_mode="host",
        init=True,
        healthcheck=config,
        labels={SMOKE_LABEL: "smoke"},
    )
    t0 = clock()
    try:
        container.start()
        while True:
            container.reload()
            state = container.attrs["State"]
            health = state.get("Health") or {}
            status = health.get("Status")
            waited = clock() - t0
            if status == "healthy":
                return GateResult(
                    gate="smoke_test",
                    passed=True,
                    reason=f"healthy after {waited:.1f} s",
                    measured=waited,
                    limit=bound,
                )
            if state.get("Status") in ("exited", "dead"):
                logs = container.logs(tail=5).decode(errors="replace").strip().splitlines()
                return GateResult(
                    gate="smoke_test",
                    passed=False,
                    reason=f"the container exited with code {state.get('ExitCode')} before it was healthy"
                    + (f": {logs[-1]}" if logs else ""),
                    measured=waited,
                    limit=bound,
                    details=logs,
                )
            if status == "unhealthy" or waited > bound:
                last = (health.get("Log") or [{}])[-1]
                output = (last.get("Output") or "").strip().splitlines()
                why = "reported unhealthy" if status == "unhealthy" else f"not healthy within {bound:.0f} s"
                return GateResult(
                    gate="smoke_test",
                    passed=False,
                    reason=f"{why}" + (f" (last check exited {last.get('ExitCode')}: {output[-1]})" if output else ""),
                    measured=waited,
                    limit=bound,
                    details=output[-5:],
                )
            sleep(0.25)
    finally:
        try:
            container.stop(timeout=5)
        finally:
            container.remove(v=True)


def smoke_env(service: ServicePolicy, address: str) -> dict[str, str]:
    """Return the environment the smoke test gives ``service``: its policy env with {address}/{port} filled."""
    port = str(service.port or "")
    return {k: v.replace("{address}", address).replace("{port}", port) for k, v in service.env.items()}


def run_gates(
    client: Any,
    image: str,
    service: ServicePolicy,
    policy: Policy,
    *,
    build_seconds: float | None,
    address: str = "127.0.98.1",
) -> GateReport:
    """Return every gate of ``image`` (built for ``service``) on the engine of ``client``.

    Size from the engine (bytes), against ``policy.service_budget(service)`` and ``service.expected_size``;
    ``build_seconds`` against ``policy.criteria.build_time_max`` (skipped when None); the smoke test with
    ``smoke_env(service, address)`` (``address``: a 127.x address no other service of the port uses);
    the filesystem scan. Raises docker.errors.ImageNotFound when the image is not on the engine.
    """
    img = client.images.get(image)
    size = int(img.attrs["Size"])
    report = GateReport(service=service.name, image=img.id, size=size, build_seconds=build_seconds)
    report.results += size_gates(size, policy.service_budget(service), service.expected_size)
    if build_seconds is not None:
        report.results.append(build_time_gate(build_seconds, policy.criteria.build_time_max))
    report.results.append(smoke_test(client, img.id, env=smoke_env(service, address)))
    report.results.append(scan_image(client, img.id))
    return report
