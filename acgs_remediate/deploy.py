"""Phase 3, pure part: the compose file pinned to phase 2's images, per-host deploy plans, rollback units.

Nothing here talks to an engine (``rollout`` does); everything is tested from text and snapshots.

* :func:`render_compose` rewrites the user's compose file with ruamel.yaml's round-trip mode, so comments,
  anchors, merge keys and key order stay as written: each deployed service's ``image:`` becomes its phase-2
  image pinned by registry digest (``REPO@sha256:...``) or by image ID (``sha256:...``) — never a moving
  tag — and each long-running service gets a ``healthcheck:``. :func:`compose_diff` is what ``--diff`` shows.
* :func:`plan_deploy` decides per host which services switch (from which image to which) and which stay:
  a service switches only when the image its container runs differs from the target (or its container is
  missing or stopped); everything else — the database above all — is left alone and never recreated.
* :class:`RollbackUnit` is what a host returns to on failure: the compose file text as it was, the exact
  image each service ran, and the interpolation environment. It is recorded before the switch.

Where the rules come from: DESIGN.md "Phases 2 and 3" and issue 11 (pinning, soak window
>= start_period + interval x retries, rollback unit, retained-image tags), ANCHORS.md (swarm's monitor
window, Kamal's rollback to a version you must look up, compose ``up --wait`` pitfalls).
"""

from __future__ import annotations

import difflib
import functools
import io
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from .config import HealthcheckSpec, Policy
from .models import BuildRecord

# Images a deployment replaced keep a tag saying what they are, so that `docker images` shows them to a person
# and they never count as dangling: REPOSITORY:rollback-<image id, 12 hex> (the form phase 2 uses too).
ROLLBACK_TAG_PREFIX = "rollback-"
COMPOSE_PROJECT_LABEL = "com.docker.compose.project"
COMPOSE_SERVICE_LABEL = "com.docker.compose.service"
COMPOSE_ONEOFF_LABEL = "com.docker.compose.oneoff"
COMPOSE_CONFIG_HASH_LABEL = "com.docker.compose.config-hash"
# A container made outside Compose (no config hash: Compose does not recognise it as its own) is stopped and
# renamed NAME-acgs-pre-<id12> before Compose creates the service's container; a rollback renames it back.
ADOPTED_SUFFIX = "-acgs-pre-"


class DeployError(ValueError):
    """The compose file or the targets cannot be deployed as asked (the message says what and how to fix)."""


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


def _yaml() -> Any:
    from ruamel.yaml import YAML

    y = YAML(typ="rt")
    y.preserve_quotes = True
    y.width = 4096  # never re-wrap the user's long lines
    y.indent(mapping=2, sequence=4, offset=2)
    return y


def load_compose(text: str) -> Any:
    """Return the compose document (a ruamel CommentedMap); raise DeployError when it is no compose file."""
    from ruamel.yaml.error import YAMLError

    try:
        doc = _yaml().load(text)
    except YAMLError as exc:
        raise DeployError(f"the compose file is not valid YAML: {str(exc).splitlines()[0]}") from None
    if not isinstance(doc, dict) or not isinstance(doc.get("services"), dict):
        raise DeployError("the compose file has no 'services:' mapping")
    return doc


class ComposeService(_Model):
    """One service of a compose file, as phase 3 sees it."""

    name: str
    image: str | None = None
    restart: str = "no"
    profiles: list[str] = Field(default_factory=list)
    healthcheck: HealthcheckSpec | None = None
    one_shot: bool = False  # expected to run to completion (exit 0), not to stay up


def _seconds(value: Any) -> float:
    from .units import parse_duration

    if isinstance(value, int | float):
        return float(value)
    text = str(value).strip()
    # Compose durations: 1m30s, 500ms, 10s.
    total, num = 0.0, ""
    units = {"h": 3600.0, "m": 60.0, "s": 1.0, "ms": 0.001, "us": 1e-6}
    i = 0
    while i < len(text):
        ch = text[i]
        if ch.isdigit() or ch == ".":
            num += ch
            i += 1
            continue
        unit = "ms" if text[i : i + 2] == "ms" else "us" if text[i : i + 2] == "us" else ch
        if unit not in units or not num:
            return float(parse_duration(text))
        total += float(num) * units[unit]
        num = ""
        i += len(unit)
    return total + (float(num) if num else 0.0)


