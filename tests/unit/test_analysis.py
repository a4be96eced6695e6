"""Analysis from recorded snapshots (tests/unit/cases/analysis/*.json): no Docker, no Ansible."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from acgs_remediate import analysis
from acgs_remediate.config import Policy
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
    if isinstance(expect.get("dangling"), list):
        assert [i.display_name for i in analysis.dangling_images(snapshot)] == expect["dangling"]
    if "in_use" in expect:
        used = analysis.images_in_use(snapshot)
        names = {img.id: img.display_name for img in snapshot.images}
        got = {names[i]: sorted(c.name for c in cs) for i, cs in used.items() if i in names}
        assert got == expect["in_use"]
    if "storage" in expect:
        storage = analysis.storage_bytes(snapshot)
        assert {k: storage[k] for k in expect["storage"]} == expect["storage"]


def _policy(data: dict) -> Policy:
    return Policy.model_validate(data.get("policy") or {})


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_findings_match_the_report(case: Path) -> None:
    snapshot, data = _load(case)
    expect = data["expect"]
    result = analysis.analyze(snapshot, _policy(data))
    if "oversized_candidates" in expect:
        assert sorted(f.ref for f in result.oversized if f.candidate) == sorted(
            expect["oversized_candidates"]
        )
        ids = _ids(snapshot, expect["oversized_candidates"])
        row = next(r for r in result.savings if r.action.startswith("Remove unused oversized"))
        assert row.freed_bytes == analysis.reclaimable_bytes(snapshot, ids)
        assert row.naive_bytes > row.freed_bytes  # shared layers: the naive sum over-counts
    for ref, names in expect.get("oversized_in_use", {}).items():
        finding = next(f for f in result.oversized if f.ref == ref)
        assert not finding.candidate and [c.name for c in finding.containers] == names
    if isinstance(expect.get("dangling"), dict):
        d, want = result.dangling, expect["dangling"]
        assert (d.count, d.freed_bytes, d.naive_bytes, d.in_use_count) == (
            want["count"],
            want["freed_bytes"],
            want["naive_bytes"],
            want["in_use_count"],
        )
        assert (d.oldest.date().isoformat(), d.newest.date().isoformat()) == (want["oldest"], want["newest"])
        assert [[b.label, b.count] for b in d.buckets] == want["buckets"]
    if "services" in expect:
        assert {s.service: s.efficiency for s in result.services} == expect["services"]
    if "build_cache_over_budget" in expect:
        assert result.build_cache.over_budget_bytes == expect["build_cache_over_budget"]
    for name in expect.get("volumes_never_candidates", []):
        assert any(v.name == name for v in result.volumes)
        assert all(name not in r.image_ids for r in result.savings)


@pytest.mark.parametrize("case", CASES, ids=[c.stem for c in CASES])
def test_phase1_together_counts_shared_layers_once(case: Path) -> None:
    snapshot, data = _load(case)
    result = analysis.analyze(snapshot, _policy(data))
    over, dangling, both = result.savings[:3]
    assert set(both.image_ids) == set(over.image_ids) | set(dangling.image_ids)
    # Removing both sets frees at least what each frees alone, and is what the layer graph says.
    assert both.freed_bytes >= max(over.freed_bytes, dangling.freed_bytes)
    assert both.freed_bytes == analysis.reclaimable_bytes(snapshot, both.image_ids)
    # No image a container uses is ever in a removal row.
    used = set(analysis.images_in_use(snapshot))
    assert not used & set(both.image_ids)


def test_baseline_counts_dangling_bytes_as_unique_layers() -> None:
    snapshot, data = _load(Path(__file__).parent / "cases" / "analysis" / "seed_report_host.json")
    baseline = analysis.baseline_from(snapshot)
    dangling_ids = [i.id for i in analysis.dangling_images(snapshot)]
    assert baseline.dangling_count == 41
    assert baseline.dangling_bytes == analysis.reclaimable_bytes(snapshot, dangling_ids)
    assert baseline.dangling_bytes < sum(i.size for i in analysis.dangling_images(snapshot))
    assert baseline.images_bytes == snapshot.df_layers_size
    assert baseline.per_image["rocm/pytorch:latest"] == 70_700_000_000


def test_size_buckets_group_close_sizes_like_the_report() -> None:
    buckets = analysis.size_buckets(
        [6_280_000_000, 575_000_000, 575_000_000, 228_000_000, 232_000_000, 230_000_000]
    )
    assert [(b.label, b.count) for b in buckets] == [("6.28GB", 1), ("575MB", 2), ("228-232MB", 3)]
    assert analysis.size_buckets([]) == []


def test_times_label() -> None:
    assert [analysis.times_label(r) for r in (30.15, 3.79, 1.375, 58.6)] == ["30x", "4x", "1.4x", "59x"]


@st.composite
def _snapshots(draw: st.DrawFn) -> tuple[HostSnapshot, list[str]]:
    n_layers = draw(st.integers(1, 12))
    chains = [f"sha256:{i:064x}" for i in range(n_layers)]
    sizes = {c: draw(st.integers(0, 10**9)) for c in chains}
    images = []
    for i in range(draw(st.integers(1, 8))):
        layers = draw(st.lists(st.sampled_from(chains), min_size=1, max_size=5))
        images.append(
            {
                "id": f"sha256:{i + 1000:064x}",
                "created": "2025-06-01T00:00:00Z",
                "size": sum(sizes[c] for c in layers),
                "layers": layers,
            }
        )
    snapshot = HostSnapshot.model_validate(
        {
            "host": "h",
            "collected_at": "2025-06-15T00:00:00Z",
            "images": images,
            "layer_sizes": sizes,
            "engine": {
                "name": "h",
                "server_version": "x",
                "api_version": "1.41",
                "storage_driver": "overlay2",
                "data_root": "/",
            },
        }
    )
    removed = draw(st.lists(st.sampled_from([i["id"] for i in images]), unique=True))
    return snapshot, removed


@given(_snapshots())
def test_reclaimable_bytes_is_the_set_difference_of_layers(case: tuple[HostSnapshot, list[str]]) -> None:
    snapshot, removed = case
    kept = {c for i in snapshot.images if i.id not in removed for c in i.layers}
    gone = {c for i in snapshot.images if i.id in removed for c in i.layers} - kept
    assert analysis.reclaimable_bytes(snapshot, removed) == sum(snapshot.layer_sizes[c] for c in gone)
    alone = analysis.freed_alone(snapshot)
    for img in snapshot.images:
        assert alone[img.id] == analysis.reclaimable_bytes(snapshot, [img.id])


# --- facts: per-layer sizes from image history (pure part of the facts layer) ---------------------------


def _hist(*entries: tuple[int, str, str]) -> list[dict]:
    # Given oldest first, returned newest first as /images/{id}/history does.
    return [{"Size": s, "CreatedBy": c, "Id": i} for s, c, i in reversed(entries)]


def test_history_buildkit_keeps_empty_run_layers_and_drops_metadata() -> None:
    from acgs_remediate.facts import layer_sizes_from_history

    history = _hist(
        (1982256, "/bin/sh -c #(nop) COPY file:73e2 in /bin/busybox", "<missing>"),
        (3216, "/bin/busybox --install -s /bin", "<missing>"),
        (0, "/bin/sh -c #(nop)  ENV A=1", "<missing>"),
        (0, "RUN /bin/sh -c mkdir /empty # buildkit", "<missing>"),
        (114, "COPY Dockerfile /d # buildkit", "<missing>"),
        (0, "ENV Q=2", "<missing>"),
        (0, "RUN /bin/sh -c true # buildkit", "sha256:ac18"),
    )
    assert layer_sizes_from_history(history, 5) == ([1982256, 3216, 0, 114, 0], True)


def test_history_classic_workdir_settled_by_intermediate_images() -> None:
    from acgs_remediate.facts import layer_sizes_from_history

    history = _hist(
        (11610189, "COPY python3.11 (imported base)", "<missing>"),
        (1815170, "/bin/sh -c #(nop) COPY dir:e36b in /usr/lib", "sha256:0f72"),
        (0, "/bin/sh -c #(nop) WORKDIR /app", "sha256:7669"),
        (1001985, "/bin/sh -c #(nop) COPY dir:ca1a in /app", "sha256:45dd"),
        (0, "/bin/sh -c true", "sha256:aaaa"),
        (0, '/bin/sh -c #(nop)  CMD ["python3"]', "sha256:6884"),
    )
    counts = {"sha256:0f72": 2, "sha256:7669": 3, "sha256:45dd": 4, "sha256:aaaa": 4, "sha256:6884": 4}
    # Without the engine's intermediate images the WORKDIR/RUN ambiguity is reported, not hidden.
    assert layer_sizes_from_history(history, 4)[1] is False
    assert layer_sizes_from_history(history, 4, counts.get) == ([11610189, 1815170, 0, 1001985], True)


def test_chain_ids_follow_the_layer_store_definition() -> None:
    import hashlib

    from acgs_remediate.facts import chain_ids

    d0, d1 = "sha256:" + "a" * 64, "sha256:" + "b" * 64
    assert chain_ids([d0, d1]) == [d0, "sha256:" + hashlib.sha256(f"{d0} {d1}".encode()).hexdigest()]


def test_layer_cache_round_trip_disable_and_corruption(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from acgs_remediate.facts import CACHE_ENV, LayerCache
    from acgs_remediate.inventory import Host

    host = Host(name="prod/01", docker_host="ssh://deploy@prod-01")
    monkeypatch.setenv(CACHE_ENV, str(tmp_path))
    cache = LayerCache.for_host(host)
    assert cache is not None and cache.path.parent == tmp_path and "/" not in cache.path.name
    cache.save({"sha256:img": ["sha256:a", "sha256:b"]}, {"sha256:a": 5, "sha256:b": 0})
    again = LayerCache.for_host(host)
    assert again.chains == {"sha256:img": ["sha256:a", "sha256:b"]} and again.sizes == {
        "sha256:a": 5,
        "sha256:b": 0,
    }
    # Another endpoint with the same name gets its own file.
    assert LayerCache.for_host(Host(name="prod/01", docker_host="tcp://x:2376")).chains == {}
    cache.path.write_text("{not json")
    assert LayerCache.for_host(host).chains == {}
    monkeypatch.setenv(CACHE_ENV, "off")
    assert LayerCache.for_host(host) is None
