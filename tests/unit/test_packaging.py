"""An installed wheel, not only a checkout, carries and finds its playbooks, roles and scenarios."""

from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]


def test_wheel_carries_and_finds_playbooks(tmp_path):
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pip",
            "wheel",
            "--no-deps",
            "--no-build-isolation",
            "-q",
            "-w",
            str(tmp_path),
            str(REPO),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    wheel = next(tmp_path.glob("acgs_remediate-*.whl"))
    names = set(zipfile.ZipFile(wheel).namelist())
    playbooks = sorted(p.name for p in (REPO / "playbooks").glob("*.yml"))
    assert playbooks, "no playbooks in the repo"
    for name in playbooks:
        assert f"acgs_remediate/_data/playbooks/{name}" in names
    for role in (REPO / "roles").iterdir():
        assert f"acgs_remediate/_data/roles/{role.name}/tasks/main.yml" in names
    assert "acgs_remediate/_data/inventory/group_vars/all.yml" in names
    assert "acgs_remediate/_data/scenarios/acgs-1/scenario.yml" in names

    unpacked = tmp_path / "site"
    zipfile.ZipFile(wheel).extractall(unpacked)
    probe = subprocess.run(
        [
            sys.executable,
            "-c",
            "from acgs_remediate.resources import playbooks_dir, roles_dir; print(playbooks_dir()); print(roles_dir())",
        ],
        cwd=tmp_path,
        env={"PYTHONPATH": str(unpacked), "PATH": "/usr/bin:/bin"},
        capture_output=True,
        text=True,
        check=True,
    )
    pb, roles = probe.stdout.split()
    assert pb == str(unpacked / "acgs_remediate" / "_data" / "playbooks")
    assert Path(roles).is_dir()
