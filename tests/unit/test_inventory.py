"""Inventories are read with ansible's own loader; bad ones fail with one clear line."""

from __future__ import annotations

from pathlib import Path

import pytest

from acgs_remediate.errors import UsageError
from acgs_remediate.inventory import load_fleet

REPO = Path(__file__).resolve().parents[2]


def test_example_inventory_groups_and_endpoints():
    fleet = load_fleet(REPO / "inventory", "prod")
    names = [h.name for h in fleet.hosts]
    assert names == ["docker-prod-01", "docker-prod-02", "docker-prod-03"]
    tls_host = fleet.host("docker-prod-03")
    assert tls_host.docker_host.startswith("tcp://") and tls_host.tls and tls_host.validate_certs
    assert fleet.host("docker-prod-01").docker_host.startswith("ssh://")
    # group_vars/prod.yml applies to prod hosts only
    assert tls_host.timeout == 300


def test_example_inventory_carries_the_report_policy():
    fleet = load_fleet(REPO / "inventory", "staging")
    policy = fleet.policy(fleet.hosts[0])
    refs = [o.ref for o in policy.oversized_images]
    assert "rocm/pytorch:latest" in refs and len(refs) == 6
    assert {s.name for s in policy.services} == {
        "gs",
        "alembic-runner",
        "fv",
        "ac",
        "pgc",
        "integrity",
        "auth",
    }


def test_ansible_patterns_work_like_limit():
    fleet = load_fleet(REPO / "inventory", "all:!staging")
    assert len(fleet.hosts) == 3
    fleet = load_fleet(REPO / "inventory", "prod[0:1]")
    assert [h.name for h in fleet.hosts] == ["docker-prod-01", "docker-prod-02"]


def test_unknown_pattern_names_the_groups():
    with pytest.raises(UsageError) as exc:
        load_fleet(REPO / "inventory", "production")
    assert "matches no host" in exc.value.message
    assert "prod" in (exc.value.hint or "")


def test_missing_inventory_file(tmp_path):
    with pytest.raises(UsageError, match="does not exist"):
        load_fleet(tmp_path / "nope.yml")


def test_malformed_yaml_points_at_the_line(tmp_path):
    bad = tmp_path / "hosts.yml"
    bad.write_text('all:\n  hosts:\n    a: {docker_host: "unix:///x"\n  bad: [\n')
    with pytest.raises(UsageError) as exc:
        load_fleet(bad)
    assert f"{bad}:4" in exc.value.message


def test_bad_docker_host_is_rejected(tmp_path):
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    a:\n      docker_host: 'foo://x'\n")
    with pytest.raises(UsageError, match="is not a Docker endpoint"):
        load_fleet(inv)


