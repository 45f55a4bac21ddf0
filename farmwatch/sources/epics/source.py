"""EPICS process variables over Channel Access (pyepics' ``ca`` layer): subscriptions, never polling, never writing.

Every configured PV gets one CA channel with a connection callback and one value subscription.
The subscription's callback is a small ctypes function that only copies the raw DBR bytes into a
buffer under a lock; ``poll()`` decodes what arrived since the previous call. This is not
``epics.PV``: its per-update Python machinery (unpacking, metadata, keyword dicts, several calls)
costs ~35 µs per update, which at 5,000 PVs × 10 Hz is more than one core
(``benchmarks/bench_epics.py``); the raw callback costs a fraction of that. Facts this relies on
(``shared/specs/nsm-epics.md``):

* CA reads its configuration (address list, …) when the first CA call creates the context, so the
  ``ca_*`` settings are put into the environment *before* that; all epics sources of one process
  share the context and must agree on them.
* Only the connection callback tells whether a PV is up (a cached value says nothing).
* Enum PVs are subscribed as ``DBR_CTRL_ENUM``: every update carries its labels, so a value is
  never stored as the bare index (``epics.PV`` may deliver the index before the labels).
* After an IOC restart CA reconnects and re-installs the subscription on its own; the connection
  callback checks the native type again and subscribes anew if it changed.

What is stored: numbers (any numeric type, requested as ``DBR_DOUBLE``) as samples; strings and
enum labels as state values; ``CHAR`` waveforms as text (``char_waveforms = "text"``, the EPICS
convention for long strings; up to the first NUL) or as numbers (``"numbers"``, then like other
arrays); numeric arrays reduced or per element (``arrays``). A value farmwatch cannot turn into
the PV's kind — an enum index without a label, an array of strings, or a record whose kind
(number / state / array) changed across an IOC restart — is ignored and counted
(``epics.pv.ignored``), with one log line per PV and reason; ``up`` still follows the connection.
The kind is fixed by the first connection so that a series never switches between numbers and
text under alert rules; restart farmwatch to accept a deliberately changed record.

Series (labels: ``pv=<name>``, the entry's template labels, the source's ``labels``):

* ``epics.pv`` — numeric values (samples), strings, enum labels and char-waveform text (state values);
  arrays with ``arrays = "elements"``: one series per element with label ``index``;
  with ``arrays = "reduce"``: ``epics.pv.count``, ``epics.pv.mean``, ``epics.pv.min``, ``epics.pv.max``;
* ``epics.pv.ignored`` — values ignored so far (cumulative), every poll once one was ignored;
* ``up`` — 1 while the PV is connected, 0 otherwise; every poll, for every configured PV.

Nothing here ever calls ``put``: farmwatch only reads the slow control.
"""

from __future__ import annotations

import ctypes
import logging
import math
import os
import struct
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar

import numpy as np

from farmwatch.model import Batch, Labels, SeriesKey, labels as make_labels, with_labels
from farmwatch.sources.base import Source
from farmwatch.sources.epics.config import CharMode, EpicsConfig, PVEntry

log = logging.getLogger(__name__)

_TS_RESOLUTION = 0.01

_ctx_lock = threading.Lock()
_ctx_env: dict[str, str] | None = None  # what the current context was created with (None: no context yet)
_ctx_users = 0
_channel_users: dict[str, int] = {}  # CA caches one channel per name: clear it when its last user closes


def _ca():  # imported lazily: importing farmwatch must not load libca
    import epics
    import epics.ca

    return epics


def _acquire_context(env: dict[str, str]) -> None:
    """Put ``env`` into the environment before the CA context exists; share a context that has it."""
    global _ctx_env, _ctx_users
    epics = _ca()
    with _ctx_lock:
        if epics.ca.libca is not None and _ctx_env is None:
            _ctx_env = {}  # someone else created the context: record it as "default settings"
        if _ctx_env is not None:
            conflict = {k: v for k, v in env.items() if _ctx_env.get(k, os.environ.get(k)) != v}
            if conflict and _ctx_users == 0:
                _reset_context_locked()
            elif conflict:
                have = {k: _ctx_env.get(k, os.environ.get(k, "(unset)")) for k in conflict}
                raise ValueError(f"CA settings {conflict} differ from those of another epics source in this process "
                                 f"({have}); Channel Access has one context per process, so give all epics sources the same ca_* settings")
        if _ctx_env is None:
            os.environ.update(env)
            epics.ca.initialize_libca()
            _ctx_env = dict(env)
        _ctx_users += 1


