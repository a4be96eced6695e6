"""Secrets out of what leaves the tool through Ansible: the policy's environments masked in module results.

A module's result carries its arguments (``invocation.module_args``) into ansible-runner's job events and its
stdout. The project's modules take the whole policy as an argument, and the policy's environments (a
service's ``env``, phase 3's ``deploy.env``) are where a user writes a DATABASE_URL with its password. Ansible's
own ``no_log`` does not fit: set on the policy it masks every value of it (image names, sizes) in every message.

The other ways out are covered elsewhere: the CLI prints no policy environment, the state store records none,
phase 1's build-file repair masks the database URL it writes (``acgs_build_files``), and ansible-runner's
private data dir (extravars, artifacts, the recorded environment) is removed after each run (``execute``).
"""

from __future__ import annotations

from typing import Any

MASK = "********"  # what Ansible shows for a no_log value


def redact_policy(policy: Any) -> Any:
    """Return a copy of ``policy`` (the acgs_policy mapping) with the values of its environments masked.

    Anything that is not a mapping comes back as it is (the module's own validation reports it).
    """
    if not isinstance(policy, dict):
        return policy
    out = dict(policy)
    services = out.get("services")
    if isinstance(services, list):
        out["services"] = [
            {**svc, "env": dict.fromkeys(svc["env"], MASK)}
            if isinstance(svc, dict) and isinstance(svc.get("env"), dict)
            else svc
            for svc in services
        ]
    deploy = out.get("deploy")
    if isinstance(deploy, dict) and isinstance(deploy.get("env"), dict):
        out["deploy"] = {**deploy, "env": dict.fromkeys(deploy["env"], MASK)}
    return out


def mask_module_results(module: Any) -> None:
    """Make ``module`` (an AnsibleModule) report its arguments with the policy's environments masked.

    Every exit_json/fail_json from now on records ``invocation.module_args`` with ``policy`` redacted
    (AnsibleModule adds the arguments as they are only when the result has no ``invocation`` yet).
    """
    formatted = module._return_formatted

    def masked(kwargs: dict[str, Any]) -> None:
        kwargs.setdefault(
            "invocation", {"module_args": {**module.params, "policy": redact_policy(module.params.get("policy"))}}
        )
        formatted(kwargs)

    module._return_formatted = masked
