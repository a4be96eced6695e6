"""Pure parts of phase 2's build-once: what goes into the source hash, base images, references."""

from __future__ import annotations

import os
import shutil
from pathlib import Path

import pytest

from acgs_remediate.builds import (
    BuildSource,
    BuiltImage,
    base_images,
    candidate_ref,
    policy_gate,
    registry_repository,
    safe_gates,
    smoke_address,
    source_hash,
    sources_from_policy,
    split_ref,
)
from acgs_remediate.config import parse_policy
from acgs_remediate.errors import UsageError
from acgs_remediate.inventory import Host

BASES = {"acgs-base/python:3.11-slim": "sha256:" + "a" * 64}


def _tree(root: Path) -> BuildSource:
    (root / "app").mkdir(parents=True)
    (root / "app" / "main.py").write_text("print('hi')\n")
    (root / "requirements.txt").write_text("bottle==0.12.25\n")
    (root / "Dockerfile").write_text("FROM acgs-base/python:3.11-slim\nCOPY . /app\n")
    return BuildSource("svc", "svc:latest", root, root / "Dockerfile")


def test_the_same_sources_hash_the_same_wherever_they_are(tmp_path: Path) -> None:
    a = _tree(tmp_path / "a")
    shutil.copytree(tmp_path / "a", tmp_path / "b")
    b = BuildSource("svc", "svc:latest", tmp_path / "b", tmp_path / "b" / "Dockerfile")
    os.utime(tmp_path / "b" / "requirements.txt", (1, 1))  # timestamps are not part of what is built
    assert source_hash(a, BASES) == source_hash(a, BASES) == source_hash(b, BASES)


@pytest.mark.parametrize(
    "change",
    ["file content", "new file", "dockerfile", "build arg", "base image id", "exec bit"],
)
def test_anything_a_build_depends_on_changes_the_hash(tmp_path: Path, change: str) -> None:
    src = _tree(tmp_path / "s")
    before = source_hash(src, BASES)
    bases = dict(BASES)
    if change == "file content":
        (src.context / "app" / "main.py").write_text("print('bye')\n")
    elif change == "new file":
        (src.context / "app" / "extra.py").write_text("")
    elif change == "dockerfile":
        src.dockerfile.write_text("FROM acgs-base/python:3.11-slim\nCOPY . /srv\n")
    elif change == "build arg":
        src = BuildSource("svc", "svc:latest", src.context, src.dockerfile, {"VERSION": "2"})
    elif change == "base image id":
        bases["acgs-base/python:3.11-slim"] = "sha256:" + "b" * 64
    elif change == "exec bit":
        os.chmod(src.context / "app" / "main.py", 0o755)
    assert source_hash(src, bases) != before


def test_files_the_dockerignore_leaves_out_do_not_change_the_hash(tmp_path: Path) -> None:
    src = _tree(tmp_path / "s")
    (src.context / ".dockerignore").write_text("tests/\n*.ipynb\n!keep.ipynb\n")
    before = source_hash(src, BASES)
    (src.context / "tests").mkdir()
    (src.context / "tests" / "test_x.py").write_text("assert True\n")
    (src.context / "scratch.ipynb").write_text("{}")
    assert source_hash(src, BASES) == before
    (src.context / "keep.ipynb").write_text("{}")  # re-included by "!": the engine receives it
    assert source_hash(src, BASES) != before


def test_a_dockerfile_specific_ignore_file_replaces_the_context_one(tmp_path: Path) -> None:
    src = _tree(tmp_path / "s")
    (src.context / "Dockerfile.dockerignore").write_text("app/\n")
    before = source_hash(src, BASES)
    (src.context / "app" / "main.py").write_text("changed\n")  # excluded by BuildKit's Dockerfile.dockerignore
    assert source_hash(src, BASES) == before


def test_base_images_skip_stages_scratch_and_take_copy_from_images() -> None:
    text = (
        "ARG BASE=acgs-base/python:3.11-full\n"
        "FROM ${BASE} AS build\n"
        "COPY --from=acgs-base/wheels:py311 /wheels /wheels\n"
        "RUN true\n"
        "FROM acgs-base/python:3.11-slim\n"
        "COPY --from=build /deps /deps\n"
        "COPY --from=0 /x /x\n"
        "FROM scratch AS empty\n"
    )
    assert base_images(text) == ["acgs-base/python:3.11-full", "acgs-base/wheels:py311", "acgs-base/python:3.11-slim"]
    assert base_images(text, {"BASE": "other:1"})[0] == "other:1"


def test_a_dockerfile_without_from_is_a_usage_error() -> None:
    with pytest.raises(UsageError, match="no FROM"):
        base_images("RUN true\n")


