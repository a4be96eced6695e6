"""Phase 3's deploy environment and availability probe (rollout.deploy_env, expand, Probe), without Docker.

The probe talks to a real HTTP server on 127.0.0.1 (and to a port where nothing listens): what it measures is
what a client of the service would have seen during a switch.
"""

from __future__ import annotations

import http.server
import socket
import threading
import time

import pytest

from acgs_remediate.config import DeployPolicy
from acgs_remediate.errors import UsageError
from acgs_remediate.inventory import Host
from acgs_remediate.rollout import Probe, deploy_env, expand


def _host(**hostvars: object) -> Host:
    return Host(name="web1", docker_host="unix:///var/run/docker.sock", vars=dict(hostvars))


def test_the_host_var_overrides_the_policy_env_per_host() -> None:
    policy = DeployPolicy(env={"ACGS_BIND": "0.0.0.0", "LOG": "info"})
    env = deploy_env(_host(acgs_deploy_env={"ACGS_BIND": "127.0.100.2"}), policy)
    assert env == {"ACGS_BIND": "127.0.100.2", "LOG": "info"}
    assert deploy_env(_host(), policy) == {"ACGS_BIND": "0.0.0.0", "LOG": "info"}


def test_a_host_var_that_is_no_mapping_is_a_usage_error_naming_it() -> None:
    with pytest.raises(UsageError, match="acgs_deploy_env must be a mapping"):
        deploy_env(_host(acgs_deploy_env="127.0.0.1"), DeployPolicy())


def test_expand_reads_the_deploy_env_with_compose_defaults() -> None:
    env = {"ACGS_BIND": "127.0.100.1"}
    assert expand("http://${ACGS_BIND}:8000/health", env) == "http://127.0.100.1:8000/health"
    assert expand("http://$ACGS_BIND/x", env) == "http://127.0.100.1/x"
    assert expand("${ACGS_UNSET_FOR_TEST:-127.0.0.1}", env) == "127.0.0.1"


class _Ok(http.server.BaseHTTPRequestHandler):
    def do_GET(self) -> None:  # noqa: N802 (http.server's name)
        self.send_response(200)
        self.end_headers()
        self.wfile.write(b"ok")

    def log_message(self, *_args: object) -> None:
        pass


def _wait_polls(probe: Probe, n: int) -> None:
    deadline = time.monotonic() + 30
    while probe.polls < n:
        assert time.monotonic() < deadline, "the probe never polled"
        time.sleep(0.05)


def test_a_service_that_answers_is_never_counted_unavailable() -> None:
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Ok)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        probe = Probe(f"http://127.0.0.1:{server.server_address[1]}/health", every=0.05).start()
        _wait_polls(probe, 5)
        assert probe.stop() == 0.0
    finally:
        server.shutdown()


def test_a_service_that_does_not_answer_is_counted_unavailable_for_as_long() -> None:
    with socket.socket() as s:  # a port nothing listens on once this socket is closed
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    probe = Probe(f"http://127.0.0.1:{port}/health", every=0.05).start()
    t0 = time.monotonic()
    _wait_polls(probe, 5)
    seconds = probe.stop()
    assert 0.0 < seconds <= time.monotonic() - t0
