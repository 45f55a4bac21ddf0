"""The embedded time-series store: one SQLite file shared by every farmwatch process on a host.

Several services write to the same file at once (one collector per source, plus detection and
alerting), so the file runs in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction that
waits up to ``busy_timeout`` for the write lock, and readers never block writers. Opening the
file (WAL, schema steps) and transactions are ``farmwatch.store.storefile``'s; this module adds
the time series.

Numbers pass through two forms:
- the *head*: a poll source produces, per target and cycle, one ``Batch``, the same series every
  cycle with new values. All numbers of a batch become one row of the hour's head table
  ``head_YYYYMMDDTHH(layout_id, ts, vals)``: ``vals`` is a little-endian float64 array and the
  *layout* names the series those values belong to, in order (``layouts``). A commit of one poll cycle appends one row per target
  and dirties about one page per target however many series the target has. Head tables are
  listed in ``heads``; files of older farmwatch versions have day tables ``frames_YYYYMMDD`` there,
  which are read and compacted the same way.
- *chunks*: once an hour is over, ``compact()`` (run by the writers' maintenance) turns its head
  table into compressed chunks per series (``farmwatch.store.chunks``, ~1 byte per sample) and
  1-minute and 10-minute rollups (``farmwatch.store.rollup``), and drops the head table. A long
  read then costs in proportion to the series read, not to the targets they were polled with.
Several values of one series at one millisecond (a Zabbix burst) are all kept: the first in its
frame, the others in ``extras`` with their sequence number within the ms. Writing the same
(series, ts, sequence) again replaces the value, so replaying a spool after a crash never
duplicates points. String state values (``socket_state = connected``) live in ``states`` keyed
``(series_id, ts, seq)``; retention always keeps each series' newest state.
"""

from __future__ import annotations

import hashlib
import math
import os
import re
import sqlite3
import threading
from collections import namedtuple
from dataclasses import dataclass
from datetime import datetime, timedelta, timezone
from itertools import repeat
from operator import itemgetter
from typing import TYPE_CHECKING, Callable, Iterable, Iterator, Mapping, Sequence

import numpy as np
import orjson

from farmwatch.clock import Clock
from farmwatch.model import Batch, Labels, Sample, SeriesKey, Value, format_series
from farmwatch.matchers import Matcher, MatcherSpec, parse_matchers
from farmwatch.store import chunks, compact, rollup
from farmwatch.store.chunks import BLOCK_MS, Points
from farmwatch.store.storefile import APPLICATION, CACHE_KIB, MIGRATIONS, StoreError, StoreFile

if TYPE_CHECKING:
    import pandas as pd  # imported where frames are made: commands that make none start without it

COMPACT_AFTER = 600.0
"""An hour's head table is compacted this many seconds after the hour ended (late samples)."""

StateRow = tuple[int, int, int, str]
"""(series id, ts in ms, sequence within the ms, state) as stored."""
Raw = tuple[int, list[SeriesKey], list[Value]]
"""What becomes one frame: ts in ms, keys and values as given."""

FRAME_DTYPE = np.dtype("<f8")
ID_DTYPE = np.dtype("<i8")

_GLOB = re.compile(r"[*?\[]")
_LONG_COLUMNS = ("ts", "name", "value", "state", "labels")
_ROLLUP_COLUMNS = ("ts", "name", "value", "min", "max", "last", "count", "labels")
_SERIES_COLUMNS = ("id", "name", "labels")
_STATES_RETENTION = """
    DELETE FROM states
    WHERE series_id IN (SELECT id FROM series) AND ts < :cutoff
      AND ts < (SELECT MAX(newer.ts) FROM states AS newer WHERE newer.series_id = states.series_id)
"""


