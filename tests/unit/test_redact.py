"""The policy's environments are masked in what modules report (their arguments reach job events)."""

from __future__ import annotations

from typing import Any

from acgs_remediate.redact import MASK, mask_module_results, redact_policy

POLICY = {
    "size_cap": "300MB",
    "services": [
        {"name": "api", "image": "acgs/api:1", "env": {"DATABASE_URL": "postgresql://u:pw-1@db/x", "PORT": "80"}},
        {"name": "web", "image": "acgs/web:1"},
    ],
    "deploy": {"compose_file": "c.yml", "env": {"SECRET_KEY": "pw-2"}},
}


def test_environment_values_are_masked_and_everything_else_is_kept() -> None:
    out = redact_policy(POLICY)
    assert out["services"][0]["env"] == {"DATABASE_URL": MASK, "PORT": MASK}
    assert out["deploy"]["env"] == {"SECRET_KEY": MASK}
    assert out["services"][1] == POLICY["services"][1] and out["size_cap"] == "300MB"
    assert out["services"][0]["image"] == "acgs/api:1" and out["deploy"]["compose_file"] == "c.yml"
    assert POLICY["services"][0]["env"]["DATABASE_URL"].endswith("@db/x")  # the caller's policy is untouched
    assert redact_policy("not a mapping") == "not a mapping"


class _FakeModule:
    """Just the part of AnsibleModule the masking hooks into."""

    def __init__(self) -> None:
        self.params = {"policy": POLICY, "host_name": "h1"}
        self.returned: list[dict[str, Any]] = []

    def _return_formatted(self, kwargs: dict[str, Any]) -> None:
        self.returned.append(kwargs)


def test_a_module_result_records_its_arguments_with_the_environments_masked() -> None:
    module = _FakeModule()
    mask_module_results(module)
    module._return_formatted({"changed": False})
    (result,) = module.returned
    args = result["invocation"]["module_args"]
    assert args["host_name"] == "h1" and "pw-1" not in repr(result) and "pw-2" not in repr(result)
