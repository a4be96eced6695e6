"""The inventory cache spares importing ansible, and never returns anything but what ansible would load.

Most checks run load_fleet in a fresh interpreter: that is how the CLI uses it (one load per process), it is
the only way to see whether ansible was imported, and only a load that imports ansible itself may fill the
cache (ansible reads its configuration once per process).
"""

from __future__ import annotations

import dataclasses
import datetime
import json
import os
import stat
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from acgs_remediate import inventory as inv_mod
from acgs_remediate.errors import UsageError
from acgs_remediate.inventory import load_fleet, resolve_inventory

REPO = Path(__file__).resolve().parents[2]
CACHE_ENV = "ACGS_REMEDIATE_CACHE_DIR"

# Prints, as JSON, what load_fleet returned for each pattern (or the UsageError), and whether ansible got imported.
_LOADER = """
import json, sys
from acgs_remediate.errors import UsageError
from acgs_remediate.inventory import load_fleet
loads = []
for pattern in sys.argv[2:]:
    try:
        f = load_fleet(sys.argv[1], pattern)
    except UsageError as exc:
        loads.append({"error": exc.message, "hint": exc.hint})
        continue
    loads.append({
        "source": str(f.source),
        "hosts": [[h.name, list(h.groups), h.docker_host, h.tls, h.timeout] for h in f.hosts],
        "vars": {h.name: h.vars for h in f.hosts},
        "policy_sources": f._policy_sources,
    })
print(json.dumps({"loads": loads, "ansible": "ansible" in sys.modules}, default=repr))
"""

# `ansible-vault encrypt_string --name secret hunter2` (password "pw"): a realistic inline vaulted value.
_VAULTED = """secret: !vault |
          $ANSIBLE_VAULT;1.1;AES256
          61333237326431353366323339633039633538353165663537616564383637666163346461656532
          3130623237666633303738663838343463363662636439370a623565336662643463613238343761
          38663539386438613539636633343035613438393062613366666632306630323539313561396337
          3266336238386261340a353432613039316539653964393263366134616531633934356330313232
          6131
"""


@pytest.fixture(autouse=True)
def _isolated(tmp_path, monkeypatch):
    """A private cache dir, home and working directory, and no inherited ANSIBLE_ settings."""
    monkeypatch.setenv(CACHE_ENV, str(tmp_path / "cache"))
    home = tmp_path / "home"
    home.mkdir()
    monkeypatch.setenv("HOME", str(home))
    monkeypatch.delenv("XDG_CACHE_HOME", raising=False)
    work = tmp_path / "cwd"
    work.mkdir()
    monkeypatch.chdir(work)
    for name in list(os.environ):
        if name.startswith("ANSIBLE_"):
            monkeypatch.delenv(name)


@pytest.fixture
def inv(tmp_path) -> Path:
    """A small YAML inventory with group_vars: hosts a (in group web) and b."""
    root = tmp_path / "inv"
    (root / "group_vars").mkdir(parents=True)
    (root / "hosts.yml").write_text(
        "all:\n"
        "  hosts:\n"
        "    a: {docker_host: 'unix:///run/a.sock', d: {y: 2}}\n"
        "    b: {docker_host: 'unix:///run/b.sock'}\n"
        "  children:\n"
        "    web:\n"
        "      hosts:\n"
        "        a: {}\n"
    )
    (root / "group_vars" / "all.yml").write_text("docker_timeout: 30\nd: {x: 1}\n")
    (root / "group_vars" / "web.yml").write_text("tier: front\n")
    return root / "hosts.yml"


def cache_entries(tmp_path: Path) -> list[Path]:
    return sorted((tmp_path / "cache" / "inventory").glob("*.json"))


