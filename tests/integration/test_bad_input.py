"""Bad input, across every command, on the real sandbox fleet (issue 14 #4).

Each row of ``CASES`` is one bad input a user can give: an inventory, a policy value or unit, a host pattern,
an image reference, a path, a flag or its value, an environment variable, a Dockerfile, a compose file, a saved
plan — for every command (analyze, plan, phase1, phase2, phase3, hygiene, rollback, verify, status, sandbox).
Each must give:

- exit code 2 and nothing on stdout;
- on stderr exactly one ``error:`` line naming the problem, optionally followed by one ``hint:`` line (the
  project's convention, cli/__init__.py), and no traceback;
- nothing changed anywhere: the engines' images (IDs, tags, digests), containers (IDs, images, states),
  volumes and disk usage read with the docker CLI before and after, independently of the tool's own facts
  code; and no state store written.

One shared sandbox, read only: the commands that would change something (phase1 --yes) are stopped by the
bad input before they touch an engine, which is what the test proves.
"""

from __future__ import annotations

import concurrent.futures
import copy
import os
import shutil
import subprocess
import sys
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml

from acgs_remediate.sandbox import Sandbox

pytestmark = pytest.mark.integration

DOCKER = shutil.which("docker") or "docker"


@dataclass(frozen=True)
class Case:
    """One bad input: the command line (``{inv}`` = a copy of the sandbox inventory, ``{tmp}`` = a scratch
    directory), the words its error line must contain, and how the inventory or environment is spoiled."""

    id: str
    args: tuple[str, ...]
    says: str
    policy: dict = field(default_factory=dict)  # keys of acgs_policy replaced in group_vars/all.yml
    env: dict = field(default_factory=dict)
    setup: Callable[[Path], None] | None = None  # spoils the scratch directory (inventory copy at tmp/inv)
    own_inventory: bool = False  # setup changes the inventory copy (a policy change implies it)
    gap: str = ""  # a known gap: the case fails today for this reason (strict xfail: fixing it flags the mark)


def _write(relative: str, text: str) -> Callable[[Path], None]:
    def setup(tmp: Path) -> None:
        (tmp / relative).parent.mkdir(parents=True, exist_ok=True)
        (tmp / relative).write_text(text)

    return setup


def _broken_dockerfile(tmp: Path) -> None:
    """Give service fv its own copy of its sources with a Dockerfile docker build would refuse."""
    policy_file = tmp / "inv" / "group_vars" / "all.yml"
    data = yaml.safe_load(policy_file.read_text())
    policy = data["acgs_policy"]
    fv = next(s for s in policy["services"] if s["name"] == "fv")
    source = Path(policy["sources_root"]) / fv["context"]
    shutil.copytree(source, tmp / "fv")
    (tmp / "fv" / "Dockerfile").write_text("FORM python:3.11-slim\nCOPY requirements.txt .\n")
    fv["context"], fv["dockerfile"] = str(tmp / "fv"), "Dockerfile"
    policy_file.write_text(yaml.safe_dump(data))


PHASE1 = ("phase1", "--yes", "-i", "{inv}")
PLAN = ("plan", "phase1", "-i", "{inv}")
PHASE2 = ("phase2", "--yes", "-i", "{inv}")
PHASE3 = ("phase3", "--yes", "-i", "{inv}")
HYGIENE = ("hygiene", "--yes", "-i", "{inv}")
ROLLBACK = ("rollback", "-i", "{inv}")

