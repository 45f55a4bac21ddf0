"""Zabbix host metrics (CPU, memory, network, processes, temperatures) through the JSON-RPC API.

Zabbix already polls every HLT node; this source reads what it stored, so a worker node whose
event rate drops can be seen next to its CPU and memory. It is incremental: per item it remembers
the last value's ``(clock, ns)`` (in the store's ``source_cursors``, saved only once the samples
are stored) and asks only for newer history, per value type, in bounded calls: at most
``chunk_items`` item ids and ``window`` seconds per ``history.get``, at most ``limit`` rows (a full
page continues from its last whole second). Zabbix has no pagination and no default limit: an
unbounded call on a big farm exhausts PHP's memory (HTTP 500), which makes this source halve the
chunk and try again. After an outage it catches up to ``horizon``; older gaps are filled with
hourly trends (``trend.get``).

Times come from Zabbix (a value's clock is when Zabbix measured it); "now" on the Zabbix side
is taken from the API's HTTP ``Date`` header, so a farmwatch host with a skewed clock neither
misses values nor asks for the future. The skew is reported as ``zabbix.clock_skew``.

Only read methods are ever called (``*.get``, ``apiinfo.version``, ``user.login``).
"""

from __future__ import annotations

import json
import logging
import math
import re
import time
from collections import deque
from dataclasses import dataclass
from datetime import datetime
from email.utils import parsedate_to_datetime
from typing import TYPE_CHECKING, Any, ClassVar, Mapping, Protocol
from zoneinfo import ZoneInfo

import requests
from pyzabbix import ZabbixAPI, ZabbixAPIException

from farmwatch.credentials import SecretError, section_secret
from farmwatch.model import Batch, Labels, labels as make_labels
from farmwatch.sources.base import CursorStore, Source
from farmwatch.sources.zabbix.config import NUMERIC, SEVERITIES, TEXTUAL, ZabbixConfig

if TYPE_CHECKING:
    import pandas as pd

log = logging.getLogger(__name__)

_NS = 1_000_000_000
_NEVER = (-1, 0)
CATALOG = "catalog"
"""The source cursor key under which the host and item lists are cached (cron mode)."""
# pyzabbix logs every request body at debug level, API token included: never let that through.
logging.getLogger("pyzabbix").setLevel(logging.WARNING)


def glob_regex(patterns: list[str]) -> re.Pattern[str]:
    """``*`` and ``?`` only: item keys are full of brackets that fnmatch would read as classes."""
    parts = ["".join(".*" if c == "*" else "." if c == "?" else re.escape(c) for c in p) for p in patterns]
    return re.compile("(?:" + "|".join(parts) + r")\Z", re.DOTALL)


def series_name(key: str) -> str:
    """``net.if.in[eth0]`` → ``zabbix.net.if.in``: the parameters go into the ``item`` label."""
    return "zabbix." + key.split("[", 1)[0]


@dataclass(slots=True)
class _Item:
    itemid: str
    hostid: str
    key: str
    value_type: int
    name: str
    labels: Labels


class AuthError(Exception):
    """The API refused our credentials (expired, revoked or wrong token/password)."""


class Unreachable(Exception):
    """No answer from the API (connection refused, timeout, DNS)."""


class Oversized(Exception):
    """The server failed on the size of the request (HTTP 5xx, PHP memory exhausted, cut-off reply)."""


class ApiError(Exception):
    """Any other API error; the message says which method failed and why."""


_AUTH_WORDS = ("not authori", "session terminated", "re-login", "api token", "incorrect user name or password",
               "login name or password is incorrect", "account is temporarily blocked", "token expired")


