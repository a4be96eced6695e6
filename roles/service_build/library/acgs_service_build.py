#!/usr/bin/python
"""Ansible module: build a service image once on a builder engine, ship it to a host, release it."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_service_build
short_description: Build each service once (BuildKit) and ship the same image ID to every Docker host
description:
  - O(state=built) (run once, against the builder's engine) computes each service's source hash (context with
    .dockerignore honoured, Dockerfile, build args, base image IDs), finds an image labelled with it or builds one
    with BuildKit (C(docker build --network none); no stage images left behind), tags it C(REPO:build-HASH12),
    runs the gate check when O(gate) names one, and pushes it to O(registry) when one is given (the manifest
    digest is returned). A service that fails is reported in RV(failures), not raised, so the others still ship.
  - O(state=shipped) (once per host) puts every image of O(images) whose gates passed on O(docker_host) -
    nothing when the host holds the image ID; else pulled by digest from the registry, or streamed from the
    builder's engine (export -> load). Then the service's release tag is moved to it; the image that tag named
    keeps a C(REPO:rollback-ID12) tag so it never turns dangling. With O(state_db), one build record per
    service is written to the acgs-remediate state store.
  - Supports check mode (reports what would be built, pushed, shipped and tagged) and diff mode.
  - Everything is done by C(acgs_remediate.builds); errors name the service and the host.
options:
  state:
    description: C(built) on the builder, C(shipped) on each host.
    type: str
    choices: [built, shipped]
    required: true
  host_name:
    description: Inventory name of the engine's host (named in messages and build records).
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
  ssh_config:
    description: For an ssh:// O(docker_host), the ssh config file to use (C(ssh -F)); default ssh's own.
    type: path
  timeout:
    description: Engine API timeout in seconds.
    type: float
    default: 300
  builder:
    description: For O(state=shipped), the builder's connection (host_name, docker_host, tls, validate_certs,
      ca_path, client_cert, client_key, ssh_config), to stream images from when no registry is used.
    type: dict
  policy:
    description: The C(acgs_policy) mapping (services, sources_root, build args). Required for O(state=built).
    type: dict
  base_dir:
    description: Directory a relative C(sources_root) is relative to (the inventory's directory).
    type: path
  services:
    description: Only these services (default all of the policy's).
    type: list
    elements: str
  dockerfiles:
    description: Service name -> Dockerfile to build instead of the policy's (e.g. the optimized one).
    type: dict
  registry:
    description: Registry to ship through (C(host:port/namespace)); empty ships engine to engine.
    type: str
  gate:
    description: C(policy) runs the policy's phase-2 gates (C(acgs_remediate.gates) - size cap, expected size,
      build time, smoke test, dev-tool scan) on the builder; else a C(module:function) taking (builder Host,
      BuildSource, BuiltImage) and returning gate verdicts; empty releases every image that built.
    type: str
  images:
    description: For O(state=shipped), the RV(images) of the O(state=built) run.
    type: list
    elements: dict
  release:
    description: Move each service's release tag to its new image on the host (only images whose gates passed).
    type: bool
    default: true
  state_db:
    description: The acgs-remediate state store (SQLite) to write build records to; empty writes none.
    type: path
  record_hosts:
    description: For O(state=built) with O(state_db), the hosts a failed or gated-out build is recorded for
      (it is shipped nowhere, so no O(state=shipped) run records it).
    type: list
    elements: str
requirements:
  - acgs_remediate importable by the module's Python (ansible_playbook_python), the docker CLI (BuildKit)
"""

RETURN = r"""
images:
  description: (built) per service - service, release_ref, source_hash, image_id, candidate, size, builder, built,
    seconds, digest, registry_repo, pushed, gates, gates_passed.
  returned: always
  type: list
  elements: dict
shipped:
  description: (shipped) per service - how the image reached the host (present, registry, engine) and the release.
  returned: always
  type: list
  elements: dict
failures:
  description: One line per failed service, naming the service and the host.
  returned: always
  type: list
  elements: str
"""

# Ansible modules carry their documentation before the imports.
import dataclasses  # noqa: E402
import importlib  # noqa: E402
from pathlib import Path  # noqa: E402

from ansible.module_utils.basic import AnsibleModule  # noqa: E402

_CONN = ("docker_host", "tls", "validate_certs", "ca_path", "client_cert", "client_key", "ssh_config")


