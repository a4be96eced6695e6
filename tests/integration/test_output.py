"""Output read where people read it: a CI log (stdout a pipe, no terminal) on the sandbox fleet."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from acgs_remediate.sandbox import Sandbox

pytestmark = pytest.mark.integration

# Cells of the fleet table that rich used to break at 80 columns ("baselin / e recorde / d", "CRITICA / L").
FLEET_WORDS = ("baseline", "recorded", "CRITICAL", "graphdriver")


def _analyze_through_a_pipe(sandbox: Sandbox, state: Path, columns: str | None) -> str:
    env = {k: v for k, v in os.environ.items() if k != "COLUMNS"}
    if columns is not None:
        env["COLUMNS"] = columns
    exe = Path(sys.executable).with_name("acgs-remediate")
    proc = subprocess.run(
        [str(exe), "analyze", "-i", str(sandbox.inventory_path), "--state", str(state)],
        capture_output=True,  # stdout is a pipe: no terminal, as in a CI log
        stdin=subprocess.DEVNULL,
        text=True,
        env=env,
        timeout=300,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    return proc.stdout


@pytest.mark.parametrize("columns", [None, "80"], ids=["no-COLUMNS", "COLUMNS=80"])
def test_the_fleet_table_in_a_ci_log_keeps_every_word_whole(sandbox: Sandbox, tmp_path: Path, columns) -> None:
    text = _analyze_through_a_pipe(sandbox, tmp_path / "state.db", columns)
    fleet = text.split("Fleet", 1)[1].split("└", 1)[0].partition("┡")[2]  # the fleet table's rows
    hosts = [line for line in fleet.splitlines() if "sb-h0" in line]
    assert len(hosts) == 3, text[:2000]
    for word in FLEET_WORDS:
        assert fleet.count(word) == 3, f"{word!r} broken in the fleet table:\n{fleet}"  # once per host, whole
    if columns is None:  # the wide default: each host on one line, as a terminal would show it
        assert all("baseline recorded" in line and "CRITICAL" in line for line in hosts), fleet
    widths = {len(line) for line in text.splitlines()}
    assert max(widths) <= 200 or columns is not None, "wider than the no-terminal default"
