#!/usr/bin/python
"""Ansible module: switch one Docker host to the pinned compose stack, health-gated, or roll it back."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_service_deploy
short_description: Switch one Docker host to its pinned compose stack, watch its health, roll it back on failure
description:
  - O(state=switched) records the host's rollback unit in the acgs-remediate state store (the compose file
    as the host runs it, the exact image ID of every service, the interpolation environment) and tags the
    images it names C(REPO:rollback-ID12); writes the pinned compose file (the previous one kept as
    C(FILE.previous)); runs C(docker compose up -d --no-deps --pull never) of the changed services only
    (one-shots first, which must exit 0); watches every switched service through the soak window (healthy,
    no exit, no restart); on failure returns the host to exactly its unit and fails. Once the host passed
    its soak, the images the deployment replaced beyond rollback retention are removed (O(cleanup)).
  - The plan comes from O(plan) (what C(acgs-remediate phase3) showed), else it is made here from the
    host's engine, the compose file of O(policy) and phase 2's build records in O(state_db) (or O(images)).
  - O(state=rolled_back) returns the host to a deployed rollback unit, the one of run O(run_id) when
    O(scope=run) (the failure policy C(rollback_fleet)), else its latest (C(acgs-remediate rollback)).
  - Supports check mode (says what would switch, nothing changes) and diff mode (the compose file).
  - Everything is done by C(acgs_remediate.rollout) and C(acgs_remediate.phases.phase3).
options:
  state:
    description: C(switched) deploys the host; C(rolled_back) returns it to a recorded unit.
    type: str
    choices: [switched, rolled_back]
    default: switched
  host_name:
    description: Inventory name of the host (the ledger's and the rollback units' key).
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
    description: Engine API timeout in seconds (per call).
    type: float
    default: 60
  plan:
    description: The host's plan (C(acgs_remediate.phases.phase3.Phase3HostPlan) as data); made here when absent.
    type: dict
  policy:
    description: The C(acgs_policy) mapping (deploy settings, services, rollback_keep, protected patterns).
    type: dict
  base_dir:
    description: Directory a relative C(sources_root) is relative to (the inventory's directory).
    type: path
  images:
    description: Compose service -> image reference on the host to deploy, instead of phase 2's build records.
    type: dict
  state_db:
    description: The acgs-remediate state store (SQLite) holding rollback units, build records, measurements.
    type: path
    required: true
  run_id:
    description: The rollout's run id (one for every host of the run).
    type: str
    required: true
  scope:
    description: For O(state=rolled_back), C(run) (the unit this run deployed; nothing when there is none)
      or C(latest) (the host's latest deployed unit; fails when there is none).
    type: str
    choices: [run, latest]
    default: latest
  reason:
    description: For O(state=rolled_back), why the host goes back (recorded with the measurement).
    type: str
    default: rollback on demand
  compose_back:
    description: Write the unit's compose file back when the file on disk is the unit's target (the previous
      target kept as C(FILE.rejected)); also on a failed switch when O(failure_policy=rollback_fleet).
    type: bool
    default: false
  failure_policy:
    description: The rollout's failure policy (C(rollback_fleet) puts the compose file back on failure).
    type: str
    choices: [rollback_fleet, rollback_host, pause]
    default: rollback_fleet
  cleanup:
    description: After the host passed its soak, remove the images the deployment replaced beyond
      C(rollback_keep) (never an image a container uses, never the recorded unit's images).
    type: bool
    default: true
  resume:
    description: Without O(plan), first return the host to its unit when a dead run left it mid-switch.
    type: bool
    default: true
requirements:
  - acgs_remediate importable by the module's Python (ansible_playbook_python), the Docker Compose v2 binary
"""

RETURN = r"""
status:
  description: deployed, unchanged, rolled_back, failed (switched); rolled_back, unchanged, failed (rolled_back).
  returned: always
  type: str
switched:
  description: The services switched (or that would be, in check mode).
  returned: always
  type: list
  elements: str
switch_seconds:
  description: Wall time of the switch and its health watch.
  returned: when switched
  type: float
rollback_seconds:
  description: Wall time until the host was back and up on its unit.
  returned: when rolled back
  type: float
cleanup:
  description: Images removed after health (image, tags, reason, removed).
  returned: when deployed
  type: list
  elements: dict
"""