def test_policy_error_names_the_group_vars_file(tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text("acgs_policy:\n  size_cap: lots\n")
    inv = tmp_path / "hosts.yml"
    inv.write_text("all:\n  hosts:\n    a: {docker_host: 'unix:///run/x.sock'}\n")
    fleet = load_fleet(inv)
    with pytest.raises(UsageError) as exc:
        fleet.policy(fleet.hosts[0])
    assert str(tmp_path / "group_vars" / "all.yml") in exc.value.message
    assert "acgs_policy.size_cap" in exc.value.message


def test_no_inventory_anywhere_is_a_usage_error(tmp_path, monkeypatch):
    monkeypatch.delenv("ACGS_REMEDIATE_INVENTORY", raising=False)
    monkeypatch.setenv("ACGS_SANDBOX_DIR", str(tmp_path / "no-sandbox"))
    with pytest.raises(UsageError, match="no inventory given"):
        load_fleet(None)


_GROUPS_NO_HOSTS = "all:\n  children:\n    prod: {}\n    web:\n      hosts: {}\n"
_POLICY = "acgs_policy:\n  size_cap: 300MB\n"


@pytest.mark.parametrize(
    ("layout", "says"),
    [
        # The case of the report (issue 9 #6): a directory holding only group_vars/.
        ({"group_vars/all.yml": _POLICY}, "it holds only group_vars/ (variables)"),
        ({"group_vars/all.yml": _POLICY, "host_vars/a.yml": "x: 1\n"}, "only group_vars/ and host_vars/"),
        ({}, "it holds no inventory file"),
        ({"README.md": "hosts are elsewhere\n"}, "no inventory file; ansible ignores README.md"),
        ({"group_vars/all.yml": _POLICY, "hosts.yml": ""}, "hosts.yml is empty"),
        ({"hosts.yml": "# hosts go here\n\n# later\n"}, "hosts.yml holds only comments"),
        ({"hosts.yml": _GROUPS_NO_HOSTS}, "groups (prod, web) but no host in any"),
        ({"hosts.ini": "[prod]\n\n[web:children]\nprod\n"}, "groups (prod, web) but no host in any"),
    ],
    ids=["group_vars-only", "vars-only", "empty-dir", "ignored-files", "empty-file", "comments", "yaml-groups", "ini"],
)
def test_a_directory_without_hosts_says_so(tmp_path, layout, says):
    for name, text in layout.items():
        (tmp_path / name).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / name).write_text(text)
    with pytest.raises(UsageError) as exc:
        load_fleet(tmp_path)
    assert exc.value.message.startswith(("inventory directory ", f"inventory {tmp_path} "))
    assert "defines no hosts" in exc.value.message and says in exc.value.message
    assert "syntax" not in exc.value.message + (exc.value.hint or "") and "plugin" not in exc.value.message
    assert "inventory file" in (exc.value.hint or "") and "\n" not in exc.value.message


@pytest.mark.parametrize(
    ("text", "says"),
    [("", "the file is empty"), ("# nothing yet\n", "the file holds only comments"), (_GROUPS_NO_HOSTS, "groups")],
)
def test_a_file_without_hosts_says_so(tmp_path, text, says):
    inv = tmp_path / "hosts.yml"
    inv.write_text(text)
    with pytest.raises(UsageError) as exc:
        load_fleet(inv)
    assert exc.value.message.startswith(f"inventory {inv} defines no hosts: ") and says in exc.value.message


def test_passing_the_group_vars_directory_points_at_its_parent(tmp_path):
    (tmp_path / "group_vars").mkdir()
    (tmp_path / "group_vars" / "all.yml").write_text(_POLICY)
    with pytest.raises(UsageError) as exc:
        load_fleet(tmp_path / "group_vars")
    assert "holds variables, not hosts" in exc.value.message and f"-i {tmp_path}" in (exc.value.hint or "")


@pytest.mark.parametrize(
    ("pattern", "says"),
    [
        ("", "is empty"),  # ansible reads these as every host
        (" , ", "is empty"),
        ("[", "is not well formed"),
        ("~prod[", "is not well formed: ansible would read it as '~prod'"),  # the regex would match every prod host
        ("~[(", "ansible would read it as '~,('"),  # a lone ~ is a regex matching every host
        ("prod:~", "has an empty term '~'"),
        ("~(", "is not a regular expression"),
        ("prod,typo", "'typo' matches no host"),  # ansible warns and goes on with prod alone
    ],
)
def test_host_patterns_that_would_widen_or_narrow_the_run_are_refused(pattern, says):
    with pytest.raises(UsageError) as exc:
        load_fleet(REPO / "inventory", pattern)
    assert says in exc.value.message and repr(pattern) in exc.value.message


@pytest.mark.parametrize(
    ("pattern", "hosts"),
    [
        ("prod:!nosuchhost", 3),  # an exclusion that matches nothing changes nothing
        ("~docker-prod-0[12]", 2),
        ("prod[-1]", 1),
        ("prod,staging", 4),
    ],
)
def test_well_formed_host_patterns_still_select_as_ansible_does(pattern, hosts):
    assert len(load_fleet(REPO / "inventory", pattern).hosts) == hosts
