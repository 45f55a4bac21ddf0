"""EPICS process variables over Channel Access (pyepics): subscriptions, never polling, never writing.

Every configured PV gets one ``epics.PV`` with a value monitor and a connection callback; the
callbacks only append to a buffer under a lock, and ``poll()`` hands over what arrived since the
previous call. Facts this relies on (``shared/specs/nsm-epics.md``):

* CA reads its configuration (address list, …) when the first CA call creates the context, so the
  ``ca_*`` settings are put into the environment *before* that; all epics sources of one process
  share the context and must agree on them.
* ``PV.get()`` of a disconnected PV returns the last cached value: the connection callback, not
  the value, tells whether a PV is up.
* The first callback of an enum PV may carry the index before the labels are known: such a value
  is held back until the labels are fetched (outside the CA callback thread), never stored as a
  number or as the index text.
* After an IOC restart CA reconnects on its own and the monitor delivers the current value again.

Series (labels: ``pv=<name>``, the entry's template labels, the source's ``labels``):

* ``epics.pv`` — numeric values (samples), strings and enum labels (state values);
  arrays with ``arrays = "elements"``: one series per element with label ``index``;
  with ``arrays = "reduce"``: ``epics.pv.count``, ``epics.pv.mean``, ``epics.pv.min``, ``epics.pv.max``;
* ``up`` — 1 while the PV is connected, 0 otherwise; every poll, for every configured PV.

Nothing here ever calls ``put``: farmwatch only reads the slow control.
"""

from __future__ import annotations

import logging
import math
import os
import re
import threading
import time
from dataclasses import dataclass, field
from typing import Any, ClassVar, Literal

from pydantic import Field, field_validator, model_validator

from farmwatch.config import Duration, Section
from farmwatch.model import Batch, Labels, SeriesKey, labels as make_labels, with_labels
from farmwatch.sources.base import Source, SourceConfig
from farmwatch.templates import expand_entry

log = logging.getLogger(__name__)

_PV_NAME = re.compile(r"^[^\s\"'{}]+$")
_RESERVED = {"pv", "index"}
_ADDR = re.compile(r"^[A-Za-z0-9_.\-]+(:\d{1,5})?$")
_TS_RESOLUTION = 0.01
"""Callback times are grouped into batches at this resolution (seconds)."""


class PVEntry(Section):
    """One PV after template expansion."""

    pv: str
    labels: dict[str, str] = Field(default_factory=dict)


class EpicsConfig(SourceConfig):
    """``[sources.<name>]`` with ``kind = "epics"``."""

    kind: Literal["epics"]
    pvs: list[PVEntry] = Field(min_length=1)
    """PV names, or inline tables ``{ pv = "HLT{01..20}:RATE", labels = { unit = "hlt{01..20}" } }``;
    a range written the same way in the name and the labels expands together."""
    arrays: Literal["reduce", "elements"] = "reduce"
    """Array PVs: ``reduce`` → count/mean/min/max series; ``elements`` → one series per index."""
    missing_after: Duration = Field(default=5.0, gt=0)
    """A PV not connected this long after the start is reported (once) as missing."""
    ca_addr_list: list[str] | None = None
    """``EPICS_CA_ADDR_LIST``: hosts or ``host:port`` where the IOCs answer searches."""
    ca_auto_addr_list: bool | None = None
    """``EPICS_CA_AUTO_ADDR_LIST`` (false: search only ``ca_addr_list``)."""
    ca_server_port: int | None = Field(default=None, ge=1, le=65535)
    """``EPICS_CA_SERVER_PORT``: default port of the IOCs (5064)."""
    ca_repeater_port: int | None = Field(default=None, ge=1, le=65535)
    """``EPICS_CA_REPEATER_PORT`` (5065)."""
    ca_conn_tmo: Duration | None = Field(default=None, gt=0)
    """``EPICS_CA_CONN_TMO``: beacon timeout before a silent circuit is probed (30 s)."""
    ca_max_array_bytes: int | None = Field(default=None, ge=16384)
    """``EPICS_CA_MAX_ARRAY_BYTES``: largest array transferred."""

    @field_validator("pvs", mode="before")
    @classmethod
    def _expand_pvs(cls, value: Any) -> Any:
        if not isinstance(value, list):
            raise ValueError('expected a list of PV names or inline tables { pv = "…", labels = { … } }')
        out: list[dict[str, Any]] = []
        for i, entry in enumerate(value):
            if isinstance(entry, str):
                entry = {"pv": entry}
            try:
                expanded = expand_entry(entry, ("pv",), _RESERVED)
            except ValueError as exc:
                raise ValueError(f"pvs[{i}]: {exc}") from None
            for fields, lbls in expanded:
                name = fields["pv"]
                if not _PV_NAME.match(name):
                    raise ValueError(f"pvs[{i}]: {name!r} is not a PV name (no spaces, quotes or braces)")
                out.append({"pv": name, "labels": lbls})
        return out

    @field_validator("ca_addr_list", mode="before")
    @classmethod
    def _split_addr_list(cls, value: Any) -> Any:
        if isinstance(value, str):
            value = value.split()
        if isinstance(value, list):
            for a in value:
                if not isinstance(a, str) or not _ADDR.match(a) or (":" in a and not 0 < int(a.rsplit(":", 1)[1]) < 65536):
                    raise ValueError(f"{a!r} is not host or host:port")
        return value

    @model_validator(mode="after")
    def _check_unique(self) -> "EpicsConfig":
        seen: set[str] = set()
        for e in self.pvs:
            if e.pv in seen:
                raise ValueError(f"pvs: {e.pv} is listed twice")
            seen.add(e.pv)
        return self

    def ca_environment(self) -> dict[str, str]:
        """The CA client environment variables these settings ask for."""
        env: dict[str, str] = {}
        if self.ca_addr_list is not None:
            env["EPICS_CA_ADDR_LIST"] = " ".join(self.ca_addr_list)
        if self.ca_auto_addr_list is not None:
            env["EPICS_CA_AUTO_ADDR_LIST"] = "YES" if self.ca_auto_addr_list else "NO"
        if self.ca_server_port is not None:
            env["EPICS_CA_SERVER_PORT"] = str(self.ca_server_port)
        if self.ca_repeater_port is not None:
            env["EPICS_CA_REPEATER_PORT"] = str(self.ca_repeater_port)
        if self.ca_conn_tmo is not None:
            env["EPICS_CA_CONN_TMO"] = f"{self.ca_conn_tmo:g}"
        if self.ca_max_array_bytes is not None:
            env["EPICS_CA_MAX_ARRAY_BYTES"] = str(self.ca_max_array_bytes)
        return env