class SQLiteStore(StoreFile):
    """Time series (numbers and string states) in one SQLite file; safe for several processes.

    One object may be shared by threads (a collector's writer thread and a CLI reader): every
    call holds an internal lock for its duration. Opening the file, transactions and cursors are
    ``StoreFile``'s.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | None = None,
        clock: Clock | None = None,
        busy_timeout: float = 30.0,
        readonly: bool = False,
        rollup_retention: Mapping[str, float] | None = None,
    ) -> None:
        for res, keep in (rollup_retention or {}).items():
            if res not in rollup.RESOLUTIONS or not keep > 0:
                raise ValueError(f"rollup_retention: {res!r} = {keep!r}: expected "
                                 f"{' or '.join(rollup.RESOLUTIONS)} = a positive number of seconds")
        self.rollup_retention = dict(rollup_retention or {})
        """Resolution (``1m``, ``10m``) → seconds its rollups are kept; a missing one: for ever."""
        self._ids: dict[SeriesKey, int] = {}
        # Layout ids by the bytes of their int64 series-id array (hashed once, compared by memcmp).
        self._layouts: dict[bytes, int] = {}
        super().__init__(path, retention=retention, clock=clock, busy_timeout=busy_timeout, readonly=readonly)

    def write(self, items: Batch | Sample | Iterable[Batch] | Iterable[Sample], *,
              also: Sequence[Callable[[sqlite3.Connection], None]] = ()) -> int:
        """Store samples in one transaction and return how many were written (every one given).

        Numbers (bools as 1.0/0.0, None as NaN; NaN and ±inf are kept as they are) become samples,
        strings become state values. The numbers of one ``Batch`` are stored as one frame; loose
        ``Sample`` objects make one frame per timestamp. Several values of one series at one ms
        are all kept, in the order given (sequence 0, 1, …). Writing the same (series, ts,
        sequence) again replaces the value, so replaying a spool after a crash never duplicates
        points. (A rewrite whose batch has another set of numeric series is stored under another
        layout; a (series, ts) held by two layouts is read from the newest layout.) Each callable
        in ``also`` runs inside the same transaction (a remote-write queue: stored and queued, or
        neither).
        """
        raws, count, arrivals = _collect(items)
        if not raws:
            return 0
        self._require_writable("write")
        parts = [_Part.split(*raw) for raw in raws]
        with self._lock:
            ids = self._ids
            try:
                frames = [part.resolve(ids) for part in parts]
            except KeyError:
                frames = None
            with self._transaction("BEGIN IMMEDIATE", "write") as conn:
                if frames is None:
                    unknown = [key for key in _first_appearance(arrivals) if key not in ids]
                    ids = {**ids, **self._register(conn, unknown)}
                    frames = [part.resolve(ids) for part in parts]
                _spread_repeats(frames)
                layouts = self._layout_ids(conn, frames)
                heads: dict[int, list[tuple[int, int, bytes]]] = {}
                states: list[StateRow] = []
                extras: list[tuple[int, int, int, int]] = []
                for frame in frames:
                    if frame.sids.size:
                        heads.setdefault(frame.ts // BLOCK_MS, []).append(
                            (layouts[frame.layout], frame.ts, frame.values.tobytes()))
                    states += frame.states
                    extras += frame.extras
                for block, rows in heads.items():
                    rows.sort(key=itemgetter(0, 1))  # primary-key order for B-tree locality
                    table = _ensure_head(conn, block)
                    conn.executemany(f'INSERT OR REPLACE INTO "{table}" VALUES (?, ?, ?)', rows)
                if states:
                    conn.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?, ?)", states)
                if extras:
                    conn.executemany("INSERT OR REPLACE INTO extras VALUES (?, ?, ?, ?)", extras)
                for hook in also:
                    hook(conn)
            # Only now: ids handed out by a transaction that rolled back must not be cached.
            self._ids = ids
            self._layouts.update(layouts)
        return count

    def series(self, name: str | None = None, matchers: MatcherSpec = None) -> pd.DataFrame:
        """The known series: columns id, name, labels (dict) and one column per label key."""
        wanted = parse_matchers(matchers)
        with self._transaction("BEGIN", "query") as conn:
            catalog = _Catalog.select(conn, name, wanted)
        return catalog.frame()

    def query(
        self,
        name: str | None = None,
        matchers: MatcherSpec = None,
        *,
        since: float | None = None,
        until: float | None = None,
        form: str = "long",
        limit: int | None = None,
    ) -> pd.DataFrame:
        """Samples and states of the matching series with ``since <= ts <= until`` (epoch seconds).

        ``name`` may be a glob (``hlt.output.*``). ``form="long"``: one row per point, columns
        ts, name, value (NaN for states), state (None for numbers), labels and one column per
        label key, sorted by ts then series. ``form="wide"``: numeric samples only, indexed by ts,
        one column per series named ``name{k=v,…}``. ``limit`` reads at most that many points,
        the earliest first (in wide form, the rows are the timestamps of those points).
        """
        if form not in ("long", "wide"):
            raise ValueError(f"form must be 'long' or 'wide', not {form!r}")
        catalog, samples, states = self._points(name, matchers, since, until, limit, with_states=form == "long")
        if form == "wide":
            if limit is not None:
                order = np.lexsort((samples[2], catalog.positions(samples[0]), samples[1]))[:limit]
                samples = tuple(column[order] for column in samples)  # type: ignore[assignment]
            return catalog.wide(samples)
        frame = _frame(catalog.long(samples, states))
        return frame if limit is None else frame.head(limit)

    def rows(
        self,
        name: str | None = None,
        matchers: MatcherSpec = None,
        *,
        since: float | None = None,
        until: float | None = None,
        resolution: str = "raw",
        limit: int | None = None,
    ) -> list[tuple]:
        """The first ``limit`` rows of ``query`` (``resolution="raw"``) or ``rollup`` as named
        tuples of the fixed columns (ts a UTC ``datetime``; no column per label key).

        What ``farmwatch query`` prints: made without pandas, whose import is most of a short
        command's start-up.
        """
        if resolution == "raw":
            catalog, samples, states = self._points(name, matchers, since, until, limit, with_states=True)
            return _rows(_Point, catalog.long(samples, states, per_label=False), limit)
        catalog, rolled = self._rolled(name, matchers, since, until, resolution)
        return _rows(_Bin, catalog.rolled(rolled, per_label=False), limit)

    def _points(self, name: str | None, matchers: MatcherSpec, since: float | None, until: float | None,
                limit: int | None, with_states: bool) -> tuple[_Catalog, Points, list[StateRow]]:
        wanted = parse_matchers(matchers)
        lo = -(2**63) if since is None else _ms(since)
        hi = 2**63 - 1 if until is None else _ms(until)
        with self._transaction("BEGIN", "query") as conn:
            catalog = _Catalog.select(conn, name, wanted)
            if limit is None:
                samples = _read_points(conn, catalog.ids, lo, hi)
                states = _read_states(conn, catalog.ids, lo, hi) if with_states else []
            else:
                samples, states = _read_earliest(conn, catalog.ids, lo, hi, limit, with_states)
        return catalog, samples, states

    def latest(self, name: str | None = None, matchers: MatcherSpec = None) -> pd.DataFrame:
        """The newest value or state of each matching series, in the long form of ``query``
        (of several values at the newest ms, the last one)."""
        wanted = parse_matchers(matchers)
        with self._transaction("BEGIN", "query") as conn:
            catalog = _Catalog.select(conn, name, wanted)
            slots = _Slots.select(conn, catalog.ids)
            newest: list[tuple[int, int, bytes]] = []
            missing = set(slots.layouts)
            for (table,) in conn.execute("SELECT name FROM heads ORDER BY start_ms DESC").fetchall():
                if not missing:
                    break
                found = conn.execute(_newest_frame_sql(f'"{table}"'), (_json(sorted(missing)),)).fetchall()
                newest += found
                missing.difference_update(row[0] for row in found)
            sids, ts, values, layout = slots.frames(newest)
            parts = [(sids, ts, np.zeros(len(sids), dtype=np.int64), values, layout + 1)]
            unseen = sorted(set(catalog.ids) - set(sids.tolist()))
            old = chunks.newest(conn, unseen)
            parts.append((*old, np.zeros(len(old[0]), dtype=np.int64)))
            extra = _unbits(conn.execute(_newest_sql("extras", "bits"), (_json(catalog.ids),)).fetchall())
            parts.append((*extra, np.full(len(extra[0]), 2**62, dtype=np.int64)))
            states = conn.execute(_newest_sql("states", "value"), (_json(catalog.ids),)).fetchall()
        sids, ts, seq, values, rank = (np.concatenate(column) for column in zip(*parts))
        # Newest per series: latest ts, then the last value of that ms, then the newest layout.
        order = np.lexsort((-rank, -seq, -ts, sids))
        first = _firsts(sids[order])
        sids, ts, seq, values = (column[order][first] for column in (sids, ts, seq, values))
        newest_state: dict[int, tuple[int, int, int, str]] = {}
        for row in states:
            if row[0] not in newest_state or row[2] > newest_state[row[0]][2]:
                newest_state[row[0]] = row
        state_ts = {sid: row[1] for sid, row in newest_state.items()}
        keep = np.array([t > state_ts.get(sid, -math.inf) for sid, t in zip(sids.tolist(), ts.tolist())],
                        dtype=bool)
        newer_sample = set(sids[keep].tolist())
        kept_states = [row for sid, row in newest_state.items() if sid not in newer_sample]
        return _frame(catalog.long((sids[keep], ts[keep], seq[keep], values[keep]), kept_states))

    def rollup(
        self,
        name: str | None = None,
        matchers: MatcherSpec = None,
        *,
        since: float | None = None,
        until: float | None = None,
        resolution: str = "1m",
    ) -> pd.DataFrame:
        """Rollups of the matching numeric series: one row per series and bin with ``since <= bin
        start <= until``, columns ts (bin start), name, value (the mean), min, max, last, count,
        labels and one column per label key, sorted by ts then series. ``resolution``: ``1m`` or
        ``10m``. Hours not compacted yet are rolled up from their samples on the fly."""
        catalog, rolled = self._rolled(name, matchers, since, until, resolution)
        return _frame(catalog.rolled(rolled))

    def _rolled(self, name: str | None, matchers: MatcherSpec, since: float | None, until: float | None,
                resolution: str) -> tuple[_Catalog, rollup.Rolled]:
        step = rollup.RESOLUTIONS.get(resolution)
        if step is None:
            raise ValueError(f"resolution must be one of {', '.join(rollup.RESOLUTIONS)}, not {resolution!r}")
        wanted = parse_matchers(matchers)
        lo = -(2**63) if since is None else _ms(since)
        hi = 2**63 - 1 if until is None else _ms(until)
        with self._transaction("BEGIN", "query rollups") as conn:
            catalog = _Catalog.select(conn, name, wanted)
            stored = rollup.read(conn, step, catalog.ids, lo, hi)
            head = _read_points(conn, catalog.ids, lo - lo % step if lo > -(2**63) else lo, hi, chunked=False)
        rolled = rollup.merge([stored, rollup.aggregate(head, step)])
        keep = (rolled.ts >= lo) & (rolled.ts <= hi)
        return catalog, rolled.take(np.flatnonzero(keep))

    def compact(self, now: float | None = None, *, everything: bool = False) -> int:
        """Turn head tables into compressed chunks and rollups: every hour that ended
        ``COMPACT_AFTER`` seconds before ``now`` (default: the clock's time), or every head table
        with ``everything`` (before a backup, in tests and benchmarks). One transaction per hour;
        then complete days' rollups are merged into day chunks. Returns the samples compacted."""
        self._require_writable("compact")
        cutoff = 2**63 - 1 if everything else _ms((self._clock.time() if now is None else now) - COMPACT_AFTER)
        with self._transaction("BEGIN", "compact") as conn:
            tables = conn.execute("SELECT name, start_ms, end_ms FROM heads WHERE end_ms <= ? ORDER BY start_ms",
                                  (cutoff,)).fetchall()
        total = 0
        for table, start, end in tables:
            # Hour by hour (an older farmwatch's day table too): one transaction and memory for an hour each.
            for hour in range(start, end, BLOCK_MS):
                with self._transaction("BEGIN IMMEDIATE", f"compact {table}") as conn:
                    total += compact.compact_table(conn, table, hour, min(end, hour + BLOCK_MS), _read_points,
                                                   drop=hour + BLOCK_MS >= end)
        with self._transaction("BEGIN", "compact") as conn:
            oldest = conn.execute("SELECT MIN(start_ms) FROM heads").fetchone()[0]
            newest = conn.execute("SELECT MAX(end_ms) FROM rollups").fetchone()[0]
        if newest is None:
            return total
        # Days before the oldest head table and before the compaction cutoff are complete.
        horizon = min(cutoff, newest + rollup.DAY_MS, oldest if oldest is not None else cutoff)
        more = True
        while more:
            with self._transaction("BEGIN IMMEDIATE", "merge rollups") as conn:
                more = compact.merge_rollup_days(conn, horizon // rollup.DAY_MS, settled=not everything)
        return total

    def apply_retention(self, now: float | None = None) -> int:
        """Forget data older than ``retention`` seconds before ``now`` (default: the clock's time),
        and rollups older than their own retention (``rollup_retention``).

        Head tables entirely before the cutoff are dropped as tables (no row scan); the one
        straddling the cutoff loses its older frames by primary-key ranges; chunks go whole (they
        span at most an hour, so up to an hour more than ``retention`` may stay). Each series
        keeps its newest state however old: a state that never changed is still the current state.
        Returns the number of samples and states deleted plus the number of tables and chunks
        dropped (those count once each; counting their samples would cost the reading that
        dropping avoids). Layouts stay: they are small, and a target that comes back reuses its layout.
        """
        if self.retention is None and not self.rollup_retention:
            return 0
        self._require_writable("apply retention")
        now = self._clock.time() if now is None else now
        removed = 0
        with self._transaction("BEGIN IMMEDIATE", "retention") as conn:
            if self.retention is not None:
                removed += self._trim_samples(conn, _ms(now - self.retention))
            for res, keep in self.rollup_retention.items():
                removed += conn.execute("DELETE FROM rollups WHERE res = ? AND end_ms < ?",
                                        (rollup.RESOLUTIONS[res], _ms(now - keep))).rowcount
        return removed

    def _trim_samples(self, conn: sqlite3.Connection, cutoff: int) -> int:
        removed = 0
        old = conn.execute("SELECT name, end_ms FROM heads WHERE start_ms < ?", (cutoff,)).fetchall()
        for table, end in old:
            if end <= cutoff:
                conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                conn.execute("DELETE FROM heads WHERE name = ?", (table,))
                removed += 1
            else:
                # Layout by layout, so that each is a primary-key range rather than a table scan
                # (CROSS JOIN keeps SQLite from putting the big table in the outer loop).
                counted = (f'SELECT total(l.n) FROM layouts AS l CROSS JOIN "{table}" AS f '
                           "ON f.layout_id = l.id AND f.ts < ?")
                removed += int(conn.execute(counted, (cutoff,)).fetchone()[0])
                sql = f'DELETE FROM "{table}" WHERE layout_id IN (SELECT id FROM layouts) AND ts < ?'
                conn.execute(sql, (cutoff,))
        removed += conn.execute("DELETE FROM series_chunks WHERE end_ms < ?", (cutoff,)).rowcount
        removed += conn.execute("DELETE FROM extras WHERE ts < ?", (cutoff,)).rowcount
        removed += conn.execute(_STATES_RETENTION, {"cutoff": cutoff}).rowcount
        return removed

    def _register(self, conn: sqlite3.Connection, keys: list[SeriesKey]) -> dict[SeriesKey, int]:
        """Ids of series, new ones created; inside the write transaction (``BEGIN IMMEDIATE``), so
        the look-up and the insert cannot interleave with another process's.

        Ids follow the order of first appearance, so a source's next batches insert in id order.
        """
        keys = list(dict.fromkeys(keys))
        texts = {(name, _labels_json(lbls)): (name, lbls) for name, lbls in keys}
        names = _json(sorted({name for name, _ in keys}))
        sql = "SELECT id, name, labels FROM series WHERE name IN (SELECT value FROM json_each(?))"
        found = {(name, text): sid for sid, name, text in conn.execute(sql, (names,))}
        created = self._clock.time()
        new = [(name, text, created) for name, text in texts if (name, text) not in found]
        if new:
            conn.executemany("INSERT INTO series(name, labels, created) VALUES (?, ?, ?)", new)
            found = {(name, text): sid for sid, name, text in conn.execute(sql, (names,))}
        return {texts[key]: found[key] for key in texts}

    def _layout_ids(self, conn: sqlite3.Connection, frames: list[_Frame]) -> dict[bytes, int]:
        """The layout id of each frame; unknown layouts are created (INSERT OR IGNORE by digest, so
        processes agree)."""
        known = self._layouts
        found: dict[bytes, int] = {}
        for frame in frames:
            layout = frame.layout
            if layout in found or not frame.sids.size:
                continue
            lid = known.get(layout)
            if lid is None:
                digest = hashlib.blake2b(layout, digest_size=16).digest()
                cursor = conn.execute("INSERT OR IGNORE INTO layouts(digest, n, series) VALUES (?, ?, ?)",
                                      (digest, frame.sids.size, layout))
                if cursor.rowcount == 1:
                    lid = cursor.lastrowid
                else:
                    lid, stored = conn.execute("SELECT id, series FROM layouts WHERE digest = ?",
                                               (digest,)).fetchone()
                    if stored != layout:
                        raise sqlite3.DatabaseError(f"layout {lid} has the digest of another series list")
            found[layout] = lid
        return found

@dataclass
class _Catalog:
    """The series a query selected, in display order, and how to turn rows into columns."""

    ids: list[int]
    names: list[str]
    labels: list[dict[str, str]]
    display: list[str]

    @classmethod
    def select(cls, conn: sqlite3.Connection, name: str | None, wanted: list[Matcher]) -> _Catalog:
        sql = "SELECT id, name, labels FROM series"
        if name is None:
            cursor = conn.execute(sql)
        else:
            # GLOB (case-sensitive, like the BINARY column) can use the (name, labels) index.
            cursor = conn.execute(sql + (" WHERE name GLOB ?" if _GLOB.search(name) else " WHERE name = ?"),
                                  (name,))
        found = []
        for sid, sname, text in cursor:
            lbls = orjson.loads(text)
            if all(m.matches(lbls) for m in wanted):
                found.append((format_series(sname, tuple(lbls.items())), sid, sname, lbls))
        found.sort(key=lambda row: row[:2])
        return cls(
            ids=[row[1] for row in found],
            names=[row[2] for row in found],
            labels=[row[3] for row in found],
            display=[row[0] for row in found],
        )

    def frame(self) -> pd.DataFrame:
        import pandas as pd

        columns: dict[str, object] = {"id": np.array(self.ids, dtype=np.int64), "name": self.names}
        columns["labels"] = _objects(self.labels)
        columns.update(self._label_columns(np.arange(len(self.ids)), _SERIES_COLUMNS))
        return pd.DataFrame(columns)

    def long(self, samples: Points, states: list[StateRow], *, per_label: bool = True) -> dict[str, np.ndarray]:
        """The long form's columns (ts in ms); ``per_label``: also one column per label key."""
        sid_s, ts_s, seq_s, value_s = samples
        sid_t, ts_t, seq_t, texts = _unzip(states)
        pos = self.positions(np.concatenate([sid_s, sid_t]))
        ts = np.concatenate([ts_s, ts_t])
        seq = np.concatenate([seq_s, seq_t])
        value = np.concatenate([value_s, np.full(len(texts), np.nan)])
        state = np.empty(len(ts), dtype=object)
        state[len(value_s) :] = texts
        order = np.lexsort((seq, pos, ts))
        pos = pos[order]
        columns = {
            "ts": ts[order],
            "name": _objects(self.names)[pos],
            "value": value[order],
            "state": state[order],
            "labels": _objects(self.labels)[pos],
        }
        if per_label:
            columns.update(self._label_columns(pos, _LONG_COLUMNS))
        return columns

    def wide(self, samples: Points) -> pd.DataFrame:
        """What ``pivot(index="ts", columns=series, values="value")`` gives, without its MultiIndex
        detour; of several values of a series at one ms, the last."""
        import pandas as pd

        sid, ts, seq, value = samples
        if seq.any():
            order = np.argsort(seq, kind="stable")
            sid, ts, value = sid[order], ts[order], value[order]
        times, row = np.unique(ts, return_inverse=True)
        used, col = np.unique(self.positions(sid), return_inverse=True)
        matrix = np.full((len(times), len(used)), np.nan)
        matrix[row, col] = value
        columns = pd.Index([self.display[p] for p in used.tolist()])
        return pd.DataFrame(matrix, index=_datetimes(times).rename("ts"), columns=columns)

    def rolled(self, rows: rollup.Rolled, *, per_label: bool = True) -> dict[str, np.ndarray]:
        """The rollup rows' columns (ts in ms); ``per_label``: also one column per label key."""
        pos = self.positions(rows.sid)
        order = np.lexsort((pos, rows.ts))
        pos = pos[order]
        with np.errstate(invalid="ignore", divide="ignore"):
            mean = rows.sum[order] / rows.count[order]
        columns = {
            "ts": rows.ts[order],
            "name": _objects(self.names)[pos],
            "value": mean,
            "min": rows.min[order],
            "max": rows.max[order],
            "last": rows.last[order],
            "count": rows.count[order].astype(np.int64),
            "labels": _objects(self.labels)[pos],
        }
        if per_label:
            columns.update(self._label_columns(pos, _ROLLUP_COLUMNS))
        return columns

    def positions(self, sids: np.ndarray) -> np.ndarray:
        """Display positions of series ids (each one of the catalog's)."""
        ids = np.array(self.ids, dtype=np.int64)
        by_id = np.argsort(ids)
        return by_id[np.searchsorted(ids, sids, sorter=by_id)] if len(sids) else np.empty(0, dtype=np.intp)

    def _label_columns(self, pos: np.ndarray, reserved: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One column per label key; a key clashing with a fixed column stays only in ``labels``."""
        keys = sorted({k for lbls in self.labels for k in lbls} - set(reserved))
        return {k: _objects([lbls.get(k) for lbls in self.labels])[pos] for k in keys}


def _collect(
    items: Batch | Sample | Iterable[Batch] | Iterable[Sample],
) -> tuple[list[Raw], int, list[tuple[int, list[SeriesKey]]]]:
    """One raw frame per Batch and one per timestamp of loose Samples; how many values were given;
    the keys of each item with its ts, in the order given (for ``_first_appearance``)."""
    if isinstance(items, (Batch, Sample)):
        items = [items]
    raws: list[Raw] = []
    loose: dict[int, tuple[list[SeriesKey], list[Value]]] = {}
    arrivals: list[tuple[int, list[SeriesKey]]] = []
    count = 0
    for item in items:
        if isinstance(item, Batch):
            ts = _ms(item.ts)
            raws.append((ts, item.keys, item.values))
            arrivals.append((ts, item.keys))
            count += len(item.keys)
        elif isinstance(item, Sample):
            ts = _ms(item.ts)
            keys, values = loose.setdefault(ts, ([], []))
            keys.append(item.key)
            values.append(item.value)
            arrivals.append((ts, [item.key]))
            count += 1
        else:
            raise TypeError(f"write() takes Batch or Sample objects, not {type(item).__name__}")
    raws += [(ts, keys, values) for ts, (keys, values) in loose.items()]
    return raws, count, arrivals


def _first_appearance(arrivals: list[tuple[int, list[SeriesKey]]]) -> Iterator[SeriesKey]:
    """Keys in the order new series get their ids: by timestamp in order of first appearance,
    then as given, so a source's next batches have their ids in increasing order."""
    by_ts: dict[int, list[list[SeriesKey]]] = {}
    for ts, keys in arrivals:
        by_ts.setdefault(ts, []).append(keys)
    for lists in by_ts.values():
        for keys in lists:
            yield from keys


@dataclass(slots=True)
class _Part:
    """One frame to be: its numbers as one float64 array, its strings as states; ids still unknown."""

    ts: int
    numeric: list[SeriesKey]
    values: np.ndarray
    states: list[tuple[SeriesKey, str]]

    @classmethod
    def split(cls, ts: int, keys: list[SeriesKey], values: list[Value]) -> _Part:
        if len(keys) != len(values):  # zip() semantics, as before
            n = min(len(keys), len(values))
            keys, values = list(keys)[:n], list(values)[:n]
        # Fast path: numpy converts a list of numbers in C; anything else (strings, None,
        # objects numpy cannot make numbers of) goes value by value.
        try:
            array = np.asarray(values)
        except (TypeError, ValueError, OverflowError):
            array = None
        if array is not None and array.ndim == 1 and array.dtype.kind in "fiub":
            return cls(ts, keys, array.astype(FRAME_DTYPE), [])
        numeric: list[SeriesKey] = []
        numbers: list[float] = []
        states: list[tuple[SeriesKey, str]] = []
        for key, value in zip(keys, values):
            if value.__class__ is float:
                numeric.append(key)
                numbers.append(value)
            elif isinstance(value, str):
                states.append((key, value))
            else:
                numeric.append(key)
                numbers.append(_number(key, value))
        return cls(ts, numeric, np.array(numbers, dtype=FRAME_DTYPE), states)

    def resolve(self, ids: dict[SeriesKey, int]) -> _Frame:
        """The frame with series ids; raises KeyError for a series ``ids`` does not know yet.

        A series given more than once keeps its first value in the frame and the others, in
        order, as extras with sequence numbers 1, 2, …
        """
        sids = np.fromiter(map(ids.__getitem__, self.numeric), dtype=ID_DTYPE, count=len(self.numeric))
        values = self.values
        extras: list[tuple[int, int, int, int]] = []
        if sids.size > 1 and not (sids[1:] > sids[:-1]).all():
            order = np.argsort(sids, kind="stable")
            sids, values = sids[order], values[order]
            seq = chunks.runs_seq(sids)
            if seq.any():
                more = seq > 0
                bits = values[more].view(np.int64)
                extras = list(zip(sids[more].tolist(), repeat(self.ts), seq[more].tolist(), bits.tolist()))
                sids, values = sids[~more], values[~more]
        states: list[StateRow] = []
        if self.states:
            seen: dict[int, int] = {}
            for key, text in self.states:
                sid = ids[key]
                seen[sid] = seen.get(sid, -1) + 1
                states.append((sid, self.ts, seen[sid], text))
        return _Frame(self.ts, sids, values, sids.tobytes(), states, extras)


@dataclass(slots=True)
class _Frame:
    """A frame ready to store: ids strictly increasing, values in the same order."""

    ts: int
    sids: np.ndarray
    values: np.ndarray
    layout: bytes
    """``sids`` as bytes: the layout's identity, cache key and stored ``series`` blob."""
    states: list[StateRow]
    extras: list[tuple[int, int, int, int]]
    """(series id, ts, sequence, value bits) of the series' further values at this ts."""


def _spread_repeats(frames: list[_Frame]) -> None:
    """A series in several frames of one write at the same ms (two cycles with one timestamp) keeps
    every value: the later frames' values become extras with the next sequence numbers."""
    by_ts: dict[int, list[_Frame]] = {}
    for frame in frames:
        by_ts.setdefault(frame.ts, []).append(frame)
    for group in by_ts.values():
        if len(group) < 2:
            continue
        every = np.concatenate([f.sids for f in group] + [np.array([e[0] for f in group for e in f.extras] +
                                                                   [st[0] for f in group for st in f.states],
                                                                   dtype=np.int64)])
        every.sort()
        if not (every[1:] == every[:-1]).any():
            continue
        numbers: dict[int, int] = {}
        texts: dict[int, int] = {}
        for frame in group:
            keep = np.ones(frame.sids.size, dtype=bool)
            moved = []
            for i, sid in enumerate(frame.sids.tolist()):
                if sid in numbers:
                    keep[i] = False
                    numbers[sid] += 1
                    moved.append((sid, frame.ts, numbers[sid], int(frame.values[i:i + 1].view(np.int64)[0])))
                else:
                    numbers[sid] = 0
            extras = []
            for sid, ts, _, bits in frame.extras:
                numbers[sid] = numbers.get(sid, -1) + 1
                extras.append((sid, ts, numbers[sid], bits))
            states = []
            for sid, ts, _, text in frame.states:
                texts[sid] = texts.get(sid, -1) + 1
                states.append((sid, ts, texts[sid], text))
            frame.extras, frame.states = moved + extras, states
            if not keep.all():
                frame.sids, frame.values = frame.sids[keep], frame.values[keep]
                frame.layout = frame.sids.tobytes()


class _LayoutIndex:
    """Where each series sits in layouts (layout id, position), from the layouts' own series lists.

    Layouts are never changed or deleted and their ids grow in commit order, so one index per
    store file (by its ``store_id``) serves every connection of the process and only reads the
    layouts added since it last looked.
    """

    _by_store: dict[str, _LayoutIndex] = {}
    _lock = threading.Lock()

    def __init__(self) -> None:
        self.places: dict[int, list[tuple[int, int]]] = {}
        self.width: dict[int, int] = {}
        self.last = 0

    @classmethod
    def of(cls, conn: sqlite3.Connection) -> _LayoutIndex:
        (store_id,) = conn.execute("SELECT value FROM meta WHERE key = 'store_id'").fetchone()
        with cls._lock:
            index = cls._by_store.setdefault(store_id, cls())
            for lid, n, blob in conn.execute("SELECT id, n, series FROM layouts WHERE id > ? ORDER BY id", (index.last,)):
                for pos, sid in enumerate(np.frombuffer(blob, dtype=ID_DTYPE).tolist()):
                    index.places.setdefault(sid, []).append((lid, pos))
                index.width[lid] = n
                index.last = lid
        return index


@dataclass
class _Slots:
    """Where the selected series sit in frames: per layout, its width and the wanted columns."""

    layouts: dict[int, tuple[int, np.ndarray, np.ndarray]]
    """layout id -> (n, positions, series ids at those positions)."""
    shared: bool
    """Some series is in more than one layout, so the same (series, ts) may come twice."""

    @classmethod
    def select(cls, conn: sqlite3.Connection, ids: list[int]) -> _Slots:
        if not ids:
            return cls({}, False)
        where = _LayoutIndex.of(conn)
        grouped: dict[int, tuple[list[int], list[int]]] = {}
        shared = False
        for sid in sorted(ids):
            places = where.places.get(sid, ())
            shared = shared or len(places) > 1
            for lid, pos in places:
                entry = grouped.setdefault(lid, ([], []))
                entry[0].append(pos)
                entry[1].append(sid)
        layouts = {lid: (where.width[lid], np.array(pos, dtype=np.intp), np.array(sids, dtype=np.int64))
                   for lid, (pos, sids) in sorted(grouped.items())}
        return cls(layouts, shared)

    def frames(self, rows: list[tuple[int, int, bytes]]) -> tuple[np.ndarray, ...]:
        """``points`` for one frame (layout id, ts, vals) per layout, with two numpy calls per frame:
        ``latest()`` reads one frame of each of hundreds of layouts."""
        if not rows:
            return self.points([])
        values, sids, counts = [], [], []
        for lid, _, blob in rows:
            n, pos, ids = self.layouts[lid]
            if len(blob) != n * FRAME_DTYPE.itemsize:
                raise sqlite3.DatabaseError(f"a frame of layout {lid} is not {n} values long")
            values.append(np.frombuffer(blob, dtype=FRAME_DTYPE)[pos])
            sids.append(ids)
            counts.append(len(ids))
        lids, ts, _ = zip(*rows)
        return (np.concatenate(sids), np.repeat(np.array(ts, dtype=np.int64), counts),
                np.concatenate(values).astype(np.float64, copy=False), np.repeat(np.array(lids, dtype=np.int64), counts))

    def points(self, fetched: list[tuple[int, list[tuple[int, bytes]]]]) -> tuple[np.ndarray, ...]:
        """Series ids, ts, values and layout ids of the wanted columns of fetched frames (ts, vals)."""
        parts = []
        for lid, rows in fetched:
            if not rows:
                continue
            n, pos, sids = self.layouts[lid]
            ts, blobs = zip(*rows)
            data = b"".join(blobs)
            if len(data) != len(rows) * n * FRAME_DTYPE.itemsize:
                raise sqlite3.DatabaseError(f"a frame of layout {lid} is not {n} values long")
            values = np.frombuffer(data, dtype=FRAME_DTYPE).reshape(len(rows), n)[:, pos]
            k = len(pos)
            parts.append((
                np.tile(sids, len(rows)),
                np.repeat(np.array(ts, dtype=np.int64), k),
                values.ravel().astype(np.float64, copy=False),
                np.full(len(rows) * k, lid, dtype=np.int64),
            ))
        if not parts:
            return tuple(np.empty(0, dtype=dtype) for dtype in (np.int64, np.int64, np.float64, np.int64))
        return tuple(np.concatenate(column) for column in zip(*parts))


def _read_points(conn: sqlite3.Connection, ids: list[int], lo: int, hi: int, chunked: bool = True) -> Points:
    """The samples of the listed series with lo <= ts <= hi from chunks, head tables and extras.

    Where the same (series, ts, sequence) is in several places (a resend after compaction, a
    resend under another layout), the head beats the chunks and the newest layout the older ones.
    """
    parts = []
    old = chunks.read(conn, ids, lo, hi) if chunked else chunks.empty()
    if len(old[0]):
        parts.append((*old, np.zeros(len(old[0]), dtype=np.int64)))
    slots = _Slots.select(conn, ids)
    if slots.layouts:
        tables = conn.execute(
            "SELECT name FROM heads WHERE end_ms > ? AND start_ms <= ? ORDER BY start_ms", (lo, hi)
        ).fetchall()
        for (table,) in tables:
            sql = f'SELECT ts, vals FROM "{table}" WHERE layout_id = ? AND ts BETWEEN ? AND ?'
            fetched = [(lid, conn.execute(sql, (lid, lo, hi)).fetchall()) for lid in slots.layouts]
            sids, ts, values, layout = slots.points(fetched)
            if len(sids):
                parts.append((sids, ts, np.zeros(len(sids), dtype=np.int64), values, layout + 1))
    if ids:
        rows = conn.execute(_range_sql("extras", "seq, bits"), (_json(ids), lo, hi)).fetchall()
        if rows:
            extra = _unbits(rows)
            parts.append((*extra, np.full(len(rows), 2**62, dtype=np.int64)))
    if not parts:
        return chunks.empty()
    sids, ts, seq, values, rank = (np.concatenate(column) for column in zip(*parts))
    if len(parts) > 1 or slots.shared:
        order = np.lexsort((-rank, seq, ts, sids))
        sids, ts, seq, values = sids[order], ts[order], seq[order], values[order]
        keep = np.ones(len(sids), dtype=bool)
        keep[1:] = (sids[1:] != sids[:-1]) | (ts[1:] != ts[:-1]) | (seq[1:] != seq[:-1])
        sids, ts, seq, values = sids[keep], ts[keep], seq[keep], values[keep]
    return sids, ts, seq, values


def _read_states(conn: sqlite3.Connection, ids: list[int], lo: int, hi: int) -> list[StateRow]:
    return conn.execute(_range_sql("states", "seq, value"), (_json(ids), lo, hi)).fetchall() if ids else []


def _read_earliest(conn: sqlite3.Connection, ids: list[int], lo: int, hi: int, limit: int,
                   with_states: bool) -> tuple[Points, list[StateRow]]:
    """At least the ``limit`` earliest samples (and states) in [lo, hi]: windows from the first
    stored time on, doubling from an hour, until they hold ``limit`` points or reach ``hi``."""
    if not ids:
        return chunks.empty(), []
    ids_json = _json(ids)
    firsts = [
        conn.execute("SELECT MIN(start_ms) FROM heads WHERE end_ms > ?", (lo,)).fetchone()[0],
        conn.execute("SELECT MIN((SELECT MIN(start_ms) FROM series_chunks WHERE series_id = j.value "
                     "AND end_ms >= ?)) FROM json_each(?) AS j", (lo, ids_json)).fetchone()[0],
        conn.execute("SELECT MIN((SELECT MIN(ts) FROM extras WHERE series_id = j.value AND ts >= ?)) "
                     "FROM json_each(?) AS j", (lo, ids_json)).fetchone()[0],
    ]
    if with_states:
        firsts.append(conn.execute("SELECT MIN((SELECT MIN(ts) FROM states WHERE series_id = j.value AND ts >= ?)) "
                                   "FROM json_each(?) AS j", (lo, ids_json)).fetchone()[0])
    known = [t for t in firsts if t is not None]
    if not known:
        return chunks.empty(), []
    start, span = max(lo, min(known)), BLOCK_MS
    samples: list[Points] = []
    states: list[StateRow] = []
    got = 0
    while start <= hi and got < limit:
        end = min(hi, start + span - 1)
        found = _read_points(conn, ids, start, end)
        samples.append(found)
        if with_states:
            states += _read_states(conn, ids, start, end)
        got += len(found[0]) + len(states)
        if end >= hi:
            break
        start, span = end + 1, span * 2
    return tuple(np.concatenate(column) for column in zip(*samples)), states  # type: ignore[return-value]


def _unbits(rows: list[tuple[int, int, int, int]]) -> Points:
    """Extras rows (series id, ts, seq, value as int64 bits) as columns."""
    if not rows:
        return chunks.empty()
    sids, ts, seq, bits = zip(*rows)
    return (np.array(sids, dtype=np.int64), np.array(ts, dtype=np.int64), np.array(seq, dtype=np.int64),
            np.array(bits, dtype=np.int64).view(np.float64))


def _firsts(sorted_ids: np.ndarray) -> np.ndarray:
    """Mask of the first element of each run of equal ids."""
    first = np.ones(len(sorted_ids), dtype=bool)
    first[1:] = sorted_ids[1:] != sorted_ids[:-1]
    return first


def _number(key: SeriesKey, value: object) -> float:
    """A sample value as a float: NaN for missing."""
    if value is None:
        return math.nan
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{format_series(*key)}: value {value!r} is neither a number nor a string") from None


def _ensure_head(conn: sqlite3.Connection, block: int) -> str:
    """Create the hour's head table if needed (always checked: another process may have dropped it)."""
    table = "head_" + datetime.fromtimestamp(block * BLOCK_MS / 1000, timezone.utc).strftime("%Y%m%dT%H")
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}"(layout_id INTEGER NOT NULL, ts INTEGER NOT NULL, '
        "vals BLOB NOT NULL, PRIMARY KEY(layout_id, ts)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT OR IGNORE INTO heads(name, start_ms, end_ms) VALUES (?, ?, ?)",
        (table, block * BLOCK_MS, (block + 1) * BLOCK_MS),
    )
    return table


def _range_sql(table: str, columns: str) -> str:
    """Rows of the listed series (a JSON array: one parameter for any number) by primary-key ranges."""
    return (
        f"SELECT series_id, ts, {columns} FROM {table} "
        "WHERE series_id IN (SELECT value FROM json_each(?)) AND ts BETWEEN ? AND ?"
    )


def _newest_frame_sql(table: str) -> str:
    """The newest frame (layout id, ts, vals) of each listed layout: one primary-key seek per layout."""
    return (
        f"SELECT t.layout_id, t.ts, t.vals FROM json_each(?) AS j JOIN {table} AS t "
        f"ON t.layout_id = j.value AND t.ts = (SELECT MAX(ts) FROM {table} WHERE layout_id = j.value)"
    )


def _newest_sql(table: str, column: str) -> str:
    """The newest rows (every sequence of the newest ms) of each listed series: one primary-key
    seek per series, no scan."""
    return (
        f"SELECT t.series_id, t.ts, t.seq, t.{column} FROM json_each(?) AS j JOIN {table} AS t "
        f"ON t.series_id = j.value AND t.ts = (SELECT MAX(ts) FROM {table} WHERE series_id = j.value)"
    )


def _labels_json(lbls: Labels) -> str:
    """Canonical text of labels, so that the UNIQUE(name, labels) constraint identifies a series."""
    return orjson.dumps(dict(lbls), option=orjson.OPT_SORT_KEYS).decode()


def _json(value: object) -> str:
    """JSON as text: SQLite's JSON functions refuse the bytes orjson makes."""
    return orjson.dumps(value).decode()


def _ms(ts: float) -> int:
    return round(ts * 1000)


def _unzip(rows: list[StateRow]) -> tuple[np.ndarray, np.ndarray, np.ndarray, list]:
    """Series ids, timestamps, sequences and values of fetched state rows as columns."""
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), []
    sids, ts, seq, values = zip(*rows)
    return (np.array(sids, dtype=np.int64), np.array(ts, dtype=np.int64), np.array(seq, dtype=np.int64),
            list(values))