class Api:
    """pyzabbix with what the source needs around it: error classes, call counting, server time."""

    def __init__(self, config: ZabbixConfig) -> None:
        self.config = config
        session = requests.Session()
        session.verify = str(config.ca_file) if config.ca_file else config.verify
        session.hooks["response"].append(self._on_response)
        self.zapi = ZabbixAPI(config.url, session=session, timeout=config.timeout)
        self.calls = 0
        self.calls_by_method: dict[str, int] = {}
        self.logged_in = False
        self._server_time: float | None = None
        self._seen_at = 0.0

    def _on_response(self, response: requests.Response, *args: Any, **kwargs: Any) -> None:
        date = response.headers.get("Date")
        if date:
            try:
                self._server_time = parsedate_to_datetime(date).timestamp() + 0.5  # mid-second: Date is floored
                self._seen_at = time.monotonic()
            except (TypeError, ValueError):
                pass

    def server_now(self) -> float:
        """Zabbix-side now (HTTP Date of the last reply + time since); local time if unknown."""
        if self._server_time is None:
            return time.time()
        return self._server_time + (time.monotonic() - self._seen_at)

    def skew(self, local: float) -> float:
        """Zabbix frontend clock minus ``local`` (farmwatch's clock), in whole seconds (Date has 1 s resolution)."""
        return math.nan if self._server_time is None else float(round(self.server_now() - local))

    def login(self) -> None:
        cfg = self.config
        try:
            if cfg.token_env or cfg.token_file:
                # Asks apiinfo.version (anonymous): checks reachability and sets the server clock.
                self.zapi.login(api_token=_secret(cfg, "token", "API token"))
            else:
                self.zapi.login(user=cfg.user or "", password=_secret(cfg, "password", "password"))
        except (ZabbixAPIException, requests.RequestException, OSError) as exc:
            raise self._classify("user.login", exc) from None
        self.logged_in = True

    def call(self, method: str, **params: Any) -> Any:
        try:
            return self._call(method, params)
        except AuthError:
            self.logged_in = False
            if not self.config.user:
                raise
        # A password session expires (Zabbix' auto-logout): log in again once, quietly.
        self.login()
        return self._call(method, params)

    def _call(self, method: str, params: dict[str, Any]) -> Any:
        self.calls += 1
        self.calls_by_method[method] = self.calls_by_method.get(method, 0) + 1
        try:
            return self.zapi.do_request(method, params)["result"]
        except (ZabbixAPIException, requests.RequestException, ValueError, OSError) as exc:
            raise self._classify(method, exc) from None

    def _classify(self, method: str, exc: Exception) -> Exception:
        where = f"{method} at {self.config.url}"
        if isinstance(exc, (requests.ConnectionError, requests.Timeout)):
            return Unreachable(f"{where}: no answer ({type(exc).__name__})")
        if isinstance(exc, requests.HTTPError):
            code = exc.response.status_code if exc.response is not None else 0
            if code in (401, 403):
                return AuthError(f"{where}: HTTP {code}")
            if code >= 500:
                return Oversized(f"{where}: HTTP {code}")
            return ApiError(f"{where}: HTTP {code}")
        text = str(exc)
        if isinstance(exc, ZabbixAPIException):
            err = getattr(exc, "error", None) or {}
            detail = f"{err.get('message', '')} {err.get('data', '')}".strip() or text
            if any(w in detail.lower() for w in _AUTH_WORDS):
                return AuthError(f"{where}: {_short(detail)}")
            if "memory size" in text.lower() or "received empty response" in text.lower() \
                    or "unable to parse json" in text.lower():
                return Oversized(f"{where}: {_short(text)}")
            return ApiError(f"{where}: {_short(detail)}")
        if isinstance(exc, (requests.RequestException, OSError)):
            return Unreachable(f"{where}: {type(exc).__name__}: {_short(text)}")
        return Oversized(f"{where}: unreadable reply ({_short(text)})")


def _short(text: str, n: int = 200) -> str:
    text = " ".join(text.split())
    return text if len(text) <= n else text[: n - 1] + "…"


def _secret(cfg: ZabbixConfig, name: str, what: str) -> str:
    """Read each time we log in, so a rotated token file is picked up without a restart."""
    try:
        return section_secret(cfg, name, what) or ""
    except SecretError as exc:
        raise AuthError(str(exc)) from None


class _CursorMark(Batch):
    """Rides with a poll's batches to the store (no samples); ``written`` saves its cursors."""

    __slots__ = ("cursors", "drop")

    def __init__(self, ts: float, cursors: dict[str, list[int]], drop: list[str]) -> None:
        super().__init__(ts)
        self.cursors = cursors
        self.drop = drop