# -- the process-wide CA context -------------------------------------------------------------------
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


# -- the source ---------------------------------------------------------------------------------------
@dataclass(eq=False)
class _PV:
    name: str
    labels: Labels
    key: SeriesKey
    up_key: SeriesKey
    pv: Any = None
    connected: bool = False
    ever_connected: bool = False
    reported_missing: bool = False
    enum_strs: tuple[str, ...] | None = None
    pending_enum: tuple[float, int] | None = None  # (ts, index) waiting for the labels
    element_keys: list[SeriesKey] = field(default_factory=list)


class EpicsSource(Source):
    """Monitors every configured PV; ``poll()`` drains what the callbacks collected."""

    Config: ClassVar[type[EpicsConfig]] = EpicsConfig
    config: EpicsConfig

    def __init__(self, name: str, config: EpicsConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self._lock = threading.Lock()
        self._events: list[tuple[float, _PV, Any, Any]] = []  # (ts, pv, value, callback kwargs subset)
        self._closed = False
        self._last_keys: set[SeriesKey] = set()  # during poll(): the keys of the newest batch
        base = make_labels(config.labels)
        self.pvs: list[_PV] = []
        for e in config.pvs:
            lbls = make_labels({**dict(base), **e.labels, "pv": e.pv})
            self.pvs.append(_PV(e.pv, lbls, ("epics.pv", lbls), ("up", lbls)))
        _acquire_context(config.ca_environment())
        self.addr_list = os.environ.get("EPICS_CA_ADDR_LIST", "") or "(empty)"
        self.auto_addr_list = os.environ.get("EPICS_CA_AUTO_ADDR_LIST", "YES")
        self._started = time.monotonic()
        epics = _ca()
        with _ctx_lock:
            for p in self.pvs:
                _channel_users[p.name] = _channel_users.get(p.name, 0) + 1
        for p in self.pvs:
            p.pv = epics.PV(p.name, form="native", auto_monitor=True,
                            callback=self._make_value_cb(p), connection_callback=self._make_conn_cb(p),
                            connection_timeout=config.missing_after)

    # -- CA callbacks (CA threads: only record, never block) ----------------------------------------
    def _make_conn_cb(self, p: _PV):
        def on_connection(pvname: str | None = None, conn: bool = False, **_: Any) -> None:
            if self._closed:
                return
            with self._lock:
                was, p.connected = p.connected, bool(conn)
                first = conn and not p.ever_connected
                p.ever_connected |= bool(conn)
                reported = p.reported_missing
            if conn and first and reported:
                log.info("epics %s: PV %s connected (%s)", self.name, p.name, self._host(p))
            elif conn and not was and not first:
                log.info("epics %s: PV %s connected again (%s)", self.name, p.name, self._host(p))
            elif not conn and was:
                log.warning("epics %s: PV %s disconnected", self.name, p.name)

        return on_connection

    def _make_value_cb(self, p: _PV):
        def on_value(value: Any = None, type: str = "", enum_strs: Any = None, char_value: Any = None, count: Any = None, **_: Any) -> None:
            if self._closed:
                return
            ts = math.floor(self.clock.time() / _TS_RESOLUTION) * _TS_RESOLUTION
            kind = type or ""
            if "enum" in kind:
                info: Any = ("enum", tuple(enum_strs) if enum_strs else None)
            elif "char" in kind and count is not None and count > 1:
                info = ("text", char_value)
            else:
                info = None
            with self._lock:
                self._events.append((ts, p, value, info))

        return on_value

    @staticmethod
    def _host(p: _PV) -> str:
        try:
            return f"at {p.pv.host}"
        except Exception:  # noqa: BLE001 - only for the log line
            return "host unknown"

    # -- one cycle -------------------------------------------------------------------------------------
    def poll(self) -> list[Batch]:
        now = self.clock.time()
        with self._lock:
            events, self._events = self._events, []
            connected = {id(p): p.connected for p in self.pvs}
        batches: list[Batch] = []
        self._last_keys = set()
        for ts, p, value, info in events:
            self._convert(p, ts, value, info, batches)
        for p in self.pvs:  # enum values whose labels were not known at callback time
            if p.pending_enum is not None and connected[id(p)]:
                self._resolve_enum(p, batches)
        up = Batch(now)
        age = time.monotonic() - self._started
        for p in self.pvs:
            is_up = connected[id(p)]
            up.add(p.up_key, 1.0 if is_up else 0.0)
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

    def _convert(self, p: _PV, ts: float, value: Any, info: Any, batches: list[Batch]) -> None:
        out: dict[SeriesKey, Any] = {}
        if info is not None and info[0] == "enum":
            if info[1]:
                p.enum_strs = info[1]
                if p.pending_enum is not None:  # the labels came after the first value: store that one first
                    pts, pindex = p.pending_enum
                    p.pending_enum = None
                    if 0 <= pindex < len(p.enum_strs):
                        self._emit(batches, pts, {p.key: p.enum_strs[pindex]})
            try:
                index = int(value)
            except (TypeError, ValueError):
                return
            if p.enum_strs is not None and 0 <= index < len(p.enum_strs):
                p.pending_enum = None
                out[p.key] = p.enum_strs[index]
            else:
                p.pending_enum = (ts, index)
        elif info is not None and info[0] == "text":
            out[p.key] = str(info[1])
        elif isinstance(value, str):
            out[p.key] = value
        elif isinstance(value, bytes):
            out[p.key] = value.decode("utf-8", "replace")
        elif hasattr(value, "__len__"):  # numpy array (waveform, NELM > 1)
            self._array(p, value, out)
        else:
            try:
                out[p.key] = float(value)
            except (TypeError, ValueError):
                log.debug("epics %s: PV %s: value %r is neither number nor text; ignored", self.name, p.name, value)
        self._emit(batches, ts, out)

    def _emit(self, batches: list[Batch], ts: float, out: dict[SeriesKey, Any]) -> None:
        if out:
            batch = self._batch_for(batches, ts, tuple(out))
            for k, v in out.items():
                batch.add(k, v)

    def _array(self, p: _PV, value: Any, out: dict[SeriesKey, Any]) -> None:
        try:
            values = [float(v) for v in value]
        except (TypeError, ValueError):
            out[p.key] = " ".join(str(v) for v in value)
            return
        if self.config.arrays == "elements":
            while len(p.element_keys) < len(values):
                p.element_keys.append(("epics.pv", with_labels(p.labels, index=len(p.element_keys))))
            for k, v in zip(p.element_keys, values):
                out[k] = v
            return
        finite = [v for v in values if math.isfinite(v)]
        out[("epics.pv.count", p.labels)] = float(len(values))
        out[("epics.pv.mean", p.labels)] = sum(finite) / len(finite) if finite else math.nan
        out[("epics.pv.min", p.labels)] = min(finite) if finite else math.nan
        out[("epics.pv.max", p.labels)] = max(finite) if finite else math.nan

    def _resolve_enum(self, p: _PV, batches: list[Batch]) -> None:
        assert p.pending_enum is not None
        ts, index = p.pending_enum
        try:
            ctrl = p.pv.get_ctrlvars(timeout=min(self.config.timeout, 0.5)) or {}
        except Exception as exc:  # noqa: BLE001 - a CA fault must not break the cycle
            log.debug("epics %s: PV %s: enum labels not available yet: %s", self.name, p.name, exc)
            return
        strs = ctrl.get("enum_strs")
        if strs:
            p.enum_strs = tuple(strs)
            if 0 <= index < len(p.enum_strs):
                self._emit(batches, max(ts, batches[-1].ts if batches else ts), {p.key: p.enum_strs[index]})
            p.pending_enum = None

    def close(self) -> None:
        if self._closed:
            return
        self._closed = True
        epics = _ca()
        for p in self.pvs:
            if p.pv is None:
                continue
            with _ctx_lock:
                left = _channel_users.get(p.name, 1) - 1
                if left > 0:
                    _channel_users[p.name] = left
                else:
                    _channel_users.pop(p.name, None)
            try:
                chid = p.pv.chid
                p.pv.disconnect()
                if left == 0 and chid is not None:
                    epics.ca.clear_channel(chid)
            except Exception as exc:  # noqa: BLE001 - closing must go on for the other PVs
                log.debug("epics %s: closing PV %s: %s", self.name, p.name, exc)
            p.pv = None
            p.connected = False
        _release_context()


SOURCE = EpicsSource