# Ansible modules carry their documentation before the imports.
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def _host(p):
    from acgs_remediate.inventory import Host

    return Host(name=p["host_name"], docker_host=p.get("docker_host") or "unix:///var/run/docker.sock",
                tls=bool(p.get("tls")), validate_certs=bool(p.get("validate_certs")),
                ca_path=p.get("ca_path") or None, client_cert=p.get("client_cert") or None,
                client_key=p.get("client_key") or None, timeout=float(p["timeout"]))


def _policy(p):
    from acgs_remediate.config import parse_policy

    return parse_policy(p["policy"] or {}, "the role variable service_deploy_policy")


def _measure(store, host, run_id, data):
    store.add_measurement(host, "phase3", data, run_id=run_id)


def _switched(module, p, store, host):
    from acgs_remediate.config import DeployPolicy
    from acgs_remediate.phases.phase3 import Phase3HostPlan, plan_deploy_host, resume_interrupted
    from acgs_remediate.rollout import cleanup_after_health, switch_host, write_compose

    resumed = None
    if p["plan"]:
        plan = Phase3HostPlan.model_validate(p["plan"])
    else:
        policy = _policy(p)
        if p["resume"] and not module.check_mode:
            resumed = resume_interrupted(store, [host]).get(host.name)
        plan = plan_deploy_host(host, policy, Path(p["base_dir"] or "."), store, p["images"] or None)
    switched = [c.service for c in plan.actions]
    result = {"changed": False, "status": "unchanged", "switched": switched, "soak": plan.soak}
    if resumed is not None:
        result["resumed"] = resumed.status
    if module._diff:
        result["diff"] = {"before": plan.current_text, "after": plan.target_text if switched else plan.current_text,
                          "before_header": plan.compose_path, "after_header": plan.compose_path}
    if not switched:
        result["msg"] = "every service already runs its target image, healthy: nothing to switch"
        module.exit_json(**result)
        return
    if module.check_mode:
        result.update(changed=True, status="would switch",
                      msg=f"would switch {', '.join(switched)} (soak {plan.soak:g} s)")
        module.exit_json(**result)
        return
    path = Path(plan.compose_path)
    # The first host of the run to switch writes the file; the others find it changed since their plan.
    write_compose(path, plan.target_text, keep=".previous", only_if=plan.current_text)
    deploy = DeployPolicy(timeout=plan.timeout, env=plan.env, failure_policy=plan.failure_policy, probes=plan.probes)
    try:
        hr = switch_host(store, host, plan.deploy, plan.targets, plan.previous_text, plan.target_text, deploy,
                         plan.soak, p["run_id"])
    except Exception as exc:  # an engine gone mid-switch: the unit stays "switching"; the next run puts it back
        from acgs_remediate.facts import describe_error

        reason = f"the switch stopped: {describe_error(exc)}"
        _measure(store, host.name, p["run_id"], {"status": "failed", "reason": reason, "switched": switched})
        module.fail_json(msg=reason, status="failed", switched=switched, changed=True)
        return
    data = {"status": hr.status, "switched": hr.switched, "switch_seconds": round(hr.switch_seconds, 2),
            "rollback_seconds": None if hr.rollback_seconds is None else round(hr.rollback_seconds, 2),
            "unavailable_seconds": dict(hr.unavailable_seconds), "reason": hr.reason}
    result.update(changed=True, status=hr.status, switch_seconds=data["switch_seconds"],
                  rollback_seconds=data["rollback_seconds"])
    if hr.status != "deployed":
        if p["failure_policy"] == "rollback_fleet" or p["compose_back"]:
            write_compose(path, plan.previous_text, keep=".rejected", only_if=plan.target_text)
        _measure(store, host.name, p["run_id"], data)
        module.fail_json(msg=f"{host.name}: {hr.reason}", **result)
        return
    if p["cleanup"] and p["policy"] is not None and hr.unit_id is not None:
        removed = cleanup_after_health(host, _policy(p), store.rollback_unit(hr.unit_id))
        data["cleanup"] = removed
        result["cleanup"] = removed
    _measure(store, host.name, p["run_id"], data)
    gone = [c for c in result.get("cleanup") or [] if c["removed"]]
    result["msg"] = (f"switched {', '.join(hr.switched)}; healthy through the soak ({plan.soak:g} s)"
                     + (f"; removed {len(gone)} replaced image(s) beyond rollback retention" if gone else ""))
    module.exit_json(**result)