@dataclass
class _Stats:
    values: int = 0
    skipped_items: int = 0
    trend_rows: int = 0
    shrinks: int = 0
    gone_items: int = 0
    failures: int = 0
    lag: float = math.nan


class ZabbixSource(Source):
    """Reads new history of the selected items and the open problems of the selected hosts."""

    Config: ClassVar[type[ZabbixConfig]] = ZabbixConfig
    config: ZabbixConfig

    def __init__(self, name: str, config: ZabbixConfig, **kw: Any) -> None:
        super().__init__(name, config, **kw)
        self.api = Api(config)
        self._base = dict(config.labels)
        self._item_re = glob_regex(config.items)
        self._host_re = glob_regex(config.hosts) if config.hosts else None
        self._store: CursorStore | None = None
        self._cursors: dict[str, tuple[int, int]] | None = None
        self._dirty: dict[str, tuple[int, int]] = {}
        self._drop: set[str] = set()
        self.items: dict[str, _Item] = {}
        self.hosts: dict[str, str] = {}  # hostid → Zabbix technical name
        self._discovered_at = -math.inf
        self._trigger_host: dict[str, str] = {}
        self.chunk_items = config.chunk_items
        self.window = int(config.window)
        self.limit = config.limit
        self.stats = _Stats()
        self.up: bool | None = None
        self._reason = ""
        self._problem: str | None = None
        self._failures = 0
        self._retry_at = -math.inf
        self._logged_once: set[str] = set()
        self._trend_batches: list[Batch] = []

    # -- runner hooks ----------------------------------------------------------------------------
    def bind_store(self, store: CursorStore) -> None:
        self._store = store if hasattr(store, "cursors") and hasattr(store, "save_cursors") else None

    def written(self, batches: list[Batch]) -> None:
        for b in batches:
            if isinstance(b, _CursorMark) and self._store is not None and (b.cursors or b.drop):
                self._store.save_cursors(self.name, b.cursors, drop=b.drop)

    # -- one cycle -------------------------------------------------------------------------------
    def poll(self) -> list[Batch]:
        ts = self.clock.time()
        out: dict[float, Batch] = {}
        extra: list[Batch] = []
        if time.monotonic() < self._retry_at:
            return [self._health(ts), self._mark(ts)]
        try:
            self._load_cursors()
            if not self.api.logged_in:
                self.api.login()
            if time.monotonic() - self._discovered_at >= self.config.rediscover:
                self._discover()
            self._collect(out)
            if self.config.problems:
                extra.append(self._problems(ts))
            self._ok()
        except (AuthError, Unreachable, Oversized, ApiError) as exc:
            self._fail(exc)
        batches = self._trend_batches + [out[t] for t in sorted(out)] + extra
        self._trend_batches = []
        batches += [self._health(ts), self._mark(ts)]
        return batches

    def _ok(self) -> None:
        if self.up is False:
            log.warning("zabbix source %s: %s answers again", self.name, self.config.url)
        self.up, self._reason, self._failures, self._retry_at = True, "", 0, -math.inf
        self._problem = None

    def failure(self) -> str | None:
        return self._problem

    def _fail(self, exc: Exception) -> None:
        self.stats.failures += 1
        self._failures += 1
        delay = min(self.config.backoff_max, self.config.backoff * 2 ** (self._failures - 1))
        self._retry_at = time.monotonic() + delay
        reason = type(exc).__name__  # a new line when the kind of fault changes, not per retry
        if isinstance(exc, AuthError):
            self.api.logged_in = False
            what = "the credentials were refused (API token expired or revoked, or wrong password?)"
        elif isinstance(exc, Unreachable):
            what = "the API is unreachable"
        elif isinstance(exc, Oversized):
            what = "the API failed even on the smallest request"
        else:
            what = "an API call failed"
        if self.up is not False or self._reason != reason:
            log.error("zabbix source %s: %s: %s; %s", self.name, what, exc,
                      self.later(f"retrying with backoff (next in {delay:.0f}s, at most {self.config.backoff_max:.0f}s)"))
        self.up, self._reason, self._problem = False, reason, f"{what}: {exc}"

    # -- cursors ---------------------------------------------------------------------------------
    def _load_cursors(self) -> None:
        if self._cursors is not None:
            return
        self._cursors = {}
        if self._store is not None:
            for key, value in self._store.cursors(self.name).items():
                if key.startswith("item:") and isinstance(value, list) and len(value) == 2:
                    self._cursors[key[5:]] = (int(value[0]), int(value[1]))

    def _cursor(self, itemid: str) -> tuple[int, int]:
        assert self._cursors is not None
        return self._cursors.get(itemid, _NEVER)

    def _advance(self, itemid: str, cursor: tuple[int, int]) -> None:
        assert self._cursors is not None
        if cursor > self._cursors.get(itemid, _NEVER):
            self._cursors[itemid] = cursor
            self._dirty[itemid] = cursor

    def _mark(self, ts: float) -> _CursorMark:
        mark = _CursorMark(ts, {f"item:{k}": list(v) for k, v in self._dirty.items()}, [f"item:{k}" for k in self._drop])
        self._dirty, self._drop = {}, set()
        return mark

    # -- discovery -------------------------------------------------------------------------------
    def _discover(self) -> None:
        """Hosts and items from the API, or from the store's cached copy while it is younger than
        ``rediscover`` (cron mode: a ``collect --once`` per minute does not list 10,000 items each time)."""
        cached = self._cached_catalog()
        if cached is not None:
            hosts, rows, age = cached
            self._apply_catalog(hosts, rows)
            self._discovered_at = time.monotonic() - age
            return
        hosts, rows = self._list_catalog()
        self._apply_catalog(hosts, rows)
        self._discovered_at = time.monotonic()
        if self._store is not None:
            try:
                self._store.save_cursors(self.name, {CATALOG: {"at": time.time(), "config": self._catalog_key(),
                                                               "hosts": hosts, "items": rows}})
            except Exception as exc:  # a cache only: the next run lists again
                log.warning("zabbix source %s: could not cache the host and item lists in the store: %s", self.name, exc)

    def _catalog_key(self) -> str:
        """What the lists depend on: a cached copy made with other settings is not used."""
        cfg = self.config
        return json.dumps([cfg.url, cfg.host_groups, cfg.hosts, cfg.items], sort_keys=True)

    def _cached_catalog(self) -> tuple[dict[str, str], list[list[Any]], float] | None:
        if self._store is None or self.items:
            return None  # a running source lists again: the cache is for the next process
        try:
            doc = self._store.cursors(self.name).get(CATALOG)
        except Exception:
            return None
        if not isinstance(doc, dict) or doc.get("config") != self._catalog_key():
            return None
        age = time.time() - float(doc.get("at", 0))
        if not 0 <= age < self.config.rediscover:
            return None
        return doc["hosts"], doc["items"], age

    def _list_catalog(self) -> tuple[dict[str, str], list[list[Any]]]:
        """hostid → host name, and [itemid, hostid, key, value_type, name] of the selected items."""
        cfg = self.config
        params: dict[str, Any] = {"output": ["hostid", "host", "status"], "monitored_hosts": True}
        if cfg.host_groups:
            groups = self.api.call("hostgroup.get", output=["groupid", "name"], filter={"name": cfg.host_groups})
            missing = sorted(set(cfg.host_groups) - {g["name"] for g in groups})
            if missing:
                self._once(f"groups:{missing}", logging.WARNING, "zabbix source %s: host group(s) %s not found at %s "
                           "(or not readable by this token)", self.name, ", ".join(missing), cfg.url)
            params["groupids"] = [g["groupid"] for g in groups] or ["0"]
        elif cfg.hosts and "*" not in cfg.hosts:
            params.update(search={"host": [h.replace("?", "*") for h in cfg.hosts]}, searchWildcardsEnabled=True,
                          searchByAny=True)
        found = self.api.call("host.get", **params)
        hosts = {h["hostid"]: h["host"] for h in found if self._host_re is None or self._host_re.match(h["host"])}
        rows: list[list[Any]] = []
        ids = sorted(hosts)
        search = sorted({p.split("[", 1)[0] + ("*" if "[" in p else "") for p in cfg.items})
        for i in range(0, len(ids), 200):
            found = self.api.call("item.get", hostids=ids[i:i + 200], monitored=True,
                                  output=["itemid", "hostid", "key_", "value_type", "name"],
                                  search={"key_": [s.replace("?", "*") for s in search]},
                                  searchWildcardsEnabled=True, searchByAny=True)
            rows += [[r["itemid"], r["hostid"], r["key_"], int(r["value_type"]), r["name"]] for r in found
                     if self._item_re.match(r["key_"])]
        return hosts, rows

    def _apply_catalog(self, hosts: dict[str, str], rows: list[list[Any]]) -> None:
        cfg = self.config
        for hostid, name in hosts.items():
            old = self.hosts.get(hostid)
            if old is not None and old != name:
                log.warning("zabbix source %s: host %s was renamed to %s in Zabbix; its series now have host=%s",
                            self.name, old, name, self.config.host_map.get(name, name))
        items: dict[str, _Item] = {}
        for itemid, hostid, key, value_type, item_name in rows:
            host = hosts[hostid]
            lbls = make_labels({**self._base, "host": cfg.host_map.get(host, host), "item": key})
            items[itemid] = _Item(itemid, hostid, key, int(value_type), item_name, lbls)
        for itemid in self.items.keys() - items.keys():
            it = self.items[itemid]
            log.warning("zabbix source %s: item %s on %s (itemid %s) is gone (deleted, disabled, or its host left "
                        "the selection); no more values are expected", self.name, it.key,
                        dict(it.labels).get("host"), itemid)
            self.stats.gone_items += 1
            self._drop.add(itemid)
            self._dirty.pop(itemid, None)
            if self._cursors is not None:
                self._cursors.pop(itemid, None)
        self._drop -= items.keys()
        self.hosts, self.items = hosts, items
        skipped = [it for it in items.values() if it.value_type in TEXTUAL and self.config.text == "skip"]
        self.stats.skipped_items = len(skipped)
        if not items:
            self._once("noitems", logging.WARNING, "zabbix source %s: no item at %s matches hosts=%s host_groups=%s "
                       "items=%s", self.name, cfg.url, cfg.hosts, cfg.host_groups, cfg.items)

    # -- history ---------------------------------------------------------------------------------
    def _collect(self, out: dict[float, Batch]) -> None:
        now = int(self.api.server_now())
        start = now - int(self.config.backfill)
        by_type: dict[int, list[_Item]] = {}
        for it in self.items.values():
            if it.value_type in NUMERIC or (it.value_type in TEXTUAL and self.config.text == "state"):
                if self._cursor(it.itemid) == _NEVER:
                    self._advance(it.itemid, (start - 1, _NS))
                by_type.setdefault(it.value_type, []).append(it)
        oldest = math.inf
        for vt, items in sorted(by_type.items()):
            self._catch_up_trends(vt, items, now)
            items.sort(key=lambda it: self._cursor(it.itemid))
            pending = deque(items[i:i + self.chunk_items] for i in range(0, len(items), self.chunk_items))
            while pending:
                chunk = pending.popleft()
                rest = self._history(vt, chunk, now, out)
                if rest:
                    pending.extendleft(reversed(rest))
            oldest = min([oldest] + [self._cursor(it.itemid)[0] for it in items])
        self.stats.lag = max(0.0, now - oldest) if oldest != math.inf else math.nan

    def _history(self, vt: int, items: list[_Item], now: int, out: dict[float, Batch]) -> list[list[_Item]]:
        """Read one chunk of items up to now; returns smaller chunks to do instead when it must split."""
        by_id = {it.itemid: it for it in items}
        t_from = max(0, min(self._cursor(it.itemid)[0] for it in items))
        while True:
            t_till = t_from + self.window - 1
            open_end = t_till >= now
            params: dict[str, Any] = {"history": vt, "itemids": list(by_id), "time_from": t_from,
                                      "sortfield": "clock", "sortorder": "ASC", "limit": self.limit,
                                      "output": ["itemid", "clock", "ns", "value"]}
            if not open_end:
                params["time_till"] = t_till
            try:
                rows = self.api.call("history.get", **params)
            except Oversized as exc:
                smaller = self._shrink(len(items), exc)
                if smaller == "items":
                    half = len(items) // 2
                    return [items[:half], items[half:]]
                continue
            if len(rows) >= self.limit:
                last = int(rows[-1]["clock"])
                if last == t_from:  # one second holds more rows than a page
                    if len(items) > 1:
                        half = len(items) // 2
                        return [items[:half], items[half:]]
                    self.limit *= 2
                    continue
                # The last second may be cut off mid-way (rows are sorted by clock only): read it again.
                self._emit(by_id, [r for r in rows if int(r["clock"]) < last], out)
                self._scanned(items, last - 1, now)
                t_from = last
                continue
            self._emit(by_id, rows, out)
            self._scanned(items, min(now, t_till), now)
            if open_end:
                return []
            t_from = t_till + 1

    def _scanned(self, items: list[_Item], upto: int, now: int) -> None:
        """Every value up to ``upto`` was read: quiet items move on too, but only to ``now - settle``,
        so that values arriving a little late are still found."""
        cursor = (min(upto, now - int(self.config.settle)), _NS)
        for it in items:
            self._advance(it.itemid, cursor)

    def _shrink(self, n_items: int, exc: Exception) -> str:
        """After a failed oversized call: fewer items per call, else a shorter window, else a smaller page."""
        self.stats.shrinks += 1
        if n_items > 1:
            self.chunk_items = max(1, n_items // 2)
            change, what = f"{n_items} → {self.chunk_items} items per call", "items"
        elif self.window > 60:
            self.window = max(60, self.window // 2)
            change, what = f"window → {self.window}s", "window"
        elif self.limit > 100:
            self.limit = max(100, self.limit // 2)
            change, what = f"limit → {self.limit} rows", "limit"
        else:
            raise exc
        log.warning("zabbix source %s: history.get too big for the server (%s); retrying with %s",
                    self.name, exc, change)
        return what

    def _emit(self, by_id: dict[str, _Item], rows: list[dict[str, str]], out: dict[float, Batch]) -> None:
        text = self.config.text == "state"
        for r in rows:
            it = by_id.get(r["itemid"])
            if it is None:
                continue
            cursor = (int(r["clock"]), int(r.get("ns", 0)))
            if cursor <= self._cursor(it.itemid):
                continue
            if it.value_type in NUMERIC:
                try:
                    value: float | str = float(r["value"])
                except ValueError:
                    continue
            elif text:
                value = str(r["value"])[: self.config.max_text]
            else:
                continue
            ts = cursor[0] + cursor[1] / _NS
            batch = out.get(ts)
            if batch is None:
                batch = out[ts] = Batch(ts)
            batch.add((series_name(it.key), it.labels), value)
            self._advance(it.itemid, cursor)
            self.stats.values += 1

    def _catch_up_trends(self, vt: int, items: list[_Item], now: int) -> None:
        """Items further behind than ``horizon``: hourly trends for the gap, then history from the horizon."""
        edge = now - int(self.config.horizon)
        behind = [it for it in items if self._cursor(it.itemid)[0] < edge - 1]
        if not behind:
            return
        oldest = min(self._cursor(it.itemid)[0] for it in behind)
        t_from = oldest - oldest % 3600  # the hour that holds the first value not read yet
        log.warning("zabbix source %s: %d item(s) are behind by more than horizon %.0fs (outage?); %s for %s … %s, "
                    "history from then on", self.name, len(behind), self.config.horizon,
                    "hourly trends (min/avg/max)" if self.config.trends and vt in NUMERIC else "no trends (skipped)",
                    _iso(t_from), _iso(edge))
        if self.config.trends and vt in NUMERIC:
            by_id = {it.itemid: it for it in behind}
            for i in range(0, len(behind), self.chunk_items):
                ids = [it.itemid for it in behind[i:i + self.chunk_items]]
                start = t_from
                while start < edge:
                    rows = self.api.call("trend.get", itemids=ids, time_from=start, time_till=edge - 1, limit=self.limit,
                                         output=["itemid", "clock", "num", "value_min", "value_avg", "value_max"])
                    for r in rows:
                        it = by_id[r["itemid"]]
                        ts = float(r["clock"])
                        b = Batch(ts)
                        base = series_name(it.key)
                        for suffix, col in ((":min1h", "value_min"), (":avg1h", "value_avg"), (":max1h", "value_max")):
                            b.add((base + suffix, it.labels), float(r[col]))
                        self._trend_batches.append(b)
                        self.stats.trend_rows += 1
                    if len(rows) < self.limit:
                        break
                    start = int(rows[-1]["clock"]) + 1
        for it in behind:
            self._advance(it.itemid, (edge - 1, _NS))

    # -- problems --------------------------------------------------------------------------------
    def _problems(self, ts: float) -> Batch:
        batch = Batch(ts)
        if not self.hosts:
            return batch
        rows = self.api.call("problem.get", hostids=sorted(self.hosts), output=["eventid", "objectid", "clock", "name",
                             "severity", "acknowledged", "suppressed"], selectTags=["tag", "value"], recent=False,
                             sortfield=["eventid"], sortorder="DESC", limit=self.config.problem_limit)
        unknown = sorted({r["objectid"] for r in rows} - self._trigger_host.keys())
        if unknown:
            for t in self.api.call("trigger.get", triggerids=unknown, output=["triggerid"], selectHosts=["hostid"]):
                if t.get("hosts"):
                    self._trigger_host[t["triggerid"]] = t["hosts"][0]["hostid"]
        counts = {hostid: 0 for hostid in self.hosts}
        for r in rows:
            hostid = self._trigger_host.get(r["objectid"])
            if hostid not in self.hosts:
                continue
            counts[hostid] += 1
            sev = int(r.get("severity", 0))
            tags = ",".join(f"{t['tag']}:{t['value']}" if t.get("value") else t["tag"] for t in r.get("tags", []))
            lbls = {**self._base, "host": self._farm_host(hostid), "eventid": r["eventid"], "problem": r["name"],
                    "severity": SEVERITIES[sev] if 0 <= sev < len(SEVERITIES) else str(sev)}
            if tags:
                lbls["tags"] = tags
            batch.add(("zabbix.problem", make_labels(lbls)), float(r["clock"]))
        for hostid, n in counts.items():
            batch.add(("zabbix.problems", make_labels({**self._base, "host": self._farm_host(hostid)})), float(n))
        return batch

    def _farm_host(self, hostid: str) -> str:
        name = self.hosts.get(hostid, hostid)
        return self.config.host_map.get(name, name)

    # -- health ----------------------------------------------------------------------------------
    def _health(self, ts: float) -> Batch:
        b = Batch(ts)
        src = make_labels({**self._base, "source": self.name})
        st = self.stats
        b.add(("up", src), 1.0 if self.up else 0.0)
        for hostid in self.hosts:
            b.add(("up", make_labels({**self._base, "source": self.name, "host": self._farm_host(hostid)})),
                  1.0 if self.up else 0.0)
        for name, value in (("zabbix.api.calls", self.api.calls), ("zabbix.api.failures", st.failures),
                            ("zabbix.values", st.values), ("zabbix.items", len(self.items)),
                            ("zabbix.items.skipped", st.skipped_items), ("zabbix.items.gone", st.gone_items),
                            ("zabbix.trend_rows", st.trend_rows), ("zabbix.chunk_shrinks", st.shrinks),
                            ("zabbix.lag", st.lag), ("zabbix.clock_skew", self.api.skew(self.clock.time()))):
            b.add((name, src), float(value))
        return b

    def _once(self, key: str, level: int, msg: str, *args: Any) -> None:
        if key not in self._logged_once:
            self._logged_once.add(key)
            log.log(level, msg, *args)


class ProblemStore(Protocol):
    """What the alert context reads of the store this source wrote to."""

    def query(self, name: str | None = None, matchers: Any = None, *, since: float | None = None,
              until: float | None = None) -> pd.DataFrame: ...

    def series(self, name: str | None = None) -> pd.DataFrame: ...


def _iso(ts: float) -> str:
    return datetime.fromtimestamp(ts).astimezone().strftime("%Y-%m-%d %H:%M:%S%z")


def problem_context(store: ProblemStore, host: str, *, at: float | None = None, window: float = 900.0,
                    tz: str | None = None) -> list[str]:
    """Lines for an alert message about ``host``: the Zabbix problems open at ``at`` (default: now).

    Reads what the source stored: the newest ``zabbix.problems{host}`` count at or before ``at``
    (within ``window``) and the ``zabbix.problem`` series of that same poll, so a problem that
    was resolved since is not mentioned. E.g. ``Zabbix reports: high temperature on hltwk07
    since 10:42 (high)``. Times in ``tz`` (IANA name; default: this host's zone).
    """
    at = time.time() if at is None else at
    counts = store.query("zabbix.problems", {"host": host}, since=at - window, until=at)
    if counts.empty:
        return []
    last = counts.sort_values("ts").iloc[-1]
    if not last["value"] > 0:
        return []
    poll_ts = last["ts"].timestamp()
    rows = store.query("zabbix.problem", {"host": host}, since=poll_ts, until=poll_ts)
    zone = ZoneInfo(tz) if tz else None
    day = datetime.fromtimestamp(at, zone).date()
    lines = []
    for row in rows.sort_values("value").itertuples(index=False):
        since = datetime.fromtimestamp(row.value, zone)
        when = since.strftime("%H:%M") if since.date() == day else since.strftime("%Y-%m-%d %H:%M")
        lbls: Mapping[str, str] = row.labels
        name = lbls.get("problem", "?")
        where = "" if host in name else f" on {host}"  # trigger names often say {HOST.NAME} already
        lines.append(f"Zabbix reports: {name}{where} since {when} ({lbls.get('severity', '?')})")
    return lines


class ZabbixContext:
    """Alert context (``farmwatch.alerting.context.ContextProvider``): for an alert with a ``host``
    (or ``node``) label, the Zabbix problems open on that host, as this source stored them
    (``problem_context``); cached per host for ``ttl`` seconds of alert time. Without Zabbix data
    in the store this costs one catalogue lookup every ``recheck`` seconds."""

    def __init__(self, store: ProblemStore, *, ttl: float = 30.0, recheck: float = 300.0, tz: str | None = None) -> None:
        self.store = store
        self.ttl = ttl
        self.recheck = recheck
        self.tz = tz
        self._present: tuple[float, bool] | None = None
        self._cache: dict[str, tuple[float, list[str]]] = {}
        self._failed = False

    def __call__(self, labels: Labels, now: float) -> list[str]:
        lbls = dict(labels)
        host = lbls.get("host") or lbls.get("node")
        if not host or not self._zabbix_present(now):
            return []
        cached = self._cache.get(host)
        if cached is not None and now - cached[0] < self.ttl:
            return cached[1]
        try:
            lines = problem_context(self.store, host, at=now, tz=self.tz)
            self._failed = False
        except Exception as exc:  # noqa: BLE001 - context is a courtesy: the alert goes out without it
            if not self._failed:
                log.warning("cannot read Zabbix problems for alert context: %s", exc)
            self._failed = True
            lines = []
        self._cache[host] = (now, lines)
        return lines

    def _zabbix_present(self, now: float) -> bool:
        if self._present is None or now - self._present[0] >= self.recheck:
            try:
                found = not self.store.series("zabbix.problems").empty
            except Exception:  # noqa: BLE001 - e.g. a store that keeps no series
                found = False
            self._present = (now, found)
        return self._present[1]


SOURCE = ZabbixSource


__all__ = ["NUMERIC", "SEVERITIES", "SOURCE", "TEXTUAL", "Api", "ApiError", "AuthError", "Oversized",
           "ProblemStore", "Unreachable", "ZabbixConfig", "ZabbixContext", "ZabbixSource", "glob_regex",
           "problem_context", "series_name"]
