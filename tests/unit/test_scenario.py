"""Scenario acgs-1 without Docker: the file, the scaled policy, the defective sources, the archive writer."""

from __future__ import annotations

import ast
import io
import re
import shutil
import sys
import tarfile
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from acgs_remediate import scenario as sc
from acgs_remediate.config import Policy
from acgs_remediate.errors import UsageError
from acgs_remediate.units import parse_size


@pytest.fixture(scope="module")
def scen() -> sc.Scenario:
    return sc.load_scenario("acgs-1")


@pytest.fixture(scope="module")
def sources(tmp_path_factory: pytest.TempPathFactory, scen: sc.Scenario) -> Path:
    dest = tmp_path_factory.mktemp("acgs") / "sources"
    sc.prepare_sources(scen, dest)
    return dest


def test_scenario_states_its_scale_and_the_report_numbers(scen: sc.Scenario) -> None:
    assert scen.name == "acgs-1"
    assert scen.scale == 0.05
    text = (scen.directory / "scenario.yml").read_text()
    assert re.search(r"^scale: 0\.05$", text, re.M) and "report's value x scale" in text
    assert scen.scaled("70.7GB") == 3_535_000_000
    assert [img.ref for img in scen.report.oversized][:4] == [
        "rocm/pytorch:latest",
        "router-server:latest",
        "llm-router-router-builder:latest",
        "nvcr.io/nvidia/tritonserver:24.10-py3",
    ]
    assert sum(b.count for b in scen.report.dangling.breakdown) == scen.report.dangling.count == 41


def test_policy_is_the_report_policy_with_every_size_scaled(scen: sc.Scenario, tmp_path: Path) -> None:
    raw = sc.policy_vars(scen, tmp_path / "src", tmp_path / "wheels")
    policy = Policy.model_validate(raw)
    assert policy.scale == 0.05
    # Service-image sizes carry the fixed allowance for what does not scale (interpreter + packages):
    # 45MB + 300MB x 0.05 (scenario.yml, "WHAT DOES NOT SCALE").
    assert policy.size_cap == 60_000_000
    assert policy.build_cache_budget == 250_000_000  # 5GB x 0.05
    assert [o.ref for o in policy.oversized_images] == [img.ref for img in scen.report.oversized]
    assert policy.is_protected("postgres:15-sandbox") == "postgres:*"
    assert policy.rollback_keep == 2
    assert policy.dangling_min_age <= 60 and policy.fresh_min_age <= 60
    assert policy.criteria.storage_reduction_pct == 90 and policy.criteria.build_time_max == 300
    expected = {s.name: s.expected_size for s in policy.services}
    assert expected["gs"] == 55_000_000 and expected["alembic-runner"] == 50_000_000  # 45MB + 200MB/100MB x 0.05
    assert policy.sources_root == str(tmp_path / "src") and policy.wheelhouse == str(tmp_path / "wheels")
    assert all(policy.service_budget(s) == policy.size_cap for s in policy.services)
    # Phase 2 builds offline from the wheelhouse image; the alembic runner needs the full standard library.
    assert policy.build.wheelhouse_image == "acgs-base/wheels:py311"
    assert policy.build.runtime_base == "acgs-base/python:3.11-slim"
    runner = next(s for s in policy.services if s.name == "alembic-runner")
    assert runner.runtime_base == "acgs-base/python:3.11-full" and runner.writable_paths == ["/var/lib/acgs"]
    assert all(s.port and s.health_url_template() for s in policy.services)


