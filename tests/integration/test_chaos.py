"""The safety campaign in miniature (issue 14): a few seeded random engine states, built for real, through
analyze, phase 1 (aggressive) and hygiene (zero watermark), each twice, with every invariant checked from
the docker CLI, the Engine API and the volumes' files (bench/chaos.py); and the regression it found.

The fleet is its own: 2 empty engines and the sandbox registry, next to the shared fleet's directory.
``make chaos`` runs the same on >= 50 states.
"""

from __future__ import annotations

import json
import os
from collections.abc import Iterator
from pathlib import Path

import pytest

from acgs_remediate.sandbox import Sandbox
from bench import chaos

# Two seeds, one of each run order (even: hygiene first, odd: phase 1 first).
SEEDS = [3, 8]


@pytest.fixture(scope="module")
def fleet(engines_available: None) -> Iterator[Sandbox]:
    """Return a 2-host sandbox of empty engines with the registry (its own directory)."""
    sb = Sandbox(Path(f"{os.environ.get('ACGS_TEST_SANDBOX_DIR') or '/var/lib/acgs-t'}-ch"))
    sb.up(2, None, registry=True)
    yield sb
    if not os.environ.get("ACGS_TEST_KEEP_SANDBOX"):
        sb.down()


@pytest.fixture
def engines(fleet: Sandbox, tmp_path: Path) -> list[chaos.Engine]:
    return chaos.engines_of(fleet, tmp_path)


def _registry(fleet: Sandbox) -> str:
    address = fleet.status().registry
    assert address, "the chaos fleet runs the sandbox registry"
    return address


def test_seeded_random_states_keep_every_invariant_through_every_command_twice(
    fleet: Sandbox, engines: list[chaos.Engine], tmp_path: Path
) -> None:
    results = chaos.run_batch(engines, SEEDS, _registry(fleet), tmp_path, log=lambda _m: None)
    kinds: dict[str, int] = {}
    for r in results:
        for k, n in r.built.kinds.items():
            kinds[k] = kinds.get(k, 0) + n
    # Every state holds what the generator always makes (the rest is random: make chaos covers it).
    for kind in ("classic builds", "pulled by digest", "volumes written"):
        assert kinds.get(kind, 0) >= len(SEEDS), f"seeds {SEEDS} made too few {kind!r}: {kinds}"
    assert all(r.removals > 0 for r in results), [(r.seed, r.runs) for r in results]
    assert [(r.seed, r.violations) for r in results if r.violations] == []
    assert max(r.worst_error for r in results) <= chaos.TOLERANCE


def test_the_same_seed_builds_the_same_state(fleet: Sandbox, engines: list[chaos.Engine]) -> None:
    def shape(eng: chaos.Engine) -> tuple:
        t = chaos.truth(eng)
        names = {i: sorted(tags) for i, (tags, _) in t.images.items()}
        return (
            sorted(sorted(tags) for tags, _ in t.images.values()),
            sorted((n, s, tuple(names.get(i, ["<not top-level>"]))) for n, s, i in t.containers.values()),
            sorted(t.volumes.values()),
            len(t.all_images),
        )

    a, b = engines
    registry = _registry(fleet)
    chaos.build_state(a, 11, registry)
    chaos.build_state(b, 11, registry)
    assert shape(a) == shape(b)


def test_an_image_pulled_by_digest_then_tagged_is_removed_whole_by_phase1(
    fleet: Sandbox, engines: list[chaos.Engine], tmp_path: Path
) -> None:
    """Tags AND a registry digest of another repository: untagging alone left it named by its digest."""
    eng = engines[0]
    eng.wipe()
    registry = _registry(fleet)
    base = tmp_path / "ctx"
    base.mkdir()
    (base / "busybox").write_bytes(Path(os.path.realpath("/bin/busybox")).read_bytes())
    (base / "blob").write_bytes(os.urandom(800_000))
    (base / "Dockerfile").write_text("FROM scratch\nCOPY busybox /bin/busybox\nCOPY blob /blob\n")
    repo = f"{registry}/chaos/regress"
    eng.docker("build", "-q", "--network", "none", "-t", f"{repo}:push", str(base))
    eng.docker("push", "-q", f"{repo}:push")
    digest = json.loads(eng.docker("image", "inspect", "--format", "{{json .RepoDigests}}", f"{repo}:push"))[0]
    eng.docker("rmi", f"{repo}:push")
    eng.docker("pull", "-q", digest)
    eng.docker("tag", digest, "chaos/regress:1")
    eng.docker("tag", digest, "chaos/regress:2")
    eng.age(set())
    before = chaos.truth(eng)
    (image_id,) = before.images
    assert before.images[image_id] == (frozenset({"chaos/regress:1", "chaos/regress:2"}), frozenset({digest}))

    workdir = tmp_path / "run"
    workdir.mkdir()
    host = {
        eng.name: {
            "docker_host": eng.docker_host,
            "ansible_connection": "local",
            "ansible_python_interpreter": "{{ ansible_playbook_python }}",
        }
    }
    inventory = chaos.write_inventory(workdir, host, ["chaos/regress:1"])
    code, data, stderr = chaos.run_tool(workdir, inventory, "phase1", "--yes")
    assert code == 0, stderr
    after = chaos.truth(eng)
    assert image_id not in after.images, f"left behind as {after.images.get(image_id)}"
    (row,) = data["hosts"]
    freed = before.own_bytes - after.own_bytes
    assert freed > 800_000
    assert abs(row["predicted_bytes"] - freed) <= chaos.TOLERANCE * freed, (row["predicted_bytes"], freed)
