"""The few shapes that flow through every part of farmwatch.

A *series* is a name plus a set of labels (Prometheus' data model): ``hlt.output.ready_queue_size``
with ``{unit=hlt01, app=distributor}``. Labels are kept as a sorted tuple of pairs so that a series
key is hashable and canonical: the same labels in any order give the same key, which is what lets
the store and the sources cache series ids and per-series state in plain dicts on the hot path.
"""

from __future__ import annotations

import hashlib
import math
from dataclasses import dataclass, field
from enum import Enum
from typing import Iterable, Mapping, Union

Labels = tuple[tuple[str, str], ...]
"""Canonical labels: pairs sorted by label name, values are strings."""

SeriesKey = tuple[str, Labels]
"""(name, labels): the identity of one series."""

Value = Union[float, str]
"""Numbers are samples; strings are *state values* (``socket_state = connected``)."""


def labels(mapping: Mapping[str, object] | None = None, /, **kw: object) -> Labels:
    """Build canonical labels from a mapping and/or keywords (values become strings)."""
    merged: dict[str, object] = dict(mapping or {})
    merged.update(kw)
    return tuple(sorted((str(k), str(v)) for k, v in merged.items()))


def with_labels(base: Labels, **extra: object) -> Labels:
    """Return ``base`` with ``extra`` labels added or replaced, still canonical."""
    merged = dict(base)
    merged.update((k, str(v)) for k, v in extra.items())
    return tuple(sorted(merged.items()))


def format_series(name: str, lbls: Labels) -> str:
    """``name{k=v,…}`` as printed by the CLI and in logs."""
    if not lbls:
        return name
    return name + "{" + ",".join(f"{k}={v}" for k, v in lbls) + "}"


@dataclass(frozen=True, slots=True)
class Sample:
    """One value of one series at one time (``ts`` in seconds since the Unix epoch, UTC)."""

    ts: float
    name: str
    value: Value
    labels: Labels = ()

    @property
    def key(self) -> SeriesKey:
        return (self.name, self.labels)

    @property
    def is_state(self) -> bool:
        return isinstance(self.value, str)


@dataclass(slots=True)
class Batch:
    """Columnar samples sharing one timestamp: what a poller produces for one target per cycle.

    The hot paths (HLT flattening, store ingest) work on these parallel lists instead of
    creating one object per value.
    """

    ts: float
    keys: list[SeriesKey] = field(default_factory=list)
    values: list[Value] = field(default_factory=list)

    def add(self, key: SeriesKey, value: Value) -> None:
        self.keys.append(key)
        self.values.append(value)

    def __len__(self) -> int:
        return len(self.keys)

    def samples(self) -> Iterable[Sample]:
        for (name, lbls), value in zip(self.keys, self.values):
            yield Sample(self.ts, name, value, lbls)


@dataclass(frozen=True, slots=True)
class LogRecord:
    """One log event; fields map onto the Elastic Common Schema (``@timestamp``, ``host.name``,
    ``service.name``, ``log.level``, ``message``) so the same record can go to SQLite or Elasticsearch."""

    ts: float
    host: str
    service: str
    level: str
    message: str
    fields: Mapping[str, object] = field(default_factory=dict)

    def doc_id(self) -> str:
        """A stable id, so that a record sent twice (a retry, a replay after a restart) is stored once.

        A record read from a file is identified by where it starts: host, the file's identity
        (``log.file.fingerprint``, else ``log.file.path``) and ``log.offset``; any other record by
        its content (time, host, service, level, message).
        """
        f = self.fields
        if "log.offset" in f:
            parts = ("file", self.host, str(f.get("log.file.fingerprint") or f.get("log.file.path", "")), str(f["log.offset"]))
        else:
            parts = ("content", repr(self.ts), self.host, self.service, self.level, self.message)
        return hashlib.blake2b("\0".join(parts).encode("utf-8", "surrogatepass"), digest_size=16).hexdigest()