def _release_context() -> None:
    global _ctx_users
    with _ctx_lock:
        _ctx_users = max(0, _ctx_users - 1)


def _reset_context_locked() -> None:
    global _ctx_env
    epics = _ca()
    if epics.ca.libca is not None:
        epics.ca.finalize_libca()
        # pyepics marks a finalized library as unusable; a fresh context re-reads the environment
        epics.ca.libca = None
        epics.ca.initial_context = None
    _ctx_env = None


def reset_context() -> None:
    """Destroy the CA context (when no epics source is open) so the next one re-reads the environment."""
    with _ctx_lock:
        if _ctx_users == 0:
            _reset_context_locked()


def _attach() -> None:
    """Attach the calling thread to the CA context (poll and close may run on other threads)."""
    ca = _ca().ca
    if ca.current_context() is None:
        ca.use_initial_context()


# -- DBR types and the raw subscription callback ---------------------------------------------------
DBR_STRING, DBR_SHORT, DBR_FLOAT, DBR_ENUM, DBR_CHAR, DBR_LONG, DBR_DOUBLE = range(7)
DBR_CTRL_ENUM = 31
_TYPE_NAMES = {DBR_STRING: "STRING", DBR_SHORT: "SHORT", DBR_FLOAT: "FLOAT", DBR_ENUM: "ENUM", DBR_CHAR: "CHAR",
               DBR_LONG: "LONG", DBR_DOUBLE: "DOUBLE"}
_VALUE_SIZE = {DBR_STRING: 40, DBR_CHAR: 1, DBR_DOUBLE: 8}
_CTRL_ENUM = struct.Struct("=hhh416sH")  # status, severity, no_str, strs[16][26], value (dbr_ctrl_enum)
_DOUBLE = struct.Struct("=d")
_ECA_NORMAL = 1
_DBE_VALUE_ALARM = 5


def _event_size(dbr_type: int, count: int) -> int:
    if dbr_type == DBR_CTRL_ENUM:
        return _CTRL_ENUM.size
    return _VALUE_SIZE[dbr_type] * count


def _on_event(args: Any) -> None:
    """libca's subscription callback (a CA thread): copy the raw value, nothing else."""
    try:
        p = args.usr
        src = p.source
        if src._closed:
            return
        if args.status != _ECA_NORMAL:
            raw = None  # e.g. read access lost; counted as ignored in poll()
            t, n = -1, 0
        else:
            t, n = args.type, args.count
            raw = ctypes.string_at(args.raw_dbr, _event_size(t, n))
        ts = math.floor(src.clock.time() / _TS_RESOLUTION) * _TS_RESOLUTION
        with src._lock:
            src._events.append((ts, p, t, raw))
    except Exception:  # noqa: BLE001 - an exception must never propagate into libca
        log.exception("epics: subscription callback failed")


_event_callback: Any = None


def _callback_pointer() -> Any:
    global _event_callback
    if _event_callback is None:
        from epics import dbr

        _event_callback = ctypes.CFUNCTYPE(None, dbr.event_handler_args)(_on_event)
    return _event_callback


def _request(native: int, nelm: int, char_mode: CharMode) -> tuple[int, int, str]:
    """(DBR type to subscribe with, element count to ask, kind of value) for a channel's native type."""
    if native == DBR_ENUM:
        return DBR_CTRL_ENUM, 1, "state"
    if native == DBR_STRING:
        return (DBR_STRING, 1, "state") if nelm <= 1 else (DBR_STRING, 0, "string array")
    if native == DBR_CHAR and nelm > 1 and char_mode == "text":
        return DBR_CHAR, 0, "state"
    return (DBR_DOUBLE, 1, "number") if nelm <= 1 else (DBR_DOUBLE, 0, "array")


