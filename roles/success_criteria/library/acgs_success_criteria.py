#!/usr/bin/python
"""Ansible module: evaluate the ACGS-1 success criteria of one Docker host (read-only)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_success_criteria
short_description: Evaluate the five ACGS-1 success criteria of one Docker host
description:
  - Reads the engine (images, layers, containers, build cache) through its API, the host's recorded
    baseline and build records from the acgs-remediate state store, and evaluates the report's five
    success criteria with C(acgs_remediate.criteria) - the very code C(acgs-remediate verify) runs, so
    the playbook and the CLI agree on every verdict.
  - Never changes anything; supports check mode. Does not fail on a failing criterion (the role asserts).
options:
  host:
    description: Inventory name of the host (the key of its baseline and build records).
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
    description: The C(acgs_policy) mapping (thresholds, services, size cap).
    type: dict
    required: true
  state_path:
    description:
      - The acgs-remediate state store (SQLite). Empty means the CLI's default
        (C($ACGS_REMEDIATE_STATE), else C(~/.local/state/acgs-remediate/state.db)).
      - A store that does not exist is not created; baselines and build records then read as absent
        (not verified).
    type: path
requirements:
  - acgs_remediate importable by the module's Python
    (set ansible_python_interpreter to ansible_playbook_python)
"""

RETURN = r"""
criteria:
  description:
    - One entry per criterion, in the report's order
      (id, title, status, measured, threshold, causes, details).
  returned: success
  type: list
  elements: dict
verdict:
  description: pass, fail or not_verified over the five criteria.
  returned: success
  type: str
"""

# Ansible modules carry their documentation before the imports.
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402


def main() -> None:
    """Evaluate the criteria and return them; fail only when the engine or the inputs cannot be read."""
    module = AnsibleModule(
        argument_spec={
            "host": {"type": "str", "required": True},
            "docker_host": {"type": "str", "default": "unix:///var/run/docker.sock"},
            "tls": {"type": "bool", "default": False},
            "validate_certs": {"type": "bool", "default": False},
            "ca_path": {"type": "path"},
            "client_cert": {"type": "path"},
            "client_key": {"type": "path"},
            "timeout": {"type": "float", "default": 60.0},
            "connect_timeout": {"type": "float", "default": 10.0},
            "ssh_config": {"type": "path"},
            "policy": {"type": "dict", "required": True},
            "state_path": {"type": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        from acgs_remediate.cli.common import state_path
        from acgs_remediate.config import parse_policy
        from acgs_remediate.criteria import evaluate, overall
        from acgs_remediate.errors import RemediateError
        from acgs_remediate.facts import collect, describe_error
        from acgs_remediate.inventory import Host
        from acgs_remediate.redact import mask_module_results
        from acgs_remediate.state import StateStore
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate is not importable by {module._name}'s Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return
    mask_module_results(module)  # the policy's environments hold passwords: masked in results and job events

    try:
        policy = parse_policy(p["policy"], "the role variable success_criteria_policy")
    except RemediateError as exc:
        module.fail_json(msg=exc.message, hint=exc.hint)
        return
    host = Host(
        name=p["host"], docker_host=p["docker_host"], tls=p["tls"], validate_certs=p["validate_certs"],
        ca_path=p["ca_path"], client_cert=p["client_cert"], client_key=p["client_key"], timeout=p["timeout"],
        ssh_config=p["ssh_config"], connect_timeout=p["connect_timeout"],
    )
    store_path = state_path(Path(p["state_path"]) if p["state_path"] else None)
    baseline, records = None, []
    if store_path.exists():
        try:
            store = StateStore(store_path)
            try:
                baseline, records = store.baseline(host.name), store.build_records(host.name)
            finally:
                store.close()
        except RemediateError as exc:
            module.fail_json(msg=exc.message, hint=exc.hint)
            return
    try:
        snapshot = collect(host, parents=False)  # the criteria need no parent links
    except Exception as exc:  # an engine down is this host's failure, reported in one line
        reason = describe_error(exc)
        module.fail_json(msg=f"engine unreachable: {p['docker_host']}: {reason}", unreachable=True)
        return
    results = evaluate(host.name, baseline, snapshot, records, policy)
    module.exit_json(
        changed=False,
        criteria=[r.model_dump(mode="json") for r in results],
        verdict=overall(results).value,
        state_path=str(store_path),
    )


if __name__ == "__main__":
    main()