def test_references() -> None:
    assert split_ref("acgs-1-auth_service:latest") == ("acgs-1-auth_service", "latest")
    assert split_ref("127.0.55.1:5000/acgs/x") == ("127.0.55.1:5000/acgs/x", "latest")
    assert split_ref("127.0.55.1:5000/acgs/x:build-1@sha256:ab") == ("127.0.55.1:5000/acgs/x", "build-1")
    src = BuildSource("auth", "acgs-1-auth_service:latest", Path("/c"), Path("/c/Dockerfile"))
    assert candidate_ref(src, "0123456789abcdef") == "acgs-1-auth_service:build-0123456789ab"
    assert registry_repository("127.0.55.1:5000/acgs", src) == "127.0.55.1:5000/acgs/acgs-1-auth_service"
    other = BuildSource("x", "registry.example.com/team/x:1", Path("/c"), Path("/c/Dockerfile"))
    assert registry_repository("127.0.55.1:5000/acgs/", other) == "127.0.55.1:5000/acgs/team/x"


def test_policy_names_registry_builder_and_build_args(tmp_path: Path) -> None:
    _tree(tmp_path / "src" / "svc")
    policy = parse_policy(
        {
            "sources_root": str(tmp_path / "src"),
            "registry": "127.0.55.1:5000/acgs",
            "build": {"builder": "sb-h02", "args": {"VERSION": "1"}},
            "services": [{"name": "svc", "image": "svc:latest", "context": "svc"}],
        },
        "test",
    )
    assert policy.registry == "127.0.55.1:5000/acgs" and policy.build.builder == "sb-h02"
    [source] = sources_from_policy(policy)
    assert source.args == {"VERSION": "1"} and source.dockerfile == (tmp_path / "src" / "svc" / "Dockerfile")
    with pytest.raises(UsageError, match="no service nope"):
        sources_from_policy(policy, services=["nope"])
    with pytest.raises(UsageError, match="registry"):
        parse_policy({"registry": "http://bad registry"}, "test")


def test_planning_reads_hashes_and_present_images_from_snapshots(tmp_path: Path) -> None:
    from datetime import UTC, datetime

    from acgs_remediate.builds import SOURCE_HASH_LABEL, BuildError, image_for, planned_hashes
    from acgs_remediate.models import EngineFact, HostSnapshot, ImageFact

    src = _tree(tmp_path / "s")
    base_id = BASES["acgs-base/python:3.11-slim"]
    when = datetime(2026, 1, 1, tzinfo=UTC)
    engine = EngineFact(name="e", server_version="20.10", api_version="1.41", storage_driver="overlay2", data_root="/")
    base = ImageFact(id=base_id, repo_tags=["acgs-base/python:3.11-slim"], created=when, size=1)
    builder = HostSnapshot(host="b", collected_at=when, engine=engine, images=[base])
    hashes = planned_hashes([src], builder)
    assert hashes == {"svc": source_hash(src, BASES)}
    built = ImageFact(id="sha256:" + "c" * 64, created=when, size=2, labels={SOURCE_HASH_LABEL: hashes["svc"]})
    other = HostSnapshot(host="h", collected_at=when, engine=engine, images=[base, built])
    assert image_for(other, hashes["svc"]) == built and image_for(builder, hashes["svc"]) is None
    empty = HostSnapshot(host="b", collected_at=when, engine=engine)
    with pytest.raises(BuildError, match="service svc on b: base image acgs-base/python:3.11-slim"):
        planned_hashes([src], empty)


def test_an_engine_error_inside_the_gates_is_one_failed_verdict_not_a_traceback(tmp_path: Path) -> None:
    # The builder's engine is gone (its socket does not exist): the gates cannot run, the image is not released.
    source = _tree(tmp_path / "svc")
    policy = parse_policy(
        {"sources_root": str(tmp_path), "services": [{"name": "svc", "image": "svc:latest", "context": "svc"}]},
        "test policy",
    )
    gone = Host(name="h9", docker_host=f"unix://{tmp_path}/no-engine.sock", timeout=5)
    image = BuiltImage("svc", "0" * 64, "sha256:" + "b" * 64, "svc:build-000000000000", 1, "h9", True, 1.0)
    (verdict,) = safe_gates(policy_gate(policy), gone, source, image)
    assert not verdict.passed and verdict.name == "gates"
    assert verdict.detail.startswith("service svc on h9: the gates could not run: ") and "\n" not in verdict.detail


def test_each_service_smoke_tests_on_its_own_loopback_address() -> None:
    names = ["a", "b", "c"]
    policy = parse_policy(
        {"services": [{"name": n, "image": f"{n}:latest", "context": n} for n in names]}, "test policy"
    )
    addresses = [smoke_address(policy, n, "unix:///var/lib/acgs-t/h01/docker.sock") for n in names]
    assert len(set(addresses)) == 3 and all(a.startswith("127.") for a in addresses)
    # Another fleet's builder on the same machine smoke-tests on other addresses.
    assert smoke_address(policy, "a", "unix:///var/lib/acgs-u/h01/docker.sock") not in addresses
