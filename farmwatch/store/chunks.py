"""Compressed chunks in the store file: where samples rest once their hour is over.

``series_chunks`` holds one row per series and block (an hour, ``BLOCK_MS``): the series' values
of that hour, compressed (``farmwatch.store.codec``). Series polled together share their
timestamps: those are stored once per layout and block, as the chunk of the pseudo-series
``-layout_id``, and a value chunk that uses them names the layout in ``ref`` (0: the chunk holds
its own timestamps); ``last`` is its last value (float64 bits), so the newest value of a series
is read without decoding. Reading one series therefore reads its own chunks and a few small timestamp
chunks, whatever the size of the layout it was polled in. A rowid table (not WITHOUT ROWID) so
that chunks of a few kB stay inside their page instead of spilling into overflow pages.
"""

from __future__ import annotations

import sqlite3
import struct
from typing import Iterable

import numpy as np
import orjson

from farmwatch.store import codec

__all__ = ["BLOCK_MS", "Points", "empty", "insert", "newest", "read", "runs_seq"]

BLOCK_MS = 3_600_000
"""Raw chunks never span more than one aligned hour."""

Points = tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]
"""Samples as columns: series ids, ts in ms (int64), sequence within the ms (int64), values (float64)."""

_MIN = -(2**63)
_DOUBLE, _BITS = struct.Struct("<d"), struct.Struct("<q")


def empty() -> Points:
    return (np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64),
            np.empty(0, dtype=np.float64))


def runs_seq(ts: np.ndarray) -> np.ndarray:
    """The position of each sample among the samples of its ms (0 for the first), for sorted ts."""
    seq = np.zeros(len(ts), dtype=np.int64)
    if len(ts) > 1:
        same = ts[1:] == ts[:-1]
        if same.any():
            idx = np.arange(len(ts))
            starts = np.where(np.concatenate(([True], ~same)), idx, 0)
            seq = idx - np.maximum.accumulate(starts)
    return seq


def insert(conn: sqlite3.Connection, rows: Iterable[tuple[int, int, int, int, float, bytes]]) -> None:
    """(series id, start ms, end ms, ref, last value, data) rows; a chunk with the same series and
    start is replaced."""
    conn.executemany("INSERT OR REPLACE INTO series_chunks(series_id, start_ms, end_ms, ref, last, data) "
                     "VALUES (?, ?, ?, ?, ?, ?)",
                     [(sid, start, end, ref, _BITS.unpack(_DOUBLE.pack(last))[0], data)
                      for sid, start, end, ref, last, data in rows])


def _stamps(conn: sqlite3.Connection, keys: set[tuple[int, int]]) -> dict[tuple[int, int], np.ndarray]:
    """The shared timestamps of (layout, start) keys."""
    if not keys:
        return {}
    rows = conn.execute(
        "SELECT -c.series_id, c.start_ms, c.data FROM json_each(?) AS j JOIN series_chunks AS c "
        "ON c.series_id = -json_extract(j.value, '$[0]') AND c.start_ms = json_extract(j.value, '$[1]')",
        (orjson.dumps(sorted(keys)).decode(),),
    ).fetchall()
    decoded = codec.decode_many([data for _, _, data in rows])
    return {(ref, start): columns[0] for (ref, start, _), columns in zip(rows, decoded)}


def _decode(conn: sqlite3.Connection, rows: list[tuple[int, int, int, bytes]], lo: int, hi: int) -> Points:
    stamps = _stamps(conn, {(ref, start) for _, start, ref, _ in rows if ref})
    parts = []
    for (sid, start, ref, _), columns in zip(rows, codec.decode_many([row[3] for row in rows])):
        if ref:
            ts = stamps.get((ref, start))
            if ts is None or len(ts) != len(columns[0]):
                raise sqlite3.DatabaseError(f"chunk of series {sid} at {start} has no matching timestamps of layout {ref}")
            values = columns[0]
        else:
            ts, values = columns
        seq = runs_seq(ts)
        if ts[0] < lo or ts[-1] > hi:
            keep = (ts >= lo) & (ts <= hi)
            ts, seq, values = ts[keep], seq[keep], values[keep]
        parts.append((np.full(len(ts), sid, dtype=np.int64), ts, seq, values))
    if not parts:
        return empty()
    return tuple(np.concatenate(column) for column in zip(*parts))  # type: ignore[return-value]


def read(conn: sqlite3.Connection, ids: list[int], lo: int, hi: int) -> Points:
    """The chunked samples of the listed series with lo <= ts <= hi: per series one index range."""
    if not ids:
        return empty()
    rows = conn.execute(
        "SELECT c.series_id, c.start_ms, c.ref, c.data FROM json_each(?) AS j JOIN series_chunks AS c "
        "ON c.series_id = j.value AND c.start_ms BETWEEN ? AND ? AND c.end_ms >= ?",
        (orjson.dumps(ids).decode(), max(_MIN, lo - BLOCK_MS), hi, lo),
    ).fetchall()
    return _decode(conn, rows, lo, hi)


def newest(conn: sqlite3.Connection, ids: list[int]) -> Points:
    """The newest chunked value of each listed series (of several at its newest ms, the last):
    one index seek per series, nothing decoded."""
    if not ids:
        return empty()
    rows = conn.execute(
        "SELECT c.series_id, c.end_ms, c.last FROM json_each(?) AS j JOIN series_chunks AS c "
        "ON c.series_id = j.value AND c.start_ms = "
        "(SELECT MAX(start_ms) FROM series_chunks WHERE series_id = j.value)",
        (orjson.dumps(ids).decode(),),
    ).fetchall()
    if not rows:
        return empty()
    sid, ts, bits = zip(*rows)
    return (np.array(sid, dtype=np.int64), np.array(ts, dtype=np.int64), np.zeros(len(rows), dtype=np.int64),
            np.array(bits, dtype=np.int64).view(np.float64))
