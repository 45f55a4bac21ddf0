"""Compaction: an hour's head table becomes compressed chunks and rollups, then is dropped.

Most series were polled in one layout that hour and have nothing else stored for it: their
columns are compressed straight from the frames, vectorised per layout, and share the layout's
timestamps (one chunk per layout and hour). The rest ("merged" series: in several layouts that
hour, with extra values at one ms, or with chunks of that hour already, from samples that came
late) go through the read path, which merges and deduplicates everything stored for them, and get
chunks with their own timestamps. One table is one transaction: a reader sees the hour either in
the head or in chunks, a crash (kill -9, a full disk) rolls it back and the next run does it again.
"""

from __future__ import annotations

import sqlite3
from typing import Callable

import numpy as np
import orjson

from farmwatch.store import chunks, codec, rollup
from farmwatch.store.chunks import BLOCK_MS, Points

__all__ = ["compact_table", "merge_rollup_days"]

ReadPoints = Callable[[sqlite3.Connection, list[int], int, int], Points]


def compact_table(conn: sqlite3.Connection, table: str, start: int, end: int, read: ReadPoints, *,
                  drop: bool = True) -> int:
    """Compact the rows of head table ``table`` in [start, end) ms (one hour) inside the caller's
    transaction, then drop the table (``drop``) or delete those rows (an hour of an older day
    table); returns the samples compacted (0 when another process did it already)."""
    if conn.execute("SELECT 1 FROM sqlite_master WHERE type = 'table' AND name = ?", (table,)).fetchone() is None:
        conn.execute("DELETE FROM heads WHERE name = ?", (table,))
        return 0
    # One primary-key probe per known layout: cheaper than a scan of a (day) table for its layouts.
    present = {lid: np.frombuffer(blob, dtype=np.int64) for lid, blob in conn.execute(
        f'SELECT id, series FROM layouts AS l WHERE EXISTS (SELECT 1 FROM "{table}" AS t WHERE t.layout_id = l.id '
        "AND t.ts BETWEEN ? AND ?)", (start, end - 1))}
    every = np.concatenate(list(present.values())) if present else np.empty(0, dtype=np.int64)
    uniq, counts = np.unique(every, return_counts=True)
    merged = set(uniq[counts > 1].tolist())
    merged.update(sid for (sid,) in conn.execute(
        "SELECT DISTINCT series_id FROM extras WHERE ts BETWEEN ? AND ?", (start, end - 1)))
    merged.update(sid for (sid,) in conn.execute(
        "SELECT DISTINCT c.series_id FROM json_each(?) AS j JOIN series_chunks AS c ON c.series_id = j.value "
        "AND c.start_ms BETWEEN ? AND ?", (orjson.dumps(uniq.tolist()).decode(), start, end - 1)))
    total = 0
    chunk_rows: list[tuple[int, int, int, int, float, bytes]] = []
    rolled: dict[int, list[rollup.Rolled]] = {res: [] for res in rollup.RESOLUTIONS.values()}
    for lid, sids in present.items():
        simple = np.array([sid not in merged for sid in sids.tolist()], dtype=bool)
        if not simple.any():
            continue
        rows = conn.execute(f'SELECT ts, vals FROM "{table}" WHERE layout_id = ? AND ts BETWEEN ? AND ? ORDER BY ts',
                            (lid, start, end - 1)).fetchall()
        ts = np.array([t for t, _ in rows], dtype=np.int64)
        data = b"".join(blob for _, blob in rows)
        if len(data) != len(rows) * len(sids) * 8:
            raise sqlite3.DatabaseError(f"{table}: a frame of layout {lid} is not {len(sids)} values long")
        matrix = np.frombuffer(data, dtype=np.float64).reshape(len(rows), len(sids))[:, simple]
        own = sids[simple]
        blocks = ts // BLOCK_MS
        for lo, hi in _runs(blocks):
            block_ts, values = ts[lo:hi], np.ascontiguousarray(matrix[lo:hi])
            first_ts, last_ts = int(block_ts[0]), int(block_ts[-1])
            chunk_rows.append((-lid, first_ts, last_ts, 0, 0.0, codec.encode_stamps(block_ts)))
            chunk_rows += [(sid, first_ts, last_ts, lid, final, blob)
                           for sid, final, blob in zip(own.tolist(), values[-1].tolist(), codec.encode_matrix(values))]
            points = (np.tile(own, len(block_ts)), np.repeat(block_ts, len(own)),
                      np.zeros(values.size, dtype=np.int64), values.ravel())
            for res, step in rollup.RESOLUTIONS.items():
                rolled[step].append(rollup.aggregate(points, step))
            total += values.size
    if merged:
        listed = sorted(merged)
        sid, ts, seq, values = read(conn, listed, start, end - 1)
        order = np.lexsort((seq, ts, sid))
        sid, ts, seq, values = sid[order], ts[order], seq[order], values[order]
        if len(sid):
            key = ts // BLOCK_MS
            first = np.flatnonzero(np.concatenate(([True], (np.diff(sid) != 0) | (np.diff(key) != 0))))
            counts = np.diff(np.append(first, len(sid)))
            for n in np.unique(counts).tolist():  # chunks of one length are encoded together
                heads = first[counts == n]
                index = heads[:, None] + np.arange(n)
                blobs = codec.encode_rows(ts[index], [values[index]])
                chunk_rows += [(int(sid[h]), int(ts[h]), int(ts[h + n - 1]), 0, float(values[h + n - 1]), blob)
                               for h, blob in zip(heads.tolist(), blobs)]
        conn.execute("DELETE FROM series_chunks WHERE series_id IN (SELECT value FROM json_each(?)) "
                     "AND start_ms BETWEEN ? AND ?", (orjson.dumps(listed).decode(), start, end - 1))
        conn.execute("DELETE FROM rollups WHERE series_id IN (SELECT value FROM json_each(?)) AND start_ms >= ? "
                     "AND end_ms < ? AND end_ms - start_ms < ?", (orjson.dumps(listed).decode(), start, end, BLOCK_MS))
        conn.execute("DELETE FROM extras WHERE series_id IN (SELECT value FROM json_each(?)) AND ts BETWEEN ? AND ?",
                     (orjson.dumps(listed).decode(), start, end - 1))
        for res, step in rollup.RESOLUTIONS.items():
            rolled[step].append(rollup.aggregate((sid, ts, seq, values), step))
        total += len(sid)
    chunks.insert(conn, chunk_rows)
    for step, parts in rolled.items():
        both = rollup.merge(parts)  # sorted by series and bin, one row each
        conn.executemany("INSERT OR REPLACE INTO rollups(res, series_id, start_ms, end_ms, data) VALUES (?, ?, ?, ?, ?)",
                         rollup.rows(step, both, BLOCK_MS))
    if drop:
        conn.execute(f'DROP TABLE "{table}"')
        conn.execute("DELETE FROM heads WHERE name = ?", (table,))
    else:
        conn.executemany(f'DELETE FROM "{table}" WHERE layout_id = ? AND ts BETWEEN ? AND ?',
                         [(lid, start, end - 1) for lid in present])
    return total


