"""Log line parsers: basf2, syslog (RFC 3164 and 5424), JSON lines, and raw lines as they are.

The log-file source runs every line of every tailed file through here, so this is the hot loop of
log shipping (target: well over 100,000 lines/s per core together with tailing and serialising).
Hence: one precompiled regular expression per format, dispatch on the line's first character
instead of trying every format, timestamps parsed once per distinct second (lines of one second
share the cached epoch), and no per-line objects beyond the result tuple.

A parsed line is ``Parsed(ts, level, message, fields, host)``: ``ts`` is epoch seconds or None
(the line carries no absolute time: the caller uses the time it read the line), ``fields`` holds
Elastic Common Schema names (``log.logger``, ``process.pid``, ``log.syslog.*``…) or is None, and
``host`` is set when the line names its host (syslog). A line no parser recognises is kept whole
as the message with level ``""``: nothing is ever dropped for not being understood.

Formats (``fmt``): ``auto`` (dispatch per line), ``basf2``, ``syslog``, ``json``, ``raw``.
"""

from __future__ import annotations

import re
from datetime import datetime, timedelta, timezone, tzinfo
from typing import Any, Callable, NamedTuple
from zoneinfo import ZoneInfo

import orjson

from farmwatch.model import LOG_LEVELS as _LEVELS
from farmwatch.model import level_name

FORMATS = ("auto", "basf2", "syslog", "json", "raw")


class Parsed(NamedTuple):
    ts: float | None
    level: str
    message: str
    fields: dict[str, Any] | None
    host: str | None


Result = tuple[float | None, str, str, "dict[str, Any] | None", "str | None"]
"""What the format parsers return: a ``Parsed``'s values as a plain tuple."""

_parsed = tuple.__new__  # Parsed(...) without the NamedTuple's Python-level __new__

_SYSLOG_SEVERITY = ("emergency", "alert", "critical", "error", "warning", "notice", "info", "debug")
_BASF2_LEVELS = {name: _LEVELS[name.lower()] for name in ("DEBUG", "INFO", "RESULT", "WARNING", "WARN", "ERROR", "FATAL")}
_MONTHS = {m: i + 1 for i, m in enumerate(("Jan", "Feb", "Mar", "Apr", "May", "Jun", "Jul", "Aug", "Sep", "Oct", "Nov", "Dec"))}

_ISO = r"(\d{4}-\d\d-\d\d[T ]\d\d:\d\d:\d\d)(?:[.,](\d{1,9}))?(Z|[+-]\d\d:?\d\d)?"
# basf2 (framework/logging LogMessage::print): [time] [LEVEL(:debuglevel)] [(process id)] message
# [  { module: M package: P function: F @file:line }]; the time is either absolute (added by the
# HLT scripts' wrappers, optionally in brackets) or basf2's own seconds since start ("12.345: ").
# "[B2ERROR]"-style levels come from the B2ERROR() macro names used in some wrappers.
_BASF2 = re.compile(
    r"(?:\[?" + _ISO + r"\]?\s+)?(?:(\d+\.\d+):\s+)?"
    r"\[(?:B2)?(DEBUG|INFO|RESULT|WARNING|WARN|ERROR|FATAL)(?::(\d+))?\] ?"
    r"(?:\((-?\d+)\) )?"
)
# The usual line, "<header> message  { module: M }", in one match: the header atomic, so with the
# same choices as _BASF2.match; other lines take _BASF2 and _basf2_location (same result, slower).
_BASF2_MODULE = re.compile(r"(?>" + _BASF2.pattern + r")(.*)  \{ module: (\S+) \}\s*\Z")
_LOCATION = re.compile(r"(?:module: (\S+))?\s*(?:package: (\S+))?\s*(?:function: (.+?))?\s*(?:@(\S+?):(\d+))?$")
# "2026-11-30 14:00:01,123 ERROR name: message" (Python logging and most C++ loggers)
_TS_LEVEL = re.compile(r"\[?" + _ISO + r"\]?\s+\[?([A-Za-z]{4,11})\]?:?\s+(.*)$")
# RFC 5424: <PRI>1 TIMESTAMP HOST APP PROCID MSGID [SD…] MSG
_RFC5424 = re.compile(
    r"<(\d{1,3})>1 (\S+) (\S+) (\S+) (\S+) (\S+) (-|(?:\[[^\]\\]*+(?:\\.[^\]\\]*+)*+\])++)(?: (.*))?$", re.S)
