"""The phase-2 generator on the scenario's real source trees: optimized Dockerfiles and .dockerignore files."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import pytest
from dockerfile_parse import DockerfileParser

from acgs_remediate import optimize
from acgs_remediate import scenario as sc
from acgs_remediate.config import Policy
from acgs_remediate.doctor import is_ignored, parse_dockerignore
from acgs_remediate.errors import UsageError


@pytest.fixture(scope="module")
def scen() -> sc.Scenario:
    return sc.load_scenario("acgs-1")


@pytest.fixture(scope="module")
def repaired(tmp_path_factory: pytest.TempPathFactory, scen: sc.Scenario) -> Path:
    """The scenario's working copy after phase 1's build-file repairs (the two missing files restored)."""
    dest = tmp_path_factory.mktemp("acgs") / "sources"
    sc.prepare_sources(scen, dest)
    shutil.copyfile(scen.history_dir / "pgc_service.requirements.txt", dest / str(scen.service("pgc").missing_file))
    shutil.copyfile(scen.history_dir / "alembic.ini", dest / "alembic.ini")
    return dest


@pytest.fixture(scope="module")
def policy(scen: sc.Scenario, repaired: Path) -> Policy:
    return Policy.model_validate(sc.policy_vars(scen, repaired, None))


def _stages(text: str) -> list[list[dict]]:
    stages: list[list[dict]] = []
    for item in DockerfileParser(fileobj=__import__("io").BytesIO(text.encode())).structure:
        if item["instruction"] == "FROM":
            stages.append([item])
        elif item["instruction"] != "COMMENT":
            stages[-1].append(item)
    return stages


def _values(stage: list[dict], instruction: str) -> list[str]:
    return [i["value"] for i in stage if i["instruction"] == instruction]


SERVICES = ["gs", "alembic-runner", "fv", "ac", "pgc", "integrity", "auth"]
# The file each service's CMD runs, in its build context.
SCRIPTS = {
    "gs": "services/core/governance-synthesis/gs_service/app/main.py",
    "alembic-runner": "services/shared/alembic-runner/run.py",
    "pgc": "services/core/policy-governance/pgc_service/app/main.py",
    "fv": "app/main.py",
    "ac": "app/main.py",
    "integrity": "app/main.py",
    "auth": "app/main.py",
}


@pytest.mark.parametrize("name", SERVICES)
def test_every_service_gets_a_multi_stage_build_without_dev_tools(
    name: str, scen: sc.Scenario, policy: Policy, repaired: Path
) -> None:
    service = next(s for s in policy.services if s.name == name)
    defn = optimize.generate(service, policy)
    assert defn.status == "generated", defn.reason
    assert defn.dockerfile and defn.dockerignore and not defn.missing
    assert not defn.dockerfile.lstrip().startswith("# syntax")  # nothing may be pulled: no registry
    original = (repaired / service.context / service.dockerfile).read_text()
    stages = _stages(defn.dockerfile)
    final = stages[-1]
    assert len(stages) == 2 and _values(stages[0], "FROM") == ["acgs-base/python:3.11-full AS deps"]
    assert _values(final, "FROM") == [service.runtime_base or "acgs-base/python:3.11-slim"]
    # Dependencies: installed in the builder, offline from the wheelhouse, no pip cache, dev requirements never.
    (pip,) = _values(stages[0], "RUN")
    assert "--no-cache-dir" in pip and "--no-index" in pip and "--find-links /wheels/common" in pip
    assert "requirements-dev" not in defn.dockerfile and "pytest" not in defn.dockerfile
    # The final stage runs nothing and holds no development tool.
    assert _values(final, "RUN") == []
    assert not any(w in defn.dockerfile.lower() for w in ("jupyter", "/usr/lib/gcc", "cc1", "/root/.cache", "z3"))
    # Non-root, a health check that needs no curl, the original command.
    (user,) = _values(final, "USER")
    assert user.split(":")[0] not in ("root", "0")
    (health,) = _values(final, "HEALTHCHECK")
    test = json.loads(health.split(" CMD ", 1)[1])
    assert test[:2] == ["python3", "-c"] and "http.client" in test[2] and "curl" not in health
    assert test[3] == "http://${ACGS_BIND}:${ACGS_PORT}/health"
    original_cmd = [i["value"] for s in _stages(original)[-1:] for i in s if i["instruction"] == "CMD"]
    assert _values(final, "CMD") == original_cmd
    for env in [i["value"] for i in _stages(original)[-1] if i["instruction"] == "ENV"]:
        key, _, value = env.partition("=")
        assert any(key in e and value in e for e in _values(final, "ENV")), env


@pytest.mark.parametrize("name", SERVICES)
def test_dockerignore_drops_the_junk_but_nothing_the_build_copies(
    name: str, scen: sc.Scenario, policy: Policy, repaired: Path
) -> None:
    service = next(s for s in policy.services if s.name == name)
    defn = optimize.generate(service, policy)
    context = policy.service_context(service)
    patterns = parse_dockerignore(defn.dockerignore or "")
    junk_here = [
        str((repaired / j.path).relative_to(context))
        for j in scen.context_junk
        if (repaired / j.path).resolve().is_relative_to(context.resolve())
    ]
    assert junk_here, "every context carries some of the report's junk"
    for rel in junk_here:
        assert is_ignored(rel, patterns), rel
    copied = []
    for stage in _stages(defn.dockerfile or ""):
        for value in _values(stage, "COPY"):
            if "--from" not in value:
                copied += value.split()[:-1]
    assert copied
    for src in copied:
        if src != ".":
            assert not is_ignored(src, patterns), src
    # What the command runs stays in the context too.
    assert not is_ignored(SCRIPTS[name], patterns) and (context / SCRIPTS[name]).is_file()
    if name == "gs":
        assert is_ignored("services/core/governance-synthesis/gs_service/tests/test_health.py", patterns)
        assert not is_ignored("services/core/governance-synthesis/gs_service/app/main.py", patterns)


def test_notes_say_what_was_dropped_and_why(policy: Policy) -> None:
    gs = optimize.generate(next(s for s in policy.services if s.name == "gs"), policy)
    text = "\n".join(gs.notes)
    assert "requirements-dev.txt are not installed" in text
    assert "development tool (jupyter)" in text and "development tool (gcc)" in text
    fv = optimize.generate(next(s for s in policy.services if s.name == "fv"), policy)
    assert any("/opt/z3" in n for n in fv.notes)
    ac = optimize.generate(next(s for s in policy.services if s.name == "ac"), policy)
    assert any("package-manager cache (/root/.cache/pip" in n for n in ac.notes)
    alembic = optimize.generate(next(s for s in policy.services if s.name == "alembic-runner"), policy)
    assert "COPY --from=deps --chown=10001:10001 /build/writable/var/lib/acgs /var/lib/acgs" in str(alembic.dockerfile)


def test_missing_build_files_are_reported_not_invented(scen: sc.Scenario, tmp_path: Path) -> None:
    src = tmp_path / "src"
    sc.prepare_sources(scen, src)  # before phase 1: pgc's requirements.txt and alembic.ini are missing
    policy = Policy.model_validate(sc.policy_vars(scen, src, None))
    pgc = optimize.generate(next(s for s in policy.services if s.name == "pgc"), policy)
    assert pgc.status == "generated"
    assert pgc.missing == ["services/core/policy-governance/pgc_service/requirements.txt"]
    assert not (src / pgc.missing[0]).exists()  # safety invariant 6: never created here


def _service_tree(tmp_path: Path, dockerfile: str, files: dict[str, str] | None = None) -> Policy:
    ctx = tmp_path / "svc"
    (ctx / "app").mkdir(parents=True)
    (ctx / "app" / "main.py").write_text("import bottle\n")
    (ctx / "requirements.txt").write_text("bottle==0.13.2\n")
    for rel, text in (files or {}).items():
        (ctx / rel).parent.mkdir(parents=True, exist_ok=True)
        (ctx / rel).write_text(text)
    (ctx / "Dockerfile").write_text(dockerfile)
    return Policy.model_validate(
        {
            "sources_root": str(tmp_path),
            "services": [{"name": "svc", "image": "svc:latest", "context": "svc", "port": 8080}],
        }
    )


@pytest.mark.parametrize(
    ("dockerfile", "files", "reason"),
    [
        (
            "FROM python:3.11\nCOPY . /app\nRUN apt-get update && apt-get install -y libpq5\n"
            'RUN pip install -r /app/requirements.txt\nCMD ["python", "/app/app/main.py"]\n',
            None,
            "installs system packages",
        ),
        (
            "FROM python:3.11\nCOPY . /app\nRUN pip install -r /app/requirements.txt\nRUN python /app/setup_db.py\n"
            'CMD ["python", "/app/app/main.py"]\n',
            None,
            "is neither a dependency install nor a known development tool",
        ),
        (
            "FROM python:3.11\nCOPY . /app\nRUN pip install -r /app/requirements.txt\n"
            'CMD ["python", "/app/app/main.py"]\n',
            {"requirements.txt": "bottle==0.13.2\npytest==8.3.3\n"},
            "lists development packages (pytest)",
        ),
        (
            'FROM python:3.11\nCOPY . /app\nRUN pip install /app\nCMD ["python", "/app/app/main.py"]\n',
            {"pyproject.toml": "[project]\nname='svc'\n"},
            "installs a local project",
        ),
        ("RUN echo hi\n", None, "before the first FROM"),
        (  # building something is never dropped on a guess, even with a development tool's name in it
            'FROM python:3.11\nCOPY . /app\nRUN make -C /app\nCMD ["python", "/app/app/main.py"]\n',
            None,
            "RUN 'make -C /app' is neither a dependency install nor a known development tool",
        ),
    ],
)
def test_a_build_it_does_not_understand_is_skipped_with_the_reason(
    tmp_path: Path, dockerfile: str, files: dict[str, str] | None, reason: str
) -> None:
    policy = _service_tree(tmp_path, dockerfile, files)
    defn = optimize.generate(policy.services[0], policy)
    assert defn.status == "not-understood" and not defn.understood
    assert reason in (defn.reason or "") and defn.verdict.startswith("not understood: ")
    assert defn.dockerfile is None


def test_a_service_that_names_its_own_optimized_dockerfile_is_built_as_is(tmp_path: Path) -> None:
    policy = _service_tree(tmp_path, "FROM python:3.11\nCOPY . /app\n", {"Dockerfile.mine": "FROM scratch\n"})
    svc = policy.services[0].model_copy(update={"optimized_dockerfile": "Dockerfile.mine"})
    defn = optimize.generate(svc, policy)
    assert defn.status == "as-is" and defn.dockerfile == "FROM scratch\n" and defn.dockerfile_path == "Dockerfile.mine"
    gone = svc.model_copy(update={"optimized_dockerfile": "nope"})
    assert optimize.generate(gone, policy).status == "not-understood"


def test_writing_shows_the_diff_and_never_overwrites_a_hand_edit(policy: Policy, tmp_path: Path) -> None:
    service = next(s for s in policy.services if s.name == "auth")
    defn = optimize.generate(service, policy)
    target = Path(defn.context) / str(defn.dockerfile_path)
    dry = optimize.write_definition(defn, dry_run=True)
    assert dry.changed and "+++ b/Dockerfile.optimized" in dry.diff and not dry.written and not target.exists()
    first = optimize.write_definition(defn)
    assert len(first.written) == 2 and target.read_text() == defn.dockerfile
    again = optimize.write_definition(defn)
    assert not again.changed and not again.written and len(again.unchanged) == 2
    # A hand edit is kept: refused with a clear message, unless forced.
    target.write_text(str(defn.dockerfile).replace("USER 10001:10001", "USER 0"))
    with pytest.raises(UsageError, match="edited by hand"):
        optimize.write_definition(defn)
    assert "USER 0" in target.read_text()
    forced = optimize.write_definition(defn, force=True)
    assert "-USER 0" in forced.diff and target.read_text() == defn.dockerfile
    # A file the generator did not write is never taken over.
    target.write_text("FROM scratch\n")
    with pytest.raises(UsageError, match="not generated by acgs-remediate"):
        optimize.write_definition(defn)
    target.unlink()
    (Path(defn.context) / str(defn.dockerignore_path)).unlink()


def test_generation_is_deterministic(policy: Policy) -> None:
    service = next(s for s in policy.services if s.name == "gs")
    assert optimize.generate(service, policy) == optimize.generate(service, policy)


def test_development_system_packages_are_dropped_with_a_note(tmp_path: Path) -> None:
    policy = _service_tree(
        tmp_path,
        "FROM python:3.11\nCOPY . /app\nRUN apt-get update && apt-get install -y --no-install-recommends "
        "build-essential gcc libffi-dev\nRUN pip install -r /app/requirements.txt\n"
        'CMD ["python", "/app/app/main.py"]\n',
    )
    defn = optimize.generate(policy.services[0], policy)
    assert defn.status == "generated", defn.reason
    assert "apt-get" not in str(defn.dockerfile) and "gcc" not in str(defn.dockerfile)
    assert any("development packages (build-essential, gcc, libffi-dev)" in n for n in defn.notes)
    assert "HEALTHCHECK" in str(defn.dockerfile) and "http://127.0.0.1:8080/health" in str(defn.dockerfile)


def test_a_build_can_be_staged_outside_the_source_tree(policy: Policy, tmp_path: Path) -> None:
    service = next(s for s in policy.services if s.name == "integrity")
    defn = optimize.generate(service, policy)
    dockerfile = optimize.stage_definition(defn, tmp_path / "stage")
    assert dockerfile.read_text() == defn.dockerfile
    assert Path(f"{dockerfile}.dockerignore").read_text() == defn.dockerignore
    assert not (Path(defn.context) / "Dockerfile.optimized").exists()  # the source tree is untouched
    sent = optimize.context_paths(defn)
    assert "app/main.py" in sent and "requirements.txt" in sent
    assert not any(p.startswith("logs/") for p in sent)


def test_dockerignore_re_includes_what_the_build_copies_from_a_junk_place(tmp_path: Path) -> None:
    policy = _service_tree(
        tmp_path,
        "FROM python:3.11\nCOPY . /app\nCOPY logs/format.ini /etc/svc/format.ini\n"
        "RUN pip install -r /app/requirements.txt\n"
        'CMD ["python", "/app/tests/smoke_server.py"]\n',
        {"logs/format.ini": "[log]\n", "logs/old.log": "x" * 10, "tests/smoke_server.py": "print(1)\n"},
    )
    defn = optimize.generate(policy.services[0], policy)
    assert defn.status == "generated", defn.reason
    patterns = parse_dockerignore(str(defn.dockerignore))
    assert is_ignored("logs/old.log", patterns)
    assert not is_ignored("logs/format.ini", patterns) and not is_ignored("tests/smoke_server.py", patterns)
    assert any("re-includes logs/format.ini" in n for n in defn.notes)


def test_the_standalone_playbook_builds_the_definitions_phase2_generates(policy: Policy) -> None:
    # ansible-playbook playbooks/phase2_service_optimization.yml without the CLI: the role's module generates
    # and stages the same optimized Dockerfiles `acgs-remediate phase2` builds, never the originals.
    import importlib.util

    from acgs_remediate.phases.phase2 import stage

    path = Path(__file__).resolve().parents[2] / "roles/service_build/library/acgs_service_build.py"
    spec = importlib.util.spec_from_file_location("acgs_service_build", path)
    assert spec and spec.loader
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    dockerfiles, skipped = module._optimized(policy, None, [], {})
    for defn in optimize.generate_all(policy):
        if defn.understood:
            assert dockerfiles[defn.service] == stage(defn), defn.service
            assert dockerfiles[defn.service].read_text() == defn.dockerfile
            assert dockerfiles[defn.service] != Path(defn.context) / defn.source_dockerfile
        else:
            assert skipped[defn.service] == defn.verdict
    assert len(dockerfiles) == len(policy.services)  # the scenario's services are all understood
    # What the CLI passes in (its own staged Dockerfiles) and services left out are not generated again.
    mine, _ = module._optimized(policy, None, ["auth", "gs"], {"auth": Path("/elsewhere/Dockerfile")})
    assert set(mine) == {"gs"}
