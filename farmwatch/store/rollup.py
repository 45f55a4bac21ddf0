"""Rollups: 1-minute and 10-minute min/max/mean/last/count per series, kept far longer than samples.

They are computed when an hour is compacted (``farmwatch.store.compact``), one chunk per series,
resolution and hour, and merged into one chunk per series, resolution and day once the day is
over, so a 30-day read of a series is 30 chunks. The newest hour, still in the head, is rolled up
on the fly at query time. NaN values are not counted (count, min, max and mean ignore them);
``last`` is the last value of the bin as stored. Samples that arrive after their hour was compacted
reach the raw chunks, and at query time the rollups of the head are merged with the stored ones.
"""

from __future__ import annotations

import sqlite3
from dataclasses import dataclass

import numpy as np
import orjson

from farmwatch.store import codec
from farmwatch.store.chunks import Points

__all__ = ["DAY_MS", "RESOLUTIONS", "Rolled", "aggregate", "choose", "merge", "merge_day", "read", "rows", "unmerged"]

RESOLUTIONS = {"1m": 60_000, "10m": 600_000}
"""Name → bin width in ms."""
DAY_MS = 86_400_000
_MIN = -(2**63)


@dataclass
class Rolled:
    """Rollup rows as columns, sorted by series then bin start."""

    sid: np.ndarray
    ts: np.ndarray
    min: np.ndarray
    max: np.ndarray
    sum: np.ndarray
    last: np.ndarray
    count: np.ndarray

    @classmethod
    def empty(cls) -> Rolled:
        f = np.empty(0, dtype=np.float64)
        return cls(np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), f, f, f, f, f)

    def __len__(self) -> int:
        return len(self.sid)

    def take(self, index: np.ndarray) -> Rolled:
        return Rolled(*(column[index] for column in self.columns()))

    def columns(self) -> tuple[np.ndarray, ...]:
        return self.sid, self.ts, self.min, self.max, self.sum, self.last, self.count

    @classmethod
    def concat(cls, parts: list[Rolled]) -> Rolled:
        parts = [p for p in parts if len(p)]
        if not parts:
            return cls.empty()
        return cls(*(np.concatenate(column) for column in zip(*(p.columns() for p in parts))))


def choose(since: float | None, until: float | None, now: float) -> str:
    """The resolution ``auto`` picks for a range: raw up to 6 hours, 1 minute up to 3 days, else
    10 minutes (about 400-600 points per series at most; no range given: raw)."""
    if since is None:
        return "raw"
    length = (now if until is None else until) - since
    return "raw" if length <= 6 * 3600 else "1m" if length <= 3 * 86400 else "10m"


def aggregate(points: Points, step: int) -> Rolled:
    """Rollup rows of raw points (any order) into bins of ``step`` ms."""
    sid, ts, seq, values = points
    if not len(sid):
        return Rolled.empty()
    order = np.lexsort((seq, ts, sid))
    sid, ts, values = sid[order], ts[order], values[order]
    bins = ts - ts % step
    start = np.ones(len(sid), dtype=bool)
    start[1:] = (sid[1:] != sid[:-1]) | (bins[1:] != bins[:-1])
    at = np.flatnonzero(start)
    ends = np.append(at[1:], len(sid)) - 1
    nan = np.isnan(values)
    counts = np.add.reduceat((~nan).astype(np.float64), at)
    with np.errstate(invalid="ignore"):
        low = np.fmin.reduceat(values, at)
        high = np.fmax.reduceat(values, at)
    sums = np.add.reduceat(np.where(nan, 0.0, values), at)
    return Rolled(sid[at], bins[at], low, high, sums, values[ends], counts)


def merge(parts: list[Rolled]) -> Rolled:
    """Rows of the same series and bin combined (later parts are later samples: their ``last`` wins)."""
    both = Rolled.concat(parts)
    if len(both) < 2:
        return both
    rank = np.concatenate([np.full(len(p), i) for i, p in enumerate(parts)])
    order = np.lexsort((rank, both.ts, both.sid))
    both = both.take(order)
    start = np.ones(len(both), dtype=bool)
    start[1:] = (both.sid[1:] != both.sid[:-1]) | (both.ts[1:] != both.ts[:-1])
    if start.all():
        return both
    at = np.flatnonzero(start)
    ends = np.append(at[1:], len(both)) - 1
    with np.errstate(invalid="ignore"):
        return Rolled(both.sid[at], both.ts[at], np.fmin.reduceat(both.min, at), np.fmax.reduceat(both.max, at),
                      np.add.reduceat(both.sum, at), both.last[ends], np.add.reduceat(both.count, at))


