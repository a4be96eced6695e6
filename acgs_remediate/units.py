"""Byte sizes and durations as people write them ("300MB", "1.5GB", "2h") and back."""

from __future__ import annotations

import re

# Docker's CLI uses decimal units (1 MB = 1000 * 1000 bytes); so do we, so numbers match `docker images`.
_SIZE_UNITS = {
    "": 1, "b": 1,
    "k": 10**3, "kb": 10**3, "m": 10**6, "mb": 10**6, "g": 10**9, "gb": 10**9, "t": 10**12, "tb": 10**12,
    "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40,
}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*$")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 604800}
_DURATION_RE = re.compile(r"(\d+(?:\.\d+)?)\s*([smhdw])")


def parse_size(value: str | int | float) -> int:
    """Return the number of bytes in ``value`` ("300MB", "1.5 GB", 4096); raise ValueError if unreadable."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a size")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"size {value} is negative")
        return int(value)
    match = _SIZE_RE.match(str(value))
    if not match or match.group(2).lower() not in _SIZE_UNITS:
        raise ValueError(f"{value!r} is not a size; write it like 300MB, 1.5GB or 4096")
    return int(float(match.group(1)) * _SIZE_UNITS[match.group(2).lower()])


def parse_duration(value: str | int | float) -> float:
    """Return seconds in ``value`` ("90s", "2h", "1d12h", 300); raise ValueError if unreadable."""
    if isinstance(value, bool):
        raise ValueError(f"{value!r} is not a duration")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"duration {value} is negative")
        return float(value)
    text = str(value).strip().lower().replace(" ", "")
    if re.fullmatch(r"\d+(?:\.\d+)?", text):
        return float(text)
    parts = _DURATION_RE.findall(text)
    if not parts or "".join(n + u for n, u in parts) != text:
        raise ValueError(f"{value!r} is not a duration; write it like 90s, 15m, 2h or 1d")
    return sum(float(n) * _DURATION_UNITS[u] for n, u in parts)


def human_size(num: int | float | None) -> str:
    """Return ``num`` bytes as Docker prints sizes (decimal units, 3 significant digits)."""
    if num is None:
        return "-"
    sign = "-" if num < 0 else ""
    num = abs(float(num))
    for unit in ("B", "kB", "MB", "GB", "TB"):
        if num < 1000 or unit == "TB":
            if unit == "B":
                return f"{sign}{int(num)}B"
            return f"{sign}{num:.3g}{unit}"
        num /= 1000
    raise AssertionError("unreachable")


def human_duration(seconds: float | None) -> str:
    """Return ``seconds`` as a short human duration ("1m05s", "3.2s")."""
    if seconds is None:
        return "-"
    if seconds < 60:
        return f"{seconds:.1f}s"
    minutes, secs = divmod(int(round(seconds)), 60)
    if minutes < 60:
        return f"{minutes}m{secs:02d}s"
    hours, minutes = divmod(minutes, 60)
    return f"{hours}h{minutes:02d}m"