def _datetimes(ms: np.ndarray) -> pd.DatetimeIndex:
    import pandas as pd

    return pd.DatetimeIndex((ms * 1_000_000).astype("datetime64[ns]")).tz_localize("UTC")


def _frame(columns: dict[str, np.ndarray]) -> pd.DataFrame:
    """A DataFrame of ``_Catalog.long``/``rolled`` columns: ts as UTC times, states as objects."""
    import pandas as pd

    frame: dict[str, object] = {**columns, "ts": _datetimes(columns["ts"])}
    if "state" in columns:
        frame["state"] = pd.Series(columns["state"], dtype=object)
    return pd.DataFrame(frame)


_Point = namedtuple("_Point", _LONG_COLUMNS)
_Bin = namedtuple("_Bin", _ROLLUP_COLUMNS)
_EPOCH = datetime(1970, 1, 1, tzinfo=timezone.utc)


def _rows(row: type, columns: dict[str, np.ndarray], limit: int | None) -> list[tuple]:
    """The first ``limit`` rows of the columns as ``row`` tuples of Python values."""
    ts = [_EPOCH + timedelta(milliseconds=ms) for ms in columns["ts"][:limit].tolist()]
    return list(map(row._make, zip(ts, *(columns[f][:limit].tolist() for f in row._fields[1:]))))


def _objects(items: list) -> np.ndarray:
    """An object array (``np.array`` would try to broadcast dicts or infer a string dtype)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out


__all__ = ["APPLICATION", "CACHE_KIB", "COMPACT_AFTER", "FRAME_DTYPE", "ID_DTYPE", "MIGRATIONS", "Points", "Raw",
           "SQLiteStore", "StateRow", "StoreError"]