def _healthcheck(raw: Any) -> HealthcheckSpec | None:
    if not isinstance(raw, dict) or raw.get("disable") or not raw.get("test"):
        return None
    test = raw["test"]
    return HealthcheckSpec(
        test=list(test) if isinstance(test, list) else str(test),
        interval=_seconds(raw.get("interval", 30)),
        timeout=_seconds(raw.get("timeout", 30)),
        start_period=_seconds(raw.get("start_period", 0)),
        retries=int(raw.get("retries", 3)),
    )


def compose_services(text: str, one_shot: Sequence[str] | None = None) -> dict[str, ComposeService]:
    """Return the compose file's services by name (merge keys resolved).

    ``one_shot``: the services that run to completion; None means those whose restart policy is "no" or
    "on-failure" (a migration runner), as compose users write them.
    """
    doc = _parsed(text)
    services: dict[str, ComposeService] = {}
    for name, raw in doc["services"].items():
        raw = raw or {}
        restart = str(raw.get("restart", "no"))
        is_one_shot = (
            name in one_shot if one_shot is not None else restart in ("no", "false") or restart.startswith("on-failure")
        )
        services[str(name)] = ComposeService(
            name=str(name),
            image=str(raw["image"]) if raw.get("image") is not None else None,
            restart=restart,
            profiles=[str(p) for p in raw.get("profiles") or []],
            healthcheck=_healthcheck(raw.get("healthcheck")),
            one_shot=is_one_shot,
        )
    return services


def project_name(text: str, default: str) -> str:
    """Return the compose project name: the file's top-level ``name:``, else ``default``."""
    name = _parsed(text).get("name")
    return str(name) if name else default


def _healthcheck_yaml(hc: HealthcheckSpec) -> Any:
    from ruamel.yaml.comments import CommentedMap, CommentedSeq

    def dur(seconds: float) -> str:
        return f"{seconds:g}s"

    out = CommentedMap()
    test = CommentedSeq(hc.test) if isinstance(hc.test, list) else hc.test
    if isinstance(test, CommentedSeq):
        test.fa.set_flow_style()
    out["test"] = test
    out["interval"] = dur(hc.interval)
    out["timeout"] = dur(hc.timeout)
    out["start_period"] = dur(hc.start_period)
    out["retries"] = hc.retries
    return out


@functools.lru_cache(maxsize=16)
def _parsed(text: str) -> Any:
    """Return ``load_compose(text)``, parsed once per text: only to read (never change the shared document).

    Why: ruamel's round-trip parser is the slowest step of planning phase 3 (profiled: two thirds of a
    re-run's planning on 5 hosts), and every host's plan parses the same file.
    """
    return load_compose(text)


def render_compose(
    text: str,
    pins: Mapping[str, str],
    healthchecks: Mapping[str, HealthcheckSpec] | None = None,
) -> str:
    """Return ``text`` with each service of ``pins`` on its pinned image and ``healthchecks`` written.

    ``pins``: compose service -> image reference (``sha256:<id>`` or ``REPO@sha256:<digest>``); a moving tag
    is refused. ``healthchecks``: compose service -> the check to write (an existing one is replaced).
    Comments, anchors, merge keys and the order of keys are kept. Raises DeployError for a service the file
    does not define or a reference that is not pinned. The same arguments give the same text: hosts that get
    the same images (phase 2 ships one image ID everywhere) share one rendering.
    """
    checks = tuple(sorted((name, hc.model_dump_json()) for name, hc in (healthchecks or {}).items()))
    return _render(text, tuple(sorted(pins.items())), checks)


