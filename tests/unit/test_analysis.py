"""Analysis from recorded snapshots (tests/unit/cases/analysis/*.json): no Docker, no Ansible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from acgs_remediate import analysis
from acgs_remediate.models import HostSnapshot

CASES = sorted((Path(__file__).parent / "cases" / "analysis").glob("*.json"))


def _load(path: Path) -> tuple[HostSnapshot, dict]:
    data = json.loads(path.read_text())
    return HostSnapshot.model_validate(data["snapshot"]), data


def _ids(snapshot: HostSnapshot, refs: list[str]) -> list[str]:
    ids = []
    for ref in refs:
        img = snapshot.image(ref)
        assert img is not None, f"case names unknown image {ref}"
        ids.append(img.id)
    return ids


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_reclaimable_bytes_count_each_unique_layer_once(case: Path) -> None:
    snapshot, data = _load(case)
    for item in data["expect"].get("reclaimable", []):
        ids = _ids(snapshot, item["remove"])
        assert analysis.reclaimable_bytes(snapshot, ids) == item["bytes"], item
        if "naive" in item:
            assert analysis.naive_bytes(snapshot, ids) == item["naive"], item


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_dangling_in_use_and_storage(case: Path) -> None:
    snapshot, data = _load(case)
    expect = data["expect"]
    if "dangling" in expect:
        assert [i.display_name for i in analysis.dangling_images(snapshot)] == expect["dangling"]
    if "in_use" in expect:
        used = analysis.images_in_use(snapshot)
        names = {img.id: img.display_name for img in snapshot.images}
        got = {names[i]: sorted(c.name for c in cs) for i, cs in used.items() if i in names}
        assert got == expect["in_use"]
    if "storage" in expect:
        storage = analysis.storage_bytes(snapshot)
        assert {k: storage[k] for k in expect["storage"]} == expect["storage"]
