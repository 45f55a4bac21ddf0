"""The recent data that alert rules and the anomaly scorer read: an in-memory window over the last
minutes of every wanted series (here in ``store`` so that detection and alerting both use it).

Rules run every few seconds over a farm of tens of thousands of series, so reading the store for
each rule (SQL, JSON labels, DataFrames) is far too slow; the window keeps what the rules need in
memory, fed by the collector runner (a listener) or from the store (``watch`` mode, backtests).

Layout, chosen for speed:

* every series gets a small integer id on first sight; ``_last_ts``/``_last_val`` are numpy arrays
  indexed by id, so "the newest value of these 6,000 series" is one fancy-indexing operation;
* numeric history is kept in *blocks*, one per set of series that arrive together (one target's
  ``Batch`` per cycle, like the store's layouts): a time column plus a 2-D ``rows × series`` ring.
  Reducing 6,400 per-peer rates over five minutes therefore touches ~40 blocks with one numpy call
  each instead of 6,400 Python-level slices;
* selections (name glob + label matchers) are cached and extended incrementally as new series
  appear (ids only grow between compactions), and the block plan of a selection is cached until blocks change;
* string states (``daq.run_state``, ``socket_state``) keep their changes, which is all a state
  needs, and the run state of the DAQ is answered at any time within the horizon (backtests).

Only series that some rule reads are kept (``wants(name)``, answered once per name); the rest of a
farm cycle costs one dict lookup per sample.

A service runs for months while label values churn (worker pids, replaced nodes, anomaly
explanations), so series whose newest sample is older than ``forget_after`` are *forgotten* at
``prune``, as Prometheus drops stale series: at once they leave every selection and lose their
newest value and states (an ``absent`` alert about them resolves); their ids are reclaimed later,
in one *compaction* that renumbers all ids, when enough are dead for it to pay (at most once per
horizon). Keys of series no rule reads churn too and are cleared then, or beyond a limit.

The window is not thread-safe by itself: ingest takes ``lock``, and an engine that evaluates in
another thread holds ``lock`` for a pass over the rules (``prune`` takes it too).
"""

from __future__ import annotations

import fnmatch
import logging
import math
import re
import threading
import time
import warnings
from collections import deque
from typing import Callable, Iterable

import numpy as np

from farmwatch.model import Batch, Labels, LogRecord, SeriesKey, Value
from farmwatch.matchers import Matcher, MatcherSpec, parse_matchers

RUN_STATE = "daq.run_state"
RUN_STATE_SINCE = "daq.run_state_since"
FUNCTIONS = ("last", "avg", "min", "max", "delta", "rate", "increase")
"""Over-time functions ``reduce`` understands."""

_GLOB = re.compile(r"[*?\[]")
_NO_IDS = np.empty(0, dtype=np.int64)
COMPACT_MIN_DEAD = 1000
"""Compact when at least this many forgotten ids wait (or ``COMPACT_MIN_SHARE`` of all ids)."""
COMPACT_MIN_SHARE = 0.1
UNWANTED_KEYS_LIMIT = 100_000
"""Keys of unwanted series (``-1`` ids) beyond this (and beyond the kept ids) are cleared at ``prune``."""

log = logging.getLogger(__name__)


class _Block:
    """The history of one set of series that arrive together: ts[rows] and vals[rows, series].

    Rows live in ``[lo, hi)`` of arrays that double when full and are compacted in place when the
    front has been pruned, so appending a row is amortised O(width) with no per-series objects.
    """

    __slots__ = ("ids", "ts", "vals", "lo", "hi", "unsorted")

    def __init__(self, ids: np.ndarray, capacity: int = 16) -> None:
        self.ids = ids
        self.ts = np.empty(capacity)
        self.vals = np.empty((capacity, len(ids)))
        self.lo = self.hi = 0
        self.unsorted = False

    def append(self, ts: float, row: np.ndarray) -> None:
        if self.hi > self.lo:
            newest = self.ts[self.hi - 1]
            if ts == newest:  # a resend of the same cycle replaces it, as the store does
                self.vals[self.hi - 1] = row
                return
            if ts < newest:
                self.unsorted = True
        if self.hi == len(self.ts):
            self._make_room()
        self.ts[self.hi] = ts
        self.vals[self.hi] = row
        self.hi += 1

    def _make_room(self) -> None:
        n = self.hi - self.lo
        capacity = len(self.ts) * 2 if 2 * n > len(self.ts) else len(self.ts)
        ts, vals = np.empty(capacity), np.empty((capacity, self.vals.shape[1]))
        ts[:n], vals[:n] = self.ts[self.lo:self.hi], self.vals[self.lo:self.hi]
        self.ts, self.vals, self.lo, self.hi = ts, vals, 0, n

    def _sort(self) -> None:
        """Put late rows in place (a replay out of order); for equal ts the last one wins."""
        ts, vals = self.ts[self.lo:self.hi], self.vals[self.lo:self.hi]
        order = np.argsort(ts, kind="stable")
        ts, vals = ts[order], vals[order]
        keep = np.ones(len(ts), dtype=bool)
        keep[:-1] = ts[1:] != ts[:-1]
        n = int(keep.sum())
        self.ts[self.lo:self.lo + n], self.vals[self.lo:self.lo + n] = ts[keep], vals[keep]
        self.hi = self.lo + n
        self.unsorted = False

    def span(self, since: float, until: float) -> tuple[int, int]:
        """Row range with since <= ts <= until."""
        if self.unsorted:
            self._sort()
        ts = self.ts[self.lo:self.hi]
        return (self.lo + int(ts.searchsorted(since, "left")), self.lo + int(ts.searchsorted(until, "right")))

    def prune(self, cutoff: float) -> None:
        self.lo = self.span(cutoff, math.inf)[0]

    @property
    def empty(self) -> bool:
        return self.hi == self.lo


