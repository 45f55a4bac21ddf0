"""The embedded time-series store: one SQLite file shared by every farmwatch process on a host.

Several services write to the same file at once (one collector per source, plus detection and
alerting), so the file runs in WAL mode, every write is one ``BEGIN IMMEDIATE`` transaction that
waits up to ``busy_timeout`` for the write lock, and readers never block writers.

Numeric samples live in one table per UTC day (``samples_YYYYMMDD``, WITHOUT ROWID, primary key
``(series_id, ts)``): a series' points are stored next to each other, so reading a series is a
range scan, ingest is one ``executemany`` per chunk, and retention drops whole days instead of
deleting rows one by one. The price of that clustering: once each series fills a page of its
own, every commit rewrites one page per series written, so writing several poll cycles in one
``write`` call is much cheaper than one call per cycle (``benchmarks/bench_store_ingest.py``).
String state values (``socket_state = connected``) share one ``states`` table with the same key;
retention always keeps each series' newest state.
"""

from __future__ import annotations

import math
import os
import re
import sqlite3
import threading
import time
from contextlib import contextmanager
from dataclasses import dataclass
from datetime import datetime, timezone
from operator import itemgetter
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import orjson
import pandas as pd

from farmwatch.clock import Clock, RealClock
from farmwatch.model import Batch, Labels, Sample, SeriesKey, Value, format_series
from farmwatch.store.matchers import Matcher, MatcherSpec, parse_matchers

APPLICATION = "farmwatch"
DAY_MS = 86_400_000
CACHE_KIB = 64 * 1024

MIGRATIONS: list[str] = [
    # 1: metadata, series catalogue, the list of day chunks, state values.
    """
    CREATE TABLE meta(key TEXT PRIMARY KEY, value TEXT NOT NULL) WITHOUT ROWID;
    INSERT INTO meta(key, value) VALUES ('application', 'farmwatch');
    CREATE TABLE series(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        created REAL NOT NULL,
        UNIQUE(name, labels));
    CREATE TABLE chunks(
        name TEXT PRIMARY KEY,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL) WITHOUT ROWID;
    CREATE TABLE states(
        series_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY(series_id, ts)) WITHOUT ROWID;
    """,
]
"""Schema steps: ``MIGRATIONS[i]`` is an SQL script taking a file from ``user_version`` i to i + 1.

Append a step to change the schema; never edit one that has shipped.
"""

SampleRow = tuple[int, int, float | None]
"""(series id, ts in ms, value) as stored; None is NaN."""
StateRow = tuple[int, int, str]
Columns = tuple[list[SeriesKey], list[Value]]
"""Keys and values sharing one timestamp."""

_GLOB = re.compile(r"[*?\[]")
_LONG_COLUMNS = ("ts", "name", "value", "state", "labels")
_SERIES_COLUMNS = ("id", "name", "labels")
_STATES_RETENTION = """
    DELETE FROM states
    WHERE series_id IN (SELECT id FROM series) AND ts < :cutoff
      AND ts < (SELECT MAX(newer.ts) FROM states AS newer WHERE newer.series_id = states.series_id)
"""


class StoreError(Exception):
    """Something about the store file that the user has to fix; the message is one line naming the file."""