CASES = [
    # -- inventories
    Case("inventory-missing", ("analyze", "-i", "{tmp}/nope.yml"), "does not exist"),
    Case("inventory-group-vars-only", ("analyze", "-i", "{tmp}/gv"), "defines no hosts: it holds only group_vars/",
         setup=_write("gv/group_vars/all.yml", "acgs_policy: {size_cap: 300MB}\n")),
    Case("inventory-empty-file", ("verify", "-i", "{tmp}/empty.yml"), "defines no hosts: the file is empty",
         setup=_write("empty.yml", "")),
    Case("inventory-groups-without-hosts", (*PHASE1[:2], "-i", "{tmp}/g.yml"), "groups (prod) but no host",
         setup=_write("g.yml", "all:\n  children:\n    prod: {}\n")),
    Case("inventory-bad-yaml", (*PLAN[:2], "-i", "{tmp}/bad.yml"), "cannot read inventory",
         setup=_write("bad.yml", "all:\n  hosts:\n    h1: {docker_host: [unix:///x\n")),
    Case("inventory-bad-docker-host", (*PHASE1[:2], "-i", "{tmp}/h.yml"), "is not a Docker endpoint",
         setup=_write("h.yml", "all:\n  hosts:\n    h1: {docker_host: 'docker.example.com:2375'}\n")),
    Case("inventory-bad-timeout", ("analyze", "-i", "{tmp}/t.yml"), "docker_timeout must be a positive number",
         setup=_write("t.yml", "all:\n  hosts:\n    h1: {docker_host: 'unix:///run/x.sock', docker_timeout: soon}\n")),
    # -- host patterns
    Case("pattern-no-match", (*PHASE1, "--hosts", "nosuchgroup"), "matches no host"),
    Case("pattern-one-term-typo", (*PHASE1, "--hosts", "sandbox,sb-h09"), "'sb-h09' matches no host"),
    Case("pattern-empty", (*PHASE1, "--hosts", ""), "host pattern '' is empty"),
    Case("pattern-unclosed-bracket", (*PHASE1, "--hosts", "~sb-h0["), "is not well formed"),
    Case("pattern-empty-intersection", ("verify", "-i", "{inv}", "--hosts", "sandbox:&nosuch"), "matches no host"),
    # -- policy values and units
    Case("policy-size-unit", PHASE1, "acgs_policy.size_cap: '30XB' is not a size", policy={"size_cap": "30XB"}),
    Case("policy-negative-duration", PLAN, "acgs_policy.dangling_min_age", policy={"dangling_min_age": "-1h"}),
    Case("policy-duration-word", ("analyze", "-i", "{inv}"), "acgs_policy.fresh_min_age",
         policy={"fresh_min_age": "soon"}),
    Case("policy-negative-retention", PHASE1, "acgs_policy.rollback_keep", policy={"rollback_keep": -1}),
    Case("policy-unknown-key", ("verify", "-i", "{inv}"), "acgs_policy.sizecap: Extra inputs are not permitted",
         policy={"sizecap": "300MB"}),
    Case("policy-criterion-over-100", ("verify", "-i", "{inv}"), "acgs_policy.criteria.storage_reduction_pct",
         policy={"criteria": {"storage_reduction_pct": 150}}),
    Case("policy-priority", PLAN, "acgs_policy.oversized_images.0.priority",
         policy={"oversized_images": [{"ref": "rocm/pytorch:latest", "priority": "URGENT"}]}),
    Case("policy-not-a-mapping", PHASE1, "acgs_policy must be a mapping", policy={None: "everything"}),
    Case("policy-duplicate-services", PHASE1, "service names must be unique",
         policy={"services": [{"name": "gs", "image": "a:1", "context": "."}, {"name": "gs", "image": "b:1",
                                                                               "context": "."}]}),
    Case("policy-negative-budget", ("analyze", "-i", "{inv}"), "acgs_policy.build_cache_budget",
         policy={"build_cache_budget": "-5GB"}),
    # -- image references and patterns (issue 9 #3: the run must not go on without the bad one)
    Case("reference-issue-9-verbatim", PHASE1, "acgs_policy.oversized_images.1.ref: 'Big Image!!:1.0'",
         policy={"oversized_images": [{"ref": "big:1.0"}, {"ref": "Big Image!!:1.0"}]}),
    Case("reference-issue-9", PHASE1, "acgs_policy.oversized_images.1.ref: 'Big Image!!:1.0' is not a valid image "
         "reference: a space is not allowed",
         policy={"oversized_images": [{"ref": "rocm/pytorch:latest"}, {"ref": "Big Image!!:1.0"}],
                 "dangling_min_age": "0s", "fresh_min_age": "0s"}),
    Case("reference-uppercase-service-image", PLAN, "acgs_policy.services.0.image: 'GS_Service:Latest'",
         policy={"services": [{"name": "gs", "image": "GS_Service:Latest", "context": "."}]}),
    Case("reference-bad-digest", PHASE1, "the digest after '@'",
         policy={"oversized_images": [{"ref": "rocm/pytorch@sha256:123"}]}),
    Case("pattern-with-space", ("analyze", "-i", "{inv}"), "acgs_policy.protected_patterns.0: 'my db:*'",
         policy={"protected_patterns": ["my db:*"]}),
    # -- paths
    Case("report-format-from-suffix", ("analyze", "-i", "{inv}", "-o", "{tmp}/report.pdf"),
         "cannot tell the report format"),
    Case("report-under-a-file", ("analyze", "-i", "{inv}", "-o", "{tmp}/afile/report.html"), "is not a directory",
         setup=_write("afile", "")),
    Case("report-is-a-directory", ("analyze", "-i", "{inv}", "--format", "html", "-o", "{tmp}"),
         "is a directory, not a file"),
    Case("junit-under-a-file", ("verify", "-i", "{inv}", "--junit", "{tmp}/afile/x.xml"), "is not a directory",
         setup=_write("afile", "")),
    Case("saved-plan-missing", (*PHASE1, "--plan", "{tmp}/plan.json"), "plan file {tmp}/plan.json does not exist"),
    Case("saved-plan-not-json", (*PHASE1, "--plan", "{tmp}/plan.json"), "is not JSON",
         setup=_write("plan.json", "<html></html>\n")),
    Case("saved-plan-under-a-file", (*PLAN, "-o", "{tmp}/afile/plan.json"), "is not a directory",
         setup=_write("afile", "")),
    Case("dockerfile-does-not-parse", PHASE1, "unknown instruction: FORM", setup=_broken_dockerfile,
         own_inventory=True),
    # -- flags and their values
    Case("format-yaml", ("analyze", "-i", "{inv}", "--format", "yaml"), "'yaml' is not one of"),
    Case("forks-zero", (*PHASE1, "--forks", "0"), "Invalid value for '--forks'"),
    Case("unknown-flag", (*PHASE1, "--force-remove"), "No such option: --force-remove"),
    Case("unknown-phase", ("plan", "phase9", "-i", "{inv}"), "unknown phase 'phase9'"),
    Case("status-format-xml", ("status", "--format", "xml"), "'xml' is not one of"),
    Case("sandbox-zero-hosts", ("sandbox", "up", "--hosts", "0", "--dir", "{tmp}/sb"), "Invalid value for '--hosts'"),
    Case("sandbox-unknown-scenario", ("sandbox", "up", "--scenario", "{tmp}/none", "--dir", "/tmp/acgs-bad-v"),
         "unknown scenario"),
    Case("sandbox-dir-too-long", ("sandbox", "up", "--scenario", "none", "--dir", "{tmp}/" + "d" * 80),
         "too long for unix socket paths"),
    # -- environment
    Case("state-env-under-a-file", ("analyze", "-i", "{inv}"), "cannot open state store",
         env={"ACGS_REMEDIATE_STATE": "{tmp}/afile/state.db"}, setup=_write("afile", "")),
    Case("state-env-under-a-file-phase1", PHASE1, "cannot open state store",
         env={"ACGS_REMEDIATE_STATE": "{tmp}/afile/state.db"}, setup=_write("afile", "")),
    Case("inventory-env-missing", ("verify",), "inventory {tmp}/gone does not exist",
         env={"ACGS_REMEDIATE_INVENTORY": "{tmp}/gone"}),
    # -- phase 2, phase 3, hygiene and rollback: their own options, policy sections and files
    Case("phase2-saved-plan-not-json", (*PHASE2, "--plan", "{tmp}/plan.json"), "is not JSON",
         setup=_write("plan.json", "<html></html>\n")),
    Case("phase2-forks-zero", (*PHASE2, "--forks", "0"), "Invalid value for '--forks'"),
    Case("phase2-registry-url", PHASE2, "acgs_policy.registry: 'http://127.0.0.1:5000/acgs' is not a valid registry",
         policy={"registry": "http://127.0.0.1:5000/acgs"}),
    Case("phase2-service-image-uppercase", PHASE2, "acgs_policy.services.0.image: 'GS_Service:Latest'",
         policy={"services": [{"name": "gs", "image": "GS_Service:Latest", "context": "."}]}),
    Case("phase2-builder-not-in-inventory", PHASE2, "builder sb-h09 is not in the inventory",
         policy={"build": {"builder": "sb-h09"}}),
    Case("phase3-compose-does-not-parse", PHASE3, "the compose file is not valid YAML",
         policy={"deploy": {"compose_file": "{tmp}/compose.yml"}},
         setup=_write("compose.yml", "services:\n  web: [\n")),
    Case("phase3-compose-missing", PHASE3, "cannot read the compose file {tmp}/none.yml",
         policy={"deploy": {"compose_file": "{tmp}/none.yml"}}),
    Case("phase3-batch-size", PHASE3, "batch_size must be a host count or a percentage", policy={"deploy": {
        "batch_size": "lots"}}),
    Case("phase3-failure-policy", PHASE3, "acgs_policy.deploy.failure_policy",
         policy={"deploy": {"failure_policy": "explode"}}),
    Case("phase3-pattern-no-match", (*PHASE3, "--hosts", "nosuch"), "matches no host"),
    Case("hygiene-saved-plan-missing", (*HYGIENE, "--plan", "{tmp}/plan.json"), "plan file {tmp}/plan.json does not"),
    Case("hygiene-watermark-unit", HYGIENE, "acgs_policy.hygiene.high_watermark: '85 percent' is not a size",
         policy={"hygiene": {"high_watermark": "85 percent"}}),
    Case("hygiene-fresh-min-age-too-short", HYGIENE, "fresh_min_age must be at least 2m",
         policy={"hygiene": {"fresh_min_age": "30s"}}),
    Case("hygiene-watermarks-inverted", HYGIENE, "low_watermark (90%) must be below high_watermark (70%)",
         policy={"hygiene": {"high_watermark": "70%", "low_watermark": "90%"}}),
    Case("hygiene-metrics-under-a-file", (*HYGIENE, "--metrics-file", "{tmp}/afile/m.prom"), "is not a directory",
         setup=_write("afile", "")),
    Case("rollback-pattern-no-match", (*ROLLBACK, "--hosts", "nosuch"), "matches no host"),
    Case("rollback-state-under-a-file", ROLLBACK, "cannot open state store",
         env={"ACGS_REMEDIATE_STATE": "{tmp}/afile/state.db"}, setup=_write("afile", "")),
]  # fmt: skip


