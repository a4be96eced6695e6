"""Prometheus text format for node_exporter's textfile collector: what each hygiene run did, per host.

node_exporter serves every ``*.prom`` file of its ``--collector.textfile.directory``; a file read while
being written would serve half a run, so it is written atomically (a temp file in the same directory,
then rename). Stale values are still served after a run stops happening (node_exporter#713): alert on
``acgs_hygiene_last_success_timestamp_seconds``, which only moves when a host's run succeeds.
"""

from __future__ import annotations

import os
import tempfile
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from datetime import datetime
from pathlib import Path

from .errors import UsageError

_HELP = {
    "acgs_hygiene_bytes_used": ("gauge", "Bytes the engine uses per category after the run (before, if unmeasured)."),
    "acgs_hygiene_bytes_reclaimed": ("gauge", "Bytes the last run freed per category (predicted per unique layer)."),
    "acgs_hygiene_bytes_reclaimed_measured": ("gauge", "Bytes the last run freed, measured (/system/df before-after)."),
    "acgs_hygiene_watermark_bytes": ("gauge", "The host's watermarks and usage in the basis they are measured in."),
    "acgs_hygiene_above_high_watermark": ("gauge", "1 when usage was above the high watermark, 0 below, -1 unknown."),
    "acgs_hygiene_images_removed": ("gauge", "Images the last run removed, per category."),
    "acgs_hygiene_last_success_timestamp_seconds": ("gauge", "When the host's last successful hygiene run ended."),
    "acgs_hygiene_last_run_timestamp_seconds": ("gauge", "When the last hygiene run ended (any outcome)."),
    "acgs_hygiene_run_duration_seconds": ("gauge", "How long the last hygiene run took."),
    "acgs_hygiene_errors": ("gauge", "1 when the host's last run failed, was interrupted or unreachable, else 0."),
}


@dataclass
class HostMetrics:
    """One host's numbers of one hygiene run (bytes; None = unknown, left out of the file)."""

    host: str
    ok: bool
    used_bytes: dict[str, int] = field(default_factory=dict)  # category -> bytes (images, build_cache)
    reclaimed_bytes: dict[str, int] = field(default_factory=dict)  # category -> bytes
    reclaimed_measured: int | None = None
    removed: dict[str, int] = field(default_factory=dict)  # category (dangling, unused) -> images
    watermark: dict[str, int | None] = field(default_factory=dict)  # used, high, low -> bytes
    watermark_basis: str = ""
    above_high: int = -1
    last_success: datetime | None = None


def _label(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def render(hosts: Iterable[HostMetrics], finished_at: datetime, duration_seconds: float) -> str:
    """Return the metrics of one run in the Prometheus text exposition format (version 0.0.4)."""
    samples: dict[str, list[str]] = {name: [] for name in _HELP}

    def add(name: str, labels: Mapping[str, str], value: float | int | None) -> None:
        if value is None:
            return
        text = ",".join(f'{k}="{_label(v)}"' for k, v in labels.items())
        samples[name].append(f"{name}{{{text}}} {value}" if text else f"{name} {value}")

    for h in sorted(hosts, key=lambda m: m.host):
        for category, value in sorted(h.used_bytes.items()):
            add("acgs_hygiene_bytes_used", {"host": h.host, "category": category}, value)
        for category, value in sorted(h.reclaimed_bytes.items()):
            add("acgs_hygiene_bytes_reclaimed", {"host": h.host, "category": category}, value)
        add("acgs_hygiene_bytes_reclaimed_measured", {"host": h.host}, h.reclaimed_measured)
        for level, value in sorted(h.watermark.items()):
            add("acgs_hygiene_watermark_bytes", {"host": h.host, "level": level, "basis": h.watermark_basis}, value)
        add("acgs_hygiene_above_high_watermark", {"host": h.host}, h.above_high)
        for category, value in sorted(h.removed.items()):
            add("acgs_hygiene_images_removed", {"host": h.host, "category": category}, value)
        if h.last_success is not None:
            add("acgs_hygiene_last_success_timestamp_seconds", {"host": h.host}, round(h.last_success.timestamp(), 3))
        add("acgs_hygiene_errors", {"host": h.host}, 0 if h.ok else 1)
    add("acgs_hygiene_last_run_timestamp_seconds", {}, round(finished_at.timestamp(), 3))
    add("acgs_hygiene_run_duration_seconds", {}, round(duration_seconds, 3))
    lines: list[str] = []
    for name, (kind, help_text) in _HELP.items():
        if samples[name]:
            lines += [f"# HELP {name} {help_text}", f"# TYPE {name} {kind}", *samples[name]]
    return "\n".join(lines) + "\n"


def write_atomically(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` atomically (temp file in the same directory, fsync, rename; mode 0644).

    Raises UsageError (exit 2) when the directory does not exist or is not writable.
    """
    path = Path(path).expanduser()
    if not path.parent.is_dir():
        raise UsageError(
            f"cannot write metrics to {path}: {path.parent} is not a directory",
            hint="point --metrics-file into node_exporter's textfile directory",
        )
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    except OSError as exc:
        raise UsageError(
            f"cannot write metrics to {path}: {exc.strerror}", hint="point --metrics-file into a writable directory"
        ) from None
    try:
        with os.fdopen(fd, "w") as fh:
            fh.write(text)
            fh.flush()
            os.fsync(fh.fileno())
        os.chmod(tmp, 0o644)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