def test_service_sizes_keep_every_relation_of_the_report(scen: sc.Scenario) -> None:
    """Cap, expected and current sizes all get the allowance: over/under the cap and expected size as reported."""
    text = (scen.directory / "scenario.yml").read_text()
    assert re.search(r"^service_allowance: 45MB$", text, re.M) and "service_allowance + report value x scale" in text
    cap = scen.service_size(scen.report.size_cap)
    for svc in scen.services:
        current, expected = scen.service_size(svc.size), scen.service_size(svc.expected_size)
        over_cap_in_report = parse_size(svc.size) > parse_size(scen.report.size_cap)
        assert (current > cap) == over_cap_in_report, svc.name
        assert current > expected and expected < cap, svc.name
    # Third-party and dangling images are pure bloat: scale alone.
    assert scen.scaled("70.7GB") == 3_535_000_000


def test_every_service_context_and_dockerfile_exists(
    scen: sc.Scenario, sources: Path, tmp_path: Path
) -> None:
    policy = Policy.model_validate(sc.policy_vars(scen, sources, None))
    for svc in policy.services:
        context = policy.service_context(svc)
        assert (context / svc.dockerfile).is_file(), svc.name


def test_sources_carry_the_report_defects(scen: sc.Scenario, sources: Path) -> None:
    pgc = scen.service("pgc")
    alembic = scen.service("alembic-runner")
    assert pgc.missing_file and not (sources / pgc.missing_file).exists()
    assert alembic.missing_file == "alembic.ini" and not (sources / "alembic.ini").exists()
    assert (sources / "alembic.ini.example").is_file()  # the template a later phase generates it from
    assert not list(sources.rglob(".dockerignore"))
    for name in ("gs", "alembic-runner", "fv", "ac"):
        svc = scen.service(name)
        parser = DockerfileParser(path=str(sources / svc.context / svc.dockerfile))
        froms = [i for i in parser.structure if i["instruction"] == "FROM"]
        runs = " ".join(i["value"] for i in parser.structure if i["instruction"] == "RUN")
        assert len(froms) == 1, f"{name}: single stage"
        assert "pip install" in runs and "--no-cache-dir" not in runs, name
    gs_runs = (sources / scen.service("gs").dockerfile).read_text()
    assert "requirements-dev.txt" in gs_runs and "jupyter" in gs_runs  # dev tools in the final image
    # The failing COPY lines, as the report quotes them.
    assert (
        "COPY services/core/policy-governance/pgc_service/requirements.txt"
        in (sources / pgc.dockerfile).read_text()
    )
    assert "COPY alembic.ini /app/alembic.ini" in (sources / alembic.dockerfile).read_text()
    # An oversized build context: junk that a .dockerignore would have kept out.
    junk = sum(parse_size(j.size) for j in scen.context_junk)
    assert all((sources / j.path).stat().st_size == parse_size(j.size) for j in scen.context_junk)
    assert junk > 5_000_000


def _third_party_imports(path: Path) -> set[str]:
    tree = ast.parse(path.read_text())
    names = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            names |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            names.add(node.module.split(".")[0])
    return {n for n in names if n not in sys.stdlib_module_names}


def test_missing_files_can_be_regenerated_from_real_sources(scen: sc.Scenario, sources: Path) -> None:
    wheelhouse = {
        re.split(r"[=<>]", line)[0].strip().lower()
        for line in (scen.directory / "wheelhouse.txt").read_text().splitlines()
        if line.strip() and not line.startswith("#")
    }
    pgc_dir = sources / Path(scen.service("pgc").missing_file or "").parent
    imports = set().union(*(_third_party_imports(p) for p in pgc_dir.rglob("*.py")))
    assert imports == {"bottle", "packaging"}
    assert imports <= wheelhouse  # a requirements.txt can be generated and installed offline
    history = (scen.history_dir / "pgc_service.requirements.txt").read_text().lower()
    assert all(name in history for name in imports)
    ini = (sources / "alembic.ini.example").read_text()
    assert "script_location = migrations" in ini and (sources / "migrations" / "env.py").is_file()