@functools.lru_cache(maxsize=64)
def _render(text: str, pins: tuple[tuple[str, str], ...], checks: tuple[tuple[str, str], ...]) -> str:
    """Return :func:`render_compose`'s text (arguments as sorted tuples, healthchecks as JSON: hashable)."""
    doc = load_compose(text)  # a fresh parse to change: a deep copy would expand the anchors and merge keys
    healthchecks = {name: HealthcheckSpec.model_validate_json(raw) for name, raw in checks}
    services = doc["services"]
    for name, ref in pins:
        if name not in services:
            raise DeployError(f"the compose file defines no service {name!r}")
        if not is_pinned(ref):
            raise DeployError(f"{name}: {ref!r} is a moving tag; pin an image ID (sha256:...) or REPO@sha256:...")
        svc = services[name]
        if "image" in svc:
            svc["image"] = ref
        else:
            svc.insert(0, "image", ref)
    for name, hc in healthchecks.items():
        if name not in services:
            raise DeployError(f"the compose file defines no service {name!r}")
        svc = services[name]
        value = _healthcheck_yaml(hc)
        if "healthcheck" in svc:
            svc["healthcheck"] = value
        else:
            keys = list(svc.keys())
            pos = keys.index("image") + 1 if "image" in keys else len(keys)
            svc.insert(pos, "healthcheck", value)
    buf = io.StringIO()
    _yaml().dump(doc, buf)
    return buf.getvalue()


def is_pinned(ref: str) -> bool:
    """Return whether ``ref`` names one image for good: an image ID or a reference with a digest."""
    if ref.startswith("sha256:") and len(ref) == 71:
        return True
    return "@sha256:" in ref


def compose_diff(old: str, new: str, path: str) -> str:
    """Return the unified diff from ``old`` to ``new`` (``a/PATH`` -> ``b/PATH``), "" when equal."""
    return "".join(
        difflib.unified_diff(old.splitlines(keepends=True), new.splitlines(keepends=True), f"a/{path}", f"b/{path}")
    )


def rollback_tag(image: str, image_id: str) -> str:
    """Return the human tag a retained image carries: ``REPOSITORY:rollback-<id12>`` of the service's image."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    return f"{repo}:{ROLLBACK_TAG_PREFIX}{image_id.removeprefix('sha256:')[:12]}"


# -- the per-host plan ------------------------------------------------------------------------------


class ServiceTarget(_Model):
    """What one compose service should run after phase 3: phase 2's image, pinned."""

    service: str  # the compose service
    policy_service: str  # the policy's (and the build record's) name of it
    image: str  # the release reference (repository:tag) phase 2 built it as
    image_id: str  # sha256:... (the same on every host)
    ref: str  # what the compose file names: REPO@sha256:digest, else the image ID
    healthcheck: HealthcheckSpec | None = None
    one_shot: bool = False


class ServiceChange(_Model):
    """One service on one host: switched to a new image, run once, or left as it is (and why)."""

    service: str
    kind: Literal["switch", "run_once", "keep"]
    from_image: str | None = None  # image ID its container runs now (None: no container)
    to_image: str | None = None  # image ID it will run
    to_ref: str | None = None
    reason: str = ""


class DeployPlan(_Model):
    """Phase 3's plan for one host: what switches, what runs once, what stays."""

    host: str
    project: str
    compose_path: str
    changes: list[ServiceChange] = Field(default_factory=list)
    notes: list[str] = Field(default_factory=list)
    predicted_bytes: int = 0  # phase 3 frees nothing itself (cleanup after health is measured separately)

    @property
    def actions(self) -> list[ServiceChange]:
        """Return the changes that act (switch or run once), one-shots first: migrations run before services."""
        acting = [c for c in self.changes if c.kind != "keep"]
        return sorted(acting, key=lambda c: (c.kind != "run_once", c.service))

    @property
    def kept(self) -> list[ServiceChange]:
        """Return the services left as they are."""
        return [c for c in self.changes if c.kind == "keep"]

    def for_run(self) -> dict[str, Any]:
        """Return the plan as data (what a run or the playbook acts on)."""
        return self.model_dump(mode="json")


class RunningService(_Model):
    """What one compose service's container runs on a host (read from the engine)."""

    service: str
    container_id: str
    container_name: str
    image_id: str
    image_ref: str = ""  # what it was created from, as written
    state: str = ""  # running, exited, restarting, ...
    health: str | None = None  # healthy, unhealthy, starting, or None without a healthcheck
    exit_code: int | None = None
    restart_count: int = 0
    started_at: str | None = None
    health_output: str | None = None  # the last health check's output (why it failed)
    compose_managed: bool = True  # created by Compose (it carries Compose's config hash); False: made by hand