def _host(Host, name, params, timeout):
    return Host(name=name, docker_host=params.get("docker_host") or "unix:///var/run/docker.sock",
                tls=bool(params.get("tls")), validate_certs=bool(params.get("validate_certs")),
                ca_path=params.get("ca_path") or None, client_cert=params.get("client_cert") or None,
                client_key=params.get("client_key") or None, ssh_config=params.get("ssh_config") or None,
                timeout=float(timeout))


def _load_gate(spec):
    if not spec:
        return None
    module_name, _, func = spec.partition(":")
    return getattr(importlib.import_module(module_name), func)


def _built(module, b, p):
    from acgs_remediate.config import parse_policy
    from acgs_remediate.errors import RemediateError
    from acgs_remediate.inventory import Host

    try:
        policy = parse_policy(p["policy"], "the role variable service_build_policy")
        sources = b.sources_from_policy(policy, Path(p["base_dir"]) if p["base_dir"] else None,
                                        {k: Path(v) for k, v in (p["dockerfiles"] or {}).items()}, p["services"])
        gate = b.policy_gate(policy) if p["gate"] == "policy" else _load_gate(p["gate"])
    except RemediateError as exc:
        module.fail_json(msg=exc.message, hint=exc.hint, images=[], failures=[exc.message])
        return
    except (ImportError, AttributeError) as exc:
        module.fail_json(msg=f"gate {p['gate']} cannot be loaded: {exc}", images=[], failures=[])
        return
    builder = _host(Host, p["host_name"], p, p["timeout"])
    images, failures, before, after = [], [], {}, {}
    for source in sources:
        entry = {"service": source.service, "release_ref": source.release_ref, "gates": [], "gates_passed": False}
        try:
            image = b.build(builder, source, check=module.check_mode)
            run_gates = gate is not None and image.image_id and not b.gated_before(builder, source, image)
            gates = list(gate(builder, source, image)) if run_gates else []
            entry["gates"] = [g.model_dump() for g in gates]
            entry["gates_passed"] = all(g.passed for g in gates)
            if p["registry"] and entry["gates_passed"] and image.image_id:
                image = b.publish(builder, image, source, p["registry"], check=module.check_mode)
            entry.update(dataclasses.asdict(image))
            before[source.service] = image.image_id if not image.built else "(no image for this source)"
            after[source.service] = image.image_id or f"{image.candidate} (would be built)"
            if not entry["gates_passed"]:
                failed = ", ".join(f"{g.name}: {g.detail}" for g in gates if not g.passed)
                failures.append(f"service {source.service} on {builder.name}: gates failed ({failed})")
        except (b.BuildError, RemediateError) as exc:
            entry["error"] = exc.message
            failures.append(exc.message)
        images.append(entry)
        if p["state_db"] and p["record_hosts"] and not module.check_mode:
            # A build that failed, or was gated out, is shipped nowhere: record it here for every host.
            _record_failure(b, p, source, entry)
    changed = any(i.get("built") or i.get("pushed") for i in images)
    would = [f"{i['service']}: build {i['candidate']}" for i in images if i.get("built")]
    would += [f"{i['service']}: push to {i['registry_repo']}" for i in images
              if i.get("registry_repo") and not i.get("digest")]
    result = {"changed": changed, "images": images, "failures": failures,
              "msg": "; ".join(would) or "every service's image exists for its current sources"}
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    module.exit_json(**result)


def _record_failure(b, p, source, entry):
    from acgs_remediate.models import GateVerdict
    from acgs_remediate.state import StateStore

    if not entry.get("error") and entry.get("gates_passed"):
        return
    fields = {f.name for f in dataclasses.fields(b.BuiltImage)}
    image = b.BuiltImage(**{k: v for k, v in entry.items() if k in fields}) if "image_id" in entry else None
    outcome = b.ServiceOutcome(source, image, error=entry.get("error"))
    outcome.gates = [GateVerdict(**g) for g in entry.get("gates") or []]
    store = StateStore(Path(p["state_db"]))
    try:
        for record in b.records_for(outcome, list(p["record_hosts"]), store):
            store.add_build_record(record)
    finally:
        store.close()


