#!/usr/bin/python
"""Ansible module: apply one Docker host's phase-1 plan (image removals, build-cache prune) in one call."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_image_cleanup
short_description: Apply a Docker host's phase-1 cleanup plan (remove images by ID, prune build cache)
description:
  - Applies the host's whole phase-1 plan in one invocation (few module calls per host, however many images).
  - With O(plan) (what C(acgs-remediate phase1) passes) it applies exactly those actions. Without it, it
    computes the plan itself from the engine's live facts and O(policy) with C(acgs_remediate.plan), the very
    planner C(acgs-remediate plan phase1) shows.
  - Every removal is re-checked against the engine just before acting. An image that became used by a
    container (running or stopped), gained a tag, or now matches a protected pattern since the plan is
    skipped and reported, never removed. An image already gone is fine.
  - Never forces a removal and never touches volumes. An image with several tags is untagged tag by tag
    (each tag re-checked to still point at the planned ID); the last untag deletes it.
  - The build cache is pruned down to the budget with the engine's keep-storage prune (API, not
    community.docker.docker_prune, which has no check mode).
  - Supports check mode (reports exactly what would be done, changes nothing) and diff mode.
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
requirements:
  - acgs_remediate and the docker SDK importable by the module's Python (set ansible_python_interpreter to
    ansible_playbook_python)
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

import time
from typing import Any

from ansible.module_utils.basic import AnsibleModule

_NONE_TAG = "<none>:<none>"
_RETRY_DELAYS = (0.5, 1.0, 2.0, 4.0)


def _short(image_id: str) -> str:
    return image_id.removeprefix("sha256:")[:12]


def _label(image_id: str, tags: list[str]) -> str:
    return f"{_short(image_id)} ({', '.join(tags)})" if tags else f"{_short(image_id)} (dangling)"


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
        tags = [t for t in info.get("RepoTags") or [] if t != _NONE_TAG]
        gained = sorted(set(tags) - set(action.tags))
        if gained:
            return f"gained tag(s) {', '.join(gained)} since the plan"
        if self.policy is not None:
            for tag in tags:
                pattern = self.policy.is_protected(tag)
                if pattern:
                    return f"protected pattern {pattern!r} matches {tag}"
        if self._containers is None or len(tags) > 1:
            # Listed once per run (the engine itself refuses, without force, to delete an image a container
            # created meanwhile uses); listed afresh before untagging a multi-tag image, because untagging
            # is allowed even while a container uses it and would leave that image without its tags.
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
        tags = [t for t in info.get("RepoTags") or [] if t != _NONE_TAG]
        try:
            if len(tags) <= 1:
                # One tag or none: delete by ID (never force; the engine refuses if a container appeared).
                self.api.remove_image(action.image_id, force=False, noprune=False)
            else:
                # Deleting a multi-tag image by ID needs force; untag one by one instead, each tag checked
                # to still point at the planned image (a tag moved meanwhile must not take another image).
                for tag in tags:
                    current = self._inspect(tag)
                    if current is None or current.get("Id") != action.image_id:
                        continue
                    self.api.remove_image(tag, force=False, noprune=False)
                    self.changed = True
                if self._inspect(action.image_id) is not None:
                    self._skip(action, "still present after untagging (a tag was moved or added meanwhile)")
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


def main() -> None:
    """Apply (or, in check mode, report) the host's phase-1 plan."""
    module = AnsibleModule(
        argument_spec={
            "host_name": {"type": "str", "required": True},
            "docker_host": {"type": "str", "default": "unix:///var/run/docker.sock"},
            "tls": {"type": "bool", "default": False},
            "validate_certs": {"type": "bool", "default": False},
            "ca_path": {"type": "path"},
            "client_cert": {"type": "path"},
            "client_key": {"type": "path"},
            "timeout": {"type": "float", "default": 60.0},
            "policy": {"type": "dict"},
            "plan": {"type": "dict"},
            "prune_build_cache": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        import docker
        from docker import errors

        from acgs_remediate.config import parse_policy
        from acgs_remediate.errors import RemediateError
        from acgs_remediate.facts import collect, describe_error
        from acgs_remediate.inventory import Host
        from acgs_remediate.plan import HostPlan, plan_phase1
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate/docker not importable by this module's Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return

    policy = None
    if p["policy"]:
        try:
            policy = parse_policy(p["policy"], "the role variable docker_image_cleanup_policy")
        except RemediateError as exc:
            module.fail_json(msg=exc.message, hint=exc.hint)
            return
    host = Host(
        name=p["host_name"], docker_host=p["docker_host"], tls=p["tls"], validate_certs=p["validate_certs"],
        ca_path=p["ca_path"], client_cert=p["client_cert"], client_key=p["client_key"], timeout=p["timeout"],
    )
    if p["plan"]:
        try:
            host_plan = HostPlan.model_validate(p["plan"])
        except ValueError as exc:
            module.fail_json(msg=f"the plan given for {host.name} is not a phase-1 plan: {str(exc).splitlines()[0]}")
            return
        if host_plan.host != host.name:
            module.fail_json(msg=f"the plan given is for host {host_plan.host}, not {host.name}")
            return
        source = "given"
    else:
        if policy is None:
            module.fail_json(msg="no plan and no policy: set acgs_policy (or docker_image_cleanup_policy)")
            return
        try:
            snapshot = collect(host)
        except Exception as exc:  # an engine down is this host's failure, in one line
            module.fail_json(msg=f"engine unreachable: {host.docker_host}: {describe_error(exc)}")
            return
        host_plan = plan_phase1(snapshot, policy)
        source = "computed"

    try:
        api = docker.APIClient(**host.docker_client_kwargs())
        applier = _Applier(api, errors, policy, module.check_mode)
        before = {a.image_id: a.tags for a in host_plan.removals()}
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
            msg=f"engine error on {host.docker_host}: {describe_error(exc)}",
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
    lines_before = sorted(_label(i, t) for i, t in before.items() if i not in applier.already_gone)
    lines_after = sorted(_label(i, t) for i, t in before.items() if i not in done_ids and i not in applier.already_gone)
    verb = "would remove" if module.check_mode else "removed"
    msg = (f"{host.name}: {verb} {len(done)} image(s), skipped {len(applier.skipped)}, "
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
            "before_header": f"{host.name}: planned images present", "after_header": f"{host.name}: after",
            "before": "".join(f"{line}\n" for line in lines_before),
            "after": "".join(f"{line}\n" for line in lines_after),
        }
    module.exit_json(**result)


if __name__ == "__main__":
    main()
