"""Phase 2's build definitions and gates on real engines: every generated Dockerfile builds with BuildKit
(network none, offline from the wheelhouse image), and every optimized image passes every gate; images
with development tools, or that never turn healthy, fail with the right reasons; nothing is left behind.

Changes host 0 (images, build cache): runs on ``fresh_sandbox``, which reseeds it afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import docker
import pytest

from acgs_remediate import optimize
from acgs_remediate.config import Policy
from acgs_remediate.gates import SMOKE_LABEL, run_gates, scan_image, size_gates, smoke_test
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.scenario import load_scenario, policy_vars
from acgs_remediate.units import human_size

pytestmark = pytest.mark.integration

DOCKER_20 = "/usr/bin/docker"  # its built-in BuildKit works against the sandbox's 20.10 engines


def _buildkit(
    docker_host: str, context: Path, dockerfile: Path | None, tag: str, stdin: str | None = None
) -> tuple[str, float]:
    """Build with BuildKit, network none; return (image ID, seconds). Raises AssertionError with the log."""
    scratch = Path(tempfile.mkdtemp(prefix="acgs-bk-"))  # outside the context: never sent with it
    try:
        iid = scratch / "iid"
        cmd = [DOCKER_20, "-H", docker_host, "build", "--network", "none", "--iidfile", str(iid), "-t", tag]
        cmd += ["-f", str(dockerfile) if dockerfile else "-", str(context)]
        env = {**os.environ, "DOCKER_BUILDKIT": "1", "DOCKER_CONFIG": str(scratch / "config")}
        t0 = time.monotonic()
        proc = subprocess.run(cmd, input=stdin, capture_output=True, text=True, env=env, timeout=600, check=False)
        seconds = time.monotonic() - t0
        assert proc.returncode == 0, f"build of {tag} failed:\n{proc.stderr[-3000:]}"
        return iid.read_text().strip(), seconds
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def _leftovers(client: docker.DockerClient) -> tuple[set[str], set[str], list[str]]:
    dangling = {img.id for img in client.images.list(filters={"dangling": True})}
    every = {img.id for img in client.images.list(all=True)}
    smoke = [c.name for c in client.containers.list(all=True, filters={"label": SMOKE_LABEL})]
    return dangling, every, smoke


@pytest.fixture
def repaired_sources(fresh_sandbox: Sandbox, tmp_path: Path) -> Path:
    """A copy of the sandbox's sources after phase 1's build-file repairs (the missing files restored)."""
    scen = load_scenario("acgs-1")
    dest = tmp_path / "sources"
    shutil.copytree(fresh_sandbox.sources_root, dest, symlinks=True)
    shutil.copyfile(scen.history_dir / "pgc_service.requirements.txt", dest / str(scen.service("pgc").missing_file))
    shutil.copyfile(scen.history_dir / "alembic.ini", dest / "alembic.ini")
    return dest


def test_every_generated_build_passes_every_gate_and_leaves_nothing_behind(
    fresh_sandbox: Sandbox, repaired_sources: Path, tmp_path: Path
) -> None:
    scen = load_scenario("acgs-1")
    policy = Policy.model_validate(policy_vars(scen, repaired_sources, None))
    host = fresh_sandbox.docker_host(fresh_sandbox.hosts()[0])
    client = docker.DockerClient(base_url=host, timeout=300)
    dangling_before, images_before, _ = _leftovers(client)
    rows = []
    built = []
    try:
        for n, service in enumerate(policy.services):
            defn = optimize.generate(service, policy)
            assert defn.status == "generated", defn.verdict
            optimize.write_definition(defn)
            context = Path(defn.context)
            original = client.images.get(service.image).attrs["Size"]
            tag = f"acgs-opt/{service.name}:test"
            image_id, seconds = _buildkit(host, context, context / str(defn.dockerfile_path), tag)
            built.append(tag)
            report = run_gates(client, image_id, service, policy, build_seconds=seconds, address=f"127.0.98.{n + 1}")
            rows.append(
                {
                    "service": service.name,
                    "original": original,
                    "optimized": report.size,
                    "build_seconds": round(seconds, 1),
                    "smoke": next(r.reason for r in report.results if r.gate == "smoke_test"),
                    "passed": report.passed,
                    "reasons": report.reasons,
                }
            )
            assert report.passed, (service.name, report.reasons)
            assert report.size is not None and report.size <= (service.expected_size or 0) < original
    finally:
        sys.stderr.write("\n" + json.dumps(rows, indent=1) + "\n")
        for row in rows:
            sys.stderr.write(
                f"{row['service']:15} {human_size(row['original']):>8} -> {human_size(row['optimized']):>7} "
                f"({row['original'] / row['optimized']:.1f}x)  build {row['build_seconds']} s  {row['smoke']}\n"
            )
        dangling_after, images_after, smoke = _leftovers(client)
        for tag in built:
            client.images.remove(tag)  # never forced
    assert smoke == []  # every smoke-test and scan container removed
    assert dangling_after == dangling_before  # BuildKit left no stage images behind
    assert len(images_after - images_before) == len(policy.services)  # only the optimized images themselves
    assert {img.id for img in client.images.list(all=True)} == images_before


def test_dev_tools_and_size_fail_the_gates_of_the_report_images(fresh_sandbox: Sandbox) -> None:
    client = docker.DockerClient(base_url=fresh_sandbox.docker_host(fresh_sandbox.hosts()[0]), timeout=300)
    gs = scan_image(client, "acgs-master-gs_service:latest")  # the report's bloated single-stage build
    assert not gs.passed
    for kind in ("compiler", "test framework", "notebook server", "package-manager cache"):
        assert kind in gs.reason, kind
    assert any("/usr/lib/gcc/x86_64-linux-gnu/11/cc1" in d for d in gs.details)
    ac = scan_image(client, "acgs-1-ac_service:latest")  # pip without --no-cache-dir
    assert not ac.passed and "package-manager cache" in ac.reason and "/root/.cache/pip/" in ac.reason
    auth = scan_image(client, "acgs-1-auth_service:latest")  # multi-stage: the dev tools stayed behind
    assert auth.passed, auth.reason
    size = client.images.get("acgs-master-gs_service:latest").attrs["Size"]
    cap, expected = size_gates(size, 60_000_000, 55_000_000)
    assert not cap.passed and not expected.passed
    assert client.containers.list(all=True, filters={"label": SMOKE_LABEL}) == []


def test_an_image_that_never_turns_healthy_fails_the_smoke_test(fresh_sandbox: Sandbox, tmp_path: Path) -> None:
    host = fresh_sandbox.docker_host(fresh_sandbox.hosts()[0])
    client = docker.DockerClient(base_url=host, timeout=300)
    _, images_before, _ = _leftovers(client)
    base = "FROM acgs-base/python:3.11-slim\n"
    sick = base + (
        'HEALTHCHECK --interval=30s --timeout=2s --retries=2 CMD ["python3", "-c", "import sys; sys.exit(3)"]\n'
        'CMD ["python3", "-c", "import time; time.sleep(600)"]\n'
    )
    dies = (
        base
        + 'HEALTHCHECK CMD ["python3", "-c", "pass"]\n'
        + 'CMD ["python3", "-c", "import sys; print(\'no db\'); sys.exit(4)"]\n'
    )
    blind = base + 'CMD ["python3", "-c", "import time; time.sleep(600)"]\n'
    tags = []
    try:
        results = {}
        for name, text in (("sick", sick), ("dies", dies), ("blind", blind)):
            tag = f"acgs-gate-test/{name}:1"
            _buildkit(host, tmp_path, None, tag, stdin=text)
            tags.append(tag)
            results[name] = smoke_test(client, tag)
        assert not results["sick"].passed and results["sick"].reason.startswith("reported unhealthy"), results["sick"]
        assert "exited with code 4" in results["dies"].reason and "no db" in results["dies"].reason
        assert results["blind"].reason == "the image has no HEALTHCHECK"
        assert all(not r.passed for r in results.values())
    finally:
        for tag in tags:
            client.images.remove(tag)
    assert client.containers.list(all=True, filters={"label": SMOKE_LABEL}) == []
    assert {img.id for img in client.images.list(all=True)} == images_before
