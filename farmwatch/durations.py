"""Durations written as strings in configs and on the command line (``500ms``, ``1s``, ``10m``,
``1h30m``, ``14d``), and points in time given as a duration ago or an ISO time."""

from __future__ import annotations

import re
from datetime import datetime, timezone

_UNITS = {"ms": 0.001, "s": 1.0, "m": 60.0, "h": 3600.0, "d": 86400.0, "w": 604800.0}
_PART = re.compile(r"(\d+(?:\.\d+)?)(ms|s|m|h|d|w)")
EXPECTED = "a duration such as '500ms', '1s', '10m', '1h30m' or '14d'"
MAX_SECONDS = 1000 * 365.25 * 86400.0
EPOCH_MIN = 0.0


def parse_duration(text: str) -> float:
    """Seconds in ``text``; raises ValueError naming what is expected."""
    if not isinstance(text, str):
        raise ValueError(f"expected {EXPECTED} (a string), got {_shown(text)}")
    s = text.strip().lower()
    pos, total = 0, 0.0
    for m in _PART.finditer(s):
        if m.start() != pos:
            break
        total += float(m.group(1)) * _UNITS[m.group(2)]
        pos = m.end()
    if pos != len(s) or not s:
        raise ValueError(f"expected {EXPECTED}, got {_shown(text)}")
    if not total < MAX_SECONDS:
        raise ValueError(f"{_shown(text)} is longer than anything farmwatch keeps (at most 1000 years)")
    return total


def _shown(text: object) -> str:
    """``text`` for an error message: quoted, and cut when it is long (it came from a user)."""
    s = repr(text)
    return s if len(s) <= 40 else s[:36] + "…" + s[0]


def format_duration(seconds: float) -> str:
    """The shortest readable form, for messages (``90`` → ``1m30s``)."""
    if seconds == 0:
        return "0s"
    if seconds < 1:
        return f"{seconds * 1000:.0f}ms"
    out, rest = [], int(round(seconds))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        n, rest = divmod(rest, size)
        if n:
            out.append(f"{n}{unit}")
    return "".join(out) or "0s"


def parse_time(text: str, now: float) -> float:
    """A point in time as epoch seconds: ``2h`` (that long before ``now``), an ISO time
    (``2026-11-22T10:00``; UTC unless it names a zone) or ``now``. The one parser of every time
    option, so that every command takes the same words."""
    if text == "now":
        return now
    try:
        when = now - parse_duration(text)
    except ValueError as exc:
        if "longer than" in str(exc):
            raise
        try:
            dt = datetime.fromisoformat(text)
        except ValueError:
            raise ValueError(f"{_shown(text)} is neither a duration (2h, 30m) nor an ISO time (2026-11-22T10:00)") from None
        return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()
    if when < EPOCH_MIN:
        raise ValueError(f"{_shown(text)} ago is before the year 1970")
    return when


__all__ = ["EXPECTED", "format_duration", "parse_duration", "parse_time"]