def test_prepare_sources_rewrites_its_own_copy_and_refuses_a_foreign_directory(
    scen: sc.Scenario, tmp_path: Path
) -> None:
    dest = tmp_path / "src"
    sc.prepare_sources(scen, dest)
    req = dest / scen.service("pgc").dockerfile
    req.write_text("changed")
    (dest / "alembic.ini").write_text("")
    sc.prepare_sources(scen, dest)
    assert req.read_text() != "changed" and not (dest / "alembic.ini").exists()
    foreign = tmp_path / "checkout"
    foreign.mkdir()
    (foreign / "keep.txt").write_text("mine")
    with pytest.raises(UsageError):
        sc.prepare_sources(scen, foreign)
    assert (foreign / "keep.txt").read_text() == "mine"


def test_expectations_cover_every_variant_and_are_consistent(scen: sc.Scenario) -> None:
    assert scen.variant_name(0) == "golden"
    assert {scen.variant_name(i) for i in range(1, 7)} == {v.name for v in scen.variants}
    golden = scen.expectation(0)
    assert golden.dangling == scen.report.dangling.count
    assert set(golden.oversized_removable) == {img.ref for img in scen.report.oversized}
    for index in range(4):
        exp = scen.expectation(index)
        assert set(exp.oversized_removable) <= set(exp.oversized_present)
        assert exp.dangling_in_use <= exp.dangling
    # The variant that keeps rocm/pytorch in use cannot reach the 90 % storage criterion.
    assert not scen.expectation(2).storage_criterion_after_phase1
    assert "rocm/pytorch:latest" not in scen.expectation(2).oversized_removable


def test_each_host_gets_its_own_loopback_address(scen: sc.Scenario) -> None:
    addresses = {scen.bind_address(i) for i in range(300)}
    assert len(addresses) == 300
    assert all(a.startswith("127.") for a in addresses)
    assert sc.bind_for_hostname("golden-acgs-1") == "127.0.99.1"
    assert scen.health_url("auth", 0) == "http://127.0.100.1:8000/health"


def test_unknown_or_invalid_scenario_is_a_usage_error(tmp_path: Path) -> None:
    with pytest.raises(UsageError, match="unknown scenario"):
        sc.load_scenario("no-such-scenario")
    bad = tmp_path / "scenario.yml"
    bad.write_text("name: x\nscale: 2\n")
    with pytest.raises(UsageError, match="invalid scenario file"):
        sc.load_scenario(str(bad))


def test_content_hash_follows_the_scenario_files(scen: sc.Scenario, tmp_path: Path) -> None:
    copy = tmp_path / "acgs-1"
    shutil.copytree(scen.directory, copy)
    first = sc.load_scenario(str(copy)).content_hash()
    assert sc.load_scenario(str(copy)).content_hash() == first
    dockerfile = copy / "sources" / scen.service("auth").context / "Dockerfile"
    dockerfile.write_text(dockerfile.read_text() + "\n# changed\n")
    assert sc.load_scenario(str(copy)).content_hash() != first


def test_crafted_layer_archives_are_valid_tars_with_the_declared_sizes() -> None:
    entries = [
        sc._Entry("/opt", "dir"),
        sc._Entry("/opt/data.bin", data=b"x" * 1000),
        sc._Entry("/opt/pad.bin", zeros=3_000_000),
        sc._Entry("/opt/link", "symlink", target="data.bin"),
    ]
    blob = b"".join(sc._tar_chunks(entries))
    assert len(blob) == sc._tar_size(entries)
    assert len(blob) < 10_000  # the padding travels as a hole
    with tarfile.open(fileobj=io.BytesIO(blob)) as tf:
        members = {m.name: m for m in tf.getmembers()}
        assert members["opt/pad.bin"].size == 3_000_000
        assert tf.extractfile("opt/pad.bin").read() == bytes(3_000_000)
        assert tf.extractfile("opt/data.bin").read() == b"x" * 1000
        assert members["opt/link"].linkname == "data.bin"
    layer = sc._Layer("k", entries, "test")
    assert layer.content_size == 1000 + 3_000_000 + len("data.bin")
