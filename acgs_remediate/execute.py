"""The only caller of ansible-runner: run a playbook, turn its event stream into per-host results.

Each run gets a fresh private data dir (ansible-runner silently reuses env/extravars files left in
one), removed afterwards together with ``artifacts/<id>/command`` (it records the whole process
environment, secrets included). A run whose event stream carries no final ``playbook_on_stats``
is "interrupted", never "successful": we cannot know what happened on its hosts.
"""

from __future__ import annotations

import os
import shutil
import sys
import tempfile
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Literal

from .errors import EnvironmentProblem
from .resources import roles_dir

HostStatus = Literal["ok", "changed", "failed", "unreachable", "not_run"]
RunStatus = Literal["successful", "failed", "interrupted"]

_RESULT_EVENTS = {"runner_on_ok", "runner_on_failed", "runner_on_unreachable", "runner_on_skipped"}


@dataclass
class HostEvent:
    """One per-host event of the stream, reduced to what progress display needs."""

    host: str
    event: str  # runner_on_ok / runner_on_failed / runner_on_unreachable / runner_on_skipped / task_start
    task: str
    changed: bool = False
    msg: str = ""


@dataclass
class HostResult:
    """What a run did on one host: its stats counts and the results of its modules."""

    host: str
    status: HostStatus = "not_run"
    ok: int = 0
    changed: int = 0
    failures: int = 0
    unreachable: int = 0
    skipped: int = 0
    # task action (e.g. "acgs_image_cleanup") -> that task's module result on this host
    results: dict[str, dict[str, Any]] = field(default_factory=dict)
    messages: list[str] = field(default_factory=list)  # failure messages, in order

    def to_dict(self) -> dict[str, Any]:
        """Return JSON-ready data."""
        return {"host": self.host, "status": self.status, "ok": self.ok, "changed": self.changed,
                "failures": self.failures, "unreachable": self.unreachable, "skipped": self.skipped,
                "messages": self.messages}


@dataclass
class RunResult:
    """The outcome of one playbook run."""

    status: RunStatus
    rc: int | None
    hosts: dict[str, HostResult]
    stats: dict[str, Any] | None
    seconds: float = 0.0

    @property
    def interrupted(self) -> bool:
        """Return True when the run ended without its final stats event."""
        return self.stats is None


def _short_msg(res: dict[str, Any]) -> str:
    msg = res.get("msg") or res.get("reason") or res.get("stderr") or ""
    if isinstance(msg, list):
        msg = "; ".join(str(m) for m in msg)
    return str(msg).strip().splitlines()[0] if str(msg).strip() else ""


_PRIVATE_PREFIX = "acgs-run-"
_OWNER_FILE = "owner.pid"


def _remove_dead_runs_dirs() -> None:
    """Remove the private data dirs that runs killed before their cleanup left in the temp dir.

    Such a dir holds the extravars (plans, the policy with its service environments) and artifacts (job
    events, stdout): owner-only (0700), but nothing there may outlive its run. Its ``owner.pid`` names the
    process that made it; a dir whose process is gone is removed (one still running is left alone).
    """
    for old in Path(tempfile.gettempdir()).glob(f"{_PRIVATE_PREFIX}*"):
        try:
            pid = int((old / _OWNER_FILE).read_text().strip())
        except (OSError, ValueError):
            continue  # not ours, or being made right now
        if pid == os.getpid() or Path(f"/proc/{pid}").exists():
            continue
        shutil.rmtree(old, ignore_errors=True)


