"""Build-context doctor: Docker's .dockerignore semantics and the report's build errors, from tmp trees."""

from __future__ import annotations

from pathlib import Path

import pytest

from acgs_remediate import doctor
from acgs_remediate.config import Policy
from acgs_remediate.models import EngineFact, HostSnapshot, ImageFact


def _ignored(lines: str, path: str) -> bool:
    return doctor.is_ignored(path, doctor.parse_dockerignore(lines))


@pytest.mark.parametrize(
    ("patterns", "path", "ignored"),
    [
        # The examples of Docker's .dockerignore documentation.
        ("*/temp*", "somedir/temporary.txt", True),
        ("*/temp*", "somedir/temp", True),
        ("*/temp*", "temp", False),
        ("*/*/temp*", "somedir/subdir/temporary.txt", True),
        ("*/*/temp*", "somedir/temporary.txt", False),
        ("temp?", "tempa", True),
        ("temp?", "tempab", False),
        ("**/*.go", "main.go", True),
        ("**/*.go", "a/b/c/x.go", True),
        ("**/*.go", "a/b/c/x.gox", False),
        ("*.md\n!README*.md\nREADME-secret.md", "README-secret.md", True),
        ("*.md\n!README*.md\nREADME-secret.md", "README.md", False),
        ("*.md\nREADME-secret.md\n!README*.md", "README-secret.md", False),
        # A directory pattern takes everything below it (parent matching); "!" re-includes.
        ("node_modules", "node_modules/x/big", True),
        ("docs\n!docs/keep.md", "docs/keep.md", False),
        ("docs\n!docs/keep.md", "docs/other.md", True),
        # Cleaning: leading "/", trailing "/", "./" are the same pattern; "*" does not cross "/".
        ("/build/", "build/out.o", True),
        ("./logs", "logs/a.log", True),
        ("*.pyc", "pkg/mod.pyc", False),
        ("**/__pycache__", "pkg/sub/__pycache__/m.pyc", True),
        ("# a comment\n\n", "anything", False),
        ("[a-c]*.txt", "b1.txt", True),
        # Go's filepath.Match classes: "^" negates; "!" is literal (unlike a shell).
        ("[^a-c]*.txt", "b1.txt", False),
        ("[^a-c]*.txt", "d1.txt", True),
        ("[!a-c]*.txt", "b1.txt", True),
        ("app/**", "app/x/y", True),
        ("app/**", "application", False),
    ],
)
def test_dockerignore_matches_like_docker(patterns: str, path: str, ignored: bool) -> None:
    assert _ignored(patterns, path) is ignored


def _tree(root: Path, files: dict[str, str | int]) -> None:
    for rel, content in files.items():
        p = root / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        if isinstance(content, int):
            p.write_bytes(b"\0" * content)
        else:
            p.write_text(content)


def _policy(root: Path, **service: object) -> Policy:
    svc = {"name": "pgc", "image": "acgs-1-pgc_service:latest", "context": "services/pgc", **service}
    return Policy(sources_root=str(root), services=[svc])


def test_missing_requirements_and_app_files_are_named_like_the_report(tmp_path: Path) -> None:
    _tree(
        tmp_path / "services/pgc",
        {
            "Dockerfile": "FROM python:3.11-slim\nWORKDIR /app\nCOPY requirements.txt .\n"
            "RUN pip install --no-cache-dir -r requirements.txt\nCOPY alembic.ini /app/alembic.ini\n"
            "COPY app/ /app/\n",
            "app/main.py": "print('hi')\n",
            ".dockerignore": ".git\n",
        },
    )
    result = doctor.check_service(_policy(tmp_path).services[0], _policy(tmp_path))
    errors = {(f.title, f.file) for f in result.errors}
    assert errors == {
        ("Missing requirements file", "requirements.txt"),
        ("Missing application files", "alembic.ini"),
    }
    req = next(f for f in result.errors if f.file == "requirements.txt")
    assert (
        "COPY services/pgc/requirements.txt" in req.message
        and "File not found: requirements.txt" in req.message
    )
    assert req.line == 3
    assert not result.ok


def test_file_present_but_excluded_by_dockerignore_is_an_error(tmp_path: Path) -> None:
    _tree(
        tmp_path / "services/pgc",
        {
            "Dockerfile": "FROM scratch\nCOPY config/settings.ini /etc/\nCOPY src/*.py /app/\n"
            "COPY --from=builder /w /w\n",
            "config/settings.ini": "x",
            "src/a.py": "",
            ".dockerignore": "config\n*.md\n",
        },
    )
    result = doctor.check_service(_policy(tmp_path).services[0], _policy(tmp_path))
    assert [(f.code, f.file) for f in result.errors] == [("excluded-file", "config/settings.ini")]


def test_glob_source_with_no_match_and_arg_defaults(tmp_path: Path) -> None:
    _tree(
        tmp_path / "services/pgc",
        {
            "Dockerfile": "ARG REQ=requirements\nFROM scratch\nARG REQ\nENV APP=app\nCOPY ${REQ}*.txt /r/\n"
            'COPY $APP/ /app/\nCOPY ["data/*.json", "/data/"]\n',
            "requirements-prod.txt": "fastapi\n",
            "app/x.py": "",
            ".dockerignore": "",
        },
    )
    result = doctor.check_service(_policy(tmp_path).services[0], _policy(tmp_path))
    assert [(f.file, f.message.splitlines()[-1]) for f in result.errors] == [
        ("data/*.json", "No file matches: data/*.json")
    ]


