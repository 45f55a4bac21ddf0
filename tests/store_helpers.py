"""Store files as older farmwatch versions wrote them, for the upgrade tests."""

from __future__ import annotations

import json
import sqlite3
import time
from pathlib import Path
from typing import Iterable

import numpy as np

from farmwatch.model import SeriesKey
from farmwatch.store import storefile

SCHEMA_7AEC121 = 4
"""The schema of farmwatch 7aec121 (before the compact store and the log templates): samples in day
tables of frames (``frames_YYYYMMDD``), the catalogue's ``layout_series``, states without a sequence."""


def write_schema4_store(path: Path, keys: list[SeriesKey], t0: float, *, frames: int = 200,
                        logs: Iterable[tuple[float, str, str, str, str]] = ()) -> None:
    """A store file of schema 4: ``frames`` cycles one minute apart from ``t0`` (within its UTC
    day) of two series (``keys``; values i/10 and i), a state of the second at ``t0`` + 5 ms, and
    log records (ts, host, service, level, message) as 7aec121's LogStore stored them."""
    assert len(keys) == 2
    conn = sqlite3.connect(path, isolation_level=None)
    try:
        conn.execute("PRAGMA journal_mode=WAL")
        for statement in storefile.MIGRATIONS[:SCHEMA_7AEC121]:
            for part in storefile._statements(statement):
                conn.execute(part)
        conn.execute(f"PRAGMA user_version = {SCHEMA_7AEC121}")
        conn.executemany("INSERT INTO series(id, name, labels, created) VALUES (?, ?, ?, 0)",
                         [(i + 1, name, json.dumps(dict(lbls), separators=(",", ":"), sort_keys=True))
                          for i, (name, lbls) in enumerate(keys)])
        sids = np.array([1, 2], dtype=np.int64)
        conn.execute("INSERT INTO layouts(id, digest, n, series) VALUES (1, x'00', 2, ?)", (sids.tobytes(),))
        conn.execute("INSERT INTO layout_series VALUES (1, 1, 0), (2, 1, 1)")
        day_ms = int(t0 // 86400) * 86_400_000
        table = "frames_" + time.strftime("%Y%m%d", time.gmtime(t0))
        conn.execute(f"CREATE TABLE {table}(layout_id INTEGER NOT NULL, ts INTEGER NOT NULL, vals BLOB NOT NULL, "
                     "PRIMARY KEY(layout_id, ts)) WITHOUT ROWID")
        conn.execute("INSERT INTO chunks VALUES (?, ?, ?)", (table, day_ms, day_ms + 86_400_000))
        conn.executemany(f"INSERT INTO {table} VALUES (1, ?, ?)",
                         [(int(t0 * 1000) + 60_000 * i, np.array([i / 10, float(i)]).tobytes()) for i in range(frames)])
        conn.execute("INSERT INTO states VALUES (2, ?, 'stuck')", (int(t0 * 1000) + 5,))
        conn.executemany("INSERT INTO logs(doc_id, ts, host, service, level, message, fields) VALUES (?, ?, ?, ?, ?, ?, '{}')",
                         [(f"old-{i}", *row) for i, row in enumerate(logs)])
    finally:
        conn.close()


__all__ = ["SCHEMA_7AEC121", "write_schema4_store"]
