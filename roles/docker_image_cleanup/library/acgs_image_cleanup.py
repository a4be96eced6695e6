#!/usr/bin/python
# WANT_JSON
"""Ansible module: apply one Docker host's phase-1 or hygiene plan (image removals, build-cache prune) in one call.

It is a "module that wants JSON" (the WANT_JSON marker above): Ansible runs it as a plain script with its
arguments in a JSON file instead of wrapping it in AnsiballZ. Why: it runs once per host of a fleet, and the
AnsiballZ wrapper (unzipping and importing ansible.module_utils.basic in every module process) cost
~0.1-0.2 s of CPU per host, more than the work itself. Arguments are validated here (_ModuleArgs) with the
same rules as AnsibleModule's for the types this module takes; check and diff mode come in the arguments.
"""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_image_cleanup
short_description: Apply a Docker host's phase-1 or hygiene plan (remove images by ID, prune build cache)
description:
  - Applies the host's whole phase-1 plan in one invocation (few module calls per host, however many images).
  - With O(plan) (what C(acgs-remediate phase1) or C(acgs-remediate hygiene) passes) it applies exactly those
    actions. Without it, it computes the plan itself from the engine's live facts and O(policy) with the very
    planner C(acgs-remediate plan phase1) (C(acgs_remediate.plan)) or C(acgs-remediate plan hygiene)
    (C(acgs_remediate.hygiene), O(phase=hygiene)) shows.
  - Every removal is re-checked against the engine just before acting. An image that became used by a
    container (running or stopped), gained a tag, or now matches a protected pattern since the plan is
    skipped and reported, never removed. An image already gone is fine.
  - Never forces a removal and never touches volumes. An image with several names (tags, and registry
    digests such as those of an image pulled by digest and then tagged) has them removed name by name, tags
    first (each re-checked to still point at the planned ID); the last one deletes it. Untagging alone would
    leave it named by its digest, its bytes not freed.
  - The build cache is pruned down to the budget with the engine's keep-storage prune (API, not
    community.docker.docker_prune, which has no check mode).
  - Supports check mode (reports exactly what would be done, changes nothing) and diff mode.
  - It talks to the engine with the project's own client (C(acgs_remediate.engine), standard library only) over
    unix://, tcp:// with TLS, and ssh:// (the C(ssh) binary running C(docker system dial-stdio) on the host,
    as the docker CLI does, so the user's ~/.ssh/config applies; under C(acgs-remediate) it joins the
    command's ssh connection instead of logging in again).
  - With O(plan) in the shape C(acgs_remediate.plan.HostPlan) dumps, the module needs neither pydantic nor
    the planner; then O(policy) serves only the protected-pattern re-checks. Any other plan shape is judged
    by C(HostPlan) itself.