def plan_deploy(
    host: str,
    project: str,
    compose_path: str,
    running: Mapping[str, RunningService],
    services: Mapping[str, ComposeService],
    targets: Mapping[str, ServiceTarget],
) -> DeployPlan:
    """Return one host's phase-3 plan.

    ``running``: compose service -> its current container on the host (from the engine). ``services``: the
    compose file's services. ``targets``: compose service -> phase 2's image for it. A long-running service
    switches when its container is missing, stopped, or runs another image; a one-shot runs once when its
    last run was of another image or did not exit 0. Services without a target, and services the host does
    not run that sit behind a compose profile, stay as they are — the database is never touched unless
    phase 2 built it.
    """
    changes: list[ServiceChange] = []
    notes: list[str] = []
    for name, svc in sorted(services.items()):
        current = running.get(name)
        cur_id = current.image_id if current else None
        target = targets.get(name)
        if target is None:
            why = "no phase-2 image for it: left as it is"
            changes.append(ServiceChange(service=name, kind="keep", from_image=cur_id, to_image=cur_id, reason=why))
            continue
        if current is None and svc.profiles and not svc.one_shot:
            why = f"not deployed on this host (profile {', '.join(svc.profiles)}): left as it is"
            changes.append(ServiceChange(service=name, kind="keep", reason=why))
            continue
        if target.one_shot:
            if current is not None and cur_id == target.image_id and current.exit_code == 0:
                why = "already ran this image and exited 0"
                changes.append(ServiceChange(service=name, kind="keep", from_image=cur_id, to_image=cur_id, reason=why))
            else:
                why = "one-shot: must run this image once and exit 0"
                changes.append(
                    ServiceChange(
                        service=name,
                        kind="run_once",
                        from_image=cur_id,
                        to_image=target.image_id,
                        to_ref=target.ref,
                        reason=why,
                    )
                )
            continue
        if current is not None and cur_id == target.image_id and current.state == "running":
            changes.append(
                ServiceChange(
                    service=name,
                    kind="keep",
                    from_image=cur_id,
                    to_image=cur_id,
                    reason="already runs the phase-2 image",
                )
            )
            continue
        if current is None:
            why = "no container yet"
        elif cur_id != target.image_id:
            why = "runs another image"
        else:
            why = f"its container is {current.state}"
        changes.append(
            ServiceChange(
                service=name, kind="switch", from_image=cur_id, to_image=target.image_id, to_ref=target.ref, reason=why
            )
        )
        if target.healthcheck is None:
            notes.append(f"{name}: no healthcheck (neither the image nor the policy has one): running is enough")
    return DeployPlan(host=host, project=project, compose_path=compose_path, changes=changes, notes=notes)


def soak_seconds(targets: Mapping[str, ServiceTarget], minimum: float) -> float:
    """Return the soak window: at least ``minimum`` and every healthcheck's start_period + interval x retries."""
    windows = [t.healthcheck.window() for t in targets.values() if t.healthcheck and not t.one_shot]
    return max([minimum, *windows])


class RollbackUnit(_Model):
    """What a host returns to when its switch fails: recorded in the ledger before the switch.

    ``compose_text``: the compose file as the host last ran it; ``services``: the exact image each service's
    container ran (image ID, what it was created from); ``env``: the variables the file was interpolated
    with. Rolling back renders ``compose_text`` with every service pinned to its recorded image ID, so a tag
    that moved since (``:latest``) cannot change what comes back.
    """

    host: str
    project: str
    run_id: str
    recorded_at: datetime
    compose_path: str
    compose_text: str
    env: dict[str, str] = Field(default_factory=dict)
    services: dict[str, RunningService] = Field(default_factory=dict)
    switched: list[str] = Field(default_factory=list)  # the services the run switches (what goes back)
    target_text: str = ""  # the compose file the host is switched to

    def images(self) -> dict[str, str]:
        """Return compose service -> the image ID it ran (what retention must keep)."""
        return {name: s.image_id for name, s in self.services.items()}

    def rollback_text(self) -> str:
        """Return the compose file that restores the unit: its text, each recorded service pinned by image ID."""
        known = compose_services(self.compose_text)
        pins = {name: s.image_id for name, s in self.services.items() if name in known}
        return render_compose(self.compose_text, pins)


