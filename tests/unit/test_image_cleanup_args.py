"""The phase-1 module's own argument handling (it runs without AnsiballZ, so it validates like AnsibleModule).

Run as Ansible runs a WANT_JSON module: ``python module.py ARGS_FILE``; every case here fails before any
engine is contacted, so no Docker is needed.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from acgs_remediate.resources import roles_dir

MODULE = roles_dir() / "docker_image_cleanup" / "library" / "acgs_image_cleanup.py"


def _run(tmp_path: Path, args: object) -> tuple[int, dict]:
    path = tmp_path / "args"
    path.write_text(json.dumps(args))
    proc = subprocess.run([sys.executable, str(MODULE), str(path)], capture_output=True, text=True, timeout=60)
    return proc.returncode, json.loads(proc.stdout)


def test_module_is_marked_want_json_so_ansible_skips_ansiballz() -> None:
    head = MODULE.read_text().splitlines()[:3]
    assert "# WANT_JSON" in head


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        ({}, "missing required arguments: host_name"),
        ({"host_name": "h1", "colour": "red"}, "Unsupported parameters for (acgs_image_cleanup) module: colour"),
        ({"host_name": "h1", "tls": "maybe"}, "argument 'tls' is of type str and we were unable to convert to bool"),
        ({"host_name": "h1", "timeout": "soon"}, "argument 'timeout'"),
        ({"host_name": "h1", "plan": ["not", "a", "dict"]}, "argument 'plan'"),
        ({"host_name": "h1"}, "no plan and no policy"),
    ],
)
def test_bad_arguments_fail_with_a_message_naming_them(tmp_path: Path, args: dict, expected: str) -> None:
    rc, result = _run(tmp_path, {"_ansible_check_mode": False, **args})
    assert rc == 1
    assert result["failed"] is True
    assert expected in result["msg"]


def test_a_plan_for_another_host_is_refused_before_touching_any_engine(tmp_path: Path) -> None:
    plan = {"host": "h2", "phase": "phase1", "planned_at": "2026-11-28T10:00:00+00:00", "actions": []}
    rc, result = _run(tmp_path, {"host_name": "h1", "plan": plan, "docker_host": "unix:///nonexistent.sock"})
    assert rc == 1
    assert result["msg"] == "the plan given is for host h2, not h1"


def test_strings_are_converted_as_ansible_converts_them(tmp_path: Path) -> None:
    # An empty plan on an unreachable engine: nothing to remove, so nothing is asked of the engine.
    plan = {"host": "h1", "phase": "phase1", "planned_at": "2026-11-28T10:00:00+00:00", "actions": []}
    rc, result = _run(
        tmp_path,
        {
            "host_name": "h1",
            "plan": json.dumps(plan),
            "tls": "no",
            "timeout": "5",
            "prune_build_cache": "yes",
            "docker_host": "unix:///nonexistent.sock",
            "_ansible_check_mode": True,
            "_ansible_diff": True,
        },
    )
    assert rc == 0, result
    assert result["changed"] is False
    assert result["plan_source"] == "given"
    assert "diff" in result


def test_arguments_file_missing_is_a_clear_failure() -> None:
    proc = subprocess.run([sys.executable, str(MODULE)], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 1
    assert "JSON file" in json.loads(proc.stdout)["msg"]


def test_the_plan_the_cli_sends_takes_the_light_path() -> None:
    # The light path (no pydantic, no docker SDK in the module process) is what keeps a fleet run fast.
    import importlib.util
    from datetime import UTC, datetime

    from acgs_remediate.plan import Action, HostPlan, Protection

    spec = importlib.util.spec_from_file_location("acgs_image_cleanup", MODULE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    plan = HostPlan(
        host="h1",
        phase="phase1",
        planned_at=datetime.now(UTC),
        predicted_bytes=30,
        actions=[
            Action(
                kind="remove_image",
                reason="oversized",
                predicted_bytes=10,
                image_id="sha256:" + "a" * 64,
                tags=["big:latest"],
                category="oversized",
            ),
            Action(
                kind="remove_image",
                reason="dangling",
                predicted_bytes=20,
                image_id="sha256:" + "b" * 64,
                category="dangling",
            ),
            Action(kind="prune_build_cache", reason="over budget", keep_bytes=5),
            Action(kind="repair_build_file", reason="missing", service="pgc", path="/src/requirements.txt"),
        ],
        protections=[Protection(image_id="sha256:" + "c" * 64, tags=["db:15"], reasons=["used by running x"])],
    )
    light = module._light_plan(json.loads(json.dumps(plan.for_run())))
    assert light is not None
    assert [(a.image_id, a.tags, a.predicted_bytes) for a in light.removals()] == [
        (a.image_id, a.tags, a.predicted_bytes) for a in plan.removals()
    ]


def _module() -> object:
    import importlib.util

    spec = importlib.util.spec_from_file_location("acgs_image_cleanup", MODULE)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.mark.parametrize(
    "tags,digests",
    [
        ([], []),
        (["<none>:<none>"], ["<none>@<none>"]),  # how 20.10 lists a dangling image
        (["<none>:<none>"], ["127.0.0.55:5000/pinned/base@sha256:" + "d" * 64]),  # pulled by digest: named
        ([], ["reg/x@sha256:" + "e" * 64]),
        (["app:1"], []),
        (["app:1"], ["reg/app@sha256:" + "f" * 64]),
    ],
)
def test_the_module_and_the_models_share_one_definition_of_dangling(tags: list[str], digests: list[str]) -> None:
    from acgs_remediate.models import is_dangling

    module = _module()
    names = module._names({"RepoTags": tags, "RepoDigests": digests})  # type: ignore[attr-defined]
    assert module._is_dangling(*names) == is_dangling(tags, digests)  # type: ignore[attr-defined]
    assert is_dangling(tags, digests) == (not [t for t in tags if "<none>" not in t]
                                          and not [d for d in digests if "<none>" not in d])


def test_a_digest_only_removal_keeps_its_digests_on_the_light_path() -> None:
    from datetime import UTC, datetime

    from acgs_remediate.plan import Action, HostPlan

    digest = "127.0.0.55:5000/pinned/base@sha256:" + "d" * 64
    plan = HostPlan(
        host="h1", phase="phase1", planned_at=datetime.now(UTC), predicted_bytes=10,
        actions=[Action(kind="remove_image", reason="oversized (LOW)", predicted_bytes=10,
                        image_id="sha256:" + "a" * 64, digests=[digest], category="oversized")],
    )
    module = _module()
    light = module._light_plan(json.loads(json.dumps(plan.for_run())))  # type: ignore[attr-defined]
    assert light is not None
    assert [(a.digests, a.category) for a in light.removals()] == [([digest], "oversized")]
    assert module._label(plan.actions[0].image_id, [], [digest]).endswith(f"({digest})")  # type: ignore[attr-defined]


def test_an_unknown_phase_is_refused_naming_the_choices(tmp_path: Path) -> None:
    rc, result = _run(tmp_path, {"host_name": "h1", "phase": "phase9", "policy": {}})
    assert rc == 1
    assert result["msg"] == "value of phase must be one of: phase1, hygiene, got: phase9"


def test_a_hygiene_plan_with_its_watermark_is_accepted(tmp_path: Path) -> None:
    # The shape plan_hygiene dumps (with its watermark) is a valid plan for the module; an empty
    # action list on an unreachable engine asks nothing of it.
    plan = {
        "host": "h1",
        "phase": "hygiene",
        "planned_at": "2026-11-28T10:00:00+00:00",
        "actions": [],
        "watermark": {"basis": "engine", "used_bytes": 10, "high_bytes": 5, "low_bytes": 1, "state": "above_high"},
    }
    rc, result = _run(
        tmp_path, {"host_name": "h1", "phase": "hygiene", "plan": plan, "docker_host": "unix:///nonexistent.sock"}
    )
    assert rc == 0, result
    assert result["plan_source"] == "given" and result["removed"] == []