def test_bloat_causes_dev_tools_pip_cache_apt_lists_no_dockerignore(tmp_path: Path) -> None:
    _tree(
        tmp_path / "services/pgc",
        {
            "Dockerfile": "FROM ubuntu:22.04\nRUN apt-get update && apt-get install -y python3-pip gcc\n"
            "COPY requirements.txt .\nRUN pip install -r requirements.txt\n",
            "requirements.txt": "fastapi\njupyter==1.0\n",
            "data/big.bin": 50_000,
            "x.txt": 10,
        },
    )
    result = doctor.check_service(_policy(tmp_path).services[0], _policy(tmp_path))
    codes = {f.code for f in result.findings}
    assert {"no-dockerignore", "dev-tools", "pip-cache", "apt-lists"} <= codes
    dev = next(f for f in result.findings if f.code == "dev-tools")
    assert (
        "gcc" in dev.message
        and "jupyter (in requirements.txt)" in dev.message
        and "single-stage" in dev.message
    )
    assert result.ok  # bloat, not a build failure
    assert result.biggest[0].path == "data/" and result.biggest[0].bytes == 50_000
    assert result.context_bytes == sum(e.bytes for e in result.biggest)


def test_clean_multistage_build_has_no_findings(tmp_path: Path) -> None:
    _tree(
        tmp_path / "services/pgc",
        {
            "Dockerfile": "FROM python:3.11 AS build\nRUN apt-get update && apt-get install -y gcc "
            "&& rm -rf /var/lib/apt/lists/*\nCOPY requirements.txt .\n"
            "RUN pip install --no-cache-dir --target /deps -r requirements.txt\n"
            "FROM python:3.11-slim\nCOPY --from=build /deps /deps\nCOPY app/ /app/\n",
            "requirements.txt": "fastapi\n",
            "app/main.py": "",
            ".dockerignore": ".git\n",
        },
    )
    result = doctor.check_service(_policy(tmp_path).services[0], _policy(tmp_path))
    assert result.findings == []
    assert result.stages == 2 and result.base_image == "python:3.11-slim"


def test_base_image_size_from_the_engine_snapshot(tmp_path: Path) -> None:
    _tree(tmp_path / "services/pgc", {"Dockerfile": "FROM base AS b\nFROM b\n", ".dockerignore": ""})
    snapshot = HostSnapshot(
        host="h",
        collected_at="2025-06-15T12:00:00Z",
        engine=EngineFact(
            name="h", server_version="20.10", api_version="1.41", storage_driver="overlay2", data_root="/"
        ),
        images=[
            ImageFact(
                id="sha256:" + "a" * 64,
                repo_tags=["base:latest"],
                created="2025-06-01T00:00:00Z",
                size=400_000_000,
            )
        ],
    )
    policy = _policy(tmp_path, budget="300MB")
    result = doctor.check_service(policy.services[0], policy, snapshot=snapshot)
    assert result.base_image == "base" and result.base_image_size == 400_000_000
    assert [f.code for f in result.findings] == ["base-size"]


def test_missing_context_and_dockerfile_are_errors(tmp_path: Path) -> None:
    policy = _policy(tmp_path)
    assert [f.code for f in doctor.check_service(policy.services[0], policy).errors] == ["missing-context"]
    (tmp_path / "services/pgc").mkdir(parents=True)
    assert [f.code for f in doctor.check_service(policy.services[0], policy).errors] == ["missing-dockerfile"]


def test_sources_root_is_relative_to_the_inventory_dir(tmp_path: Path) -> None:
    _tree(tmp_path / "inv/src/services/pgc", {"Dockerfile": "FROM scratch\n", ".dockerignore": ""})
    policy = Policy(sources_root="src", services=[{"name": "pgc", "image": "p:1", "context": "services/pgc"}])
    result = doctor.check_services(policy, base=tmp_path / "inv")[0]
    assert result.dockerfile_found and result.ok


@pytest.mark.parametrize(
    ("text", "line", "why"),
    [
        ("FORM python:3.11\nRUN echo\n", 1, "unknown instruction: FORM"),
        ("RUN make\nFROM base\n", 1, "no build stage"),
        ("FROM base\nCOPY\n", 2, "COPY requires at least one argument"),
        ("FROM base app\n", 1, "FROM requires either one or three arguments"),
        ("# nothing here yet\n", 1, "holds no instruction"),
        ("{not: a dockerfile}\n", 1, "unknown instruction"),
    ],
)
def test_a_dockerfile_that_docker_would_not_parse_is_named_with_its_line(text, line, why):
    from acgs_remediate.doctor import dockerfile_syntax_error

    problem = dockerfile_syntax_error(text)
    assert problem is not None and problem[0] == line and why in problem[1]


@pytest.mark.parametrize(
    "text",
    [
        "ARG V=1\nFROM base:$V AS build\nRUN make \\\n# a comment inside\n  all\nFROM build\n",
        "# escape=`\nFROM base\nRUN a `\n  b\n",
        "FROM --platform=linux/amd64 base AS b\nCOPY <<EOF /etc/x\nnot an instruction\nEOF\n"
        "RUN <<-END\n\tstill not\n\tEND\n",
        "from base\nrun make\nonbuild run make\n",
    ],
)
def test_dockerfiles_docker_parses_are_accepted(text):
    from acgs_remediate.doctor import dockerfile_syntax_error

    assert dockerfile_syntax_error(text) is None