def rows(res: int, rolled: Rolled, span_ms: int) -> list[tuple[int, int, int, int, bytes]]:
    """(res, series id, first bin, last bin, chunk) rows: one chunk per series and ``span_ms``
    (an hour when compacting, a day when merging) of ``rolled`` (sorted by series, then bin).
    Chunks with as many rows are encoded together (``codec.encode_rows``)."""
    if not len(rolled):
        return []
    key = rolled.ts // span_ms
    start = np.ones(len(rolled), dtype=bool)
    start[1:] = (rolled.sid[1:] != rolled.sid[:-1]) | (key[1:] != key[:-1])
    first = np.flatnonzero(start)
    counts = np.diff(np.append(first, len(rolled)))
    out = []
    for n in np.unique(counts).tolist():
        heads = first[counts == n]
        index = heads[:, None] + np.arange(n)
        blobs = codec.encode_rows(rolled.ts[index], [rolled.min[index], rolled.max[index], rolled.sum[index],
                                                      rolled.last[index], rolled.count[index]])
        out += [(res, int(rolled.sid[h]), int(rolled.ts[h]), int(rolled.ts[h + n - 1]), blob)
                for h, blob in zip(heads.tolist(), blobs)]
    return out


def read(conn: sqlite3.Connection, res: int, ids: list[int], lo: int, hi: int) -> Rolled:
    """Stored rollup rows of the listed series with lo <= bin start <= hi."""
    if not ids:
        return Rolled.empty()
    found = conn.execute(
        "SELECT r.series_id, r.data FROM json_each(?) AS j JOIN rollups AS r ON r.res = ? AND "
        "r.series_id = j.value AND r.start_ms BETWEEN ? AND ? AND r.end_ms >= ?",
        (orjson.dumps(ids).decode(), res, max(_MIN, lo - DAY_MS), hi, lo),  # a chunk spans at most a day
    ).fetchall()
    return _decoded(found, lo, hi)


def _decoded(found: list[tuple[int, bytes]], lo: int, hi: int) -> Rolled:
    parts = []
    for (sid, _), (ts, low, high, sums, last, count) in zip(found, codec.decode_many([data for _, data in found])):
        keep = (ts >= lo) & (ts <= hi)
        parts.append(Rolled(np.full(int(keep.sum()), sid, dtype=np.int64), ts[keep], low[keep], high[keep],
                            sums[keep], last[keep], count[keep]))
    rolled = Rolled.concat(parts)
    return rolled.take(np.lexsort((rolled.ts, rolled.sid)))


def unmerged(conn: sqlite3.Connection, res: int, day: int) -> list[int]:
    """The series with more than one rollup chunk in a UTC day."""
    lo, hi = day * DAY_MS, (day + 1) * DAY_MS - 1
    return [sid for (sid,) in conn.execute(
        "SELECT series_id FROM rollups WHERE res = ? AND end_ms BETWEEN ? AND ? GROUP BY series_id "
        "HAVING count(*) > 1", (res, lo, hi))]


def merge_day(conn: sqlite3.Connection, res: int, day: int, sids: list[int]) -> None:
    """Merge the hourly rollup chunks of one UTC day into one chunk per listed series."""
    lo, hi = day * DAY_MS, (day + 1) * DAY_MS - 1
    listed = orjson.dumps(sids).decode()
    found = conn.execute(
        "SELECT r.series_id, r.data FROM json_each(?) AS j JOIN rollups AS r ON r.res = ? AND "
        "r.series_id = j.value AND r.start_ms BETWEEN ? AND ?", (listed, res, lo, hi)).fetchall()
    merged = merge([_decoded(found, lo, hi)])
    conn.execute("DELETE FROM rollups WHERE res = ? AND series_id IN (SELECT value FROM json_each(?)) "
                 "AND start_ms BETWEEN ? AND ?", (res, listed, lo, hi))
    conn.executemany("INSERT INTO rollups(res, series_id, start_ms, end_ms, data) VALUES (?, ?, ?, ?, ?)",
                     rows(res, merged, DAY_MS))