_SD_ELEMENT = re.compile(r"\[([^\s\]]+)((?:\s+[^=\s\]]+=\"(?:[^\"\\]|\\.)*\")*)\]")
_SD_PARAM = re.compile(r"([^=\s\]]+)=\"((?:[^\"\\]|\\.)*)\"")
# RFC 3164 (BSD): [<PRI>]Mmm dd hh:mm:ss HOST TAG[PID]: MSG, and rsyslog's file format with an
# RFC 3339 time instead (RSYSLOG_FileFormat).
_RFC3164 = re.compile(r"(?:<(\d{1,3})>)?([A-Z][a-z]{2}) ([ \d]\d) (\d\d:\d\d:\d\d) (\S+) ([^\s:\[]+)(?:\[(\d+)\])?:? ?(.*)$")
_ISO_SYSLOG = re.compile(_ISO + r" (\S+) ([^\s:\[]+)(?:\[(\d+)\])?: ?(.*)$")
_ISO_RE = re.compile(_ISO)
_SCALE = [10 ** n for n in range(10)]  # "250" (3 digits) → 250 / 1000 s
_ANSI = re.compile(r"\x1b\[[0-9;]*m")

_JSON_TIME = ("@timestamp", "timestamp", "time", "ts", "asctime", "date")
_JSON_LEVEL = ("log.level", "level", "levelname", "severity", "lvl", "loglevel")
_JSON_MESSAGE = ("message", "msg", "log", "text")
_JSON_HOST = ("host.name", "hostname", "host")
_JSON_LOGGER = ("log.logger", "logger", "name", "module")
_JSON_ROLES = {key: role for role, keys in enumerate((_JSON_TIME, _JSON_LEVEL, _JSON_MESSAGE, _JSON_HOST, _JSON_LOGGER,
                                                      ("process.pid", "pid"))) for key in keys}
_ECS_PREFIXES = ("labels.", "log.", "process.", "event.", "error.", "trace.")
_SD_ESCAPE = re.compile(r"\\([\"\\\]])")
_FRACTIONS: dict[str, float] = {}  # "250" → 0.25: fractions of a second as written, shared by all parsers
_LABEL_NAMES: dict[str, str] = {}  # JSON key → field name ("worker" → "labels.worker")