def _shipped(module, b, p):
    from acgs_remediate.inventory import Host

    target = _host(Host, p["host_name"], p, p["timeout"])
    spec = p["builder"] or {}
    builder = _host(Host, spec.get("host_name") or "builder", spec, p["timeout"])
    store = None
    if p["state_db"] and not module.check_mode:
        from acgs_remediate.state import StateStore

        store = StateStore(Path(p["state_db"]))
    fields = {f.name for f in dataclasses.fields(b.BuiltImage)}
    shipped, failures, before, after = [], [], {}, {}
    for entry in p["images"] or []:
        service = entry.get("service", "?")
        if entry.get("error") or not entry.get("gates_passed"):
            continue  # the builder's failure is reported there; a gated-out image goes nowhere
        image = b.BuiltImage(**{k: v for k, v in entry.items() if k in fields})
        source = b.BuildSource(service, entry["release_ref"], Path("."), Path("Dockerfile"))
        outcome = b.ServiceOutcome(source, image)
        from acgs_remediate.models import GateVerdict

        outcome.gates = [GateVerdict(**g) for g in entry.get("gates") or []]
        row = {"service": service, "image_id": image.image_id, "method": None, "release": None}
        if not image.image_id:  # check mode on the builder: it would be built, then shipped here
            row["method"] = "would be built, then shipped"
            before[service] = "(not built yet)"
            after[service] = image.candidate
            shipped.append(row)
            continue
        try:
            res = b.ship(builder, target, image, check=module.check_mode)
            outcome.shipped[target.name] = res
            row.update(method=res.method, moved=res.shipped, tagged=res.tagged, seconds=round(res.seconds, 3))
            if p["release"]:
                rel = b.release(target, image, source, check=module.check_mode)
                outcome.released[target.name] = rel
                row["release"] = {"ref": rel.release_ref, "previous_id": rel.previous_id,
                                  "rollback_ref": rel.rollback_ref, "changed": rel.changed}
                before[service] = rel.previous_id or "(none)"
                after[service] = image.image_id
        except b.BuildError as exc:
            outcome.host_errors[target.name] = exc.message
            failures.append(exc.message)
            row["error"] = exc.message
        shipped.append(row)
        if store is not None:
            for record in b.records_for(outcome, [target.name], store):
                store.add_build_record(record)
    if store is not None:
        store.close()
    changed = any(
        r.get("moved") or r.get("tagged") or (r.get("release") or {}).get("changed")
        or r.get("method") == "would be built, then shipped"
        or (module.check_mode and r.get("method") in ("registry", "engine"))
        for r in shipped
    )
    result = {"changed": changed, "shipped": shipped, "failures": failures}
    if module._diff:
        result["diff"] = {"before": before, "after": after}
    if failures:
        module.fail_json(msg="; ".join(failures), **result)
        return
    moved = [f"{r['service']} via {r['method']}" for r in shipped if r.get("moved")]
    result["msg"] = ("shipped " + ", ".join(moved)) if moved else "every image was already on the host"
    module.exit_json(**result)


def main() -> None:
    """Build (state=built) or ship and release (state=shipped)."""
    conn = {
        "docker_host": {"type": "str", "default": "unix:///var/run/docker.sock"},
        "tls": {"type": "bool", "default": False},
        "validate_certs": {"type": "bool", "default": False},
        "ca_path": {"type": "path"},
        "client_cert": {"type": "path"},
        "client_key": {"type": "path"},
        "ssh_config": {"type": "path"},
    }
    module = AnsibleModule(
        argument_spec={
            "state": {"type": "str", "choices": ["built", "shipped"], "required": True},
            "host_name": {"type": "str", "required": True},
            **conn,
            "timeout": {"type": "float", "default": 300.0},
            "builder": {"type": "dict"},
            "policy": {"type": "dict"},
            "base_dir": {"type": "path"},
            "services": {"type": "list", "elements": "str"},
            "dockerfiles": {"type": "dict"},
            "registry": {"type": "str"},
            "gate": {"type": "str"},
            "images": {"type": "list", "elements": "dict"},
            "release": {"type": "bool", "default": True},
            "state_db": {"type": "path"},
            "record_hosts": {"type": "list", "elements": "str"},
        },
        required_if=[("state", "built", ("policy",)), ("state", "shipped", ("images", "builder"))],
        supports_check_mode=True,
    )
    try:
        from acgs_remediate import builds
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate not importable by this module's Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return
    if module.params["state"] == "built":
        _built(module, builds, module.params)
    else:
        _shipped(module, builds, module.params)


if __name__ == "__main__":
    main()