class SQLiteStore:
    """Time series (numbers and string states) in one SQLite file; safe for several processes.

    One object may be shared by threads (a collector's writer thread and a CLI reader): every
    call holds an internal lock for its duration.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        *,
        retention: float | None = None,
        clock: Clock | None = None,
        busy_timeout: float = 30.0,
        readonly: bool = False,
    ) -> None:
        if retention is not None and not retention > 0:
            raise ValueError(f"retention must be a positive number of seconds, not {retention!r}")
        self.path = Path(path)
        self.retention = retention
        self.readonly = readonly
        self._clock: Clock = clock or RealClock()
        self._lock = threading.RLock()
        self._ids: dict[SeriesKey, int] = {}
        self._conn = self._connect(busy_timeout)
        try:
            self._configure(busy_timeout)
            self._migrate()
        except sqlite3.DatabaseError as exc:
            self._conn.close()
            raise self._error(exc) from None
        except BaseException:
            self._conn.close()
            raise

    def __enter__(self) -> SQLiteStore:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def schema_version(self) -> int:
        with self._lock:
            return _user_version(self._conn)

    def write(self, items: Batch | Sample | Iterable[Batch] | Iterable[Sample]) -> int:
        """Store samples in one transaction and return how many rows were written.

        Numbers (bools as 1.0/0.0, None and NaN as a missing value) become samples, strings
        become state values. Writing the same (series, ts) again replaces the value, so replaying
        a spool after a crash never duplicates points.
        """
        groups = _group_by_ts(items)
        if not groups:
            return 0
        self._require_writable("write")
        with self._lock:
            ids = self._ids
            unknown = [key for keys, _ in groups.values() for key in keys if key not in ids]
            with self._transaction("BEGIN IMMEDIATE", "write") as conn:
                if unknown:
                    ids = {**ids, **self._register(conn, unknown)}
                chunks: dict[int, list[SampleRow]] = {}
                states: list[StateRow] = []
                for ts, (keys, values) in groups.items():
                    rows = chunks.setdefault(ts // DAY_MS, [])
                    for key, value in zip(keys, values):
                        if value.__class__ is float:
                            rows.append((ids[key], ts, value))
                        elif isinstance(value, str):
                            states.append((ids[key], ts, value))
                        else:
                            rows.append((ids[key], ts, _number(key, value)))
                for day, rows in chunks.items():
                    if rows:
                        # In id order for B-tree locality; a stable sort lets the last duplicate win.
                        rows.sort(key=itemgetter(0))
                        table = _ensure_chunk(conn, day)
                        conn.executemany(f'INSERT OR REPLACE INTO "{table}" VALUES (?, ?, ?)', rows)
                if states:
                    conn.executemany("INSERT OR REPLACE INTO states VALUES (?, ?, ?)", states)
            # Only now: ids handed out by a transaction that rolled back must not be cached.
            self._ids = ids
        return sum(len(keys) for keys, _ in groups.values())

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
        wanted = parse_matchers(matchers)
        lo = -(2**63) if since is None else _ms(since)
        hi = 2**63 - 1 if until is None else _ms(until)
        order = "" if limit is None else " ORDER BY ts, series_id LIMIT ?"
        with self._transaction("BEGIN", "query") as conn:
            catalog = _Catalog.select(conn, name, wanted)
            ids = _json(catalog.ids)
            samples: list[SampleRow] = []
            chunks = conn.execute(
                "SELECT name FROM chunks WHERE end_ms > ? AND start_ms <= ? ORDER BY start_ms", (lo, hi)
            ).fetchall()
            for (table,) in chunks:
                if limit is not None and len(samples) >= limit:
                    break
                params = (ids, lo, hi) if limit is None else (ids, lo, hi, limit - len(samples))
                samples += conn.execute(_range_sql(f'"{table}"') + order, params).fetchall()
            states: list[StateRow] = []
            if form == "long":
                params = (ids, lo, hi) if limit is None else (ids, lo, hi, limit)
                states = conn.execute(_range_sql("states") + order, params).fetchall()
        if form == "wide":
            return catalog.wide(samples)
        frame = catalog.long(samples, states)
        return frame if limit is None else frame.head(limit)

    def latest(self, name: str | None = None, matchers: MatcherSpec = None) -> pd.DataFrame:
        """The newest value or state of each matching series, in the long form of ``query``."""
        wanted = parse_matchers(matchers)
        with self._transaction("BEGIN", "query") as conn:
            catalog = _Catalog.select(conn, name, wanted)
            missing = set(catalog.ids)
            samples: list[SampleRow] = []
            for (table,) in conn.execute("SELECT name FROM chunks ORDER BY start_ms DESC").fetchall():
                if not missing:
                    break
                found = conn.execute(_newest_sql(f'"{table}"'), (_json(sorted(missing)),)).fetchall()
                samples += found
                missing.difference_update(row[0] for row in found)
            states = conn.execute(_newest_sql("states"), (_json(catalog.ids),)).fetchall()
        state_ts = {sid: ts for sid, ts, _ in states}
        samples = [row for row in samples if row[1] > state_ts.get(row[0], -math.inf)]
        newer_sample = {row[0] for row in samples}
        states = [row for row in states if row[0] not in newer_sample]
        return catalog.long(samples, states)

    def apply_retention(self, now: float | None = None) -> int:
        """Forget data older than ``retention`` seconds before ``now`` (default: the clock's time).

        Day chunks entirely before the cutoff are dropped as tables (no row scan); the chunk
        straddling the cutoff loses its older rows by primary-key ranges. Each series keeps its
        newest state however old: a state that never changed is still the current state.
        Returns the number of rows deleted plus the number of chunks dropped (a dropped chunk
        counts once; counting its rows would cost the scan that dropping avoids).
        """
        if self.retention is None:
            return 0
        self._require_writable("apply retention")
        cutoff = _ms((self._clock.time() if now is None else now) - self.retention)
        removed = 0
        with self._transaction("BEGIN IMMEDIATE", "retention") as conn:
            old = conn.execute("SELECT name, end_ms FROM chunks WHERE start_ms < ?", (cutoff,)).fetchall()
            for table, end in old:
                if end <= cutoff:
                    conn.execute(f'DROP TABLE IF EXISTS "{table}"')
                    conn.execute("DELETE FROM chunks WHERE name = ?", (table,))
                    removed += 1
                else:
                    sql = f'DELETE FROM "{table}" WHERE series_id IN (SELECT id FROM series) AND ts < ?'
                    removed += conn.execute(sql, (cutoff,)).rowcount
            removed += conn.execute(_STATES_RETENTION, {"cutoff": cutoff}).rowcount
        return removed

    def _connect(self, busy_timeout: float) -> sqlite3.Connection:
        try:
            if self.readonly:
                if not self.path.is_file():
                    raise StoreError(f"{self.path}: no such store file")
                target, uri = self.path.resolve().as_uri() + "?mode=ro", True
            else:
                self.path.parent.mkdir(parents=True, exist_ok=True)
                target, uri = os.fspath(self.path), False
            # isolation_level=None: this class issues BEGIN/COMMIT itself.
            conn = sqlite3.connect(
                target, uri=uri, timeout=busy_timeout, isolation_level=None, check_same_thread=False
            )
        except OSError as exc:
            problem = exc.strerror or exc
            raise StoreError(f"{self.path}: cannot create the store's folder: {problem}") from None
        except sqlite3.Error as exc:
            raise self._error(exc) from None
        return conn

    def _configure(self, busy_timeout: float) -> None:
        conn = self._conn
        if not self.readonly:
            _enable_wal(conn, busy_timeout)
        conn.execute("PRAGMA synchronous=NORMAL")
        # Every poll cycle appends to each series' own page of today's chunk; with the default
        # 2 MB cache those pages are evicted between cycles once a farm has ~10k series.
        conn.execute(f"PRAGMA cache_size = -{CACHE_KIB}")

    def _migrate(self) -> None:
        """Bring the file to the current schema; the write lock makes concurrent first opens safe."""
        conn = self._conn
        version = _user_version(conn)
        if version < len(MIGRATIONS) and not self.readonly:
            with self._transaction("BEGIN IMMEDIATE", "schema upgrade"):
                version = _user_version(conn)
                self._check_identity(version)
                for script in MIGRATIONS[version:]:
                    for statement in _statements(script):
                        conn.execute(statement)
                version = max(version, len(MIGRATIONS))
                conn.execute(f"PRAGMA user_version = {version}")
        self._check_identity(version)
        if version > len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: written by a newer farmwatch (schema version {version}, this farmwatch "
                f"knows up to {len(MIGRATIONS)}); upgrade farmwatch to use it"
            )
        if version < len(MIGRATIONS):
            raise StoreError(
                f"{self.path}: schema version {version} needs an upgrade to {len(MIGRATIONS)}, "
                "which a read-only store cannot do; open it once without readonly"
            )

    def _check_identity(self, version: int) -> None:
        conn = self._conn
        if version == 0:
            if conn.execute("SELECT count(*) FROM sqlite_master").fetchone()[0]:
                raise StoreError(f"{self.path}: not a farmwatch store (an SQLite database of something else)")
            if self.readonly:
                raise StoreError(f"{self.path}: not a farmwatch store yet (an empty SQLite database)")
            return
        try:
            row = conn.execute("SELECT value FROM meta WHERE key = 'application'").fetchone()
        except sqlite3.OperationalError:
            row = None
        if row is None or row[0] != APPLICATION:
            raise StoreError(f"{self.path}: not a farmwatch store (an SQLite database of something else)")

    def _register(self, conn: sqlite3.Connection, keys: list[SeriesKey]) -> dict[SeriesKey, int]:
        """Give new series their ids; INSERT OR IGNORE + SELECT lets concurrent processes agree.

        Ids follow the order of first appearance, so a source's next batches insert in id order.
        """
        keys = list(dict.fromkeys(keys))
        created = self._clock.time()
        rows = [(name, _labels_json(lbls), created) for name, lbls in keys]
        conn.executemany("INSERT OR IGNORE INTO series(name, labels, created) VALUES (?, ?, ?)", rows)
        found = conn.execute(
            "SELECT j.key, s.id FROM json_each(?) AS j JOIN series AS s "
            "ON s.name = json_extract(j.value, '$[0]') AND s.labels = json_extract(j.value, '$[1]')",
            (_json([row[:2] for row in rows]),),
        )
        return {keys[i]: sid for i, sid in found}

    @contextmanager
    def _transaction(self, begin: str, action: str) -> Iterator[sqlite3.Connection]:
        """One transaction under the thread lock; SQLite failures become a one-line StoreError."""
        with self._lock:
            conn = self._conn
            try:
                conn.execute(begin)
                try:
                    yield conn
                    conn.execute("COMMIT")
                finally:
                    if conn.in_transaction:
                        conn.execute("ROLLBACK")
            except sqlite3.DatabaseError as exc:
                raise self._error(exc, action) from exc

    def _require_writable(self, action: str) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: cannot {action}, the store was opened read-only")

    def _error(self, exc: sqlite3.Error, action: str = "open") -> StoreError:
        if "not a database" in str(exc):
            return StoreError(f"{self.path}: not a farmwatch store (not an SQLite database)")
        return StoreError(f"{self.path}: {action} failed: {exc}")


@dataclass
class _Catalog:
    """The series a query selected, in display order, and how to turn rows into DataFrames."""

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
        columns: dict[str, object] = {"id": np.array(self.ids, dtype=np.int64), "name": self.names}
        columns["labels"] = _objects(self.labels)
        columns.update(self._label_columns(np.arange(len(self.ids)), _SERIES_COLUMNS))
        return pd.DataFrame(columns)

    def long(self, samples: list[SampleRow], states: list[StateRow]) -> pd.DataFrame:
        sid_s, ts_s, values = _unzip(samples)
        sid_t, ts_t, texts = _unzip(states)
        pos = self._positions(np.concatenate([sid_s, sid_t]))
        ts = np.concatenate([ts_s, ts_t])
        value = np.concatenate([np.array(values, dtype=np.float64), np.full(len(texts), np.nan)])
        state = np.empty(len(ts), dtype=object)
        state[len(values) :] = texts
        order = np.lexsort((pos, ts))
        pos = pos[order]
        columns: dict[str, object] = {
            "ts": _datetimes(ts[order]),
            "name": _objects(self.names)[pos],
            "value": value[order],
            "state": pd.Series(state[order], dtype=object),
            "labels": _objects(self.labels)[pos],
        }
        columns.update(self._label_columns(pos, _LONG_COLUMNS))
        return pd.DataFrame(columns)

    def wide(self, samples: list[SampleRow]) -> pd.DataFrame:
        sid, ts, values = _unzip(samples)
        value = np.array(values, dtype=np.float64)
        points = pd.DataFrame({"ts": ts, "pos": self._positions(sid), "value": value})
        frame = points.pivot(index="ts", columns="pos", values="value")
        frame.columns = pd.Index([self.display[p] for p in frame.columns])
        frame.index = _datetimes(frame.index.to_numpy(dtype=np.int64)).rename("ts")
        return frame

    def _positions(self, sids: np.ndarray) -> np.ndarray:
        return pd.Index(self.ids).get_indexer(sids)

    def _label_columns(self, pos: np.ndarray, reserved: tuple[str, ...]) -> dict[str, np.ndarray]:
        """One column per label key; a key clashing with a fixed column stays only in ``labels``."""
        keys = sorted({k for lbls in self.labels for k in lbls} - set(reserved))
        return {k: _objects([lbls.get(k) for lbls in self.labels])[pos] for k in keys}


def _group_by_ts(items: Batch | Sample | Iterable[Batch] | Iterable[Sample]) -> dict[int, Columns]:
    """Columns of keys and values per timestamp (ms): the shape the insert loop wants."""
    if isinstance(items, (Batch, Sample)):
        items = [items]
    groups: dict[int, Columns] = {}
    for item in items:
        if isinstance(item, Batch):
            keys, values = groups.setdefault(_ms(item.ts), ([], []))
            keys.extend(item.keys)
            values.extend(item.values)
        elif isinstance(item, Sample):
            keys, values = groups.setdefault(_ms(item.ts), ([], []))
            keys.append(item.key)
            values.append(item.value)
        else:
            raise TypeError(f"write() takes Batch or Sample objects, not {type(item).__name__}")
    return groups


def _number(key: SeriesKey, value: object) -> float | None:
    """A sample value as SQLite stores it: None for missing (SQLite itself turns NaN into NULL)."""
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        raise ValueError(f"{format_series(*key)}: value {value!r} is neither a number nor a string") from None


def _ensure_chunk(conn: sqlite3.Connection, day: int) -> str:
    """Create the day's sample table if needed (always checked: another process may have dropped it)."""
    table = "samples_" + datetime.fromtimestamp(day * 86_400, timezone.utc).strftime("%Y%m%d")
    conn.execute(
        f'CREATE TABLE IF NOT EXISTS "{table}"(series_id INTEGER NOT NULL, ts INTEGER NOT NULL, value REAL, '
        "PRIMARY KEY(series_id, ts)) WITHOUT ROWID"
    )
    conn.execute(
        "INSERT OR IGNORE INTO chunks(name, start_ms, end_ms) VALUES (?, ?, ?)",
        (table, day * DAY_MS, (day + 1) * DAY_MS),
    )
    return table


def _range_sql(table: str) -> str:
    """Rows of the listed series (a JSON array: one parameter for any number) by primary-key ranges."""
    return (
        f"SELECT series_id, ts, value FROM {table} "
        "WHERE series_id IN (SELECT value FROM json_each(?)) AND ts BETWEEN ? AND ?"
    )


def _newest_sql(table: str) -> str:
    """The newest row of each listed series: one primary-key seek per series, no scan."""
    return (
        f"SELECT t.series_id, t.ts, t.value FROM json_each(?) AS j JOIN {table} AS t "
        f"ON t.series_id = j.value AND t.ts = (SELECT MAX(ts) FROM {table} WHERE series_id = j.value)"
    )


def _statements(script: str) -> Iterator[str]:
    """Split a migration script; ``executescript`` would commit in the middle of the migration."""
    pending = ""
    for piece in script.split(";"):
        pending += piece + ";"
        if sqlite3.complete_statement(pending):
            if pending.strip(" \t\r\n;"):
                yield pending
            pending = ""


def _enable_wal(conn: sqlite3.Connection, timeout: float) -> None:
    """Switch the file to WAL mode, retrying for up to ``timeout`` seconds.

    When several processes open a new file at once, SQLite answers "database is locked" to all
    but one of them at once, without waiting for the busy timeout.
    """
    deadline = time.monotonic() + timeout
    while True:
        try:
            conn.execute("PRAGMA journal_mode=WAL")
            return
        except sqlite3.OperationalError as exc:
            if "locked" not in str(exc) or time.monotonic() >= deadline:
                raise
            time.sleep(0.01)


def _user_version(conn: sqlite3.Connection) -> int:
    return conn.execute("PRAGMA user_version").fetchone()[0]


def _labels_json(lbls: Labels) -> str:
    """Canonical text of labels, so that the UNIQUE(name, labels) constraint identifies a series."""
    return orjson.dumps(dict(lbls), option=orjson.OPT_SORT_KEYS).decode()


def _json(value: object) -> str:
    """JSON as text: SQLite's JSON functions refuse the bytes orjson makes."""
    return orjson.dumps(value).decode()


def _ms(ts: float) -> int:
    return round(ts * 1000)


def _unzip(rows: list[tuple]) -> tuple[np.ndarray, np.ndarray, list]:
    """Series ids, timestamps and values of fetched rows as columns."""
    if not rows:
        return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), []
    sids, ts, values = zip(*rows)
    return np.array(sids, dtype=np.int64), np.array(ts, dtype=np.int64), list(values)


def _datetimes(ms: np.ndarray) -> pd.DatetimeIndex:
    return pd.DatetimeIndex((ms * 1_000_000).astype("datetime64[ns]")).tz_localize("UTC")


def _objects(items: list) -> np.ndarray:
    """An object array (``np.array`` would try to broadcast dicts or infer a string dtype)."""
    out = np.empty(len(items), dtype=object)
    out[:] = items
    return out