class _Selection:
    """The ids a (name, matchers) selection matched so far, and how far each name was checked."""

    __slots__ = ("name", "matchers", "names", "names_checked", "checked", "ids", "array", "plan", "plan_version",
                 "memo", "memo_version")

    def __init__(self, name: str, matchers: tuple[Matcher, ...]) -> None:
        self.name = name
        self.matchers = matchers
        self.names: list[str] = []
        self.names_checked = 0
        self.checked: dict[str, int] = {}
        self.ids: list[int] = []
        self.array = _NO_IDS
        self.plan: _Plan | None = None
        self.plan_version = -1
        self.memo: dict[tuple[str, float, float], np.ndarray] = {}
        self.memo_version = -1


class _Plan:
    """Where the series of a selection keep their history: per block, columns and output positions."""

    __slots__ = ("groups", "scattered")

    def __init__(self, groups: list[tuple[_Block, np.ndarray, np.ndarray]], scattered: list[tuple[int, int]]):
        self.groups = groups
        self.scattered = scattered  # (position, id) of series whose history is in several blocks


class Window:
    """In-memory recent samples, states and log records for rule evaluation (see the module doc)."""

    def __init__(self, horizon: float = 900.0, *, run_state_node: str | None = None,
                 wants: Callable[[str], bool] | None = None, max_logs: int = 100_000,
                 forget_after: float = 86400.0) -> None:
        if not horizon > 0:
            raise ValueError(f"horizon must be a positive number of seconds, not {horizon!r}")
        if not forget_after >= horizon:
            # A forgotten series must have no history left, or its points would outlive it.
            raise ValueError(f"forget_after ({forget_after!r} s) must be at least the horizon ({horizon!r} s)")
        self.horizon = float(horizon)
        self.forget_after = float(forget_after)
        self.run_state_node = run_state_node
        self._wants = wants
        self.lock = threading.RLock()
        self._ids: dict[SeriesKey, int] = {}  # -1: a series no rule reads
        self._wanted_names: dict[str, bool] = {}
        self.keys: list[SeriesKey] = []
        self.label_dicts: list[dict[str, str]] = []
        self._by_name: dict[str, list[int]] = {}
        self._name_list: list[str] = []
        self._last_ts = np.full(1024, -math.inf)
        self._last_val = np.full(1024, math.nan)
        self._where: list[list[tuple[_Block, int]]] = []
        self._blocks: dict[bytes, _Block] = {}
        self._blocks_version = 0
        self._data_version = 0  # bumped whenever kept data changes: memoised reductions expire
        self._states: dict[int, list[tuple[float, str]]] = {}
        self._selections: dict[tuple[str, tuple[Matcher, ...]], _Selection] = {}
        self._loaded: dict[tuple[str, ...], float] = {}
        self._groups: dict[tuple[int, tuple[str, ...]], tuple[np.ndarray, np.ndarray, list[Labels]]] = {}
        self.max_logs = max_logs
        self._logs: deque[LogRecord] = deque()
        self._logs_unsorted = False
        self.dropped_logs = 0
        self.newest: float | None = None
        self.samples_seen = 0
        self.samples_kept = 0
        self._dead: set[int] = set()  # forgotten ids not yet reclaimed by a compaction
        self._unwanted = 0  # keys in ``_ids`` with id -1
        self._compacted_at = -math.inf
        self._unwanted_cleared_at = -math.inf
        self.forgotten_series = 0
        """Series forgotten so far (no sample for ``forget_after``)."""
        self.compactions = 0
        """Compactions so far (ids of forgotten series reclaimed, all ids renumbered)."""
        self.last_compaction_seconds = 0.0
        """Duration of the newest compaction (wall-clock seconds, the lock held meanwhile)."""

    # ---- feeding ---------------------------------------------------------------------------

    def __call__(self, source: str, batches: list[Batch]) -> None:
        """Runner listener: every batch of every cycle of every source."""
        self.ingest(batches)

    def ingest(self, batches: Iterable[Batch]) -> None:
        """Keep the wanted series of ``batches`` (numbers in blocks, strings as state changes)."""
        with self.lock:
            for batch in batches:
                self._ingest(batch)

    def _ingest(self, batch: Batch) -> None:
        keys, values, ts = batch.keys, batch.values, float(batch.ts)
        n = min(len(keys), len(values))
        if not n:
            return
        self.samples_seen += n
        if len(keys) != n:
            keys = keys[:n]
        ids_map = self._ids
        try:
            ids = np.fromiter(map(ids_map.__getitem__, keys), dtype=np.int64, count=n)
        except KeyError:
            for key in keys:
                if key not in ids_map:
                    self._register(key)
            ids = np.fromiter(map(ids_map.__getitem__, keys), dtype=np.int64, count=n)
        wanted = ids >= 0
        if not wanted.any():
            return
        if self.newest is None or ts > self.newest:
            self.newest = ts
        array = _numbers(values[:n] if len(values) != n else values)
        if array is None:  # states (strings) or odd values among the numbers: value by value
            array = np.full(n, math.nan)
            numeric = np.ones(n, dtype=bool)
            for i in np.flatnonzero(wanted).tolist():
                value = values[i]
                if isinstance(value, str):
                    numeric[i] = False
                    self._state(int(ids[i]), ts, value)
                else:
                    array[i] = _number(value)
            wanted &= numeric
        sel = ids[wanted]
        if not sel.size:
            return
        row = array[wanted]
        self.samples_kept += sel.size
        newer = self._last_ts[sel] <= ts
        if not newer.all():
            sel_new = sel[newer]
            self._last_ts[sel_new] = ts
            self._last_val[sel_new] = row[newer]
        else:
            self._last_ts[sel] = ts
            self._last_val[sel] = row
        self._data_version += 1
        layout = sel.tobytes()
        block = self._blocks.get(layout)
        if block is None:
            block = self._new_block(layout, sel)
        block.append(ts, row)

    def _register(self, key: SeriesKey) -> None:
        name = key[0]
        wanted = self._wanted_names.get(name)
        if wanted is None:
            wanted = self._wanted_names[name] = (
                self._wants is None or name in (RUN_STATE, RUN_STATE_SINCE) or bool(self._wants(name)))
        if not wanted:
            self._ids[key] = -1
            self._unwanted += 1
            return
        sid = len(self.keys)
        self._ids[key] = sid
        self.keys.append(key)
        self.label_dicts.append(dict(key[1]))
        self._where.append([])
        ids = self._by_name.get(name)
        if ids is None:
            ids = self._by_name[name] = []
            self._name_list.append(name)
        ids.append(sid)
        if sid >= len(self._last_ts):
            grow = len(self._last_ts)
            self._last_ts = np.concatenate([self._last_ts, np.full(grow, -math.inf)])
            self._last_val = np.concatenate([self._last_val, np.full(grow, math.nan)])

    def _new_block(self, layout: bytes, ids: np.ndarray) -> _Block:
        block = self._blocks[layout] = _Block(ids.copy())
        for col, sid in enumerate(ids.tolist()):
            self._where[sid].append((block, col))
        self._blocks_version += 1
        return block

    def _state(self, sid: int, ts: float, value: str) -> None:
        self._data_version += 1
        history = self._states.setdefault(sid, [])
        self._last_val[sid] = math.nan
        if ts >= self._last_ts[sid]:
            self._last_ts[sid] = ts
            if history and history[-1][1] == value:
                return  # unchanged: the change time is what matters
            history.append((ts, value))
        else:  # late state (replay out of order): insert in place
            history.append((ts, value))
            history.sort(key=lambda item: item[0])

    def ingest_logs(self, records: Iterable[LogRecord]) -> None:
        """Keep log records for ``log_count`` rules; beyond ``max_logs`` the oldest go (counted)."""
        with self.lock:
            logs = self._logs
            for record in records:
                if logs and record.ts < logs[-1].ts:
                    self._logs_unsorted = True
                logs.append(record)
                if record.ts > (self.newest or -math.inf):
                    self.newest = record.ts
            if self._logs_unsorted:
                self._logs = logs = deque(sorted(logs, key=lambda r: r.ts))
                self._logs_unsorted = False
            while len(logs) > self.max_logs:
                logs.popleft()
                self.dropped_logs += 1

    def load(self, store, since: float, until: float, names: Iterable[str]) -> int:
        """Fill from ``store`` (``SQLiteStore``-like: ``query(name, since=, until=)`` in long form).

        For ``watch`` mode and backtests. Calling again with the same names continues after what
        was already loaded, so a poll loop may pass overlapping ranges. Returns the points loaded.
        """
        names = tuple(sorted(set(names)))
        done = self._loaded.get(names)
        lo = since if done is None else max(since, done)
        if until < lo:
            return 0
        loaded = 0
        batches: list[Batch] = []
        for name in names:
            frame = store.query(name, since=lo, until=until)
            if frame.empty:
                continue
            loaded += len(frame)
            batches += _frame_batches(frame)
        batches.sort(key=lambda b: b.ts)
        self.ingest(batches)
        # Points at exactly ``until`` may still be written by a collector mid-cycle: reread them.
        self._loaded[names] = until
        return loaded

    def restore(self, store, now: float, names: Iterable[str], until: float | None = None) -> int:
        """Start as a window that never stopped would be at ``now``: the history of the horizon,
        and the newest sample of every series seen within ``forget_after`` (what ``absent`` and
        ``down`` rules need about series that went quiet long ago). For a service that starts:
        a restart must not look like all data vanished. Returns the points loaded."""
        names = tuple(sorted(set(names)))
        cutoff = now - self.horizon
        batches: list[Batch] = []
        for name in names:
            frame = store.latest(name)
            if frame.empty:
                continue
            ts = frame["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
            old = frame[(ts < cutoff) & (ts >= now - self.forget_after)]
            if not old.empty:
                batches += _frame_batches(old)
        batches.sort(key=lambda b: b.ts)
        self.ingest(batches)
        return sum(len(b) for b in batches) + self.load(store, cutoff, now if until is None else until, names)

    # ---- selecting --------------------------------------------------------------------------

    def select(self, name: str, matchers: MatcherSpec = None) -> list[SeriesKey]:
        """Keys of the series named ``name`` (a glob allowed) that satisfy ``matchers``."""
        return [self.keys[i] for i in self.select_ids(name, matchers).tolist()]

    def select_ids(self, name: str, matchers: MatcherSpec = None) -> np.ndarray:
        """Ids (sorted) of the selected series; cached, and extended only by series new since last time."""
        return self._selection(name, matchers).array

    def _selection(self, name: str, matchers: MatcherSpec) -> _Selection:
        if isinstance(matchers, tuple) and all(isinstance(m, Matcher) for m in matchers):
            wanted: tuple[Matcher, ...] = matchers
        else:
            wanted = tuple(parse_matchers(matchers))
        sel = self._selections.get((name, wanted))
        if sel is None:
            sel = self._selections[(name, wanted)] = _Selection(name, wanted)
        self._refresh(sel)
        return sel

    def _refresh(self, sel: _Selection) -> None:
        names = self._name_list
        if sel.names_checked < len(names):
            if _GLOB.search(sel.name):
                pattern = re.compile(fnmatch.translate(sel.name))
                sel.names += [n for n in names[sel.names_checked:] if pattern.fullmatch(n)]
            elif sel.name in names[sel.names_checked:]:
                sel.names.append(sel.name)
            sel.names_checked = len(names)
        added = False
        for name in sel.names:
            ids = self._by_name[name]
            start = sel.checked.get(name, 0)
            if start == len(ids):
                continue
            labels, dead = self.label_dicts, self._dead
            sel.ids += [i for i in ids[start:]
                        if i not in dead and all(m.matches(labels[i]) for m in sel.matchers)]
            sel.checked[name] = len(ids)
            added = True
        if added:
            sel.ids.sort()
            sel.array = np.array(sel.ids, dtype=np.int64)
            sel.plan = None

    # ---- reading ----------------------------------------------------------------------------

    def last(self, key: SeriesKey) -> tuple[float, Value] | None:
        """The newest (ts, value) of a series; a state series gives its newest string."""
        sid = self._ids.get(key, -1)
        if sid < 0 or self._last_ts[sid] == -math.inf:
            return None
        states = self._states.get(sid)
        if states and math.isnan(self._last_val[sid]):  # a state series (its numbers are NaN)
            return float(self._last_ts[sid]), states[-1][1]
        return float(self._last_ts[sid]), float(self._last_val[sid])

    def points(self, key: SeriesKey, since: float, until: float = math.inf) -> tuple[np.ndarray, np.ndarray]:
        """Timestamps and values (floats) of a numeric series with since <= ts <= until."""
        sid = self._ids.get(key, -1)
        if sid < 0:
            return np.empty(0), np.empty(0)
        return self._points(sid, since, until)

    def _points(self, sid: int, since: float, until: float) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        for block, col in self._where[sid]:
            i, j = block.span(since, until)
            if j > i:
                parts.append((block.ts[i:j], block.vals[i:j, col]))
        if not parts:
            return np.empty(0), np.empty(0)
        if len(parts) == 1:
            return parts[0][0].copy(), parts[0][1].copy()
        ts = np.concatenate([p[0] for p in parts])
        vals = np.concatenate([p[1] for p in parts])
        order = np.argsort(ts, kind="stable")
        return ts[order], vals[order]

    def latest(self, ids: np.ndarray, now: float, fresh: float) -> tuple[np.ndarray, np.ndarray]:
        """(ts, value) of the newest sample at or before ``now`` of each id; NaN value if none
        within ``fresh`` seconds. Uses the newest-value arrays unless ``now`` lies in the past
        of the data (a backtest), where the history answers."""
        ts = self._last_ts[ids]
        vals = self._last_val[ids].copy()
        future = ts > now
        if future.any():
            pos = np.flatnonzero(future)
            past_ts, past_vals = self._reduce_ids(ids[pos], "last", now - max(fresh, 0.0), now, with_ts=True)
            ts = ts.copy()
            ts[pos], vals[pos] = past_ts, past_vals
        vals[~(ts >= now - fresh)] = math.nan
        return ts, vals

    def last_seen(self, ids: np.ndarray, now: float) -> np.ndarray:
        """Time of the newest sample or state at or before ``now`` of each id (-inf: none kept)."""
        ts = self._last_ts[ids].copy()
        for pos in np.flatnonzero(ts > now).tolist():
            sid = int(ids[pos])
            seen = -math.inf
            for block, _ in self._where[sid]:
                i, j = block.span(-math.inf, now)
                if j > i:
                    seen = max(seen, float(block.ts[j - 1]))
            for t, _ in self._states.get(sid, ()):
                if t <= now:
                    seen = max(seen, t)
            ts[pos] = seen
        return ts

    def reduce(self, ids: np.ndarray, fn: str, since: float, until: float) -> np.ndarray:
        """``fn`` (one of ``FUNCTIONS``) over since <= ts <= until for each id; NaN where no data."""
        return self._reduce_ids(ids, fn, since, until)[1]

    def reduce_selection(self, name: str, matchers: MatcherSpec, fn: str, since: float,
                         until: float) -> tuple[np.ndarray, np.ndarray]:
        """(ids, values) for a cached selection: the fast path rules use (the plan is cached too)."""
        sel = self._selection(name, matchers)
        if sel.plan is None or sel.plan_version != self._blocks_version:
            sel.plan, sel.plan_version = self._plan(sel.array), self._blocks_version
        # Rules often share an expression (a warning and a critical level, one rule per app):
        # within one pass over the rules the data does not change, so compute it once.
        if sel.memo_version != self._data_version:
            sel.memo.clear()
            sel.memo_version = self._data_version
        key = (fn, since, until)
        values = sel.memo.get(key)
        if values is None:
            values = sel.memo[key] = self._run_plan(sel.plan, len(sel.array), fn, since, until)[1]
            values.flags.writeable = False
        return sel.array, values

    def _reduce_ids(self, ids: np.ndarray, fn: str, since: float, until: float,
                    with_ts: bool = False) -> tuple[np.ndarray, np.ndarray]:
        return self._run_plan(self._plan(ids), len(ids), fn, since, until, with_ts)

    def _plan(self, ids: np.ndarray) -> _Plan:
        groups: dict[int, tuple[_Block, list[int], list[int]]] = {}
        scattered: list[tuple[int, int]] = []
        where = self._where
        for pos, sid in enumerate(ids.tolist()):
            places = where[sid]
            if len(places) == 1:
                block, col = places[0]
                entry = groups.get(id(block))
                if entry is None:
                    entry = groups[id(block)] = (block, [], [])
                entry[1].append(col)
                entry[2].append(pos)
            elif places:
                scattered.append((pos, sid))
        return _Plan([(b, np.array(c, dtype=np.intp), np.array(p, dtype=np.intp)) for b, c, p in groups.values()],
                     scattered)

    def _run_plan(self, plan: _Plan, n: int, fn: str, since: float, until: float,
                  with_ts: bool = False) -> tuple[np.ndarray, np.ndarray]:
        if fn not in FUNCTIONS:
            raise ValueError(f"unknown function {fn!r}: expected one of {', '.join(FUNCTIONS)}")
        out = np.full(n, math.nan)
        out_ts = np.full(n, -math.inf) if with_ts else out
        for block, cols, pos in plan.groups:
            i, j = block.span(since, until)
            if j <= i:
                continue
            if fn == "last":
                out[pos] = block.vals[j - 1, cols]
                if with_ts:
                    out_ts[pos] = block.ts[j - 1]
                continue
            ts, rows = block.ts[i:j], block.vals[i:j]
            if fn in ("avg", "min", "max", "delta") and 4 * len(cols) >= rows.shape[1]:
                # Many of the block's series: reducing all its (contiguous) columns and picking
                # afterwards beats gathering the wanted columns into a copy first. (Not for
                # counters: other columns' resets would send all of them down the slow path.)
                out[pos] = _over_time(fn, ts, rows)[cols]
            else:
                out[pos] = _over_time(fn, ts, rows[:, cols])
        for pos, sid in plan.scattered:
            ts, vals = self._points(sid, since, until)
            if len(ts):
                out[pos] = vals[-1] if fn == "last" else _over_time(fn, ts, vals[:, None])[0]
                if with_ts:
                    out_ts[pos] = ts[-1]
        return out_ts, out

    def groups(self, ids: np.ndarray, by: tuple[str, ...]) -> tuple[np.ndarray, list[Labels]]:
        """Group index of each id by the values of the ``by`` labels, and each group's labels
        (a label a series lacks is left out). Cached per selection array: aggregation rules
        group the same thousands of series every evaluation."""
        key = (id(ids), by)
        hit = self._groups.get(key)
        if hit is not None and hit[0] is ids:
            return hit[1], hit[2]
        index: dict[tuple[str, ...], int] = {}
        group = np.empty(len(ids), dtype=np.intp)
        dicts = self.label_dicts
        for pos, sid in enumerate(ids.tolist()):
            values = tuple(dicts[sid].get(label, "") for label in by)
            group[pos] = index.setdefault(values, len(index))
        found = [tuple(sorted((k, v) for k, v in zip(by, values) if v)) for values in index]
        if len(self._groups) > 4096:
            self._groups.clear()
        self._groups[key] = (ids, group, found)
        return group, found

    def state_at(self, sid: int, at: float | None = None) -> tuple[str, float] | None:
        """(state, since when) of a state series at ``at`` (default: now, the newest)."""
        history = self._states.get(sid)
        if not history:
            return None
        if at is None or history[-1][0] <= at:
            return history[-1][1], history[-1][0]
        for ts, value in reversed(history):
            if ts <= at:
                return value, ts
        return None

    def run_state(self, at: float | None = None) -> tuple[str | None, float | None]:
        """(state, since) of the DAQ: ``daq.run_state`` and ``daq.run_state_since`` of
        ``run_state_node`` (or of the only node there is); (None, None) when unknown.

        ``since`` is the node's ``daq.run_state_since`` when there is one (the source saw the
        transition), otherwise when this window saw the state change. ``at`` answers for a past
        moment within the horizon (backtests).
        """
        matchers = {"node": self.run_state_node} if self.run_state_node else None
        ids = self.select_ids(RUN_STATE, matchers)
        if len(ids) != 1:
            return None, None
        sid = int(ids[0])
        found = self.state_at(sid, at)
        if found is None:
            return None, None
        state, changed = found
        node = self.label_dicts[sid].get("node")
        since_ids = self.select_ids(RUN_STATE_SINCE, {"node": node} if node is not None else None)
        if len(since_ids) == 1:
            now = math.inf if at is None else at
            _, value = self.latest(since_ids, now, math.inf)
            if not math.isnan(value[0]):
                return state, float(value[0])
        return state, changed

    def logs(self, since: float, until: float = math.inf) -> Iterable[LogRecord]:
        """Log records with since <= ts <= until, newest first (stops at the first older one)."""
        for record in reversed(self._logs):
            if record.ts < since:
                return
            if record.ts <= until:
                yield record

    # ---- housekeeping -----------------------------------------------------------------------

    def prune(self, now: float) -> None:
        """Forget history older than ``horizon`` before ``now``; newest values and states stay."""
        cutoff = now - self.horizon
        with self.lock:
            dropped = []
            for layout, block in self._blocks.items():
                block.prune(cutoff)
                if block.empty:
                    dropped.append(layout)
            for layout in dropped:
                block = self._blocks.pop(layout)
                for sid in block.ids.tolist():
                    self._where[sid] = [(b, c) for b, c in self._where[sid] if b is not block]
            if dropped:
                self._blocks_version += 1
            self._data_version += 1
            for history in self._states.values():
                if len(history) > 1 and history[1][0] < cutoff:
                    keep = next((k for k in range(len(history) - 1, -1, -1) if history[k][0] < cutoff), 0)
                    del history[:keep]
            while self._logs and self._logs[0].ts < cutoff:
                self._logs.popleft()
            self._forget(now)
            if self._dead and now - self._compacted_at >= self.horizon and (
                    len(self._dead) >= COMPACT_MIN_DEAD or len(self._dead) >= COMPACT_MIN_SHARE * len(self.keys)):
                self._compact(now)
            elif (self._unwanted > max(UNWANTED_KEYS_LIMIT, len(self.keys))
                  and now - self._unwanted_cleared_at >= self.horizon):
                self._clear_unwanted(now)

    def _forget(self, now: float) -> None:
        """Make series with no sample since ``now - forget_after`` invisible, as if never seen.

        Their ids stay taken (tombstones in ``keys`` and ``_by_name``) until a compaction, so
        nothing cached has to be renumbered now: only the selections that held them shrink.
        """
        n = len(self.keys)
        last = self._last_ts[:n]
        stale = np.flatnonzero((last < now - self.forget_after) & (last > -math.inf))
        # All their points are older than the horizon, so prune() above emptied their blocks;
        # a series that still has history (cannot happen while forget_after >= horizon) stays.
        gone = [sid for sid in stale.tolist() if not self._where[sid]]
        if not gone:
            return
        for sid in gone:
            self._ids.pop(self.keys[sid], None)
            self._states.pop(sid, None)
        self._last_ts[gone] = -math.inf
        self._last_val[gone] = math.nan
        self._dead.update(gone)
        self.forgotten_series += len(gone)
        gone_ids = np.array(gone, dtype=np.int64)
        for sel in self._selections.values():
            if len(sel.array) and np.isin(sel.array, gone_ids, assume_unique=True).any():
                sel.ids = [i for i in sel.ids if i not in self._dead]
                sel.array = np.array(sel.ids, dtype=np.int64)  # a new object: callers' caches by identity expire
                sel.plan = None
        self._groups.clear()
        self._data_version += 1

    def compact(self, now: float) -> int:
        """Reclaim the ids of the series forgotten so far now, paying or not (``prune`` compacts
        by itself when it pays); returns how many. ``now`` starts the next once-per-horizon wait."""
        with self.lock:
            reclaimed = len(self._dead)
            if reclaimed:
                self._compact(now)
            return reclaimed

    def _compact(self, now: float) -> None:
        """Reclaim the ids of forgotten series: renumber the live ones 0..n-1 (order kept, so
        selections stay sorted) and remap everything that holds an id."""
        started = time.perf_counter()
        for sel in self._selections.values():
            self._refresh(sel)  # every selection has checked every id: only the remapped ids remain to keep
        n = len(self.keys)
        alive = np.ones(n, dtype=bool)
        alive[list(self._dead)] = False
        old_ids = np.flatnonzero(alive)
        new_id = np.full(n, -1, dtype=np.int64)
        new_id[old_ids] = np.arange(len(old_ids))
        keep = old_ids.tolist()
        self.keys = [self.keys[i] for i in keep]
        self.label_dicts = [self.label_dicts[i] for i in keep]
        self._where = [self._where[i] for i in keep]
        self._ids = dict(zip(self.keys, range(len(self.keys))))  # unwanted (-1) keys go too: re-learnt on sight
        self._unwanted = 0
        capacity = max(1024, len(self._last_ts))
        while capacity // 2 >= max(1024, 2 * len(keep)):
            capacity //= 2
        last_ts, last_val = np.full(capacity, -math.inf), np.full(capacity, math.nan)
        last_ts[:len(keep)], last_val[:len(keep)] = self._last_ts[old_ids], self._last_val[old_ids]
        self._last_ts, self._last_val = last_ts, last_val
        # Names stay listed even when all their series are gone: selections index ``_name_list``.
        self._by_name = {name: [i for i in new_id[ids].tolist() if i >= 0] for name, ids in self._by_name.items()}
        self._states = {int(new_id[sid]): history for sid, history in self._states.items()}
        blocks = {}
        for block in self._blocks.values():
            block.ids = new_id[block.ids]
            blocks[block.ids.tobytes()] = block
        self._blocks = blocks
        for sel in self._selections.values():
            remapped = new_id[sel.array]
            sel.ids = remapped[remapped >= 0].tolist()
            sel.array = np.array(sel.ids, dtype=np.int64)
            sel.checked = {name: len(self._by_name[name]) for name in sel.checked}
            sel.plan = None
            sel.memo.clear()
        self._groups.clear()
        self._blocks_version += 1
        self._data_version += 1
        reclaimed = len(self._dead)
        self._dead = set()
        self._compacted_at = self._unwanted_cleared_at = now
        self.compactions += 1
        self.last_compaction_seconds = time.perf_counter() - started
        log.info("alerting window: reclaimed the ids of %d forgotten series (%d kept) in %.3f s",
                 reclaimed, len(keep), self.last_compaction_seconds)

    def _clear_unwanted(self, now: float) -> None:
        """Drop the keys of series no rule reads (they churn too); ids do not change."""
        dead = self._dead
        self._ids = {key: sid for sid, key in enumerate(self.keys) if sid not in dead}
        self._unwanted = 0
        self._unwanted_cleared_at = now

    @property
    def series_count(self) -> int:
        """Series kept (forgotten ones not counted, even before their ids are reclaimed)."""
        return len(self.keys) - len(self._dead)

    def labels_of(self, sid: int) -> Labels:
        return self.keys[sid][1]


def _over_time(fn: str, ts: np.ndarray, vals: np.ndarray) -> np.ndarray:
    """``fn`` down the rows of ``vals`` (rows × series); NaN samples are ignored, none → NaN.

    The plain reductions come first and the NaN-aware ones only when a NaN is there: numpy's
    ``nan*`` functions (and silencing their warnings) cost several times more, and this runs
    once per block per rule.
    """
    if fn == "min":
        return np.fmin.reduce(vals, axis=0)
    if fn == "max":
        return np.fmax.reduce(vals, axis=0)
    if fn == "avg":
        total = np.add.reduce(vals, axis=0)
        if not np.isnan(total).any():
            return total / len(vals)
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", RuntimeWarning)  # "mean of empty slice": NaN is the answer
            return np.nanmean(vals, axis=0)
    if len(vals) < 2:
        return np.full(vals.shape[1], math.nan)
    if fn == "delta":
        return vals[-1] - vals[0]
    diff = vals[1:] - vals[:-1]
    if (diff >= 0).all():  # no reset and no NaN: the increase is last − first
        increase = vals[-1] - vals[0]
    else:
        # A counter that went down was reset: what it counted since the reset is its new value.
        with np.errstate(invalid="ignore"):
            increase = np.nansum(np.where(diff >= 0, diff, vals[1:]), axis=0)
    if fn == "increase":
        return increase
    return increase / (ts[-1] - ts[0])  # rate: ts are distinct, so never a division by zero


def _numbers(values: object) -> np.ndarray | None:
    """A float64 array of ``values`` when they are all numbers (the common case, done in C)."""
    if isinstance(values, np.ndarray) and values.dtype.kind in "fiub":
        return values.astype(np.float64, copy=False)
    try:
        array = np.asarray(values)
    except (TypeError, ValueError, OverflowError):
        return None
    if array.ndim == 1 and array.dtype.kind in "fiub":
        return array.astype(np.float64, copy=False)
    return None


def _number(value: object) -> float:
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return math.nan


def _frame_batches(frame) -> list[Batch]:
    """A store ``query`` result (long form) as one Batch per timestamp and series set."""
    keys_by_labels: dict[tuple[str, int], SeriesKey] = {}
    ts = frame["ts"].to_numpy(dtype="datetime64[ns]").astype(np.int64) / 1e9
    names = frame["name"].to_numpy()
    values = frame["value"].to_numpy()
    states = frame["state"].to_numpy()
    labels = frame["labels"].to_numpy()
    batches: dict[float, Batch] = {}
    for t, name, value, state, lbls in zip(ts.tolist(), names, values.tolist(), states, labels):
        # The store hands out one labels dict per series: key by its identity, build the key once.
        cache_key = (name, id(lbls))
        key = keys_by_labels.get(cache_key)
        if key is None:
            key = keys_by_labels[cache_key] = (name, tuple(sorted(lbls.items())))
        batch = batches.get(t)
        if batch is None:
            batch = batches[t] = Batch(t)
        batch.add(key, state if state is not None else value)
    return list(batches.values())


__all__ = ["UNWANTED_KEYS_LIMIT", "Window"]