def batches(hosts: Sequence[str], canary: int, batch_size: int) -> list[list[str]]:
    """Return the rollout's batches in order: ``canary`` hosts first (one batch), then ``batch_size`` each."""
    out: list[list[str]] = []
    rest = list(hosts)
    if canary > 0 and rest:
        out.append(rest[:canary])
        rest = rest[canary:]
    while rest:
        out.append(rest[:batch_size])
        rest = rest[batch_size:]
    return out


def _registry_repository(registry: str, image: str) -> str:
    """Return where phase 2 pushed ``image``'s repository in ``registry`` (same rule as builds.registry_repository)."""
    repo = image.split("@", 1)[0]
    last = repo.rsplit("/", 1)[-1]
    if ":" in last:
        repo = repo[: len(repo) - len(last)] + last.split(":", 1)[0]
    first, _, rest = repo.partition("/")
    if rest and ("." in first or ":" in first or first == "localhost"):
        repo = rest
    return f"{registry.rstrip('/')}/{repo}"


def healthcheck_from_image(config_healthcheck: Mapping[str, Any] | None) -> HealthcheckSpec | None:
    """Return the image's own HEALTHCHECK (``Config.Healthcheck`` of an image inspect; nanoseconds) or None."""
    hc = config_healthcheck or {}
    test = list(hc.get("Test") or [])
    if not test or test[0] == "NONE":
        return None
    ns = 1e9
    return HealthcheckSpec(
        test=test,
        interval=(hc.get("Interval") or 30 * ns) / ns,
        timeout=(hc.get("Timeout") or 30 * ns) / ns,
        start_period=(hc.get("StartPeriod") or 0) / ns,
        retries=int(hc.get("Retries") or 3),
    )


def targets_from_records(
    records: Sequence[BuildRecord],
    policy: Policy,
    services: Mapping[str, ComposeService],
    image_healthchecks: Mapping[str, HealthcheckSpec | None],
) -> tuple[dict[str, ServiceTarget], list[str]]:
    """Return (compose service -> target, notes) from one host's build records (newest first).

    Each policy service deploys the image of its latest build record that succeeded, passed its gates
    (``released``) and names an image ID; pinned by registry digest when phase 2 shipped it through the
    policy's registry, else by image ID. Healthcheck: the policy's ``deploy.healthchecks`` entry, else the
    image's own HEALTHCHECK (``image_healthchecks``: image ID -> it; phase 2's smoke test ran that very check
    in that very image). Notes say which services have no usable record.
    """
    targets: dict[str, ServiceTarget] = {}
    notes: list[str] = []
    one_shot = policy.deploy.one_shot
    for svc in policy.services:
        name = svc.compose_service or svc.name
        if name not in services:
            continue
        rec = next((r for r in records if r.service == svc.name), None)
        if rec is None:
            notes.append(f"{name}: no phase-2 build record: left as it is")
            continue
        if not (rec.ok and rec.image_id and rec.released and all(g.passed for g in rec.gates)):
            why = rec.error or ("its gates did not pass" if rec.ok else "the build failed")
            notes.append(f"{name}: latest phase-2 build is not deployable ({why}): left as it is")
            continue
        ref = rec.image_id
        if rec.digest and policy.registry:
            ref = f"{_registry_repository(policy.registry, rec.image)}@{rec.digest}"
        is_one_shot = name in one_shot if one_shot is not None else services[name].one_shot
        hc = policy.deploy.healthchecks.get(name) or image_healthchecks.get(rec.image_id)
        targets[name] = ServiceTarget(
            service=name,
            policy_service=svc.name,
            image=rec.image,
            image_id=rec.image_id,
            ref=ref,
            healthcheck=None if is_one_shot else hc,
            one_shot=is_one_shot,
        )
    return targets, notes


def target_compose(text: str, targets: Mapping[str, ServiceTarget]) -> str:
    """Return the compose file phase 3 deploys: ``text`` with every target pinned and its healthcheck written."""
    pins = {name: t.ref for name, t in targets.items()}
    checks = {name: t.healthcheck for name, t in targets.items() if t.healthcheck is not None}
    return render_compose(text, pins, checks)
