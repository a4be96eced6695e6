"""The Engine API client's transports without an engine: the ssh command, failure wording, TLS settings."""

from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

from acgs_remediate import engine
from acgs_remediate.engine import (
    Endpoint,
    EngineConnectError,
    explain_ssh_failure,
    local_socket,
    ssh_argv,
    ssh_env,
    tls_context,
)
from acgs_remediate.errors import UsageError
from acgs_remediate.sandbox_transports import parse_transports


def _option(argv: list[str], name: str) -> str | None:
    values = [
        argv[i + 1].split("=", 1)[1]
        for i, a in enumerate(argv[:-1])
        if a == "-o" and argv[i + 1].startswith(f"{name}=")
    ]
    return values[0] if values else None


def test_ssh_command_is_the_docker_clis_and_leaves_the_rest_to_the_users_ssh_config(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    monkeypatch.setenv(engine.CONTROL_DIR_ENV, str(tmp_path))
    alias = ssh_argv(Endpoint("ssh://prod-docker-1"))
    # The alias reaches ssh as written: its config decides HostName, Port, User, IdentityFile, ProxyJump.
    assert alias[-5:] == ["--", "prod-docker-1", "docker", "system", "dial-stdio"]
    assert "-p" not in alias and "-l" not in alias and "-F" not in alias
    assert _option(alias, "BatchMode") == "yes"  # a prompt would hang a fleet run
    explicit = ssh_argv(Endpoint("ssh://deploy@10.1.2.3:2222", ssh_config="/etc/acgs/ssh_config", connect_timeout=4))
    assert explicit[explicit.index("-l") + 1] == "deploy" and explicit[explicit.index("-p") + 1] == "2222"
    assert explicit[explicit.index("-F") + 1] == "/etc/acgs/ssh_config"
    assert _option(explicit, "ConnectTimeout") == "4"
    assert explicit[-4] == "10.1.2.3"


def test_each_endpoint_has_its_own_ssh_connection_even_behind_one_sshd(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # Two aliases of one sshd (same user, host and port: one ssh %C) whose keys lead to different engines
    # must never share a connection: that sent one host's removals to the other host's engine.
    monkeypatch.setenv(engine.CONTROL_DIR_ENV, str(tmp_path))
    config = str(tmp_path / "config")
    paths = {_option(ssh_argv(Endpoint(f"ssh://{alias}", ssh_config=config)), "ControlPath") for alias in ("h1", "h2")}
    assert len(paths) == 2 and all(p and p.startswith(str(tmp_path)) and "%" not in p for p in paths)
    # The same endpoint joins the same connection (the CLI's facts and the cleanup module).
    assert _option(ssh_argv(Endpoint("ssh://h1", ssh_config=config)), "ControlPath") in paths


def test_programs_running_ssh_themselves_get_the_inventorys_ssh_config_and_the_hosts_connection(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    # The docker CLI (builds) and Compose (deploys) run plain `ssh [-l U] [-p P] -- HOST docker system
    # dial-stdio`: through ssh_env's PATH they must use docker_ssh_config and join this host's ControlPath.
    monkeypatch.setenv(engine.CONTROL_DIR_ENV, str(tmp_path / "control"))
    (tmp_path / "control").mkdir()
    fake = tmp_path / "bin"
    fake.mkdir()
    (fake / "ssh").write_text('#!/bin/sh\nfor a in "$@"; do echo "$a"; done\n')
    (fake / "ssh").chmod(0o755)
    monkeypatch.setenv("PATH", f"{fake}:/usr/bin:/bin")
    endpoint = Endpoint("ssh://prod-docker-1", ssh_config="/etc/acgs/ssh_config")
    env = ssh_env(endpoint)
    argv = ["ssh", "-l", "deploy", "--", "prod-docker-1", "docker", "system", "dial-stdio"]
    seen = subprocess.run(argv, env=env, capture_output=True, text=True, check=True).stdout.splitlines()
    assert seen[seen.index("-F") + 1] == "/etc/acgs/ssh_config"
    assert _option(seen, "BatchMode") == "yes"
    assert _option(seen, "ControlPath") == _option(ssh_argv(endpoint), "ControlPath")
    assert seen[-7:] == argv[1:]  # the program's own arguments, untouched, last
    # Any other endpoint: nothing added.
    assert ssh_env(Endpoint("tcp://10.0.0.5:2376"))["PATH"] == f"{fake}:/usr/bin:/bin"
    with local_socket(Endpoint("tcp://10.0.0.5:2376")) as url:
        assert url == "tcp://10.0.0.5:2376"


@pytest.mark.parametrize(
    ("code", "stderr", "expected"),
    [
        (
            255,
            ["ssh: connect to host 10.0.0.5 port 2222: Connection refused"],
            ["connect to host 10.0.0.5 port 2222: Connection refused", "check the host and port"],
        ),
        (255, ["deploy@10.0.0.5: Permission denied (publickey)."], ["Permission denied", "IdentityFile"]),
        (255, ["ssh: Could not resolve hostname prod-1: Name or service not known"], ["prod-1", "Host alias"]),
        (255, ["Host key verification failed."], ["host key verification failed", "known_hosts"]),
        (127, ["bash: line 1: docker: command not found"], ["docker CLI was not found", "PATH"]),
        (1, ["Cannot connect to the Docker daemon at unix:///var/run/docker.sock."], ["engine runs", "docker group"]),
        (255, [], ["ssh exited with code 255", "check the host, port and key"]),
    ],
)
def test_an_ssh_failure_is_one_line_saying_what_failed_and_what_to_check(
    code: int, stderr: list[str], expected: list[str]
) -> None:
    line = explain_ssh_failure("ssh://prod-1", code, stderr)
    assert "\n" not in line and line.startswith("ssh: ")
    for part in expected:
        assert part in line


def test_tls_files_that_cannot_be_read_are_named_by_their_host_variable(tmp_path: Path) -> None:
    missing = tmp_path / "nope.pem"
    with pytest.raises(EngineConnectError, match="docker_ca_path=.*nope.pem"):
        tls_context(Endpoint("tcp://h:2376", validate_certs=True, ca_path=str(missing)))
    with pytest.raises(EngineConnectError, match="both docker_client_cert and docker_client_key"):
        tls_context(Endpoint("tcp://h:2376", tls=True, client_cert=str(missing)))
    assert Endpoint("tcp://h:2376", tls=True).uses_tls and not Endpoint("tcp://h:2375").uses_tls


def test_sandbox_transports_are_validated() -> None:
    assert parse_transports("ssh, tls") == ["ssh", "tls"]
    with pytest.raises(UsageError, match="unknown transport ftp"):
        parse_transports("unix,ftp")


def test_inventory_transport_variables() -> None:
    from acgs_remediate.inventory import _host_from_vars

    host = _host_from_vars(
        "web-1", {"docker_host": "ssh://web-1", "docker_ssh_config": "~/ssh/acgs", "docker_connect_timeout": 3}, ()
    )
    assert host.ssh_config == str(Path("~/ssh/acgs").expanduser()) and host.connect_timeout == 3.0
    assert Endpoint.of(host) == Endpoint("ssh://web-1", ssh_config=host.ssh_config, connect_timeout=3.0)
    with pytest.raises(UsageError, match="docker_connect_timeout must be a positive number of seconds"):
        _host_from_vars("web-1", {"docker_connect_timeout": "soon"}, ())


def test_the_client_is_standard_library_only() -> None:
    # The cleanup module (one process per host, no AnsiballZ) imports it: no pydantic, docker SDK or requests.
    import subprocess
    import sys

    heavy = "('pydantic', 'docker', 'requests', 'yaml')"
    code = f"import sys, acgs_remediate.engine; print(sorted(m for m in {heavy} if m in sys.modules))"
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60)
    assert proc.stdout.strip() == "[]"