options:
  host_name:
    description: Inventory name of the host (checked against the plan's host).
    type: str
    required: true
  docker_host:
    description: The engine's endpoint (unix://, ssh://, tcp://).
    type: str
    default: unix:///var/run/docker.sock
  tls:
    description: Use TLS towards a tcp:// endpoint.
    type: bool
    default: false
  validate_certs:
    description: Verify the engine's TLS certificate.
    type: bool
    default: false
  ca_path:
    description: CA certificate for TLS.
    type: path
  client_cert:
    description: Client certificate for TLS.
    type: path
  client_key:
    description: Client key for TLS.
    type: path
  timeout:
    description: Engine API timeout in seconds.
    type: float
    default: 60
  connect_timeout:
    description: Seconds allowed for first contact with the engine (ssh login or TCP connect, TLS, ping).
    type: float
    default: 10
  ssh_config:
    description: For ssh:// engines, an ssh config file to use (C(ssh -F)) instead of ~/.ssh/config.
    type: path
  policy:
    description: The C(acgs_policy) mapping. Required to plan; with O(plan), used to re-check protected patterns.
    type: dict
  plan:
    description: The host's plan as C(acgs-remediate) computed and showed it (C(acgs_remediate.plan.HostPlan) as data).
    type: dict
  prune_build_cache:
    description: Apply the plan's build-cache prune.
    type: bool
    default: true
  phase:
    description:
      - Which planner a standalone run (no O(plan)) uses. C(hygiene) keeps the host under the policy's
        C(hygiene) watermarks, least recently used first; standalone it knows last use from the containers and
        the engine's events of the last C(events_lookback) (no ledger).
    type: str
    choices: [phase1, hygiene]
    default: phase1
requirements:
  - acgs_remediate importable by the module's Python (set ansible_python_interpreter to ansible_playbook_python);
    a given plan needs only its standard-library client (C(acgs_remediate.engine)); ssh:// engines need the
    C(ssh) client here and the docker CLI on the remote host.
"""

RETURN = r"""
removed:
  description: Images removed (id, tags, predicted_bytes).
  returned: always
  type: list
  elements: dict
would_remove:
  description: In check mode, the images that would be removed.
  returned: always
  type: list
  elements: dict
skipped_images:
  description: Planned images left alone because the engine changed since the plan (id, tags, reason).
  returned: always
  type: list
  elements: dict
already_gone:
  description: Planned images that no longer existed.
  returned: always
  type: list
  elements: str
build_cache:
  description: The build-cache prune (planned, keep_bytes, reclaimed_bytes, predicted_bytes).
  returned: always
  type: dict
predicted_bytes:
  description: Sum of the predicted bytes of the removed (or, in check mode, would-be removed) images plus cache.
  returned: always
  type: int
plan:
  description: The plan computed from live facts (standalone runs; not returned when the plan was given).
  returned: when computed
  type: dict
plan_source:
  description: C(given) when passed in O(plan), C(computed) otherwise.
  returned: always
  type: str
"""

import fnmatch
import json
import os
import sys
import time
from datetime import datetime
from types import SimpleNamespace
from typing import Any

_NONE_TAG = "<none>:<none>"
_NONE_DIGEST = "<none>@<none>"
_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _names(info: dict[str, Any]) -> tuple[list[str], list[str]]:
    """Return an engine image listing's (tags, repository digests), without 20.10's <none> placeholders."""
    tags = [t for t in info.get("RepoTags") or [] if t and t != _NONE_TAG]
    digests = [d for d in info.get("RepoDigests") or [] if d and d != _NONE_DIGEST]
    return tags, digests


def _is_dangling(tags: list[str], digests: list[str]) -> bool:
    """Return whether an image is dangling: no tag AND no repository digest.

    The rule of acgs_remediate.models.is_dangling (this module runs without acgs_remediate on its light path;
    a unit test holds the two equal). An image pulled by digest is named, never junk; the engine's
    dangling=true filter lists it, so that filter is never used.
    """
    return not tags and not digests


def _label(image_id: str, tags: list[str], digests: list[str] | None = None) -> str:
    if tags:
        return f"{_short(image_id)} ({', '.join(tags)})"
    if digests:
        return f"{_short(image_id)} ({', '.join(digests)})"
    return f"{_short(image_id)} (dangling)"


class _Applier:
    """Applies the removals of one plan against one engine, re-checking each one first."""

    def __init__(self, api: Any, errors: Any, policy: Any, check_mode: bool) -> None:
        self.api = api
        self.errors = errors
        self.policy = policy
        self.check_mode = check_mode
        self.removed: list[dict[str, Any]] = []
        self.would_remove: list[dict[str, Any]] = []
        self.skipped: list[dict[str, Any]] = []
        self.already_gone: list[str] = []
        self.changed = False
        self._containers: list[dict[str, Any]] | None = None
        self._images: dict[str, dict[str, Any]] | None = None

    def _inspect(self, ref: str) -> dict[str, Any] | None:
        try:
            return self.api.inspect_image(ref)
        except self.errors.NotFound:
            return None

    def _skip(self, action: Any, reason: str) -> None:
        self.skipped.append({"id": action.image_id, "tags": list(action.tags), "reason": reason})

    def _recheck(self, action: Any, info: dict[str, Any]) -> str | None:
        """Return why ``action`` must not run now, or None when it still may."""
        tags, digests = _names(info)
        gained = sorted(set(tags) - set(action.tags))
        if gained:
            return f"gained tag(s) {', '.join(gained)} since the plan"
        # A digest is a name too (an image pulled by digest is deployed, not dangling): one gained since the
        # plan means someone pulled or pushed it meanwhile.
        gained = sorted(set(digests) - set(getattr(action, "digests", None) or []))
        if gained:
            return f"gained digest reference(s) {', '.join(gained)} since the plan"
        if getattr(action, "category", None) == "dangling" and not _is_dangling(tags, digests):
            return "no longer dangling"
        if self.policy is not None:
            for ref in (*tags, *digests):
                pattern = self.policy.is_protected(ref)
                if pattern:
                    return f"protected pattern {pattern!r} matches {ref}"
        if self._containers is None or len(tags) + len(digests) > 1:
            # Listed once per run (the engine itself refuses, without force, to delete an image a container
            # created meanwhile uses); listed afresh before removing a multi-reference image name by name,
            # because untagging is allowed even while a container uses it and would leave it without names.
            self._containers = self.api.containers(all=True)
        users = [c for c in self._containers if c.get("ImageID") == action.image_id]
        if users:
            names = ", ".join(sorted((c.get("Names") or ["?"])[0].lstrip("/") for c in users))
            return f"now used by container {names}"
        return None

    def _current(self, image_id: str) -> dict[str, Any] | None:
        """Return the engine's listing entry of ``image_id`` (images listed once per run), or None."""
        if self._images is None:
            # One listing per host run instead of one inspect per image: whatever changes after it is
            # caught by the engine itself (deleting by ID an image that gained a tag or a container is
            # refused without force; an image already gone answers 404).
            self._images = {img["Id"]: img for img in self.api.images(all=False)}
        return self._images.get(image_id)

    def apply(self, action: Any) -> None:
        """Remove one planned image, unless the engine says it must stay now."""
        info = self._current(action.image_id)
        if info is None:
            self.already_gone.append(action.image_id)
            return
        why = self._recheck(action, info)
        if why is not None:
            self._skip(action, why)
            return
        entry = {"id": action.image_id, "tags": list(action.tags), "predicted_bytes": action.predicted_bytes}
        if self.check_mode:
            self.would_remove.append(entry)
            return
        tags, digests = _names(info)
        try:
            if len(tags) + len(digests) <= 1:
                # One name or none: delete by ID (never force; the engine refuses if a container appeared).
                self.api.remove_image(action.image_id, force=False, noprune=False)
            else:
                # Deleting by ID an image named in several repositories needs force, and untagging only its
                # tags leaves it under a registry digest of another repository (pulled by digest, then
                # tagged): named, its bytes not freed. So every name goes, tags first, then digests, each
                # checked to still point at the planned image (a tag moved meanwhile must not take another
                # image); the last one deletes the image. The engine drops a repository's digests with its
                # last tag itself: a digest already gone is skipped.
                for ref in (*tags, *digests):
                    current = self._inspect(ref)
                    if current is None or current.get("Id") != action.image_id:
                        continue
                    self.api.remove_image(ref, force=False, noprune=False)
                    self.changed = True
                if self._inspect(action.image_id) is not None:
                    self._skip(action, "still present after removing its names (a name was moved or added meanwhile)")
                    return
        except self.errors.NotFound:
            self.already_gone.append(action.image_id)
            return
        except self.errors.APIError as exc:
            if exc.status_code == 409:
                # Conflict: a container was created from it, or it has dependent child images.
                self._skip(action, f"engine refused without force: {exc.explanation or exc}")
                return
            raise
        self.changed = True
        self.removed.append(entry)


# --- The light path (why: one module process per host; importing pydantic and the planner cost ~0.3 s of
# CPU per host, the bulk of a fleet run's time). A plan given in the shape HostPlan dumps needs neither.

_PLAN_KEYS = {"host", "phase", "planned_at", "actions", "protections", "predicted_bytes", "notes", "watermark"}
_ACTION_KEYS = {
    "kind", "reason", "predicted_bytes", "image_id", "tags", "digests", "category", "keep_bytes", "service", "path",
}
_KINDS = {"remove_image", "prune_build_cache", "repair_build_file"}


def _is_str_list(value: Any) -> bool:
    return isinstance(value, list) and all(isinstance(v, str) for v in value)


def _opt(value: Any, kind: type) -> bool:
    return value is None or (isinstance(value, kind) and not isinstance(value, bool))


def _light_action(a: Any) -> SimpleNamespace | None:
    if not isinstance(a, dict) or not set(a) <= _ACTION_KEYS or a.get("kind") not in _KINDS:
        return None
    pb = a.get("predicted_bytes", 0)
    if not isinstance(a.get("reason"), str) or not _opt(pb, int) or pb is None:
        return None
    if not (_opt(a.get("image_id"), str) and _is_str_list(a.get("tags", [])) and _is_str_list(a.get("digests", []))
            and _opt(a.get("keep_bytes"), int)
            and a.get("category") in (None, "oversized", "dangling", "unused")
            and _opt(a.get("service"), str) and _opt(a.get("path"), str)):
        return None
    return SimpleNamespace(kind=a["kind"], image_id=a.get("image_id"), tags=list(a.get("tags", [])),
                           digests=list(a.get("digests", [])), category=a.get("category"),
                           predicted_bytes=pb, keep_bytes=a.get("keep_bytes"))


def _light_plan(data: Any) -> SimpleNamespace | None:
    """Return the plan when it has exactly the shape HostPlan dumps, else None (then pydantic judges it)."""
    if not isinstance(data, dict) or not set(data) <= _PLAN_KEYS or not {"host", "phase", "planned_at"} <= set(data):
        return None
    if not (isinstance(data["host"], str) and isinstance(data["phase"], str) and isinstance(data["planned_at"], str)
            and _opt(data.get("predicted_bytes", 0), int) and data.get("predicted_bytes", 0) is not None
            and _is_str_list(data.get("notes", [])) and isinstance(data.get("actions", []), list)
            and isinstance(data.get("protections", []), list)
            and (data.get("watermark") is None or isinstance(data["watermark"], dict))):
        return None
    try:
        datetime.fromisoformat(data["planned_at"])
    except ValueError:
        return None
    for prot in data.get("protections", []):
        if not (isinstance(prot, dict) and set(prot) <= {"image_id", "tags", "digests", "reasons"}
                and isinstance(prot.get("image_id"), str) and _is_str_list(prot.get("tags", []))
                and _is_str_list(prot.get("digests", []))
                and _is_str_list(prot.get("reasons"))):
            return None
    actions = [_light_action(a) for a in data.get("actions", [])]
    if any(a is None for a in actions):
        return None
    return SimpleNamespace(host=data["host"], actions=actions,
                           removals=lambda: [a for a in actions if a.kind == "remove_image"])


class _Patterns:
    """The policy's protected patterns, all a given plan's re-checks need (Policy.is_protected's rule)."""

    def __init__(self, patterns: list[str]) -> None:
        self.protected_patterns = patterns

    def is_protected(self, ref: str) -> str | None:
        """Return the protected pattern that ``ref`` matches, or None."""
        for pattern in self.protected_patterns:
            if fnmatch.fnmatchcase(ref, pattern):
                return pattern
        return None


def _prune_cache(api: Any, errors: Any, keep_bytes: int) -> int:
    """Prune build cache down to ``keep_bytes`` (retrying 'prune already running'); return bytes freed."""
    for delay in (*_RETRY_DELAYS, None):
        try:
            result = api.prune_builds(keep_storage=keep_bytes, all=True)
            return int((result or {}).get("SpaceReclaimed") or 0)
        except errors.APIError as exc:
            if exc.status_code == 409 and delay is not None:
                time.sleep(delay)
                continue
            raise
    return 0


# --- Arguments, results and exit, as AnsibleModule does them (this module runs without AnsiballZ; see the top).

_ARGUMENT_SPEC: dict[str, dict[str, Any]] = {
    "host_name": {"type": "str", "required": True},
    "docker_host": {"type": "str", "default": "unix:///var/run/docker.sock"},
    "tls": {"type": "bool", "default": False},
    "validate_certs": {"type": "bool", "default": False},
    "ca_path": {"type": "path"},
    "client_cert": {"type": "path"},
    "client_key": {"type": "path"},
    "timeout": {"type": "float", "default": 60.0},
    "connect_timeout": {"type": "float", "default": 10.0},
    "ssh_config": {"type": "path"},
    "policy": {"type": "dict"},
    "plan": {"type": "dict"},
    "prune_build_cache": {"type": "bool", "default": True},
    "phase": {"type": "str", "default": "phase1", "choices": ["phase1", "hygiene"]},
}
_TRUE = {"yes", "on", "1", "true", "y", "t"}
_FALSE = {"no", "off", "0", "false", "n", "f"}


def _convert(name: str, kind: str, value: Any) -> Any:
    """Return ``value`` as option ``name``'s type, or raise ValueError saying why it cannot be one."""
    if kind == "bool":
        if isinstance(value, bool):
            return value
        text = str(value).strip().lower()
        if isinstance(value, (str, int, float)) and text in _TRUE | _FALSE:
            return text in _TRUE
    elif kind == "float":
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            return float(value)
        if isinstance(value, str):
            try:
                return float(value)
            except ValueError:
                pass
    elif kind in ("str", "path"):
        if isinstance(value, (str, int, float)) and not isinstance(value, bool):
            text = str(value)
            return os.path.expanduser(os.path.expandvars(text)) if kind == "path" else text
    elif kind == "dict":
        if isinstance(value, dict):
            return value
        if isinstance(value, str) and value.strip().startswith("{"):
            try:
                loaded = json.loads(value)
            except ValueError:
                loaded = None
            if isinstance(loaded, dict):
                return loaded
    raise ValueError(f"argument '{name}' is of type {type(value).__name__} and we were unable to convert to {kind}")


class _ModuleArgs:
    """The module's validated arguments, check and diff mode, and its two ways out (exit_json, fail_json)."""

    def __init__(self, spec: dict[str, dict[str, Any]], argv: list[str]) -> None:
        try:
            with open(argv[1], encoding="utf-8") as fh:
                raw = json.load(fh)
            if not isinstance(raw, dict):
                raise ValueError("not a mapping")
        except (IndexError, OSError, ValueError) as exc:
            self.fail_json(msg=f"this module reads its arguments from a JSON file given as its only argument "
                               f"(Ansible's WANT_JSON convention): {exc}")
        self.check_mode = bool(raw.get("_ansible_check_mode", False))
        self._diff = bool(raw.get("_ansible_diff", False))
        unknown = sorted(k for k in raw if not k.startswith("_ansible_") and k not in spec)
        if unknown:
            self.fail_json(msg=f"Unsupported parameters for (acgs_image_cleanup) module: {', '.join(unknown)}. "
                               f"Supported parameters include: {', '.join(sorted(spec))}.")
        missing = sorted(k for k, opt in spec.items() if opt.get("required") and raw.get(k) is None)
        if missing:
            self.fail_json(msg=f"missing required arguments: {', '.join(missing)}")
        for name, opt in spec.items():
            if "choices" in opt and raw.get(name) is not None and raw[name] not in opt["choices"]:
                self.fail_json(msg=f"value of {name} must be one of: {', '.join(opt['choices'])}, got: {raw[name]}")
        self.params: dict[str, Any] = {}
        problems = []
        for name, opt in spec.items():
            value = raw.get(name)
            if value is None:
                self.params[name] = opt.get("default")
                continue
            try:
                self.params[name] = _convert(name, opt["type"], value)
            except ValueError as exc:
                problems.append(str(exc))
        if problems:
            self.fail_json(msg="; ".join(problems))

    @staticmethod
    def exit_json(**result: Any) -> None:
        """Print the result and end the module."""
        print(json.dumps(result, default=str))
        sys.exit(0)

    @staticmethod
    def fail_json(msg: str, **result: Any) -> None:
        """Print a failed result naming ``msg`` and end the module."""
        print(json.dumps({**result, "failed": True, "msg": msg}, default=str))
        sys.exit(1)


def _plan_hygiene_standalone(host: Any, snapshot: Any, policy: Any) -> Any:
    """Return the hygiene plan from live facts alone: arrival from the engine, use from containers and events.

    Without the CLI's ledger, the engine's events of the last ``events_lookback`` stand in for "since the
    previous run" (the engine keeps a bounded buffer of them).
    """
    from datetime import timedelta, timezone

    from acgs_remediate.facts import usage_signals
    from acgs_remediate.hygiene import event_signals, last_used, plan_hygiene, with_arrivals

    now = datetime.now(timezone.utc)
    signals = usage_signals(host, snapshot, now - timedelta(seconds=policy.hygiene.events_lookback), now)
    uses, arrivals = event_signals(snapshot, signals["events"])
    snapshot = with_arrivals(snapshot, signals["imagedb"], arrivals, signals["tag_times"])
    return plan_hygiene(snapshot, policy, last_used(snapshot, uses), now)


def main() -> None:
    """Apply (or, in check mode, report) the host's phase-1 or hygiene plan."""
    module = _ModuleArgs(_ARGUMENT_SPEC, sys.argv)
    p = module.params
    docker_host = p["docker_host"]
    # A plan of HostPlan's shape needs no pydantic or planner (see above).
    host_plan: Any = _light_plan(p["plan"]) if p["plan"] else None
    policy: Any = None
    raw_policy = p["policy"]
    if host_plan is not None and (not raw_policy or _is_str_list(raw_policy.get("protected_patterns", []))):
        # With a given plan the policy only serves the protected-pattern re-checks (whoever made the plan
        # validated the whole policy: the CLI does, before planning).
        policy = _Patterns(list(raw_policy.get("protected_patterns", []))) if raw_policy else None
        light = True
    else:
        host_plan = None
        light = False
    try:
        from acgs_remediate.engine import EngineAPI, Endpoint, EngineHTTPError, EngineNotFound, describe_failure

        if not light or not p["plan"]:
            from acgs_remediate.config import parse_policy
            from acgs_remediate.errors import RemediateError
            from acgs_remediate.inventory import Host
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate not importable by this module's Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return
    errors = SimpleNamespace(APIError=EngineHTTPError, NotFound=EngineNotFound)
    endpoint = Endpoint(
        url=docker_host, tls=p["tls"], validate_certs=p["validate_certs"], ca_path=p["ca_path"],
        client_cert=p["client_cert"], client_key=p["client_key"], ssh_config=p["ssh_config"],
        connect_timeout=p["connect_timeout"],
    )

    if host_plan is None and raw_policy:
        try:
            policy = parse_policy(raw_policy, "the role variable docker_image_cleanup_policy")
        except RemediateError as exc:
            module.fail_json(msg=exc.message, hint=exc.hint)
            return
    host_name = p["host_name"]
    if p["plan"]:
        if host_plan is None:
            # Not HostPlan's exact shape: pydantic judges it (and names what is wrong).
            from acgs_remediate.plan import HostPlan

            try:
                host_plan = HostPlan.model_validate(p["plan"])
            except ValueError as exc:
                module.fail_json(msg=f"the plan given for {host_name} is not a {p['phase']} plan: "
                                     f"{str(exc).splitlines()[0]}")
                return
        if host_plan.host != host_name:
            module.fail_json(msg=f"the plan given is for host {host_plan.host}, not {host_name}")
            return
        source = "given"
    else:
        from acgs_remediate.facts import collect
        from acgs_remediate.plan import plan_phase1

        if policy is None:
            module.fail_json(msg="no plan and no policy: set acgs_policy (or docker_image_cleanup_policy)")
            return
        host = Host(
            name=host_name, docker_host=docker_host, tls=p["tls"], validate_certs=p["validate_certs"],
            ca_path=p["ca_path"], client_cert=p["client_cert"], client_key=p["client_key"], timeout=p["timeout"],
            ssh_config=p["ssh_config"], connect_timeout=p["connect_timeout"],
        )
        try:
            snapshot = collect(host)
        except Exception as exc:  # an engine down is this host's failure, in one line
            module.fail_json(msg=f"engine unreachable: {docker_host}: {describe_failure(exc)}")
            return
        if p["phase"] == "hygiene":
            host_plan = _plan_hygiene_standalone(host, snapshot, policy)
        else:
            host_plan = plan_phase1(snapshot, policy)
        source = "computed"

    try:
        api = EngineAPI(endpoint, p["timeout"])
        applier = _Applier(api, errors, policy, module.check_mode)
        before = {a.image_id: (a.tags, list(getattr(a, "digests", None) or [])) for a in host_plan.removals()}
        for action in host_plan.removals():
            applier.apply(action)
        cache: dict[str, Any] = {"planned": False, "reclaimed_bytes": 0}
        cache_action = next((a for a in host_plan.actions if a.kind == "prune_build_cache"), None)
        if cache_action is not None and p["prune_build_cache"]:
            cache.update(planned=True, keep_bytes=cache_action.keep_bytes,
                         predicted_bytes=cache_action.predicted_bytes)
            if not module.check_mode:
                cache["reclaimed_bytes"] = _prune_cache(api, errors, int(cache_action.keep_bytes or 0))
                if cache["reclaimed_bytes"] > 0:
                    applier.changed = True
    except Exception as exc:
        # Engine gone mid-run (or another engine error): this host fails; what was done is reported.
        module.fail_json(
            msg=f"engine error on {docker_host}: {describe_failure(exc)}",
            removed=applier.removed if "applier" in locals() else [],
            skipped_images=applier.skipped if "applier" in locals() else [],
        )
        return

    done = applier.would_remove if module.check_mode else applier.removed
    done_ids = {d["id"] for d in done}
    predicted = sum(d["predicted_bytes"] for d in done)
    if cache.get("planned") and (module.check_mode or cache["reclaimed_bytes"] > 0):
        predicted += int(cache.get("predicted_bytes") or 0)
    would_change = bool(applier.would_remove) or (module.check_mode and cache.get("planned", False))
    changed = would_change if module.check_mode else applier.changed
    lines_before = sorted(_label(i, *names) for i, names in before.items() if i not in applier.already_gone)
    lines_after = sorted(
        _label(i, *names) for i, names in before.items() if i not in done_ids and i not in applier.already_gone
    )
    verb = "would remove" if module.check_mode else "removed"
    msg = (f"{host_name}: {verb} {len(done)} image(s), skipped {len(applier.skipped)}, "
           f"already gone {len(applier.already_gone)}")
    if cache.get("planned"):
        msg += (f"; build cache {'would be pruned' if module.check_mode else 'pruned'} to "
                f"{cache.get('keep_bytes')} bytes")
    result: dict[str, Any] = {
        "changed": changed, "msg": msg, "removed": applier.removed, "would_remove": applier.would_remove,
        "skipped_images": applier.skipped, "already_gone": applier.already_gone, "build_cache": cache,
        "predicted_bytes": predicted, "plan_source": source,
    }
    if source == "computed":
        # Standalone runs show the plan they computed; the CLI already holds the plan it passed in.
        result["plan"] = host_plan.model_dump(mode="json")
    if module._diff:
        result["diff"] = {
            "before_header": f"{host_name}: planned images present", "after_header": f"{host_name}: after",
            "before": "".join(f"{line}\n" for line in lines_before),
            "after": "".join(f"{line}\n" for line in lines_after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
