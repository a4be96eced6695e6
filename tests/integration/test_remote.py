"""ssh:// and tcp:// with TLS against real engines: the same answers as unix://, and clear refusals.

The fleet (``remote_sandbox``, its own session fixture so the rest of the suite keeps unix://) exposes each
engine three ways: a unix socket, ``ssh://sb-hNN`` through a real sshd on a 127.x address (port 2222, one
restricted key per host whose forced command is ``docker -H unix://... system dial-stdio``, an ssh config
with one alias per host) and ``tcp://127.x:2376`` with ``--tlsverify`` and a CA made at ``sandbox up``.
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path
from typing import Any

import docker
import pytest
import yaml
from conftest import TEST_HOSTS, _log, shared_sandbox_dir

from acgs_remediate.builds import BuildSource, build
from acgs_remediate.engine import Endpoint, local_socket
from acgs_remediate.facts import engine_api
from acgs_remediate.gates import image_paths
from acgs_remediate.inventory import load_fleet
from acgs_remediate.rollout import compose_binary, compose_env
from acgs_remediate.sandbox import Sandbox
from acgs_remediate.sandbox_transports import SSH_PORT, engine_address, make_ca, sshd_address

pytestmark = pytest.mark.integration

CLI = str(Path(sys.executable).parent / "acgs-remediate")
DB_URL = "postgresql://acgs:s3cret@127.0.0.1:5432/acgs"


def _inventory(sb: Sandbox, transport: str) -> str:
    return str(sb.directory / f"inventory-{transport}.yml")


def _env(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("DATABASE_URL", "ACGS_DATABASE_URL")}
    env.update({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}", "NO_COLOR": "1"})
    env.update({"COLUMNS": "200", **extra})
    return env


def run_cli(*args: str, timeout: float = 300) -> subprocess.CompletedProcess[str]:
    """Run the real CLI (stdin closed, not a terminal)."""
    return subprocess.run(
        [CLI, *args],
        capture_output=True,
        text=True,
        env=_env(DATABASE_URL=DB_URL),
        stdin=subprocess.DEVNULL,
        timeout=timeout,
        check=False,
    )


def _json(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.stdout.strip(), proc.stderr
    return json.loads(proc.stdout)


_LOCAL_ONLY = {"collected_at", "fs_total_bytes", "fs_used_bytes", "fs_free_bytes", "fs_total", "fs_used", "fs_free"}


def _comparable(value: Any) -> Any:
    """Drop what only differs by when and from where it was read (statfs exists only for a local socket)."""
    if isinstance(value, dict):
        return {k: _comparable(v) for k, v in value.items() if k not in _LOCAL_ONLY}
    if isinstance(value, list):
        return [_comparable(v) for v in value]
    return value


def _analyze(sb: Sandbox, transport: str, state: Path) -> dict[str, Any]:
    proc = run_cli("analyze", "-i", _inventory(sb, transport), "--state", str(state), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    doc = _json(proc)
    assert doc["summary"]["unreachable"] == 0, doc
    # The baseline part names when each run's own state store recorded it: the findings are what must agree.
    return {
        h["analysis"]["host"]: _comparable({"analysis": h["analysis"], "status": h["status"]}) for h in doc["hosts"]
    }


def _without_fresh_window(sb: Sandbox, directory: Path) -> None:
    """Copy the fleet's inventories into ``directory`` with both minimum ages at 0s (everything else as written)."""
    (directory / "group_vars").mkdir(parents=True)
    text = (sb.directory / "group_vars" / "all.yml").read_text()
    for key in ("fresh_min_age", "dangling_min_age"):
        assert f"  {key}: 60s\n" in text, key
        text = text.replace(f"  {key}: 60s\n", f"  {key}: 0s\n")
    (directory / "group_vars" / "all.yml").write_text(text)
    for transport in ("unix", "ssh", "tls"):
        name = f"inventory-{transport}.yml"
        (directory / name).write_text((sb.directory / name).read_text())


