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

FORMATS = ("auto", "basf2", "syslog", "json", "raw")


class Parsed(NamedTuple):
    ts: float | None
    level: str
    message: str
    fields: dict[str, Any] | None
    host: str | None


_parsed = tuple.__new__  # Parsed(...) without the NamedTuple's Python-level __new__ (hot path)

_LEVELS = {
    "debug": "debug", "trace": "debug", "info": "info", "information": "info", "notice": "notice",
    "result": "result", "warn": "warning", "warning": "warning", "error": "error", "err": "error",
    "critical": "critical", "crit": "critical", "fatal": "fatal", "alert": "alert",
    "emerg": "emergency", "emergency": "emergency", "panic": "emergency",
}
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


def level_name(text: str) -> str:
    """Normalised level (``warn`` → ``warning``); unknown words are kept, lower-cased."""
    low = text.lower()
    return _LEVELS.get(low, low)


class LineParser:
    """Parses lines of one file (``fmt``); naive timestamps are in ``tz`` (None: the local zone).

    ``year_of`` gives the year for RFC 3164 times, which have none: the caller's clock year, or
    the year before when that would put the line more than a day into the future.
    """

    def __init__(self, fmt: str = "auto", tz: tzinfo | None = None, now: Callable[[], float] | None = None) -> None:
        if fmt not in FORMATS:
            raise ValueError(f"unknown log format {fmt!r}; expected one of {', '.join(FORMATS)}")
        self.fmt = fmt
        self.tz = tz
        self._now = now
        self._seconds: dict[tuple[str, str | None], float] = {}
        self._bsd: dict[str, float] = {}
        self.parse: Callable[[str], Parsed] = {
            "auto": self._auto, "basf2": self._basf2_or_raw, "syslog": self._syslog_or_raw,
            "json": self._json, "raw": _raw,
        }[fmt]

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

    # -- dispatch ---------------------------------------------------------------------------------
    def _auto(self, line: str) -> Parsed:
        c = line[:1]
        if c == "[":
            return self._basf2(line) or self._ts_level(line) or _raw(line)
        if c == "{":
            return self._json(line)
        if c == "<":
            return self._syslog(line) or _raw(line)
        if "0" <= c <= "9":
            return self._basf2(line) or self._ts_level(line) or self._iso_syslog(line) or _raw(line)
        if "A" <= c <= "Z" and line[:3] in _MONTHS:
            return self._bsd_syslog(line) or _raw(line)
        if c == "\x1b":
            return self._auto(_ANSI.sub("", line))
        return _raw(line)

    def _basf2_or_raw(self, line: str) -> Parsed:
        return self._basf2(_ANSI.sub("", line) if "\x1b" in line else line) or _raw(line)

    def _syslog_or_raw(self, line: str) -> Parsed:
        return self._syslog(line) or _raw(line)

    def _syslog(self, line: str) -> Parsed | None:
        if line.startswith("<") and ">1 " in line[:8]:
            return self._rfc5424(line)
        if line[:1].isdigit():
            return self._iso_syslog(line)
        return self._bsd_syslog(line)

    # -- formats ----------------------------------------------------------------------------------
    def _basf2(self, line: str) -> Parsed | None:
        m = _BASF2.match(line)
        if m is None:
            return None
        stamp, frac, zone, uptime, level, debug, proc = m.groups()
        ts = self._iso_time(stamp, frac, zone) if stamp else None
        message = line[m.end():].rstrip()
        fields: dict[str, Any] = {}
        location = None
        if message.endswith(" }"):
            cut = message.rfind("  { ")
            if cut >= 0:
                location = message[cut + 4:-2]
                message = message[:cut]
        if location is not None and location.startswith("module: ") and " " not in location[8:]:
            fields["log.logger"] = location[8:]  # the usual case, without the regex
        elif location:
            loc = _LOCATION.match(location)
            if loc is not None:
                module, package, function, file, lineno = loc.groups()
                if module:
                    fields["log.logger"] = module
                if package:
                    fields["labels.basf2_package"] = package
                if function:
                    fields["log.origin.function"] = function
                if file:
                    fields["log.origin.file.name"] = file
                    fields["log.origin.file.line"] = int(lineno)
            else:
                message = f"{message}  {{ {location} }}"
        if debug:
            fields["labels.debug_level"] = debug
        if proc:
            fields["labels.basf2_process"] = proc
        if uptime:
            fields["labels.basf2_uptime"] = uptime
        return _parsed(Parsed, (ts, _BASF2_LEVELS[level], message, fields or None, None))

    def _ts_level(self, line: str) -> Parsed | None:
        m = _TS_LEVEL.match(line)
        if m is None:
            return None
        stamp, frac, zone, level, message = m.groups()
        norm = _LEVELS.get(level.lower())
        if norm is None:
            return None
        return _parsed(Parsed, (self._iso_time(stamp, frac, zone), norm, message, None, None))

    def _rfc5424(self, line: str) -> Parsed | None:
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
        message = (message or "").removeprefix("\ufeff")
        return _parsed(Parsed, (ts, _SYSLOG_SEVERITY[severity], message, fields, None if host == "-" else host))

    def _bsd_syslog(self, line: str) -> Parsed | None:
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
        return _parsed(Parsed, (self._bsd_time(month, day, clock), level, message, fields, host))

    def _iso_syslog(self, line: str) -> Parsed | None:
        m = _ISO_SYSLOG.match(line)
        if m is None:
            return None
        stamp, frac, zone, host, tag, pid, message = m.groups()
        fields: dict[str, Any] = {"process.name": tag}
        if pid:
            fields["process.pid"] = int(pid)
        return _parsed(Parsed, (self._iso_time(stamp, frac, zone), "", message, fields, host))

    def _json(self, line: str) -> Parsed:
        try:
            doc = orjson.loads(line)
        except orjson.JSONDecodeError as exc:
            return _parsed(Parsed, (None, "", line, {"error.message": f"not valid JSON: {exc}"}, None))
        if not isinstance(doc, dict):
            return _parsed(Parsed, (None, "", line, {"error.message": f"a JSON {type(doc).__name__}, not an object"}, None))
        if any(type(v) is dict for v in doc.values()):
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
                        level = level_name(value)
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
            name = key if key.startswith(_ECS_PREFIXES) else "labels." + key
            fields[name] = value if value is None or isinstance(value, (str, int, float, bool)) else orjson.dumps(value).decode()
        if message is None:
            message = line
        return _parsed(Parsed, (ts, level, message, fields or None, host))

    # -- time -------------------------------------------------------------------------------------
    def _iso_time(self, stamp: str, frac: str | None, zone: str | None) -> float:
        """Epoch seconds of an ISO-like time; the whole seconds are cached per (text, zone)."""
        key = (stamp, zone)
        base = self._seconds.get(key)
        if base is None:
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
            if len(self._seconds) > 65536:
                self._seconds.clear()
            self._seconds[key] = base
        if frac:
            return base + int(frac) / _SCALE[len(frac)]
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


def _raw(line: str) -> Parsed:
    return _parsed(Parsed, (None, "", line, None, None))


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