def engines_state(sandbox: Sandbox) -> dict[str, list[str]]:
    """Return what must not change, per host and listing, read with the docker CLI (not the tool's facts code)."""
    listings = {
        "images": ["images", "-a", "--digests", "--no-trunc", "--format",
                   "{{.ID}} {{.Repository}}:{{.Tag}} {{.Digest}} {{.CreatedAt}} {{.Size}}"],
        "containers": ["ps", "-a", "--no-trunc", "--format", "{{.ID}} {{.Image}} {{.State}} {{.Names}} {{.Mounts}}"],
        "volumes": ["volume", "ls", "--format", "{{.Name}} {{.Driver}}"],
        "disk": ["system", "df", "--format", "{{.Type}} {{.TotalCount}} {{.Active}} {{.Size}}"],
    }  # fmt: skip

    def run(host: str, what: str) -> tuple[str, list[str]]:
        proc = subprocess.run(
            [DOCKER, "-H", sandbox.docker_host(host), *listings[what]],
            capture_output=True,
            text=True,
            timeout=120,
            check=True,
        )
        return f"{host} {what}", sorted(proc.stdout.splitlines())

    jobs = [(h, w) for h in sandbox.hosts() for w in listings]
    with concurrent.futures.ThreadPoolExecutor(max_workers=len(jobs)) as pool:
        return dict(pool.map(lambda job: run(*job), jobs))