class LineParser:
    """Parses lines of one file (``fmt``); naive timestamps are in ``tz`` (None: the local zone).

    ``year_of`` gives the year for RFC 3164 times, which have none: the caller's clock year, or
    the year before when that would put the line more than a day into the future.

    ``parse`` gives a ``Parsed``; the log-file source's loop calls ``first.get(line[:1], other)``
    itself and takes the plain tuple (the same five values: a named tuple costs a call per line).
    """

    def __init__(self, fmt: str = "auto", tz: tzinfo | None = None, now: Callable[[], float] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.tz = tz
        self._now = now
        self._seconds: dict[tuple[str, str | None], float] = {}
        self._bsd: dict[str, float] = {}
        self._stamp: str | None = None  # the last second parsed, and its epoch: consecutive lines share it
        self._zone: str | None = None
        self._base = 0.0
        self.first: dict[str, Callable[[str], Result]]
        """Parser by the line's first character (``auto``); any other line goes to ``other``."""
        self.other: Callable[[str], Result]
        if fmt == "auto":
            self.first = {"[": self._bracketed, "{": self._json, "<": self._syslog_or_raw, "\x1b": self._coloured,
                          **dict.fromkeys("0123456789", self._numeric),
                          **dict.fromkeys({m[0] for m in _MONTHS}, self._month)}
            self.other = _raw
        else:
            self.first = {}
            self.other = {"basf2": self._basf2_or_raw, "syslog": self._syslog_or_raw, "json": self._json, "raw": _raw}[fmt]

    def parse(self, line: str) -> Parsed:
        """``line`` (without its newline) as a ``Parsed``."""
        return _parsed(Parsed, self.first.get(line[:1], self.other)(line))

    # -- record boundaries ------------------------------------------------------------------------
    def starts_record(self, line: str) -> bool:
        """Whether ``line`` begins a new record rather than continuing the previous one.

        Indented lines and Python tracebacks continue a record; any other line starts one. The
        caller additionally lets a non-start line continue only a record whose first line had a
        recognised header, so unknown files stay one record per line.
        """
        if not line:
            return False
        c = line[0]
        if c == " " or c == "\t":
            return False
        if c == "T":
            return not line.startswith("Traceback (most recent call last)") and not line.startswith("The above exception")
        return not (c == "D" and line.startswith("During handling of the above exception"))

    # -- dispatch (auto) --------------------------------------------------------------------------
    def _bracketed(self, line: str) -> Result:
        return self._basf2(line) or self._ts_level(line) or _raw(line)

    def _numeric(self, line: str) -> Result:
        return self._basf2(line) or self._ts_level(line) or self._iso_syslog(line) or _raw(line)

    def _month(self, line: str) -> Result:
        if line[:3] in _MONTHS:
            return self._bsd_syslog(line) or _raw(line)
        return _raw(line)

    def _coloured(self, line: str) -> Result:
        clean = _ANSI.sub("", line)
        if clean == line:  # an escape that is no colour code: nothing to take off
            return _raw(line)
        return self.first.get(clean[:1], self.other)(clean)

    def _basf2_or_raw(self, line: str) -> Result:
        return self._basf2(_ANSI.sub("", line) if "\x1b" in line else line) or _raw(line)

    def _syslog_or_raw(self, line: str) -> Result:
        return self._syslog(line) or _raw(line)

    def _syslog(self, line: str) -> Result | None:
        if line.startswith("<") and ">1 " in line[:8]:
            return self._rfc5424(line)
        if line[:1].isdigit():
            return self._iso_syslog(line)
        return self._bsd_syslog(line)

    # -- formats ----------------------------------------------------------------------------------
    def _basf2(self, line: str) -> Result | None:
        m = _BASF2_MODULE.match(line) if line[-1:] == "}" else None
        if m is not None:
            stamp, frac, zone, uptime, level, debug, proc, message, logger = m.groups()
            fields: dict[str, Any] | None = {"log.logger": logger}
        else:
            m = _BASF2.match(line)
            if m is None:
                return None
            stamp, frac, zone, uptime, level, debug, proc = m.groups()
            message, fields = _basf2_location(line[m.end():].rstrip())
        if stamp is None:
            ts = None
        else:  # _iso_time, inlined: this is most lines of an HLT log
            if stamp == self._stamp and zone == self._zone:
                ts = self._base
            else:
                ts = self._second(stamp, zone)
                if ts is None:
                    return None
            if frac:
                fraction = _FRACTIONS.get(frac)
                ts += _fraction(frac) if fraction is None else fraction
        if debug or proc or uptime:
            if fields is None:
                fields = {}
            if debug:
                fields["labels.debug_level"] = debug
            if proc:
                fields["labels.basf2_process"] = proc
            if uptime:
                fields["labels.basf2_uptime"] = uptime
        return ts, _BASF2_LEVELS[level], message, fields, None

    def _ts_level(self, line: str) -> Result | None:
        m = _TS_LEVEL.match(line)
        if m is None:
            return None
        stamp, frac, zone, level, message = m.groups()
        norm = _LEVELS.get(level.lower())
        if norm is None:
            return None
        ts = self._iso_time(stamp, frac, zone)
        if ts is None:
            return None
        return ts, norm, message, None, None

    def _rfc5424(self, line: str) -> Result | None:
        m = _RFC5424.match(line)
        if m is None:
            return None
        pri, stamp, host, app, procid, msgid, sd, message = m.groups()
        facility, severity = divmod(int(pri), 8)
        fields: dict[str, Any] = {"log.syslog.facility.code": facility, "log.syslog.severity.code": severity}
        if app != "-":
            fields["process.name"] = app
        if procid != "-":
            if procid.isdigit():
                fields["process.pid"] = int(procid)
            else:
                fields["log.syslog.procid"] = procid
        if msgid != "-":
            fields["log.syslog.msgid"] = msgid
        if sd != "-":
            for element in _SD_ELEMENT.finditer(sd):
                sd_id, params = element.groups()
                for name, value in _SD_PARAM.findall(params):
                    fields[f"log.syslog.structured_data.{sd_id}.{name}"] = \
                        _SD_ESCAPE.sub(r"\1", value) if "\\" in value else value
        ts = None
        if stamp != "-":
            tm = _ISO_RE.fullmatch(stamp)
            if tm is not None:
                ts = self._iso_time(*tm.groups())
        if message is None:
            message = ""
        elif message[:1] == "\ufeff":
            message = message[1:]
        return ts, _SYSLOG_SEVERITY[severity], message, fields, None if host == "-" else host

    def _bsd_syslog(self, line: str) -> Result | None:
        m = _RFC3164.match(line)
        if m is None:
            return None
        pri, month, day, clock, host, tag, pid, message = m.groups()
        fields: dict[str, Any] = {"process.name": tag}
        if pid:
            fields["process.pid"] = int(pid)
        level = ""
        if pri is not None:
            facility, severity = divmod(int(pri), 8)
            fields["log.syslog.facility.code"] = facility
            fields["log.syslog.severity.code"] = severity
            level = _SYSLOG_SEVERITY[severity]
        return self._bsd_time(month, day, clock), level, message, fields, host

    def _iso_syslog(self, line: str) -> Result | None:
        m = _ISO_SYSLOG.match(line)
        if m is None:
            return None
        stamp, frac, zone, host, tag, pid, message = m.groups()
        ts = self._iso_time(stamp, frac, zone)
        if ts is None:
            return None
        fields: dict[str, Any] = {"process.name": tag}
        if pid:
            fields["process.pid"] = int(pid)
        return ts, "", message, fields, host

    def _json(self, line: str) -> Result:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return None, "", line, {"error.message": f"not valid JSON: {exc}"}, None
        if type(doc) is not dict:
            return None, "", line, {"error.message": f"a JSON {type(doc).__name__}, not an object"}, None
        if dict in map(type, doc.values()):
            doc = _flatten(doc)
        ts = None
        level = ""
        message = host = None
        fields: dict[str, Any] = {}
        roles = _JSON_ROLES
        for key, value in doc.items():  # one pass; of several keys for one role the first usable wins
            role = roles.get(key)
            if role is not None:
                if role == 0:
                    if ts is None:
                        ts = self._any_time(value)
                        if ts is not None:
                            continue
                elif role == 1:
                    if not level and isinstance(value, str):
                        level = _LEVELS.get(value) or level_name(value)
                        continue
                elif role == 2:
                    if message is None and value is not None:
                        message = value if isinstance(value, str) else orjson.dumps(value).decode()
                        continue
                elif role == 3:
                    if host is None and isinstance(value, str):
                        host = value
                        continue
                elif role == 4:
                    if "log.logger" not in fields and isinstance(value, str):
                        fields["log.logger"] = value
                        continue
                elif type(value) is int and "process.pid" not in fields:
                    fields["process.pid"] = value
                    continue
            name = _LABEL_NAMES.get(key)
            if name is None:
                name = key if key.startswith(_ECS_PREFIXES) else "labels." + key
                if len(_LABEL_NAMES) < 4096:
                    _LABEL_NAMES[key] = name
            fields[name] = value if value is None or isinstance(value, (str, int, float, bool)) else orjson.dumps(value).decode()
        if message is None:
            message = line
        return ts, level, message, fields or None, host

    # -- time -------------------------------------------------------------------------------------
    def _iso_time(self, stamp: str, frac: str | None, zone: str | None) -> float | None:
        """Epoch seconds of an ISO-like time (None: no such date); whole seconds are cached per (text, zone)."""
        if stamp == self._stamp and zone == self._zone:
            base = self._base
        else:
            base = self._second(stamp, zone)
            if base is None:
                return None
        if frac:
            fraction = _FRACTIONS.get(frac)
            return base + (_fraction(frac) if fraction is None else fraction)
        return base

    def _second(self, stamp: str, zone: str | None) -> float | None:
        """Epoch seconds of ``YYYY-MM-DD?HH:MM:SS`` in ``zone``, remembered as the last second parsed.

        None when the digits are no time (month 13, hour 24, offset +25:00): such a line is not
        taken for a timestamped line of that format (and ends up kept whole, as raw).
        """
        key = (stamp, zone)
        base = self._seconds.get(key)
        if base is None:
            try:
                dt = datetime(int(stamp[0:4]), int(stamp[5:7]), int(stamp[8:10]),
                              int(stamp[11:13]), int(stamp[14:16]), int(stamp[17:19]))
                if zone is None:
                    dt = dt.replace(tzinfo=self.tz) if self.tz is not None else dt.astimezone()
                elif zone == "Z":
                    dt = dt.replace(tzinfo=timezone.utc)
                else:
                    sign = -1 if zone[0] == "-" else 1
                    minutes = int(zone[1:3]) * 60 + int(zone[-2:])
                    dt = dt.replace(tzinfo=timezone(sign * timedelta(minutes=minutes)))
                base = dt.timestamp()
            except (ValueError, OverflowError):
                return None
            if len(self._seconds) > 65536:
                self._seconds.clear()
            self._seconds[key] = base
        self._stamp, self._zone, self._base = stamp, zone, base
        return base

    def _bsd_time(self, month: str, day: str, clock: str) -> float | None:
        key = f"{month} {day} {clock}"
        cached = self._bsd.get(key)
        if cached is not None:
            return cached
        month_no = _MONTHS.get(month)
        if month_no is None:
            return None
        now = self._now() if self._now else datetime.now().timestamp()
        zone = self.tz or datetime.now().astimezone().tzinfo
        year = datetime.fromtimestamp(now, zone).year
        try:
            dt = datetime(year, month_no, int(day), int(clock[0:2]), int(clock[3:5]), int(clock[6:8]), tzinfo=self.tz)
            if self.tz is None:
                dt = dt.astimezone()
            ts = dt.timestamp()
            if ts > now + 86400:  # December's lines read in January
                ts = dt.replace(year=year - 1).timestamp()
        except ValueError:
            return None
        if len(self._bsd) > 65536:
            self._bsd.clear()
        self._bsd[key] = ts
        return ts

    def _any_time(self, value: object) -> float | None:
        if isinstance(value, (int, float)) and not isinstance(value, bool):
            number = float(value)
            return number / 1000 if number > 1e11 else number  # milliseconds since the epoch
        if isinstance(value, str):
            m = _ISO_RE.match(value)
            if m is not None:
                return self._iso_time(*m.groups())
        return None


def _raw(line: str) -> Result:
    return None, "", line, None, None


def _fraction(digits: str) -> float:
    value = int(digits) / _SCALE[len(digits)]
    if len(_FRACTIONS) >= 65536:
        _FRACTIONS.clear()
    _FRACTIONS[digits] = value
    return value


def _basf2_location(message: str) -> tuple[str, dict[str, Any] | None]:
    """``message  { module: M package: P function: F @file:line }`` → (message, fields)."""
    if message.endswith(" }"):
        cut = message.rfind("  { ")
        if cut >= 0:
            location = message[cut + 4:-2]
            message = message[:cut]
            if location.startswith("module: ") and " " not in location[8:]:
                return message, {"log.logger": location[8:]}
            if location:
                loc = _LOCATION.match(location)
                if loc is not None:
                    return message, _location(loc)
                return f"{message}  {{ {location} }}", None
    return message, None


def _location(loc: re.Match[str]) -> dict[str, Any] | None:
    """Fields of a basf2 location other than a lone module (``module: M package: P function: F @file:line``)."""
    module, package, function, file, lineno = loc.groups()
    fields: dict[str, Any] = {}
    if module:
        fields["log.logger"] = module
    if package:
        fields["labels.basf2_package"] = package
    if function:
        fields["log.origin.function"] = function
    if file:
        fields["log.origin.file.name"] = file
        fields["log.origin.file.line"] = int(lineno)
    return fields or None


def _flatten(doc: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """Nested objects as dotted keys (``{"log": {"level": "x"}}`` → ``log.level``), as ECS writes them."""
    out: dict[str, Any] = {}
    for key, value in doc.items():
        name = prefix + str(key)
        if isinstance(value, dict) and value:
            out.update(_flatten(value, name + "."))
        else:
            out[name] = value
    return out


def zone(name: str) -> tzinfo | None:
    """A config ``timezone`` (IANA name or ``local``) as a tzinfo; None means the local zone."""
    return None if name == "local" else ZoneInfo(name)


__all__ = ["FORMATS", "LineParser", "Parsed", "Result", "level_name", "zone"]