def _rolled_back(module, p, store, host):
    from acgs_remediate.rollout import rollback_host, write_compose

    units = store.rollback_units(host.name, statuses=["deployed"])
    if p["scope"] == "run":
        units = [u for u in units if u[2].run_id == p["run_id"]]
        if not units:
            module.exit_json(changed=False, status="unchanged", switched=[],
                             msg="this run switched nothing here that is still deployed")
            return
    elif not units:
        reason = "no deployed rollback unit recorded for this host"
        if not module.check_mode:
            _measure(store, host.name, p["run_id"], {"status": "failed", "reason": reason})
        module.fail_json(msg=f"{host.name}: {reason}", status="failed", switched=[])
        return
    uid, _status, unit = units[0]
    if module.check_mode:
        module.exit_json(changed=True, status="would roll back", switched=unit.switched,
                         msg=f"would return {', '.join(unit.switched)} to the unit of {unit.run_id}")
        return
    probes = _policy(p).deploy.probes if p["policy"] else None
    rb = rollback_host(store, host, uid, unit, probe_urls=probes)
    if p["compose_back"]:
        write_compose(Path(unit.compose_path), unit.compose_text, keep=".rejected", only_if=unit.target_text)
    reason = p["reason"] if rb.status == "rolled_back" else f"{p['reason']}; rollback failed: {rb.reason}"
    data = {"status": rb.status, "switched": unit.switched, "reason": reason,
            "rollback_seconds": round(rb.rollback_seconds or 0.0, 2),
            "unavailable_seconds": dict(rb.unavailable_seconds)}
    _measure(store, host.name, p["run_id"], data)
    result = {"changed": True, "status": rb.status, "switched": unit.switched,
              "rollback_seconds": data["rollback_seconds"]}
    if rb.status != "rolled_back":
        module.fail_json(msg=f"{host.name}: {reason}", **result)
        return
    module.exit_json(msg=f"returned {', '.join(unit.switched)} to the unit of {unit.run_id}", **result)


def main() -> None:
    """Switch the host (state=switched) or return it to a rollback unit (state=rolled_back)."""
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["switched", "rolled_back"], "default": "switched"},
            "host_name": {"type": "str", "required": True},
            "docker_host": {"type": "str", "default": "unix:///var/run/docker.sock"},
            "tls": {"type": "bool", "default": False},
            "validate_certs": {"type": "bool", "default": False},
            "ca_path": {"type": "path"},
            "client_cert": {"type": "path"},
            "client_key": {"type": "path"},
            "timeout": {"type": "float", "default": 60.0},
            "plan": {"type": "dict"},
            "policy": {"type": "dict"},
            "base_dir": {"type": "path"},
            "images": {"type": "dict"},
            "state_db": {"type": "path", "required": True},
            "run_id": {"type": "str", "required": True},
            "scope": {"type": "str", "choices": ["run", "latest"], "default": "latest"},
            "reason": {"type": "str", "default": "rollback on demand"},
            "compose_back": {"type": "bool", "default": False},
            "failure_policy": {"type": "str", "choices": ["rollback_fleet", "rollback_host", "pause"],
                               "default": "rollback_fleet"},
            "cleanup": {"type": "bool", "default": True},
            "resume": {"type": "bool", "default": True},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        from acgs_remediate.errors import RemediateError
        from acgs_remediate.state import StateStore
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate not importable by this module's Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return
    if not p["plan"] and p["state"] == "switched" and not p["policy"]:
        module.fail_json(msg="no plan and no policy: set acgs_policy (or service_deploy_policy) for this host")
        return
    try:
        store = StateStore(Path(p["state_db"]))
    except RemediateError as exc:
        module.fail_json(msg=exc.message, hint=exc.hint)
        return
    try:
        host = _host(p)
        if p["state"] == "switched":
            _switched(module, p, store, host)
        else:
            _rolled_back(module, p, store, host)
    except RemediateError as exc:
        module.fail_json(msg=exc.message, hint=exc.hint, status="failed", switched=[])
    finally:
        store.close()


if __name__ == "__main__":
    main()