# -- the source ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _PV:
    name: str
    labels: Labels
    key: SeriesKey
    up_key: SeriesKey
    char_mode: CharMode
    source: Any = None
    chid: Any = None
    conn_cb: Any = None
    uarg: Any = None  # the py_object libca holds as the subscription's user argument: keep it alive
    evid: Any = None
    request: tuple[int, int, str] | None = None  # what the current subscription asks for
    native: str = ""
    kind: str | None = None  # fixed by the first connection: number, state or array
    kind_now: str | None = None
    host: str = ""
    connected: bool = False
    ever_connected: bool = False
    reported_missing: bool = False
    ignored: int = 0
    ignored_reasons: set[str] = field(default_factory=set)
    element_keys: list[SeriesKey] = field(default_factory=list)


class EpicsSource(Source):
    """Monitors every configured PV; ``poll()`` decodes what the callbacks collected."""

    Config: ClassVar[type[EpicsConfig]] = EpicsConfig
    config: EpicsConfig

    def __init__(self, name: str, config: EpicsConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self._lock = threading.Lock()
        self._events: list[tuple[float, _PV, int, bytes | None]] = []  # (ts, pv, DBR type, raw value)
        self._closed = False
        self._last_keys: set[SeriesKey] = set()  # during poll(): the keys of the newest batch
        base = make_labels(config.labels)
        self.pvs: list[_PV] = []
        for e in config.pvs:
            lbls = make_labels({**dict(base), **e.labels, "pv": e.pv})
            self.pvs.append(_PV(e.pv, lbls, ("epics.pv", lbls), ("up", lbls), e.char_waveform or config.char_waveforms, self))
        _acquire_context(config.ca_environment())
        self.addr_list = os.environ.get("EPICS_CA_ADDR_LIST", "") or "(empty)"
        self.auto_addr_list = os.environ.get("EPICS_CA_AUTO_ADDR_LIST", "YES")
        self._started = time.monotonic()
        ca = _ca().ca
        _attach()
        _callback_pointer()
        with _ctx_lock:
            for p in self.pvs:
                _channel_users[p.name] = _channel_users.get(p.name, 0) + 1
        for p in self.pvs:
            p.uarg = ctypes.py_object(p)
            p.conn_cb = self._make_conn_cb(p)
            chid = ca.create_channel(p.name, connect=False, callback=p.conn_cb)
            if p.chid is None:  # (a shared channel that is connected already has called back)
                p.chid = chid
        ca.flush_io()

    # -- CA callbacks (CA threads: only record, never block) ----------------------------------------
    def _make_conn_cb(self, p: _PV):
        def on_connection(pvname: str | None = None, chid: Any = None, conn: bool = False, **_: Any) -> None:
            if self._closed:
                return
            if conn:
                try:
                    self._subscribe(p, chid)
                except Exception as exc:  # noqa: BLE001 - logged, the PV stays without values
                    log.warning("epics %s: PV %s: cannot subscribe: %s", self.name, p.name, exc)
            with self._lock:
                was, p.connected = p.connected, bool(conn)
                first = conn and not p.ever_connected
                p.ever_connected |= bool(conn)
                reported = p.reported_missing
            if conn and first and reported:
                log.info("epics %s: PV %s connected (at %s)", self.name, p.name, p.host)
            elif conn and not was and not first:
                log.info("epics %s: PV %s connected again (at %s)", self.name, p.name, p.host)
            elif not conn and was:
                log.warning("epics %s: PV %s disconnected", self.name, p.name)

        return on_connection

    def _subscribe(self, p: _PV, chid: Any) -> None:
        """(Re)subscribe after a connection if there is no subscription yet or the native type changed."""
        from epics import dbr

        ca = _ca().ca
        if chid is not None:
            p.chid = dbr.chid_t(chid)
        native, nelm = ca.field_type(p.chid), ca.element_count(p.chid)
        p.host = ca.host_name(p.chid)
        req = _request(native, nelm, p.char_mode)
        native_name = _TYPE_NAMES.get(native, str(native)) + (f"[{nelm}]" if nelm > 1 else "")
        if p.kind is None:
            p.kind = req[2]
        elif req[2] != p.kind_now:
            if req[2] != p.kind:
                log.warning("epics %s: PV %s changed type from %s to %s (%s instead of %s): its values are ignored "
                            "and counted in epics.pv.ignored until the type is back or farmwatch restarts",
                            self.name, p.name, p.native, native_name, req[2], p.kind)
            else:
                log.info("epics %s: PV %s is %s again: values are stored again", self.name, p.name, native_name)
        p.kind_now = req[2]
        if req[2] == p.kind or p.native == "":
            p.native = native_name
        if p.evid is not None and p.request == req:
            return  # CA re-installs an existing subscription on reconnect
        libca = ca.libca
        if p.evid is not None:
            libca.ca_clear_subscription(p.evid)
            p.evid = None
        evid = ctypes.c_void_p()
        status = libca.ca_create_subscription(req[0], req[1], p.chid, _DBE_VALUE_ALARM, _callback_pointer(),
                                              p.uarg, ctypes.byref(evid))
        if status != _ECA_NORMAL:
            raise RuntimeError(f"ca_create_subscription returned status {status}")
        p.evid, p.request = evid, req
        libca.ca_flush_io()

    # -- one cycle -------------------------------------------------------------------------------------
    def poll(self) -> list[Batch]:
        now = self.clock.time()
        with self._lock:
            events, self._events = self._events, []
            connected = [p.connected for p in self.pvs]
        batches: list[Batch] = []
        self._last_keys = set()
        for ts, p, dbr_type, raw in events:
            self._convert(p, ts, dbr_type, raw, batches)
        up = Batch(now)
        age = time.monotonic() - self._started
        for p, is_up in zip(self.pvs, connected):
            up.add(p.up_key, 1.0 if is_up else 0.0)
            if p.ignored:
                up.add(("epics.pv.ignored", p.labels), float(p.ignored))
            if not is_up and not p.ever_connected and not p.reported_missing and age >= self.config.missing_after:
                p.reported_missing = True
                log.warning("epics %s: PV %s not found: no IOC answered within %gs (EPICS_CA_ADDR_LIST=%s, EPICS_CA_AUTO_ADDR_LIST=%s)",
                            self.name, p.name, self.config.missing_after, self.addr_list, self.auto_addr_list)
        batches.append(up)
        return batches

    def _batch_for(self, batches: list[Batch], ts: float, keys: tuple[SeriesKey, ...]) -> Batch:
        """The batch of updates at ``ts`` (10 ms resolution), unless one of ``keys`` is in it already:
        two updates of one PV within 10 ms (a quick run-state transition) stay two values, in order."""
        if batches:
            last = batches[-1]
            if last.ts == ts and self._last_keys.isdisjoint(keys):
                self._last_keys.update(keys)
                return last
            if ts <= last.ts:
                ts = last.ts + 1e-6
        batches.append(Batch(ts))
        self._last_keys = set(keys)
        return batches[-1]

    def _ignore(self, p: _PV, reason: str) -> None:
        p.ignored += 1
        if reason not in p.ignored_reasons:
            p.ignored_reasons.add(reason)
            log.warning("epics %s: PV %s: %s; value ignored (counted in epics.pv.ignored)", self.name, p.name, reason)

    def _convert(self, p: _PV, ts: float, dbr_type: int, raw: bytes | None, batches: list[Batch]) -> None:
        if raw is None:
            self._ignore(p, "update with an error status (read access lost?)")
            return
        if p.kind_now != p.kind:
            return self._ignore(p, f"type changed to {p.kind_now} (was {p.kind})")
        if dbr_type == DBR_DOUBLE:
            if len(raw) == 8 and p.kind == "number":
                value = _DOUBLE.unpack(raw)[0]
                if ts == (batches[-1].ts if batches else None) and p.key not in self._last_keys:
                    self._last_keys.add(p.key)  # the common case, inlined: one more PV in the current batch
                    batches[-1].add(p.key, value)
                else:
                    self._batch_for(batches, ts, (p.key,)).add(p.key, value)
                return
            out: dict[SeriesKey, Any] = {}
            self._array(p, np.frombuffer(raw, dtype=np.float64), out)
        elif dbr_type == DBR_CTRL_ENUM:
            _, _, no_str, strs, index = _CTRL_ENUM.unpack(raw)
            if not 0 <= index < no_str:
                return self._ignore(p, f"enum index {index} has no label (the record defines {no_str})")
            out = {p.key: _text(strs[26 * index:26 * (index + 1)])}
        elif dbr_type == DBR_STRING:
            if p.kind != "state":
                return self._ignore(p, "an array of strings has no number or state value")
            out = {p.key: _text(raw)}
        elif dbr_type == DBR_CHAR:
            out = {p.key: _text(raw)}
        else:
            return self._ignore(p, f"unexpected DBR type {dbr_type}")
        if out:
            batch = self._batch_for(batches, ts, tuple(out))
            for k, v in out.items():
                batch.add(k, v)

    def _array(self, p: _PV, values: np.ndarray, out: dict[SeriesKey, Any]) -> None:
        if self.config.arrays == "elements":
            while len(p.element_keys) < len(values):
                p.element_keys.append(("epics.pv", with_labels(p.labels, index=len(p.element_keys))))
            for k, v in zip(p.element_keys, values.tolist()):
                out[k] = v
            return
        finite = values[np.isfinite(values)]
        out[("epics.pv.count", p.labels)] = float(len(values))
        out[("epics.pv.mean", p.labels)] = float(finite.mean()) if len(finite) else math.nan
        out[("epics.pv.min", p.labels)] = float(finite.min()) if len(finite) else math.nan
        out[("epics.pv.max", p.labels)] = float(finite.max()) if len(finite) else math.nan

    def close(self) -> None:
        """Subscriptions first (so no update arrives while channels go), then channels, one flush."""
        if self._closed:
            return
        self._closed = True
        ca = _ca().ca
        if ca.libca is None:
            _release_context()
            return
        _attach()
        for p in self.pvs:
            if p.evid is not None:
                try:
                    ca.libca.ca_clear_subscription(p.evid)
                except Exception as exc:  # noqa: BLE001 - closing must go on for the other PVs
                    log.debug("epics %s: clearing the subscription of %s: %s", self.name, p.name, exc)
                p.evid = None
        ctx = ca.current_context()
        for p in self.pvs:
            with _ctx_lock:
                left = _channel_users.get(p.name, 1) - 1
                if left > 0:
                    _channel_users[p.name] = left
                else:
                    _channel_users.pop(p.name, None)
            try:
                if left == 0 and p.chid is not None:
                    ca.clear_channel(p.chid)
                else:  # another source still uses the channel: only take our connection callback away
                    entry = ca._cache.get(ctx, {}).get(p.name)
                    if entry is not None and entry.callbacks:
                        entry.callbacks[:] = [cb for cb in entry.callbacks if cb is not p.conn_cb]
            except Exception as exc:  # noqa: BLE001 - closing must go on for the other PVs
                log.debug("epics %s: closing PV %s: %s", self.name, p.name, exc)
            p.chid = None
            p.connected = False
        try:
            ca.flush_io()
        except Exception as exc:  # noqa: BLE001
            log.debug("epics %s: flush after close: %s", self.name, exc)
        _release_context()


def _text(raw: bytes) -> str:
    """A C string from a DBR buffer: up to the first NUL, UTF-8 with replacement characters."""
    return raw.split(b"\0", 1)[0].decode("utf-8", "replace")


SOURCE = EpicsSource


__all__ = ["DBR_CTRL_ENUM", "SOURCE", "CharMode", "EpicsConfig", "EpicsSource", "PVEntry", "reset_context"]
