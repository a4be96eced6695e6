"""A run killed before its cleanup leaves its private data dir (extravars, artifacts): the next run removes it."""

from __future__ import annotations

import os
import subprocess
import tempfile
from pathlib import Path

import pytest

from acgs_remediate import execute


def _leftover(root: Path, name: str, owner: int | None) -> Path:
    d = root / name
    (d / "env").mkdir(parents=True)
    (d / "env" / "extravars").write_text("secret: x\n")
    if owner is not None:
        (d / "owner.pid").write_text(f"{owner}\n")
    return d


def test_only_the_dirs_of_dead_runs_are_removed(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(tempfile, "tempdir", str(tmp_path))
    gone = subprocess.Popen(["true"])  # noqa: S607
    gone.wait()
    dead = _leftover(tmp_path, "acgs-run-dead", gone.pid)
    live = _leftover(tmp_path, "acgs-run-live", os.getppid())  # a run still going
    unknown = _leftover(tmp_path, "acgs-run-nopid", None)  # being made right now, or not ours
    other = _leftover(tmp_path, "someone-else", gone.pid)

    execute._remove_dead_runs_dirs()

    assert not dead.exists()
    assert live.exists() and unknown.exists() and other.exists()