@pytest.fixture(scope="module")
def shared_inventory(sandbox: Sandbox, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The sandbox inventory copied once, for the cases that leave it as it is (its load is then cached)."""
    return _inventory_copy(sandbox, tmp_path_factory.mktemp("shared"), {})


@pytest.fixture(scope="module")
def before(sandbox: Sandbox) -> dict[str, list[str]]:
    state = engines_state(sandbox)
    assert any(state[f"{h} images"] for h in sandbox.hosts()), "the sandbox has no images: nothing to protect"
    return state


def _with_tmp(value: Any, tmp: Path) -> Any:
    """Return ``value`` (a policy fragment) with "{tmp}" in its strings replaced by the scratch directory."""
    if isinstance(value, str):
        return value.replace("{tmp}", str(tmp))
    if isinstance(value, dict):
        return {k: _with_tmp(v, tmp) for k, v in value.items()}
    if isinstance(value, list):
        return [_with_tmp(v, tmp) for v in value]
    return value


def _inventory_copy(sandbox: Sandbox, tmp: Path, policy: dict) -> Path:
    """Copy the sandbox inventory (hosts + policy) into ``tmp/inv`` with ``policy``'s keys replaced."""
    inv = tmp / "inv"
    (inv / "group_vars").mkdir(parents=True)
    shutil.copy(sandbox.inventory_path, inv / "inventory.yml")
    data = yaml.safe_load((sandbox.inventory_path.parent / "group_vars" / "all.yml").read_text())
    if None in policy:  # the whole acgs_policy replaced by a non-mapping
        data["acgs_policy"] = policy[None]
    else:
        merged = copy.deepcopy(data["acgs_policy"])
        merged.update(policy)
        data["acgs_policy"] = merged
    (inv / "group_vars" / "all.yml").write_text(yaml.safe_dump(data))
    return inv


@pytest.mark.parametrize(
    "case",
    [pytest.param(c, id=c.id, marks=[pytest.mark.xfail(strict=True, reason=c.gap)] if c.gap else []) for c in CASES],
)
def test_bad_input_is_one_line_exit_2_and_changes_nothing(
    case: Case, sandbox: Sandbox, shared_inventory: Path, before: dict[str, list[str]], tmp_path: Path
) -> None:
    own = bool(case.policy) or case.own_inventory
    inv = _inventory_copy(sandbox, tmp_path, _with_tmp(case.policy, tmp_path)) if own else shared_inventory
    if case.setup is not None:
        case.setup(tmp_path)
    state = tmp_path / "state" / "state.db"

    def fill(text: str) -> str:
        return text.replace("{inv}", str(inv)).replace("{tmp}", str(tmp_path))

    env = {k: v for k, v in os.environ.items() if k not in ("ACGS_REMEDIATE_INVENTORY", "COLUMNS")}
    env.update(ACGS_REMEDIATE_STATE=str(state), ANSIBLE_NOCOLOR="1")
    env.update({k: fill(v) for k, v in case.env.items()})
    exe = Path(sys.executable).with_name("acgs-remediate")
    proc = subprocess.run(
        [str(exe), *(fill(a) for a in case.args)],
        capture_output=True,
        text=True,
        env=env,
        cwd=tmp_path,
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )

    lines = proc.stderr.splitlines()
    assert proc.returncode == 2, f"exit {proc.returncode}\n{proc.stderr}"
    assert "Traceback" not in proc.stderr + proc.stdout
    assert proc.stdout == "", proc.stdout
    assert lines and lines[0].startswith("error: "), proc.stderr
    assert len(lines) == 1 or (len(lines) == 2 and lines[1].startswith("hint: ")), proc.stderr
    assert fill(case.says) in lines[0], proc.stderr
    assert not state.exists(), "a state store was written"
    assert not Path("/tmp/acgs-bad-v").exists(), "a sandbox directory was made"
    assert engines_state(sandbox) == before, "an engine changed"
