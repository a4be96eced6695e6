"""The sandbox's real registry: started with the fleet, named in the policy, optional, ended by PID on down."""

from __future__ import annotations

import http.client
import zlib
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from test_sandbox import _cgroup_parents, _leftovers

from acgs_remediate.sandbox import Sandbox

pytestmark = pytest.mark.integration


@pytest.fixture
def scratch_dir(request: pytest.FixtureRequest, engines_available: None) -> Iterator[Path]:
    path = Path(f"/var/lib/acgs-t{zlib.crc32(request.node.name.encode()) % 1000:03d}")
    Sandbox(path).down()
    yield path
    Sandbox(path).down()


def _answers(address: str) -> bool:
    host, _, port = address.rpartition(":")
    conn = http.client.HTTPConnection(host, int(port), timeout=3)
    try:
        conn.request("GET", "/v2/")
        return conn.getresponse().status == 200
    except OSError:
        return False
    finally:
        conn.close()


def _policy(sb: Sandbox) -> dict:
    return yaml.safe_load((sb.directory / "group_vars" / "all.yml").read_text())["acgs_policy"]


def test_registry_runs_with_the_fleet_and_goes_with_it(scratch_dir: Path) -> None:
    sb = Sandbox(scratch_dir)
    st = sb.up(1, scenario=None)
    assert st.up and st.registry and st.registry.startswith("127.") and st.registry_running
    assert _answers(st.registry)
    assert _policy(sb)["registry"] == f"{st.registry}/acgs"
    # Stopped (a fault test), status says the sandbox is not up; up restarts only the registry.
    sb.stop_registry()
    assert not _answers(st.registry) and not sb.status().up
    pids = [h.pid for h in sb.status().hosts]
    again = sb.up(1, scenario=None)
    assert again.up and _answers(st.registry) and [h.pid for h in again.hosts] == pids
    sb.down()
    assert not _answers(st.registry)
    assert _leftovers(scratch_dir, _cgroup_parents(sb, 1)) == []


def test_no_registry_ships_engine_to_engine(scratch_dir: Path) -> None:
    sb = Sandbox(scratch_dir)
    st = sb.up(1, scenario=None, registry=False)
    assert st.up and st.registry is None
    assert "registry" not in _policy(sb)
    # Asking for a registry now replaces the sandbox with one that has it.
    with_registry = sb.up(1, scenario=None)
    assert with_registry.registry and _answers(with_registry.registry)
    sb.down()
    assert _leftovers(scratch_dir, _cgroup_parents(sb, 1)) == []
