"""Repository conventions CI relies on. Every module shipped in a role documents itself in YAML that
``ansible-doc`` can read; unit and integration test modules have distinct names.

A module's DOCUMENTATION, EXAMPLES and RETURN strings are YAML: one line ending in ``word:`` inside a
description turns it into a mapping key and ``ansible-doc MODULE`` (and AWX's module browser) fail on it —
which happened twice (acgs_image_cleanup, acgs_service_build) without any test noticing.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[2]
MODULES = sorted(ROOT.glob("roles/*/library/*.py"))


def _doc_strings(path: Path) -> dict[str, str]:
    """Return the module's top-level DOCUMENTATION/EXAMPLES/RETURN string constants by name."""
    found: dict[str, str] = {}
    for node in ast.parse(path.read_text()).body:
        if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
            for target in node.targets:
                if isinstance(target, ast.Name) and target.id in {"DOCUMENTATION", "EXAMPLES", "RETURN"}:
                    found[target.id] = node.value.value
    return found


def test_every_role_ships_a_module() -> None:
    assert MODULES, "no module found under roles/*/library"


@pytest.mark.parametrize("path", MODULES, ids=lambda p: p.stem)
def test_module_documentation_is_valid_yaml_naming_the_module(path: Path) -> None:
    docs = _doc_strings(path)
    assert "DOCUMENTATION" in docs, f"{path.name} has no DOCUMENTATION"
    for name, text in docs.items():
        try:
            yaml.safe_load(text)
        except yaml.YAMLError as exc:
            pytest.fail(f"{path.name} {name} is not valid YAML: {exc}")
    doc = yaml.safe_load(docs["DOCUMENTATION"])
    assert doc["module"] == path.stem
    assert doc.get("short_description")
    for option, spec in (doc.get("options") or {}).items():
        assert spec.get("description"), f"{path.name}: option {option} has no description"


def test_unit_and_integration_test_modules_have_distinct_names() -> None:
    """pytest (rootdir-relative imports, no __init__.py) refuses two test modules of one basename: CI broke on it."""
    unit = {p.name for p in (ROOT / "tests" / "unit").glob("test_*.py")}
    integration = {p.name for p in (ROOT / "tests" / "integration").glob("test_*.py")}
    assert unit & integration == set()
