"""HLT ZeroMQ monitor endpoints: the JSON state dumps of distributors, collectors, histogram servers.

Protocol facts (``shared/specs/hlt-zmq-monitoring.md``): each app binds a ROUTER on its monitor
address; a DEALER sends ``[b"m", b"", b""]`` and gets exactly one ``[b"c", <json>, b""]``. A reply
has no request id, so the only safe way to never take a late reply for the next cycle's answer is
to close and reopen that endpoint's socket after a timeout, which is what this source does.

Unlike ``b2hlt_monitor.py`` all endpoints are asked at once and answered into one deadline, a
dead/slow/garbage endpoint only marks *its own* cycle as failed, and rates come from counter
differences (the apps' own ``event_rate`` values are stale by design and excluded by default).

Only the monitoring request ``m`` is ever sent: ``_REQUEST`` is the single thing written to a socket.
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from dataclasses import dataclass, field
from datetime import datetime
from fnmatch import fnmatchcase
from typing import Any, ClassVar
from zoneinfo import ZoneInfo

import orjson
import zmq

from farmwatch.model import Batch, Labels, SeriesKey, labels as make_labels
from farmwatch.sources.base import Source
from farmwatch.sources.hlt_zmq.config import HltZmqConfig

log = logging.getLogger(__name__)

_REQUEST = (b"m", b"", b"")
_NANINF = re.compile(rb"(?<=[:\[,])(\s*)(-?)(nan|inf)(?=\s*[,}\]])", re.IGNORECASE)


def _nan_repl(m: re.Match[bytes]) -> bytes:
    return m.group(1) + m.group(2) + (b"NaN" if m.group(3).lower() == b"nan" else b"Infinity")


def decode_reply(raw: bytes) -> dict[str, Any]:
    """The reply JSON, tolerating what the hand-built C++ JSON can contain.

    Fast path: strict JSON. Fallback: bare ``nan``/``inf`` (printf of a double), control
    characters and non-UTF-8 bytes in unescaped keys (binary ZeroMQ identities).
    """
    try:
        doc = orjson.loads(raw)
    except orjson.JSONDecodeError:
        fixed = _NANINF.sub(_nan_repl, raw).replace(b"-NaN", b"NaN")
        try:
            text = fixed.decode("utf-8")
        except UnicodeDecodeError:
            text = fixed.decode("latin-1")
        try:
            doc = json.loads(text, strict=False)
        except json.JSONDecodeError as exc:
            raise ValueError(f"invalid JSON at byte {exc.pos}: {exc.msg}") from None
    if not isinstance(doc, dict):
        raise ValueError(f"reply is a JSON {type(doc).__name__}, not an object")
    return doc


_UNPRINTABLE = re.compile(r"[^\x21-\x7e]")


def clean(text: str) -> str:
    """Printable ASCII only: identities may carry raw bytes; labels and names must be safe to print."""
    if _UNPRINTABLE.search(text) is None:
        return text
    return _UNPRINTABLE.sub(lambda m: "\\x%02x" % ord(m.group()) if ord(m.group()) < 256 else "\\u%04x" % ord(m.group()), text)


def split_identity(identity: str) -> dict[str, str]:
    """``hltwk03_4711`` → host/pid; the host may contain ``_`` (split at the last one)."""
    host, sep, pid = identity.rpartition("_")
    if sep and host and pid.isdigit():
        return {"host": clean(host), "pid": pid}
    return {"peer": clean(identity)}


_CTIME = re.compile(r"^[A-Z][a-z]{2} [A-Z][a-z]{2} [ \d]\d \d\d:\d\d:\d\d \d{4}$")


@dataclass(slots=True)
class _Key:
    """What one raw reply key becomes; computed once per endpoint and key, then cached."""

    series: SeriesKey | None  # None: excluded
    rate: SeriesKey | None


@dataclass(eq=False)
class _Target:
    labels: Labels
    address: str
    sock: zmq.Socket | None = None
    up: bool | None = None
    reason: str = ""
    keys: dict[tuple[str, str], _Key] = field(default_factory=dict)
    counters: dict[SeriesKey, tuple[float, float]] = field(default_factory=dict)
    states: dict[SeriesKey, str] = field(default_factory=dict)
    times: dict[SeriesKey, tuple[str, float]] = field(default_factory=dict)
    monitoring_counter: float | None = None
    failures: int = 0
    duplicates: int = 0
    ignored: int = 0
    restarts: int = 0
    sent_at: float = 0.0
    sections: set[str] = field(default_factory=set)

    def describe(self) -> str:
        d = dict(self.labels)
        extra = ",".join(f"{k}={v}" for k, v in self.labels if k not in ("unit", "app"))
        return f"{d.get('unit')}/{d.get('app')}{'{' + extra + '}' if extra else ''} at {self.address}"


KNOWN_SECTIONS = frozenset({"monitor", "input", "output", "roi"})
_PEER_LABELS = frozenset({"host", "pid", "peer"})
"""Labels a per-peer key adds to its endpoint's (``split_identity``)."""


