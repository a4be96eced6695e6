"""Facts against real engines: what the listing-only container read and the fleet-shared inspects give."""

from __future__ import annotations

import docker
import pytest

from acgs_remediate.facts import collect, collect_many
from acgs_remediate.inventory import load_fleet
from acgs_remediate.sandbox import Sandbox


def test_fleet_read_equals_host_by_host_reads(sandbox: Sandbox, monkeypatch: pytest.MonkeyPatch) -> None:
    # Cold (no layer cache): the fleet read inspects each distinct image once and shares the answer.
    monkeypatch.setenv("ACGS_REMEDIATE_CACHE_DIR", "off")
    fleet = load_fleet(sandbox.inventory_path)
    together, unreachable = collect_many(fleet.hosts, forks=len(fleet.hosts))
    assert not unreachable
    for host in fleet.hosts:
        alone = collect(host)
        shared = together[host.name]
        assert [(i.id, i.layers) for i in shared.images] == [(i.id, i.layers) for i in alone.images], host.name
        assert shared.layer_sizes == alone.layer_sizes, host.name
        assert shared.engine.approximate == alone.engine.approximate
        assert sum(shared.layer_sizes.values()) == shared.df_layers_size, host.name


def test_container_whose_tag_moved_keeps_the_reference_it_was_created_from(fresh_sandbox: Sandbox) -> None:
    host = fresh_sandbox.hosts()[0]
    client = docker.DockerClient(base_url=fresh_sandbox.docker_host(host), timeout=60)
    images = [img for img in client.images.list() if img.tags]
    first, second = images[0], next(img for img in images if img.id != images[0].id)
    first.tag("acgs-test/moved", "1")
    container = client.containers.create("acgs-test/moved:1", command=["true"], network_mode="none",
                                         name="acgs-test-moved")
    second.tag("acgs-test/moved", "1")  # the tag now names another image; the container keeps the first
    listed = client.api.containers(all=True, filters={"name": "acgs-test-moved"})[0]
    assert listed["Image"].startswith("sha256:")  # the engine lists the ID: the reference needs an inspect

    fleet = load_fleet(fresh_sandbox.inventory_path, host)
    snapshot = collect(fleet.hosts[0])
    fact = next(c for c in snapshot.containers if c.id == container.id)
    assert fact.image_ref == "acgs-test/moved:1"
    assert fact.image_id == first.id
    assert fact.state == "created"
    plain = next(c for c in snapshot.containers if c.id != container.id)
    assert plain.image_ref and not plain.image_ref.startswith("sha256:")
