#!/usr/bin/python
"""Ansible module: repair the files the services' Dockerfiles copy but their sources lack (control node)."""

from __future__ import annotations

DOCUMENTATION = r"""
---
module: acgs_build_files
short_description: Generate missing build files (requirements.txt, alembic.ini) from real sources
description:
  - Finds the files each service's Dockerfile copies that are missing from its build context under the
    policy's C(sources_root) (relative to O(base_dir)), and writes them generated from real sources with
    C(acgs_remediate.buildfiles) - requirements.txt from a lock file, pyproject.toml or the service's
    imports resolved against the wheelhouse; alembic.ini from a template with the database URL from
    C($ACGS_DATABASE_URL) or C($DATABASE_URL).
  - Never writes an empty file. A file that cannot be generated fails the task with a message naming the
    file and what is needed. An existing file is never overwritten.
  - Supports check mode and diff mode (the database URL is masked in the diff).
options:
  policy:
    description: The C(acgs_policy) mapping (services, sources_root, wheelhouse).
    type: dict
    required: true
  base_dir:
    description: Directory a relative C(sources_root) is relative to (the inventory's directory).
    type: path
  paths:
    description: Only these missing files (as C(acgs-remediate phase1) planned them); default every missing one.
    type: list
    elements: path
requirements:
  - acgs_remediate importable by the module's Python (ansible_playbook_python)
"""

RETURN = r"""
repaired:
  description: Files written (or, in check mode, that would be written), with what they were generated from.
  returned: always
  type: list
  elements: dict
"""

import os
from pathlib import Path

from ansible.module_utils.basic import AnsibleModule


def main() -> None:
    """Find, render and (unless in check mode) write the missing build files."""
    module = AnsibleModule(
        argument_spec={
            "policy": {"type": "dict", "required": True},
            "base_dir": {"type": "path"},
            "paths": {"type": "list", "elements": "path"},
        },
        supports_check_mode=True,
    )
    p = module.params
    try:
        from acgs_remediate.buildfiles import DB_URL_VARS, repair_all, scan
        from acgs_remediate.config import parse_policy
        from acgs_remediate.errors import RemediateError
        from acgs_remediate.redact import mask_module_results
    except ImportError as exc:
        module.fail_json(msg=f"acgs_remediate not importable by this module's Python: {exc}; "
                             "set ansible_python_interpreter to '{{ ansible_playbook_python }}'")
        return
    mask_module_results(module)  # the policy's environments hold passwords: masked in results and job events
    try:
        policy = parse_policy(p["policy"], "the role variable build_file_repair_policy")
    except RemediateError as exc:
        module.fail_json(msg=exc.message, hint=exc.hint)
        return
    base = Path(p["base_dir"]) if p["base_dir"] else None
    issues = scan(policy, base)
    if p["paths"] is not None:
        wanted = {str(Path(x).resolve()) for x in p["paths"]}
        issues = [i for i in issues if i.path in wanted]
    repairs, problems = repair_all(issues, policy, os.environ, check=module.check_mode)
    secrets = [os.environ[v] for v in DB_URL_VARS if os.environ.get(v)]

    def _mask(text: str) -> str:
        for secret in secrets:
            text = text.replace(secret.replace("%", "%%"), "<database URL from the environment>")
        return text

    result = {
        "changed": bool(repairs),
        "repaired": [{"service": r.service, "path": r.path, "source": r.source} for r in repairs],
        "problems": problems,
    }
    if module._diff and repairs:
        result["diff"] = [
            {"before_header": r.path, "after_header": r.path, "before": "", "after": _mask(r.content)} for r in repairs
        ]
    if problems:
        module.fail_json(msg="cannot repair: " + " | ".join(problems), **result)
        return
    verb = "would write" if module.check_mode else "wrote"
    result["msg"] = f"{verb} {len(repairs)} file(s)" + "".join(f"; {r.path} from {r.source}" for r in repairs)
    module.exit_json(**result)


if __name__ == "__main__":
    main()
