"""The command line as a user meets it: help everywhere, version, exit 2 with one clear line on bad input."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import typer

from acgs_remediate import __version__
from acgs_remediate.cli import register

REPO = Path(__file__).resolve().parents[2]


def _commands(cmd, path: tuple[str, ...] = ()) -> list:
    found = [(path, cmd)]
    # typer vendors its own click: duck-type groups rather than isinstance against the click package.
    if hasattr(cmd, "commands"):
        for name, sub in sorted(cmd.commands.items()):
            found += _commands(sub, (*path, name))
    return found


ALL_COMMANDS = _commands(typer.main.get_command(register()))
FLEET_COMMANDS = [
    path
    for path, cmd in ALL_COMMANDS
    if path and any("--inventory" in getattr(p, "opts", ()) for p in cmd.params)
]


# Required arguments of fleet commands, so that the option under test is what fails.
REQUIRED_ARGS = {("plan",): ["phase1"]}


def _fleet_args(path: tuple[str, ...]) -> list[str]:
    extra = ["--yes"] if path[-1].startswith("phase") else []
    return [*path, *REQUIRED_ARGS.get(path, []), *extra]


def run_cli(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess[str]:
    """Run the real console entry point, as a user would."""
    full_env = {**os.environ, "COLUMNS": "120", **(env or {})}
    return subprocess.run(
        [sys.executable, "-c", "from acgs_remediate.cli import main; main()", *args],
        capture_output=True,
        text=True,
        env=full_env,
        timeout=120,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def test_version():
    result = run_cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"acgs-remediate {__version__}"


def test_the_designed_commands_exist():
    top = {path[0] for path, _ in ALL_COMMANDS if len(path) == 1}
    assert {"sandbox", "analyze", "plan", "phase1", "status", "verify"} <= top


@pytest.mark.parametrize("path", [p for p, _ in ALL_COMMANDS], ids=lambda p: " ".join(p) or "root")
def test_every_command_has_help(path):
    result = run_cli(*path, "--help")
    assert result.returncode == 0, result.stderr
    assert "Usage:" in result.stdout
    # every command says what it does
    cmd = dict(ALL_COMMANDS)[path]
    assert (cmd.help or cmd.short_help or "").strip(), f"{' '.join(path)} has no help text"


def test_unknown_option_is_a_usage_error():
    result = run_cli("analyze", "--no-such-option")
    assert result.returncode == 2
    assert "No such option" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_command_is_a_usage_error():
    result = run_cli("phase9")
    assert result.returncode == 2
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize("path", FLEET_COMMANDS, ids=lambda p: " ".join(p))
def test_missing_inventory_gives_one_line_and_exit_2(path, tmp_path):
    result = run_cli(
        *_fleet_args(path),
        "-i",
        str(tmp_path / "missing.yml"),
        env={"ACGS_REMEDIATE_STATE": str(tmp_path / "s.db")},
    )
    assert result.returncode == 2, result.stderr
    assert "Traceback" not in result.stderr
    error_lines = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert len(error_lines) == 1 and "missing.yml" in error_lines[0]
    assert result.stdout == ""


@pytest.mark.parametrize("path", FLEET_COMMANDS, ids=lambda p: " ".join(p))
def test_unknown_host_pattern_gives_exit_2(path, tmp_path):
    result = run_cli(
        *_fleet_args(path),
        "-i",
        str(REPO / "inventory"),
        "--hosts",
        "nosuchgroup",
        env={"ACGS_REMEDIATE_STATE": str(tmp_path / "s.db")},
    )
    assert result.returncode == 2, result.stderr
    assert "matches no host" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["analyze", "--format", "yaml"], "'yaml' is not one of"),
        (["phase1", "--forks", "0"], "Invalid value for '--forks'"),
        (["plan"], "Missing argument"),
        (["phase9"], "No such command 'phase9'"),
    ],
)
def test_click_usage_errors_read_like_ours(args, says):
    """One error line and one hint line, as for every other bad input, not click's usage block and frame."""
    result = run_cli(*args)
    assert result.returncode == 2 and result.stdout == ""
    lines = result.stderr.splitlines()
    assert len(lines) == 2 and lines[0].startswith("error: ") and says in lines[0], result.stderr
    assert lines[1].startswith("hint: see 'acgs-remediate") and lines[1].endswith("--help'")