def run_playbook(
    playbook: Path,
    inventory: Path,
    hosts: list[str],
    *,
    extravars: dict[str, Any] | None = None,
    check: bool = False,
    diff: bool = False,
    forks: int = 5,
    on_event: Callable[[HostEvent], None] | None = None,
    keep_artifacts: Path | None = None,
) -> RunResult:
    """Run ``playbook`` on ``hosts`` of ``inventory`` through ansible-runner; return per-host results."""
    import time

    try:
        import ansible_runner
    except ImportError as exc:
        raise EnvironmentProblem(f"ansible-runner is not installed: {exc}",
                                 hint="pip install ansible-runner") from None
    if not playbook.is_file():
        raise EnvironmentProblem(f"playbook {playbook} not found", hint="reinstall acgs-remediate")
    results = {h: HostResult(host=h) for h in hosts}
    stats_box: dict[str, Any] = {}
    lock = threading.Lock()

    def handler(event: dict[str, Any]) -> bool:
        name = event.get("event", "")
        data = event.get("event_data") or {}
        if name == "playbook_on_stats":
            keys = ("ok", "changed", "failures", "dark", "skipped", "processed", "ignored", "rescued")
            stats_box["stats"] = {k: data.get(k) or {} for k in keys}
            return True
        host = data.get("host")
        if not host:
            return True
        with lock:
            result = results.setdefault(host, HostResult(host=host))
            res = data.get("res") or {}
            if name in _RESULT_EVENTS and data.get("task_action"):
                # The event's type says it failed; its res does not always carry the flag: keep it there.
                kept = {**res, "failed": True} if name in ("runner_on_failed", "runner_on_unreachable") else res
                result.results[str(data["task_action"]).rsplit(".", 1)[-1]] = kept
            if name in ("runner_on_failed", "runner_on_unreachable") and not data.get("ignore_errors"):
                result.messages.append(f"{data.get('task', '')}: {_short_msg(res)}")
        if on_event is not None:
            if name == "runner_on_start":
                on_event(HostEvent(host=host, event="task_start", task=str(data.get("task", ""))))
            elif name in _RESULT_EVENTS:
                on_event(HostEvent(host=host, event=name, task=str(data.get("task", "")),
                                   changed=bool((data.get("res") or {}).get("changed")),
                                   msg=_short_msg(data.get("res") or {})))
        return True  # keep the event (ansible-runner needs playbook_on_stats for its own stats too)

    _remove_dead_runs_dirs()
    private = Path(tempfile.mkdtemp(prefix=_PRIVATE_PREFIX))
    os.chmod(private, 0o700)
    (private / _OWNER_FILE).write_text(f"{os.getpid()}\n")
    bin_dir = str(Path(sys.executable).parent)
    envvars = {
        # ansible-runner runs `ansible-playbook` from PATH: make it the one next to our Python.
        "PATH": bin_dir + os.pathsep + os.environ.get("PATH", ""),
        "ANSIBLE_NOCOLOR": "1",
        "ANSIBLE_FORCE_COLOR": "0",
        "ANSIBLE_ROLES_PATH": str(roles_dir()),
        "ANSIBLE_RETRY_FILES_ENABLED": "False",
        # Modules import acgs_remediate: by default run them with this Python (inventory may override).
        "ANSIBLE_PYTHON_INTERPRETER": sys.executable,
        "ANSIBLE_LOCAL_TEMP": str(private / "tmp"),
        "ANSIBLE_HOME": os.environ.get("ANSIBLE_HOME") or str(private / "ansible-home"),
    }
    cmdline = []
    if check:
        cmdline.append("--check")
    if diff:
        cmdline.append("--diff")
    t0 = time.monotonic()
    try:
        runner = ansible_runner.run(
            private_data_dir=str(private),
            playbook=str(playbook.resolve()),
            inventory=str(inventory),
            limit=",".join(hosts),
            extravars=extravars or {},
            forks=forks,
            envvars=envvars,
            cmdline=" ".join(cmdline) or None,
            event_handler=handler,
            quiet=True,
            suppress_env_files=False,
        )
        rc = runner.rc
    finally:
        for command in private.glob("artifacts/*/command"):
            command.unlink(missing_ok=True)
        # env/ holds the extravars (plans) and envvars; nothing there must outlive the run.
        if keep_artifacts is not None:
            shutil.rmtree(private / "env", ignore_errors=True)
            shutil.copytree(private / "artifacts", keep_artifacts, dirs_exist_ok=True)
        shutil.rmtree(private, ignore_errors=True)
    stats = stats_box.get("stats")
    for host, result in results.items():
        if stats is None:
            result.status = "not_run" if not result.results else "failed"
            continue
        result.ok = int(stats["ok"].get(host, 0))
        result.changed = int(stats["changed"].get(host, 0))
        result.failures = int(stats["failures"].get(host, 0))
        result.unreachable = int(stats["dark"].get(host, 0))
        result.skipped = int(stats["skipped"].get(host, 0))
        if result.unreachable:
            result.status = "unreachable"
        elif result.failures:
            result.status = "failed"
        elif host not in stats["processed"]:
            result.status = "not_run"
        else:
            result.status = "changed" if result.changed else "ok"
    if stats is None:
        status: RunStatus = "interrupted"
    elif any(r.status in ("failed", "unreachable") for r in results.values()) or rc not in (0, None):
        status = "failed"
    else:
        status = "successful"
    return RunResult(status=status, rc=rc, hosts=results, stats=stats, seconds=time.monotonic() - t0)