def test_analyze_over_ssh_and_tls_equals_unix(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = remote_sandbox
    unix = _analyze(sb, "unix", tmp_path / "unix.db")
    # Each host's own engine answers (the hosts differ: engine IDs, and a per-host scenario variant).
    assert len({json.dumps(h, sort_keys=True) for h in unix.values()}) == TEST_HOSTS
    # Over ssh/TLS this machine cannot read the engine's image store, so an image with no LastTagTime and no
    # recorded event has no known arrival: it is kept as fresh (never guessed old; issue 9 item 2) and said so.
    remote = _analyze(sb, "ssh", tmp_path / "ssh-first.db")
    reasons = {r for h in remote.values() for o in h["analysis"]["oversized"] for r in o["kept_because"]}
    assert any("arrival unknown" in r for r in reasons), reasons
    # With the minimum ages out of the way, every finding over ssh and TLS equals what unix:// found.
    plain = tmp_path / "nofresh"
    _without_fresh_window(sb, plain)
    sb_plain = type("Inventories", (), {"directory": plain})()
    unix = _analyze(sb_plain, "unix", tmp_path / "unix-nofresh.db")  # type: ignore[arg-type]
    for transport in ("ssh", "tls"):
        assert _analyze(sb_plain, transport, tmp_path / f"{transport}.db") == unix, transport  # type: ignore[arg-type]


def _phase1(sb: Sandbox, transport: str, state: Path, plan: Path) -> dict[str, dict[str, Any]]:
    args = ["phase1", "-i", _inventory(sb, transport), "--state", str(state), "--plan", str(plan), "--yes"]
    proc = run_cli(*args, "--format", "json")
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {h["host"]: h for h in _json(proc)["hosts"]}


def _verify(sb: Sandbox, transport: str, state: Path) -> dict[str, Any]:
    proc = run_cli("verify", "-i", _inventory(sb, transport), "--state", str(state), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    doc = _json(proc)
    return {host: {c["id"]: (c["status"], c.get("value")) for c in criteria} for host, criteria in doc["hosts"].items()}


def test_phase1_and_verify_over_ssh_and_tls_do_what_unix_does(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = remote_sandbox
    try:
        for transport in ("ssh", "tls"):
            # The plan made over the unix sockets, saved, and applied over this transport: exactly it must
            # happen, each host's removals on its own engine (a saved plan fixes the set: no clock involved).
            plan_file = tmp_path / f"plan-{transport}.json"
            proc = run_cli("plan", "phase1", "-i", _inventory(sb, "unix"), "-o", str(plan_file), "--format", "json")
            assert proc.returncode == 0, proc.stderr
            plans = _json(proc)["plans"]
            planned = {
                p["host"]: sorted(a["image_id"] for a in p["actions"] if a["kind"] == "remove_image") for p in plans
            }
            assert all(planned.values())
            state = tmp_path / f"{transport}.db"
            run_cli("analyze", "-i", _inventory(sb, transport), "--state", str(state), "--format", "json")
            ran = _phase1(sb, transport, state, plan_file)
            assert sorted(ran) == sorted(planned)
            for host, ids in planned.items():
                assert ran[host]["status"] == "succeeded", (transport, ran[host])
                assert sorted(r["id"] for r in ran[host]["removed_images"]) == ids, (transport, host)
                assert ran[host]["measured_freed"] == ran[host]["predicted_bytes"], (transport, host)
            # verify over this transport and over the unix sockets agree, host by host and criterion by criterion.
            assert _verify(sb, transport, state) == _verify(sb, "unix", state), transport
            if transport == "ssh":
                sb.reseed(log=_log)
    finally:
        sb.reseed(log=_log)


def _write_inventory(path: Path, hosts: dict[str, dict[str, Any]]) -> Path:
    path.write_text(yaml.safe_dump({"all": {"hosts": hosts}}))
    return path


def _alias_config(sb: Sandbox, tmp_path: Path, alias: str, port: int, key_of: str = "sb-h01") -> Path:
    """Write an ssh config as an operator would: an alias naming address, Port, User, key, known_hosts."""
    ssh = sb.directory / "ssh"
    config = tmp_path / "ssh_config"
    config.write_text(
        f"Host {alias}\n"
        f"    HostName {sshd_address(sb.directory)}\n"
        f"    Port {port}\n"
        "    User root\n"
        f"    IdentityFile {ssh / f'{key_of}.key'}\n"
        "    IdentitiesOnly yes\n"
        f"    UserKnownHostsFile {ssh / 'known_hosts'}\n"
    )
    return config


def _unreachable_lines(proc: subprocess.CompletedProcess[str]) -> list[str]:
    return [line for line in (proc.stderr + proc.stdout).splitlines() if line.startswith("unreachable: ")]


def test_an_ssh_alias_with_a_non_default_port_is_honoured(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = remote_sandbox
    config = _alias_config(sb, tmp_path, "prod-docker-1", SSH_PORT)
    inv = _write_inventory(
        tmp_path / "inv.yml",
        {"prod-docker-1": {"docker_host": "ssh://prod-docker-1", "docker_ssh_config": str(config)}},
    )
    proc = run_cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"), "--format", "json")
    assert proc.returncode in (0, 1), proc.stderr
    doc = _json(proc)
    assert doc["summary"]["unreachable"] == 0
    # The alias led to the engine of the key's host (sb-h01), on port 2222 (not ssh's default 22).
    unix = _analyze(sb, "unix", tmp_path / "u.db")["sb-h01"]
    assert _comparable(doc["hosts"][0]["analysis"])["engine"] == unix["analysis"]["engine"]


def test_refused_and_failed_ssh_logins_are_one_clear_line_each(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = remote_sandbox
    refused = _alias_config(sb, tmp_path, "db-1", SSH_PORT + 1)  # nothing listens there
    (tmp_path / "k").mkdir()
    wrong_key = tmp_path / "k" / "id"
    subprocess.run(["ssh-keygen", "-q", "-t", "ed25519", "-N", "", "-f", str(wrong_key)], check=True)
    badkey = tmp_path / "badkey_config"
    badkey.write_text(
        refused.read_text()
        .replace(f"Port {SSH_PORT + 1}", f"Port {SSH_PORT}")
        .replace(str(sb.directory / "ssh" / "sb-h01.key"), str(wrong_key))
    )
    inv = _write_inventory(
        tmp_path / "inv.yml",
        {
            "db-1": {"docker_host": "ssh://db-1", "docker_ssh_config": str(refused)},
            "db-2": {"docker_host": "ssh://db-1", "docker_ssh_config": str(badkey)},
            "good": {"docker_host": "ssh://sb-h02", "docker_ssh_config": str(sb.directory / "ssh" / "config")},
        },
    )
    proc = run_cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"))
    assert proc.returncode == 3, proc.stderr  # partial: the good host was analysed
    lines = _unreachable_lines(proc)
    assert len(lines) == 2, proc.stderr
    refused_line = next(line for line in lines if "db-1:" in line)
    assert "Connection refused" in refused_line and f"port {SSH_PORT + 1}" in refused_line
    assert "check the host and port" in refused_line
    badkey_line = next(line for line in lines if "db-2:" in line)
    assert "Permission denied" in badkey_line and "key" in badkey_line
    # Nothing else from ssh, and no socket noise.
    output = proc.stderr + proc.stdout
    assert "Broken pipe" not in output and "Errno 32" not in output
    assert output.count("Connection refused") == 1 and output.count("Permission denied") == 1


def test_first_contact_with_a_silent_host_fails_within_its_connect_timeout(tmp_path: Path) -> None:
    # A listener that accepts and never answers, like a frozen engine: first contact must not wait for the
    # long per-call timeout (docker_timeout), only for docker_connect_timeout.
    listener = socket.create_server(("127.0.0.1", 0))
    port = listener.getsockname()[1]
    held: list[socket.socket] = []
    stop = threading.Event()

    def accept() -> None:
        listener.settimeout(0.2)
        while not stop.is_set():
            try:
                held.append(listener.accept()[0])
            except TimeoutError:
                continue

    thread = threading.Thread(target=accept, daemon=True)
    thread.start()
    try:
        inv = _write_inventory(
            tmp_path / "inv.yml",
            {"frozen": {"docker_host": f"tcp://127.0.0.1:{port}", "docker_timeout": 600, "docker_connect_timeout": 1}},
        )
        t0 = time.monotonic()
        proc = run_cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"), timeout=120)
        elapsed = time.monotonic() - t0
    finally:
        stop.set()
        thread.join()
        for s in held:
            s.close()
        listener.close()
    assert proc.returncode == 3, proc.stderr
    (line,) = _unreachable_lines(proc)
    assert "no answer within 1 s" in line and "docker_connect_timeout" in line
    assert elapsed < 60  # far below docker_timeout (600 s); the CLI's own start-up is most of it


def test_tls_with_a_wrong_ca_or_no_client_certificate_is_refused(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    sb = remote_sandbox
    tls = sb.directory / "tls"
    other_ca, _key = make_ca(tmp_path / "other", "other-ca")
    address = engine_address(sb.directory, 0)
    base = {"docker_host": f"tcp://{address}:2376", "docker_validate_certs": True}
    client = {"docker_client_cert": str(tls / "cert.pem"), "docker_client_key": str(tls / "key.pem")}
    inv = _write_inventory(
        tmp_path / "inv.yml",
        {
            "wrong-ca": {**base, "docker_ca_path": str(other_ca), **client},
            "no-client-cert": {**base, "docker_ca_path": str(tls / "ca.pem")},
            "right": {**base, "docker_ca_path": str(tls / "ca.pem"), **client},
        },
    )
    proc = run_cli("analyze", "-i", str(inv), "--state", str(tmp_path / "s.db"))
    assert proc.returncode == 3, proc.stderr  # the right one was analysed
    lines = _unreachable_lines(proc)
    assert len(lines) == 2, proc.stderr
    wrong = next(line for line in lines if "wrong-ca:" in line)
    assert "certificate is not trusted" in wrong and str(other_ca) in wrong and "docker_ca_path" in wrong
    missing = next(line for line in lines if "no-client-cert:" in line)
    assert "refused our client certificate" in missing and "docker_client_cert" in missing
    # A plain tcp:// client on the TLS port is told to turn TLS on.
    plain = _write_inventory(tmp_path / "plain.yml", {"plain": {"docker_host": f"tcp://{address}:2376"}})
    proc = run_cli("analyze", "-i", str(plain), "--state", str(tmp_path / "p.db"))
    (line,) = _unreachable_lines(proc)
    assert "speaks TLS" in line and "docker_tls" in line


def _processes_naming(text: str) -> list[str]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            try:
                with open(f"/proc/{entry}/cmdline", "rb") as f:
                    cmdline = f.read().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if text in cmdline:
                found.append(f"{entry}: {cmdline[:120]}")
    return found


def test_sandbox_down_ends_the_sshd_and_leaves_nothing(engines_available: None, tmp_path: Path) -> None:
    sb = Sandbox(Path(f"{shared_sandbox_dir()}d"))
    try:
        sb.up(1, None, log=_log, transport="ssh,tls")
        inventory = sb.directory / "inventory-ssh.yml"
        proc = run_cli("analyze", "-i", str(inventory), "--state", str(tmp_path / "s.db"), "--format", "json")
        assert proc.returncode in (0, 1) and _json(proc)["summary"]["unreachable"] == 0, proc.stderr
        assert _processes_naming(f"{sb.directory}/ssh/sshd_config"), "the sshd should run while the sandbox is up"
    finally:
        sb.down(log=_log)
    assert not sb.directory.exists()
    assert _processes_naming(str(sb.directory)) == []


def _readme_blocks() -> tuple[str, str]:
    """Return the README's ssh config block and the ssh inventory that follows it, verbatim."""
    readme = (Path(__file__).resolve().parents[2] / "README.md").read_text()
    section = readme[readme.index("### Reaching remote engines") :]
    config = section.split("With this in `~/.ssh/config`:", 1)[1].split("```", 2)[1]
    inventory = section.split("this inventory works as written", 1)[1].split("```yaml", 1)[1].split("```", 1)[0]
    return config.strip("\n") + "\n", inventory


def test_the_readme_ssh_inventory_works_as_written_with_its_ssh_config_alias(
    remote_sandbox: Sandbox, tmp_path: Path
) -> None:
    # The README's ~/.ssh/config and inventory, run literally: ssh reads ~/.ssh/config of the user's home
    # (from the password database), so the home is swapped inside a private mount namespace only (a copy
    # of /etc/passwd naming a temporary home, bind-mounted for this one command); nothing on the machine
    # changes. What the sandbox cannot offer is replaced: its sshd's address, and root for the user
    # `deploy` (its keys' forced commands only let root in). The key is put where the README says.
    sb = remote_sandbox
    config, inventory = _readme_blocks()
    assert "Host docker-prod-01" in config and "docker_host: ssh://docker-prod-01" in inventory
    assert "docker_ssh_config" not in inventory  # ~/.ssh/config decides, nothing else
    home = tmp_path / "home"
    (home / ".ssh").mkdir(parents=True, mode=0o700)
    config = config.replace("203.0.113.10", sshd_address(sb.directory)).replace("User deploy", "User root")
    (home / ".ssh" / "config").write_text(config)
    key = home / ".ssh" / "deploy_ed25519"
    key.write_bytes((sb.directory / "ssh" / "sb-h01.key").read_bytes())
    key.chmod(0o600)
    # "`ssh docker-prod-01 docker version` must work without a prompt first": the host key is known.
    (home / ".ssh" / "known_hosts").write_text((sb.directory / "ssh" / "known_hosts").read_text())
    passwd = tmp_path / "passwd"
    passwd.write_text(
        "".join(
            f"root:x:0:0:root:{home}:/bin/sh\n" if line.startswith("root:") else f"{line}\n"
            for line in Path("/etc/passwd").read_text().splitlines()
        )
    )
    (tmp_path / "inv.yml").write_text(inventory)
    script = 'mount --bind "$1" /etc/passwd && shift && exec "$@"'
    proc = subprocess.run(
        [
            "unshare",
            "--mount",
            "--propagation",
            "private",
            "sh",
            "-c",
            script,
            "sh",
            str(passwd),
            CLI,
            "analyze",
            "-i",
            str(tmp_path / "inv.yml"),
            "--state",
            str(tmp_path / "s.db"),
            "--format",
            "json",
        ],
        capture_output=True,
        text=True,
        env=_env(DATABASE_URL=DB_URL),
        stdin=subprocess.DEVNULL,
        timeout=300,
        check=False,
    )
    assert proc.returncode in (0, 1), proc.stderr[-2000:]
    doc = _json(proc)
    assert doc["summary"]["unreachable"] == 0, proc.stderr[-2000:]
    # The alias led, through ~/.ssh/config's HostName, Port 2222 and IdentityFile, to sb-h01's engine.
    unix = _analyze(sb, "unix", tmp_path / "u.db")["sb-h01"]
    assert _comparable(doc["hosts"][0]["analysis"])["engine"] == unix["analysis"]["engine"]


def test_builds_gates_compose_and_hygiene_over_an_ssh_alias_and_tls(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    # Phase 2 builds with the docker CLI (BuildKit), gates with the docker SDK, phase 3 deploys with Compose:
    # each runs its own `ssh`, which must honour the inventory's docker_ssh_config (the alias sb-h01 is
    # only in that file) - a full phase 2 run is test_phase2's; here each path once, over the real sshd.
    sb = remote_sandbox
    ssh_fleet = load_fleet(sb.directory / "inventory-ssh.yml")
    builder = ssh_fleet.host("sb-h01")
    (tmp_path / "ctx").mkdir()
    (tmp_path / "ctx" / "hello.txt").write_text("hello\n")
    (tmp_path / "ctx" / "Dockerfile").write_text("FROM scratch\nCOPY hello.txt /hello.txt\n")
    source = BuildSource("remote-probe", "acgs-remote-probe:latest", tmp_path / "ctx", tmp_path / "ctx" / "Dockerfile")
    built = build(builder, source)  # the BuildKit build, its context sent over ssh
    assert built.built and built.image_id.startswith("sha256:")
    try:
        # The gates' SDK client over the same alias: the dev-tool scan creates, exports and removes a container.
        with local_socket(Endpoint.of(builder)) as url:
            client = docker.DockerClient(base_url=url, timeout=120)
            try:
                assert "/hello.txt" in {f"/{p.lstrip('/')}" for p in image_paths(client, built.image_id)}
            finally:
                client.close()
        for transport in ("ssh", "tls"):
            host = load_fleet(sb.directory / f"inventory-{transport}.yml").host("sb-h01")
            proc = subprocess.run(
                [compose_binary(), "ls", "-a", "--format", "json"],
                env=compose_env(host, {}),
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert proc.returncode == 0, (transport, proc.stderr[-500:])
    finally:
        with engine_api(sb_unix_host(sb, "sb-h01")) as api:
            api.remove_image(built.image_id, force=True)
    # Hygiene's playbook runs over each (check mode: nothing changes, the shared fleet stays seeded).
    for transport in ("ssh", "tls"):
        args = ["hygiene", "-i", _inventory(sb, transport), "--state", str(tmp_path / "h.db"), "--check"]
        proc = run_cli(*args, "--format", "json")
        assert proc.returncode == 0, (transport, proc.stderr[-2000:])
        assert {h["host"] for h in _json(proc)["hosts"]} == set(sb.hosts())


def sb_unix_host(sb: Sandbox, name: str) -> Any:
    """Return ``name`` as the unix:// inventory reaches it."""
    return load_fleet(sb.directory / "inventory-unix.yml").host(name)


def test_the_monitor_reads_the_same_services_over_ssh_and_tls_as_unix(remote_sandbox: Sandbox, tmp_path: Path) -> None:
    """Phase 3's monitor (containers, one stats sample each, image sizes) through each transport of one fleet."""
    from acgs_remediate.inventory import load_fleet
    from acgs_remediate.monitor import sample_fleet
    from acgs_remediate.state import StateStore

    store = StateStore(tmp_path / "state.db")
    samples = {
        t: sample_fleet(load_fleet(Path(_inventory(remote_sandbox, t)), "all").hosts[:1], "acgs-1", store)
        for t in ("unix", "ssh", "tls")  # one host: the transports are the point (each stats call ~1-2 s)
    }

    def stable(m: Any) -> dict[str, Any]:
        return {s.service: (s.image_id, s.image_ref, s.state, s.restart_count, s.size_after) for s in m.services}

    for host, unix in samples["unix"].items():
        assert unix.error is None and unix.running >= 4, unix
        for transport in ("ssh", "tls"):
            other = samples[transport][host]
            assert other.error is None, (transport, other.error)
            assert stable(other) == stable(unix), transport
            # One stats answer per running container came back through this transport, with usage in it.
            for s in other.services:
                if s.state == "running":
                    assert s.memory_bytes and s.memory_bytes > 0 and s.cpu_percent is not None, (transport, s)