class AlertState(str, Enum):
    PENDING = "pending"
    FIRING = "firing"
    RESOLVED = "resolved"


@dataclass(slots=True)
class Alert:
    """An alert instance; identity is rule + labels (the fingerprint), as in Alertmanager.

    Times are epoch seconds: ``active_since`` when the rule's condition first held (the alert is
    pending until it has held for the rule's ``for``), ``starts_at`` when it started firing,
    ``ends_at`` when it resolved. ``value`` is the rule's value at the latest evaluation and
    ``values`` any further named values the rule computed (e.g. numerator and denominator).
    ``labels`` come from the data (untrusted text: neutralise before it reaches chat).
    """

    rule: str
    labels: Labels
    state: AlertState
    severity: str
    summary: str
    description: str = ""
    starts_at: float = math.nan
    ends_at: float | None = None
    fingerprint: str = ""
    value: float = math.nan
    values: dict[str, float] = field(default_factory=dict)
    active_since: float = math.nan
    silenced_by: str | None = None
    inhibited_by: str | None = None
    acked_by: str | None = None
    acked_at: float | None = None

    def __post_init__(self) -> None:
        if not self.fingerprint:
            self.fingerprint = fingerprint(self.rule, self.labels)

    @property
    def muted(self) -> bool:
        """Silenced or inhibited: still tracked and listed, but not notified."""
        return self.silenced_by is not None or self.inhibited_by is not None


@dataclass(slots=True)
class Notification:
    """What one chat message says about one alert group at one moment.

    ``firing`` and ``resolved`` are the group's alerts in those states (not muted); a group whose
    last alerts resolved produces a notification with ``firing`` empty. ``seq`` counts the
    notifications of a group (1 = the first message), so a notifier can tell a new post from an
    update; ``repeat`` marks a reminder sent after ``repeat_interval``.
    """

    group_key: str
    group_labels: Labels
    firing: list[Alert]
    resolved: list[Alert]
    ts: float
    seq: int = 1
    repeat: bool = False

    @property
    def status(self) -> str:
        return "firing" if self.firing else "resolved"


def fingerprint(rule: str, lbls: Labels) -> str:
    """Stable identity of an alert across restarts and processes (not Python's salted hash)."""
    import hashlib

    h = hashlib.blake2b(digest_size=8)
    h.update(rule.encode())
    for k, v in lbls:
        h.update(b"\0" + k.encode() + b"\0" + v.encode())
    return h.hexdigest()



LOG_LEVELS: dict[str, str] = {
    "debug": "debug", "trace": "debug", "info": "info", "information": "info", "notice": "notice",
    "result": "result", "warn": "warning", "warning": "warning", "error": "error", "err": "error",
    "critical": "critical", "crit": "critical", "fatal": "fatal", "alert": "alert",
    "emerg": "emergency", "emergency": "emergency", "panic": "emergency",
}
"""The spellings of log levels the parsers meet (basf2, syslog, JSON loggers) → one name each."""


def level_name(text: str) -> str:
    """Normalised level (``WARN`` → ``warning``); unknown words are kept, lower-cased. Records are
    stored with it, and searches normalise the levels asked for with it, so ``--level err`` finds
    what a log wrote as ``ERROR``."""
    low = text.strip().lower()
    return LOG_LEVELS.get(low, low)


def level_names(level: str | Iterable[str] | None) -> list[str]:
    """``"error,WARN"`` or ``["error", "warn"]`` → ``["error", "warning"]`` (empty items dropped)."""
    if level is None:
        return []
    items = level.split(",") if isinstance(level, str) else list(level)
    return [level_name(x) for x in items if x.strip()]

__all__ = ["LOG_LEVELS", "Alert", "AlertState", "Batch", "Labels", "LogRecord", "Notification", "Sample", "SeriesKey",
           "Value", "fingerprint", "format_series", "labels", "level_name", "level_names", "with_labels"]
