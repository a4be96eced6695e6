"""Phase 2's pure gates: size cap, expected size, build time, and the filesystem scan for dev tools."""

from __future__ import annotations

import pytest

from acgs_remediate.config import ServicePolicy
from acgs_remediate.gates import GateReport, build_time_gate, scan_paths, size_gates, smoke_env


def test_size_gates_cap_is_strict_and_expected_is_an_upper_bound() -> None:
    ok = size_gates(14_000_000, 60_000_000, 55_000_000)
    assert [(r.gate, r.passed) for r in ok] == [("size_cap", True), ("expected_size", True)]
    at_cap = size_gates(60_000_000, 60_000_000, 60_000_000)
    assert [r.passed for r in at_cap] == [False, True]  # "images <300MB": the cap itself is too big
    over = size_gates(346_500_000, 60_000_000, 55_000_000)
    assert not any(r.passed for r in over)
    assert "346MB is 286MB over the 60MB cap" in over[0].reason and "6.3x the expected 55MB" in over[1].reason
    assert [r.gate for r in size_gates(1, 2, None)] == ["size_cap"]


def test_build_time_gate_uses_the_report_cap() -> None:
    assert build_time_gate(12.3, 300).passed
    slow = build_time_gate(301.0, 300)
    assert not slow.passed and "301.0 s, over the 300 s cap" in slow.reason


@pytest.mark.parametrize(
    ("path", "kind"),
    [
        ("usr/bin/gcc", "compiler"),
        ("usr/bin/gcc-12", "compiler"),
        ("usr/lib/gcc/x86_64-linux-gnu/11/cc1", "compiler"),
        ("usr/bin/make", "compiler"),
        ("root/.cache/pip/http/v2/wheels.cache", "package-manager cache"),
        ("var/lib/apt/lists/archive.ubuntu.com_ubuntu_dists_jammy_main_binary-amd64_Packages", "package-manager cache"),
        ("usr/local/lib/python3.11/dist-packages/_pytest/main.py", "test framework"),
        ("opt/deps/pytest/__init__.py", "test framework"),
        ("opt/jupyter/lab/bundle.js", "notebook server"),
        ("usr/local/lib/python3.11/site-packages/ipykernel/kernelapp.py", "notebook server"),
    ],
)
def test_scan_finds_each_kind_of_dev_tool(path: str, kind: str) -> None:
    result = scan_paths(["usr/", "usr/bin/python3.11", path])
    assert not result.passed and kind in result.reason and f"/{path}" in result.reason


def test_scan_passes_a_lean_runtime() -> None:
    lean = [
        ".dockerenv",
        "usr/bin/python3.11",
        "usr/bin/busybox",
        "usr/bin/wget",
        "usr/lib/x86_64-linux-gnu/libgcc_s.so.1",  # the C runtime, not a compiler
        "var/lib/apt/lists/",
        "var/lib/apt/lists/lock",
        "app/deps/bottle.py",
        "app/app/main.py",
        "app/tests_helpers.py",
    ]
    result = scan_paths(lean)
    assert result.passed, result.reason


def test_report_lists_reasons_of_failed_gates_only() -> None:
    report = GateReport(service="gs", image="sha256:x", results=[*size_gates(1, 2, 3), build_time_gate(400, 300)])
    assert not report.passed and report.passed_gates == ["size_cap", "expected_size"]
    assert report.reasons == ["build_time: built in 400.0 s, over the 300 s cap"]
    assert not GateReport(service="x", image="y").passed  # no gate run is no pass


def test_smoke_env_fills_address_and_port() -> None:
    svc = ServicePolicy(
        name="gs", image="gs:1", context=".", port=8004, env={"ACGS_BIND": "{address}", "ACGS_PORT": "{port}", "X": "1"}
    )
    assert smoke_env(svc, "127.0.98.3") == {"ACGS_BIND": "127.0.98.3", "ACGS_PORT": "8004", "X": "1"}
