"""Build-file repair: missing files found from the Dockerfiles, generated from real sources, never empty."""

from __future__ import annotations

import zipfile
from pathlib import Path

import pytest

from acgs_remediate.buildfiles import RepairImpossible, render, repair_all, scan, write
from acgs_remediate.config import Policy
from acgs_remediate.plan import BuildFileIssue
from acgs_remediate.scenario import load_scenario, policy_vars, prepare_sources

URL = "postgresql://acgs:p%40ss@db:5432/acgs"


def _wheel(wheelhouse: Path, name: str, version: str, top: str | None) -> None:
    wheelhouse.mkdir(exist_ok=True)
    with zipfile.ZipFile(wheelhouse / f"{name}-{version}-py3-none-any.whl", "w") as zf:
        zf.writestr(f"{top or name}/__init__.py", "")
        if top is not None:
            zf.writestr(f"{name}-{version}.dist-info/top_level.txt", f"{top}\n")


@pytest.fixture
def sources(tmp_path: Path) -> tuple[Path, Policy]:
    """Return the acgs-1 scenario's defective source tree and its policy with a small wheelhouse."""
    scenario = load_scenario("acgs-1")
    root = tmp_path / "src"
    prepare_sources(scenario, root)
    wheelhouse = tmp_path / "wheels"
    _wheel(wheelhouse, "bottle", "0.13.2", "bottle")
    _wheel(wheelhouse, "packaging", "24.2", None)  # no top_level.txt: the wheel's own files tell
    policy = Policy.model_validate(policy_vars(scenario, root, wheelhouse))
    return root, policy


def test_scan_finds_the_reports_two_missing_files(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    found = {(i.kind, Path(i.path).relative_to(root).as_posix()) for i in scan(policy)}
    assert ("requirements.txt", "services/core/policy-governance/pgc_service/requirements.txt") in found
    assert ("alembic.ini", "alembic.ini") in found


def test_requirements_generated_from_imports_pinned_to_the_wheelhouse(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    issue = next(i for i in scan(policy) if i.kind == "requirements.txt")
    repairs, problems = repair_all([issue], policy, env={})
    assert problems == []
    target = Path(issue.path)
    lines = [ln for ln in target.read_text().splitlines() if not ln.startswith("#")]
    assert lines == ["bottle==0.13.2", "packaging==24.2"]
    assert repairs[0].source.startswith("the imports of")


def test_unresolvable_import_fails_naming_file_and_import(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    issue = next(i for i in scan(policy) if i.kind == "requirements.txt")
    (Path(issue.path).parent / "app" / "extra.py").write_text("import numpy\n")
    with pytest.raises(RepairImpossible) as exc:
        render(issue, policy, env={})
    assert "requirements.txt" in str(exc.value) and "numpy" in str(exc.value)
    assert not Path(issue.path).exists()


def test_no_dependencies_is_refused_rather_than_an_empty_file(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    service.mkdir()
    (service / "main.py").write_text("import os\nprint(os.getcwd())\n")
    issue = BuildFileIssue(service="svc", path=str(service / "requirements.txt"), kind="requirements.txt")
    with pytest.raises(RepairImpossible, match="would be empty"):
        render(issue, Policy(), env={})
    _, problems = repair_all([issue], Policy(), env={})
    assert problems and not (service / "requirements.txt").exists()


def test_requirements_from_pyproject_when_present(tmp_path: Path) -> None:
    service = tmp_path / "svc"
    service.mkdir()
    deps = "[\"bottle\", \"packaging>=20\"]"
    (service / "pyproject.toml").write_text(f"[project]\nname = \"svc\"\ndependencies = {deps}\n")
    _wheel(tmp_path / "wh", "bottle", "0.13.2", "bottle")
    _wheel(tmp_path / "wh", "packaging", "24.2", "packaging")
    issue = BuildFileIssue(service="svc", path=str(service / "requirements.txt"), kind="requirements.txt")
    repair = render(issue, Policy(wheelhouse=str(tmp_path / "wh")), env={})
    assert repair.content.splitlines()[1:] == ["bottle==0.13.2", "packaging>=20"]


def test_alembic_ini_needs_the_database_url(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    issue = next(i for i in scan(policy) if i.kind == "alembic.ini")
    with pytest.raises(RepairImpossible) as exc:
        render(issue, policy, env={})
    assert "alembic.ini" in str(exc.value) and "DATABASE_URL" in str(exc.value)


def test_alembic_ini_rendered_from_the_projects_template_with_the_url(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    issue = next(i for i in scan(policy) if i.kind == "alembic.ini")
    repairs, problems = repair_all([issue], policy, env={"DATABASE_URL": URL})
    assert problems == []
    import configparser

    cfg = configparser.ConfigParser()
    cfg.read(issue.path)
    assert cfg["alembic"]["sqlalchemy.url"] == URL  # the % survives configparser interpolation
    assert cfg["alembic"]["script_location"] == "migrations"


def test_check_mode_writes_nothing_and_write_never_overwrites(sources: tuple[Path, Policy]) -> None:
    root, policy = sources
    issues = scan(policy)
    repairs, _ = repair_all(issues, policy, env={"DATABASE_URL": URL}, check=True)
    assert repairs and not any(Path(r.path).exists() for r in repairs)
    Path(repairs[0].path).write_text("hand-written\n")
    assert write(repairs[0]) is False
    assert Path(repairs[0].path).read_text() == "hand-written\n"


def test_a_missing_file_of_unknown_kind_fails_naming_it(tmp_path: Path) -> None:
    issue = BuildFileIssue(service="svc", path=str(tmp_path / "config.yaml"), kind="other")
    with pytest.raises(RepairImpossible, match="config.yaml"):
        render(issue, Policy(), env={})