def merge_rollup_days(conn: sqlite3.Connection, before_day: int, *, settled: bool = True, batch: int = 2000) -> bool:
    """Merge one batch of hourly rollup chunks of the oldest unmerged day before ``before_day``
    inside the caller's transaction; False when nothing is left to merge. With ``settled`` the
    days done are remembered (no hour of them can come any more), so later calls start after them."""
    done = conn.execute("SELECT value FROM meta WHERE key = 'rollups_merged_day'").fetchone()
    first = conn.execute("SELECT MIN(start_ms) FROM rollups").fetchone()[0]
    if first is None:
        return False
    day = max(int(done[0]) + 1 if done else 0, first // rollup.DAY_MS)
    while day < before_day:
        for step in rollup.RESOLUTIONS.values():
            sids = rollup.unmerged(conn, step, day)
            if sids:
                rollup.merge_day(conn, step, day, sids[:batch])
                return True
        if settled:
            conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('rollups_merged_day', ?)", (str(day),))
        day += 1
    return False


def _runs(keys: np.ndarray) -> list[tuple[int, int]]:
    """(start, stop) of the runs of equal values in a sorted array."""
    if not len(keys):
        return []
    cut = np.flatnonzero(np.diff(keys)) + 1
    return list(zip(np.concatenate(([0], cut)).tolist(), np.append(cut, len(keys)).tolist()))