class HltZmqSource(Source):
    """Polls every configured monitor endpoint once per interval, all at once, into one deadline."""

    Config: ClassVar[type[HltZmqConfig]] = HltZmqConfig
    config: HltZmqConfig

    def __init__(self, name: str, config: HltZmqConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self._ctx = zmq.Context()
        self._tz = None if config.timezone == "local" else ZoneInfo(config.timezone)
        base = make_labels(config.labels)
        self.targets = []
        for e in config.endpoints:
            lbls = make_labels({**dict(base), **{k: v for k, v in e.items() if k != "address"}})
            self.targets.append(_Target(labels=lbls, address=e["address"]))
        for t in self.targets:
            self._open(t)
        self._sock_target: dict[zmq.Socket, _Target] = {}
        self._prev_ts: float | None = None
        self._store: Any = None
        self._primed = False

    def bind_store(self, store: Any) -> None:
        self._store = store if hasattr(store, "latest") else None

    def _prime(self, ts: float) -> None:
        """Counters and monitoring counters of the previous run, newest in the store and at most
        ``rate_lookback`` old: the first cycle then derives ``:rate`` series (and sees an app
        restart) as the running service would. Cron mode (``collect --once``) depends on it."""
        self._primed = True
        lookback = self.config.rate_lookback
        if self._store is None or not lookback:
            return
        targets = {t.labels: t for t in self.targets}
        globs = ["hlt." + g for g in self.config.rates] + ["hlt.monitor.monitoring_counter"]
        try:
            frames = [self._store.latest(g) for g in globs]
        except Exception as exc:  # never a reason to skip a cycle: rates start one cycle later
            log.warning("hlt source %s: cannot read the previous counters from the store: %s", self.name, exc)
            return
        for glob, frame in zip(globs, frames):
            if frame.empty:
                continue
            stamps = frame["ts"].to_numpy(dtype="datetime64[ns]").astype("int64") / 1e9
            for when, name, value, lbls in zip(stamps.tolist(), frame["name"], frame["value"].tolist(), frame["labels"]):
                if not ts - lookback <= when < ts or not math.isfinite(value):
                    continue
                own = make_labels({k: v for k, v in lbls.items() if k not in _PEER_LABELS})
                t = targets.get(own)
                if t is None:
                    continue
                if glob == globs[-1]:
                    if own == make_labels(lbls):
                        t.monitoring_counter = value
                else:
                    t.counters[(name, make_labels(lbls))] = (when, value)

    # -- sockets -------------------------------------------------------------------------------
    def _open(self, t: _Target) -> None:
        s = self._ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.setsockopt(zmq.IMMEDIATE, 1)  # never queue the request on a connection that is not up
        s.setsockopt(zmq.MAXMSGSIZE, int(self.config.max_reply_size))
        s.setsockopt(zmq.RCVHWM, 16)
        s.setsockopt(zmq.SNDHWM, 1)
        s.setsockopt(zmq.RECONNECT_IVL, 100)
        s.setsockopt(zmq.RECONNECT_IVL_MAX, 5000)
        s.connect(t.address)
        t.sock = s

    def _reset(self, t: _Target) -> None:
        """Drop the socket so a late reply can never be read as the next cycle's answer."""
        if t.sock is not None:
            t.sock.close(linger=0)
        self._open(t)

    def _drain(self, t: _Target) -> None:
        """Anything waiting before we ask is unsolicited (a second answer to an earlier request)."""
        assert t.sock is not None
        while True:
            try:
                t.sock.recv_multipart(zmq.NOBLOCK)
            except zmq.Again:
                return
            t.duplicates += 1
            log.debug("hlt %s: discarded an unsolicited reply", t.describe())

    # -- one cycle -----------------------------------------------------------------------------
    def poll(self) -> list[Batch]:
        ts = self.clock.time()
        if not self._primed:
            self._prime(ts)
        start = time.monotonic()
        deadline = start + self.config.timeout
        poller = zmq.Poller()
        to_send: dict[zmq.Socket, _Target] = {}
        waiting: dict[zmq.Socket, _Target] = {}
        for t in self.targets:
            self._drain(t)
            if self._send(t, start):
                waiting[t.sock] = t
                poller.register(t.sock, zmq.POLLIN)
            else:
                to_send[t.sock] = t
                poller.register(t.sock, zmq.POLLOUT)

        batches: list[Batch] = []
        while waiting or to_send:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            for sock, ev in poller.poll(remaining * 1000):
                if ev & zmq.POLLIN and sock in waiting:
                    t = waiting.pop(sock)
                    poller.unregister(sock)
                    batches.append(self._receive(t, ts))
                elif ev & zmq.POLLOUT and sock in to_send:
                    t = to_send.pop(sock)
                    poller.unregister(sock)
                    if self._send(t, time.monotonic()):
                        waiting[sock] = t
                        poller.register(sock, zmq.POLLIN)
                    else:
                        to_send[sock] = t
                        poller.register(sock, zmq.POLLOUT)

        for t in waiting.values():
            self._reset(t)
            batches.append(self._fail(t, ts, f"no reply within {self.config.timeout:g}s"))
        for t in to_send.values():
            batches.append(self._fail(t, ts, "not connected (nothing listening, or unreachable)"))
        self._prev_ts = ts
        return batches

    def _send(self, t: _Target, now: float) -> bool:
        assert t.sock is not None
        try:
            t.sock.send_multipart(_REQUEST, zmq.NOBLOCK)
        except zmq.Again:
            return False
        t.sent_at = now
        return True

    def _receive(self, t: _Target, ts: float) -> Batch:
        assert t.sock is not None
        frames = t.sock.recv_multipart(zmq.NOBLOCK)
        elapsed = time.monotonic() - t.sent_at
        if len(frames) != 3 or frames[0] != b"c":
            self._reset(t)  # the peer does not speak the protocol; do not trust this connection
            kind = frames[0][:8] if frames else b""
            return self._fail(t, ts, f"malformed reply ({len(frames)} frames, type {kind!r}; expected 3 frames, type b'c')")
        try:
            doc = decode_reply(frames[1])
        except ValueError as exc:
            return self._fail(t, ts, f"unparseable reply ({len(frames[1])} bytes): {exc}")
        batch = self._flatten(t, doc, ts)
        self._mark(t, True, "")
        self._health(t, batch, elapsed)
        return batch

    # -- results -------------------------------------------------------------------------------
    def _fail(self, t: _Target, ts: float, reason: str) -> Batch:
        t.failures += 1
        self._mark(t, False, reason)
        batch = Batch(ts)
        self._health(t, batch, math.nan)
        return batch

    def _mark(self, t: _Target, up: bool, reason: str) -> None:
        """Log once per change of state (and of the reason for being down), never per cycle."""
        if up and t.up is not True:
            if t.up is False:
                log.info("hlt endpoint %s is answering again", t.describe())
        elif not up and (t.up is not False or t.reason != reason):
            log.warning("hlt endpoint %s: %s", t.describe(), reason)
            t.states.clear()  # re-emit every state value once it answers again
        t.up, t.reason = up, reason

    def _health(self, t: _Target, batch: Batch, elapsed: float) -> None:
        lb = t.labels
        batch.add(("up", lb), 1.0 if t.up else 0.0)
        batch.add(("hlt.poll.duration", lb), elapsed)
        batch.add(("hlt.poll.failures", lb), float(t.failures))
        batch.add(("hlt.poll.duplicate_replies", lb), float(t.duplicates))
        batch.add(("hlt.poll.ignored_values", lb), float(t.ignored))
        batch.add(("hlt.poll.restarts", lb), float(t.restarts))

    def _key(self, t: _Target, section: str, key: str) -> _Key:
        lb, rb = key.find("["), key.rfind("]")
        lbls = t.labels
        if 0 < lb < rb:
            base = key[:lb] + key[rb + 1 :]
            lbls = make_labels({**dict(lbls), **split_identity(key[lb + 1 : rb])})
        else:
            base = key
        short = f"{clean(section)}.{clean(base)}"
        if any(fnmatchcase(short, p) for p in self.config.exclude):
            entry = _Key(None, None)
        else:
            name = "hlt." + short
            rate = (name + ":rate", lbls) if any(fnmatchcase(short, p) for p in self.config.rates) else None
            entry = _Key((name, lbls), rate)
        t.keys[(section, key)] = entry
        return entry

    def _ctime(self, t: _Target, series: SeriesKey, text: str) -> float | None:
        cached = t.times.get(series)
        if cached is not None and cached[0] == text:
            return cached[1]
        if not _CTIME.match(text):
            return None
        dt = datetime.strptime(text, "%a %b %d %H:%M:%S %Y")
        epoch = (dt.replace(tzinfo=self._tz) if self._tz else dt.astimezone()).timestamp()
        t.times[series] = (text, epoch)
        return epoch

    def _flatten(self, t: _Target, doc: dict[str, Any], ts: float) -> Batch:
        batch = Batch(ts)
        add = batch.add
        monitor = doc.get("monitor")
        restarted = False
        if isinstance(monitor, dict):
            mc = monitor.get("monitoring_counter")
            if isinstance(mc, (int, float)) and not isinstance(mc, bool):
                if t.monitoring_counter is not None and mc < t.monitoring_counter:
                    restarted = True
                    t.restarts += 1
                    t.keys.clear()  # the new process has new peers; forget the old ones' keys
                    t.times.clear()
                    log.warning("hlt endpoint %s restarted (monitoring_counter %g → %g); counters reset", t.describe(), t.monitoring_counter, mc)
                t.monitoring_counter = mc
        counters = t.counters
        for section, body in doc.items():
            if not isinstance(body, dict):
                t.ignored += 1
                continue
            if section not in t.sections:
                t.sections.add(section)
                if section not in KNOWN_SECTIONS:
                    log.info("hlt endpoint %s: section %r is not in the protocol spec; storing it as hlt.%s.*", t.describe(), section, clean(section))
            keys = t.keys
            for key, value in body.items():
                entry = keys.get((section, key)) or self._key(t, section, key)
                series = entry.series
                if series is None:
                    continue
                vt = type(value)
                if vt is int or vt is float:
                    num = float(value)
                elif vt is str:
                    text = value.strip()
                    try:
                        num = float(text)
                    except ValueError:
                        if not text:
                            continue
                        epoch = self._ctime(t, series, text)
                        if epoch is not None:
                            add(series, epoch)
                            continue
                        if t.states.get(series) != text:
                            t.states[series] = text
                            add(series, clean(text) if len(text) < 256 else clean(text[:255]) + "…")
                        continue
                elif vt is bool:
                    num = 1.0 if value else 0.0
                else:
                    t.ignored += 1
                    continue
                add(series, num)
                rate = entry.rate
                if rate is not None:
                    prev = counters.get(series)
                    counters[series] = (ts, num)
                    if prev is not None and ts > prev[0] and math.isfinite(num) and math.isfinite(prev[1]):
                        increase = num - prev[1]
                        if restarted or increase < 0:
                            increase = num  # counter reset: it counted up from zero since
                        add(rate, increase / (ts - prev[0]))
        if restarted:
            t.counters = {k: v for k, v in counters.items() if v[0] == ts}
        return batch

    def close(self) -> None:
        for t in self.targets:
            if t.sock is not None:
                t.sock.close(linger=0)
                t.sock = None
        self._ctx.term()


SOURCE = HltZmqSource


__all__ = ["KNOWN_SECTIONS", "SOURCE", "HltZmqConfig", "HltZmqSource", "clean", "decode_reply", "split_identity"]