def run_load(source: Path, *patterns: str, env: dict[str, str] | None = None) -> dict[str, Any]:
    """Run load_fleet in a fresh interpreter with the test's environment (plus ``env``)."""
    full = {**os.environ, "PYTHONPATH": str(REPO), **(env or {})}
    done = subprocess.run(
        [sys.executable, "-c", _LOADER, str(source), *(patterns or ("all",))],
        env=full,
        cwd=os.getcwd(),
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(done.stdout)


def host_vars(result: dict[str, Any], host: str, index: int = 0) -> dict[str, Any]:
    return result["loads"][index]["vars"][host]


def type_shape(value: Any) -> Any:
    """The value with every leaf replaced by its exact type: equal shapes mean no type changed anywhere."""
    if isinstance(value, dict):
        return {(type(k), k): type_shape(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [type(value), *(type_shape(v) for v in value)]
    return type(value)


def test_second_load_hits_the_cache_without_importing_ansible(inv, tmp_path):
    cold = run_load(inv, "all")
    assert cold["ansible"] is True
    entries = cache_entries(tmp_path)
    assert len(entries) == 1
    assert stat.S_IMODE(entries[0].stat().st_mode) == 0o600
    assert stat.S_IMODE(entries[0].parent.stat().st_mode) == 0o700

    warm = run_load(inv, "all")
    assert warm["ansible"] is False
    assert warm["loads"] == cold["loads"]
    assert host_vars(warm, "a")["tier"] == "front" and host_vars(warm, "b")["docker_timeout"] == 30


def test_example_inventory_cold_and_warm_agree(tmp_path):
    source = REPO / "inventory" / "hosts.yml"
    cold = run_load(source, "prod:!docker-prod-02")
    warm = run_load(source, "prod:!docker-prod-02")
    assert (cold["ansible"], warm["ansible"]) == (True, False)
    assert warm["loads"] == cold["loads"]
    assert [h[0] for h in warm["loads"][0]["hosts"]] == ["docker-prod-01", "docker-prod-03"]


@pytest.mark.parametrize("pattern", ["all", "prod", "staging", "prod:!docker-prod-02", "prod[0:1]", "all:!staging"])
def test_cached_fleet_is_identical_to_ansibles(pattern, monkeypatch):
    # What load_fleet sets before it computes the key (it is part of the key, as every ANSIBLE_ variable is).
    monkeypatch.setenv("ANSIBLE_INVENTORY_UNPARSED_FAILED", "True")
    monkeypatch.setenv("ANSIBLE_INVENTORY_ANY_UNPARSED_IS_FAILED", "True")
    source = resolve_inventory(REPO / "inventory" / "hosts.yml")
    fresh, plain = inv_mod._load_with_ansible(source, pattern)
    assert plain
    entry = inv_mod._InventoryCache.for_inventory(source, pattern)
    assert entry is not None
    entry.save(fresh)
    assert entry.path.is_file()

    def no_ansible(*args: object) -> None:
        raise AssertionError("the cache was not used")

    monkeypatch.setattr(inv_mod, "_load_with_ansible", no_ansible)
    cached = load_fleet(REPO / "inventory" / "hosts.yml", pattern)
    assert cached.source == fresh.source
    assert [h.name for h in cached.hosts] == [h.name for h in fresh.hosts]
    # asdict covers every Host field, vars included (Host equality leaves vars out).
    assert [dataclasses.asdict(h) for h in cached.hosts] == [dataclasses.asdict(h) for h in fresh.hosts]
    assert [type_shape(dataclasses.asdict(h)) for h in cached.hosts] == [
        type_shape(dataclasses.asdict(h)) for h in fresh.hosts
    ]
    assert cached._policy_sources == fresh._policy_sources
    assert [cached.policy(h) for h in cached.hosts] == [fresh.policy(h) for h in fresh.hosts]


def _edit_group_var(inv: Path, env: dict[str, str]) -> None:
    (inv.parent / "group_vars" / "all.yml").write_text("docker_timeout: 45\nd: {x: 1}\n")


def _add_host_vars(inv: Path, env: dict[str, str]) -> None:
    (inv.parent / "host_vars").mkdir()
    (inv.parent / "host_vars" / "a.yml").write_text("tier: back\n")


def _delete_group_vars(inv: Path, env: dict[str, str]) -> None:
    (inv.parent / "group_vars" / "web.yml").unlink()


def _merge_hashes(inv: Path, env: dict[str, str]) -> None:
    env["ANSIBLE_HASH_BEHAVIOUR"] = "merge"


@pytest.mark.parametrize(
    ("change", "key", "before", "after"),
    [
        (_edit_group_var, "docker_timeout", 30, 45),
        (_add_host_vars, "tier", "front", "back"),
        (_delete_group_vars, "tier", "front", None),
        (_merge_hashes, "d", {"y": 2}, {"x": 1, "y": 2}),
    ],
    ids=["edit-group-vars", "add-host-vars", "delete-group-vars", "ansible-env"],
)
def test_a_changed_input_gives_the_fresh_result(inv, tmp_path, change, key, before, after):
    env: dict[str, str] = {}
    warm = run_load(inv, "all")
    assert host_vars(warm, "a").get(key) == before
    assert len(cache_entries(tmp_path)) == 1

    change(inv, env)
    fresh = run_load(inv, "all", env=env)
    assert fresh["ansible"] is True
    assert host_vars(fresh, "a").get(key) == after
    assert len(cache_entries(tmp_path)) == 2


def test_another_pattern_is_another_entry(inv, tmp_path):
    run_load(inv, "all")
    web = run_load(inv, "web")
    assert web["ansible"] is True
    assert [h[0] for h in web["loads"][0]["hosts"]] == ["a"]


def _plain(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    return inv


def _executable_script(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    script = tmp_path / "dynamic.sh"
    script.write_text(
        "#!/bin/sh\n"
        'echo \'{"all": {"hosts": ["a"]}, "_meta": {"hostvars": {"a": {"docker_host": "unix:///run/a.sock"}}}}\'\n'
    )
    script.chmod(0o755)
    return script


def _plugin_config(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    config = tmp_path / "generated.yml"
    config.write_text("plugin: generator\nhosts:\n  name: '{{ op }}-host'\nlayers:\n  op: [build]\n")
    return config


def _vaulted_value(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    (inv.parent / "group_vars" / "web.yml").write_text(_VAULTED)
    return inv


def _cache_off(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    env[CACHE_ENV] = "off"
    return inv


def _vars_plugins_enabled(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    env["ANSIBLE_VARS_ENABLED"] = "host_group_vars"
    return inv


def _config_enables_plugins(tmp_path: Path, inv: Path, env: dict[str, str]) -> Path:
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\nvars_plugins_enabled = host_group_vars\n")
    env["ANSIBLE_CONFIG"] = str(config)
    return inv


@pytest.mark.parametrize(
    ("setup", "cached"),
    [
        (_plain, True),  # the control: the same run does write an entry when nothing forbids it
        (_executable_script, False),
        (_plugin_config, False),
        (_vaulted_value, False),
        (_cache_off, False),
        (_vars_plugins_enabled, False),
        (_config_enables_plugins, False),
    ],
    ids=["control", "executable", "plugin", "vault", "off", "vars-enabled-env", "config-plugins"],
)
def test_what_must_never_be_cached(inv, tmp_path, setup, cached):
    env: dict[str, str] = {}
    source = setup(tmp_path, inv, env)
    result = run_load(source, "all", env=env)
    assert "error" not in result["loads"][0]
    assert result["ansible"] is True
    # Anywhere at all (the cache dir, the default one under $HOME, a directory literally named "off"...).
    written = [p for p in tmp_path.rglob("*.json") if len(p.stem) == 64 and p.parent.name == "inventory"]
    assert bool(written) is cached


@pytest.mark.parametrize(
    "setup", [_executable_script, _plugin_config, _vaulted_value, _vars_plugins_enabled, _config_enables_plugins]
)
def test_uncacheable_inputs_have_no_key(inv, tmp_path, monkeypatch, setup):
    assert inv_mod._cache_key(resolve_inventory(inv), "all") is not None
    env: dict[str, str] = {}
    source = resolve_inventory(setup(tmp_path, inv, env))
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert inv_mod._cache_key(source, "all") is None


def test_commented_config_settings_do_not_disable_the_cache(inv, tmp_path, monkeypatch):
    config = tmp_path / "ansible.cfg"
    config.write_text("[defaults]\n;vars_plugins_enabled = host_group_vars\n# enable_plugins = aws_ec2\n")
    monkeypatch.setenv("ANSIBLE_CONFIG", str(config))
    assert inv_mod._cache_key(resolve_inventory(inv), "all") is not None


def test_config_content_is_part_of_the_key(inv, tmp_path, monkeypatch):
    config = tmp_path / "ansible.cfg"
    monkeypatch.setenv("ANSIBLE_CONFIG", str(config))
    source = resolve_inventory(inv)
    missing = inv_mod._cache_key(source, "all")
    config.write_text("[defaults]\nhash_behaviour = merge\n")
    merged = inv_mod._cache_key(source, "all")
    config.write_text("[defaults]\nhash_behaviour = replace\n")
    replaced = inv_mod._cache_key(source, "all")
    assert len({missing, merged, replaced}) == 3


def test_cwd_group_vars_are_part_of_the_key(inv):
    # Without a playbook, ansible also reads group_vars/ next to the current directory.
    source = resolve_inventory(inv)
    before = inv_mod._cache_key(source, "all")
    Path("group_vars").mkdir()
    Path("group_vars", "all.yml").write_text("docker_timeout: 99\n")
    assert inv_mod._cache_key(source, "all") != before


@pytest.mark.parametrize("garbage", [b"{not json", b"", b'{"format": 1, "key": "other", "hosts": []}'])
def test_a_corrupt_entry_is_ignored_and_rewritten(inv, tmp_path, garbage):
    import ansible.inventory.manager  # noqa: F401  (so that the in-process load below only reads the cache)

    warm = run_load(inv, "all")
    (entry,) = cache_entries(tmp_path)
    entry.write_bytes(garbage)

    fleet = load_fleet(inv)
    assert [h.name for h in fleet.hosts] == ["a", "b"] and fleet.host("a").vars["tier"] == "front"
    again = run_load(inv, "all")
    assert again["ansible"] is True and again["loads"] == warm["loads"]
    assert json.loads(entry.read_text())["key"] == entry.stem
    assert run_load(inv, "all")["ansible"] is False


def test_an_entry_others_could_write_is_not_trusted(inv, tmp_path):
    run_load(inv, "all")
    (entry,) = cache_entries(tmp_path)
    entry.chmod(0o666)
    assert run_load(inv, "all")["ansible"] is True


def test_an_unwritable_cache_does_not_break_the_load(inv, tmp_path, monkeypatch):
    blocker = tmp_path / "not-a-dir"
    blocker.write_text("")
    monkeypatch.setenv(CACHE_ENV, str(blocker))
    result = run_load(inv, "all")
    assert [h[0] for h in result["loads"][0]["hosts"]] == ["a", "b"]
    assert blocker.read_text() == ""


def test_a_process_that_already_imported_ansible_does_not_fill_the_cache(inv, tmp_path):
    import ansible.inventory.manager  # noqa: F401  (as any earlier load in this process would have)

    assert [h.name for h in load_fleet(inv).hosts] == ["a", "b"]
    assert cache_entries(tmp_path) == []


@pytest.mark.parametrize(
    ("content", "pattern", "message"),
    [
        ('all:\n  hosts:\n    a: {docker_host: "unix:///x"\n  bad: [\n', "all", "cannot read inventory"),
        ("all:\n  vars:\n    x: 1\n", "all", "defines no hosts"),
        ("all:\n  hosts:\n    a: {docker_host: 'unix:///run/a.sock'}\n", "nope", "matches no host"),
        ("all:\n  hosts:\n    a: {docker_host: 'foo://x'}\n", "all", "is not a Docker endpoint"),
    ],
    ids=["malformed", "no-hosts", "unmatched", "bad-endpoint"],
)
def test_bad_input_raises_the_same_error_every_time(tmp_path, content, pattern, message):
    source = tmp_path / "bad.yml"
    source.write_text(content)
    result = run_load(source, pattern, pattern)
    first, second = result["loads"]
    assert message in first["error"]
    assert second == first
    assert not (tmp_path / "cache").exists()
    with pytest.raises(UsageError) as exc:
        load_fleet(source, pattern)
    assert exc.value.message == first["error"]


def test_values_json_would_change_are_not_plain():
    from ansible.parsing.dataloader import DataLoader
    from ansible.utils.unsafe_proxy import AnsibleUnsafeText

    not_json = inv_mod._NOT_JSON
    tagged = DataLoader().load('when: 2024-01-01\ntext: !unsafe "{{ x }}"\nn: 3\n')
    assert inv_mod._plain_json({"when": tagged["when"]}) is not_json  # ansible's own date type
    plain_tagged = inv_mod._plain_json({"text": tagged["text"], "n": tagged["n"]})
    assert plain_tagged == {"text": "{{ x }}", "n": 3}
    assert type(plain_tagged["text"]) is str and type(plain_tagged["n"]) is int
    assert inv_mod._plain_json({"when": datetime.date(2024, 1, 1)}) is not_json
    assert inv_mod._plain_json({"pair": (1, 2)}) is not_json
    assert inv_mod._plain_json({"ratio": float("nan")}) is not_json
    assert inv_mod._plain_json({1: "one"}) is not_json
    assert inv_mod._plain_json({"raw": b"x"}) is not_json
    plain = inv_mod._plain_json({"name": AnsibleUnsafeText("x"), "n": [1, 2.5, True, None]})
    assert plain == {"name": "x", "n": [1, 2.5, True, None]}
    assert type(plain["name"]) is str and type(plain["n"][2]) is bool


def test_a_yaml_date_is_not_cached(inv, tmp_path):
    (inv.parent / "group_vars" / "all.yml").write_text("docker_timeout: 30\nbuilt: 2024-01-01\n")
    result = run_load(inv, "all")
    assert "error" not in result["loads"][0]
    assert cache_entries(tmp_path) == []


def test_only_the_newest_entries_are_kept(tmp_path):
    directory = tmp_path / "entries"
    directory.mkdir()
    for i in range(70):
        path = directory / f"{i:03d}.json"
        path.write_text("{}")
        os.utime(path, (1_000_000 + i, 1_000_000 + i))
    inv_mod._evict(directory)
    kept = sorted(p.name for p in directory.iterdir())
    assert kept == [f"{i:03d}.json" for i in range(6, 70)]


def test_an_inventory_too_big_to_hash_on_every_start_is_not_cached(inv, monkeypatch):
    source = resolve_inventory(inv)
    size = sum(p.stat().st_size for p in inv.parent.rglob("*") if p.is_file())
    monkeypatch.setattr(inv_mod, "_CACHE_MAX_BYTES", size)
    assert inv_mod._cache_key(source, "all") is not None
    monkeypatch.setattr(inv_mod, "_CACHE_MAX_BYTES", size - 1)
    assert inv_mod._cache_key(source, "all") is None
