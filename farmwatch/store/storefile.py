"""The store file without its time series: opening it (WAL mode, the schema steps, is it a
farmwatch store?), transactions and source cursors.

The alerting state (alerts, silences, acknowledgements) and the log index keep their own tables
in the same file and need only this. Commands that read nothing else (``alerts``, ``silence``,
``ack``, ``logs search``) open a ``StoreFile`` (``farmwatch.store.open_file``) and so start
without numpy, which the time series are made of (``farmwatch.store.sqlite.SQLiteStore``, a
``StoreFile`` with samples). Every part of farmwatch opens the file through here, so they agree
on its schema.
"""

from __future__ import annotations

import json
import os
import sqlite3
import threading
import time
from contextlib import AbstractContextManager, contextmanager
from pathlib import Path
from typing import Any, Iterable, Iterator, Mapping, Self

from farmwatch.clock import Clock, RealClock

APPLICATION = "farmwatch"
CACHE_KIB = 64 * 1024

MIGRATIONS: list[str] = [
    # 1: metadata, series catalogue, the list of day chunks (frames_YYYYMMDD tables, created on
    # demand), the layouts of frames and where each series sits in them, state values.
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
    CREATE TABLE layouts(
        id INTEGER PRIMARY KEY,
        digest BLOB NOT NULL UNIQUE,
        n INTEGER NOT NULL,
        series BLOB NOT NULL);
    CREATE TABLE layout_series(
        series_id INTEGER NOT NULL,
        layout_id INTEGER NOT NULL,
        pos INTEGER NOT NULL,
        PRIMARY KEY(series_id, layout_id)) WITHOUT ROWID;
    """,
    # 2: alerting state (farmwatch.alerting.state): current and recent alerts, their history,
    # silences, acknowledgements, notification groups, the outbox and the chat messages of groups.
    """
    CREATE TABLE alerts(
        fingerprint TEXT PRIMARY KEY,
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        state TEXT NOT NULL,
        doc TEXT NOT NULL,
        updated REAL NOT NULL) WITHOUT ROWID;
    CREATE TABLE alert_history(
        id INTEGER PRIMARY KEY,
        ts REAL NOT NULL,
        fingerprint TEXT NOT NULL,
        rule TEXT NOT NULL,
        labels TEXT NOT NULL,
        event TEXT NOT NULL,
        severity TEXT NOT NULL,
        value REAL,
        summary TEXT NOT NULL);
    CREATE INDEX alert_history_ts ON alert_history(ts);
    CREATE INDEX alert_history_fp ON alert_history(fingerprint, ts);
    CREATE TABLE silences(
        id TEXT PRIMARY KEY,
        matchers TEXT NOT NULL,
        starts_at REAL NOT NULL,
        ends_at REAL NOT NULL,
        created_by TEXT NOT NULL,
        comment TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE acks(
        fingerprint TEXT PRIMARY KEY,
        by TEXT NOT NULL,
        at REAL NOT NULL,
        comment TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE alert_groups(
        group_key TEXT PRIMARY KEY,
        doc TEXT NOT NULL) WITHOUT ROWID;
    CREATE TABLE outbox(
        id INTEGER PRIMARY KEY,
        notifier TEXT NOT NULL,
        incident TEXT NOT NULL,
        created REAL NOT NULL,
        payload TEXT NOT NULL,
        attempts INTEGER NOT NULL DEFAULT 0,
        next_attempt REAL NOT NULL,
        done REAL,
        outcome TEXT);
    CREATE INDEX outbox_pending ON outbox(notifier, done, id);
    CREATE TABLE chat_refs(
        notifier TEXT NOT NULL,
        incident TEXT NOT NULL,
        ref TEXT NOT NULL,
        posted REAL NOT NULL,
        PRIMARY KEY(notifier, incident)) WITHOUT ROWID;
    """,
    # 3: where sources resume after a restart (Zabbix: last clock per item; log files: offsets),
    # keyed by source name and a key of the source's choosing, value JSON.
    """
    CREATE TABLE source_cursors(
        source TEXT NOT NULL,
        key TEXT NOT NULL,
        value TEXT NOT NULL,
        updated REAL NOT NULL,
        PRIMARY KEY(source, key)) WITHOUT ROWID;
    """,
    # 4: log records (farmwatch.store.logs) with a full-text index of message, level, host and
    # service; doc_id (LogRecord.doc_id) is unique, so a re-sent record is stored once.
    """
    CREATE TABLE logs(
        id INTEGER PRIMARY KEY,
        doc_id TEXT NOT NULL UNIQUE,
        ts REAL NOT NULL,
        host TEXT NOT NULL,
        service TEXT NOT NULL,
        level TEXT NOT NULL,
        message TEXT NOT NULL,
        fields TEXT NOT NULL);
    CREATE INDEX logs_ts ON logs(ts);
    CREATE VIRTUAL TABLE logs_fts USING fts5(
        message, level, host, service, content='logs', content_rowid='id');
    CREATE TRIGGER logs_fts_insert AFTER INSERT ON logs BEGIN
        INSERT INTO logs_fts(rowid, message, level, host, service)
        VALUES (new.id, new.message, new.level, new.host, new.service);
    END;
    CREATE TRIGGER logs_fts_delete AFTER DELETE ON logs BEGIN
        INSERT INTO logs_fts(logs_fts, rowid, message, level, host, service)
        VALUES ('delete', old.id, old.message, old.level, old.host, old.service);
    END;
    """,
    # 5: compressed chunks and rollups; the frame tables' catalogue becomes ``heads``; several
    # values of one series at one ms (``extras``, value as int64 bits so NaN stays exact; states
    # get a sequence number too).
    """
    ALTER TABLE chunks RENAME TO heads;
    CREATE TABLE extras(
        series_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        bits INTEGER NOT NULL,
        PRIMARY KEY(series_id, ts, seq)) WITHOUT ROWID;
    CREATE TABLE series_chunks(
        id INTEGER PRIMARY KEY,
        series_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        ref INTEGER NOT NULL,
        last INTEGER NOT NULL,
        data BLOB NOT NULL);
    CREATE UNIQUE INDEX series_chunks_key ON series_chunks(series_id, start_ms);
    CREATE INDEX series_chunks_end ON series_chunks(end_ms);
    CREATE TABLE rollups(
        id INTEGER PRIMARY KEY,
        res INTEGER NOT NULL,
        series_id INTEGER NOT NULL,
        start_ms INTEGER NOT NULL,
        end_ms INTEGER NOT NULL,
        data BLOB NOT NULL);
    CREATE UNIQUE INDEX rollups_key ON rollups(res, series_id, start_ms);
    CREATE INDEX rollups_end ON rollups(res, end_ms);
    CREATE TABLE states_v5(
        series_id INTEGER NOT NULL,
        ts INTEGER NOT NULL,
        seq INTEGER NOT NULL,
        value TEXT NOT NULL,
        PRIMARY KEY(series_id, ts, seq)) WITHOUT ROWID;
    INSERT INTO states_v5 SELECT series_id, ts, 0, value FROM states;
    DROP TABLE states;
    ALTER TABLE states_v5 RENAME TO states;
    """,
    # 6: the remote-write queue (farmwatch.store.remote): requests queued in the transaction that
    # stores their samples, per service (owner), deleted once the receiver accepted them.
    """
    CREATE TABLE remote_queue(
        id INTEGER PRIMARY KEY,
        owner TEXT NOT NULL,
        samples INTEGER NOT NULL,
        created REAL NOT NULL,
        body BLOB NOT NULL);
    CREATE INDEX remote_queue_owner ON remote_queue(owner, id);
    """,
    # 7: a smaller catalogue. Where a series sits in layouts is known from the layouts' own
    # series lists (kept in memory, ``_LayoutIndex``); the series' text is stored once (an index on
    # the name only: a new series is looked up and inserted under the write lock, so two
    # processes cannot both add it); a random id tells one store file from another.
    """
    DROP TABLE layout_series;
    CREATE TABLE series_v7(
        id INTEGER PRIMARY KEY,
        name TEXT NOT NULL,
        labels TEXT NOT NULL,
        created REAL NOT NULL);
    INSERT INTO series_v7 SELECT id, name, labels, created FROM series;
    DROP TABLE series;
    ALTER TABLE series_v7 RENAME TO series;
    CREATE INDEX series_name ON series(name);
    INSERT OR REPLACE INTO meta(key, value) VALUES ('store_id', lower(hex(randomblob(16))));
    """,
    # 8: log templates (farmwatch.logtemplates): the miners' clusters, shared by every collector
    # of the file (version: a change counter for syncing), the templates with when they were first
    # and last seen (kept up to date by a trigger on logs; resumed/idle: the last return after an
    # hour or more without the template), and the record's template id as an indexed column.
    """
    CREATE TABLE log_template_clusters(
        id TEXT PRIMARY KEY,
        bucket TEXT NOT NULL,
        words TEXT NOT NULL,
        version INTEGER NOT NULL) WITHOUT ROWID;
    CREATE INDEX log_template_clusters_version ON log_template_clusters(version);
    CREATE TABLE log_templates(
        id TEXT PRIMARY KEY,
        template TEXT NOT NULL,
        cluster TEXT NOT NULL,
        first_seen REAL NOT NULL,
        last_seen REAL NOT NULL,
        resumed REAL NOT NULL,
        idle REAL NOT NULL DEFAULT 0) WITHOUT ROWID;
    CREATE INDEX log_templates_cluster ON log_templates(cluster);
    ALTER TABLE logs ADD COLUMN template_id TEXT
        GENERATED ALWAYS AS (json_extract(fields, '$."log.template.id"')) VIRTUAL;
    CREATE INDEX logs_template ON logs(template_id, ts);
    CREATE TRIGGER logs_template_seen AFTER INSERT ON logs WHEN new.template_id IS NOT NULL BEGIN
        UPDATE log_templates SET
            resumed = CASE WHEN new.ts - last_seen >= 3600 THEN new.ts ELSE resumed END,
            idle = CASE WHEN new.ts - last_seen >= 3600 THEN new.ts - last_seen ELSE idle END,
            first_seen = min(first_seen, new.ts),
            last_seen = max(last_seen, new.ts)
        WHERE id = new.template_id;
    END;
    """,
]
"""Schema steps: ``MIGRATIONS[i]`` is an SQL script taking a file from ``user_version`` i to i + 1.

Append a step to change the schema; never edit one that has shipped.
"""


class StoreError(Exception):
    """Something about the store file that the user has to fix; the message is one line naming the file."""


class StoreFile:
    """One farmwatch store file (SQLite, WAL), opened and brought to the current schema; safe for
    several processes. One object may be shared by threads: every call holds an internal lock."""

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

    def __enter__(self) -> Self:
        return self

    def __exit__(self, *exc_info: object) -> None:
        self.close()

    def close(self) -> None:
        with self._lock:
            self._conn.close()

    def schema_version(self) -> int:
        with self._lock:
            return _user_version(self._conn)

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
        # A farm cycle adds ~1,400 pages; checkpoint (with its fsync) every few cycles, not every one.
        conn.execute("PRAGMA wal_autocheckpoint = 8000")
        # Every poll cycle appends to each target's last page of today's chunk and looks up the
        # series catalogue; the default 2 MB cache would evict those pages between cycles.
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

    def transaction(self, action: str, *, write: bool = False) -> AbstractContextManager[sqlite3.Connection]:
        """A transaction on the store file for the parts that keep their own tables (alerting).

        ``action`` names what is being done in the one-line ``StoreError`` a failure becomes.
        Writers take the write lock at once (``BEGIN IMMEDIATE``), so a read-modify-write by two
        processes cannot interleave.
        """
        if write:
            self._require_writable(action)
        return self._transaction("BEGIN IMMEDIATE" if write else "BEGIN", action)

    def cursors(self, source: str) -> dict[str, Any]:
        """Every cursor a source saved (key → the JSON value), e.g. the last clock per Zabbix item."""
        with self._transaction("BEGIN", f"read the cursors of source {source!r}") as conn:
            rows = conn.execute("SELECT key, value FROM source_cursors WHERE source = ?", (source,)).fetchall()
        return {k: json.loads(v) for k, v in rows}

    def save_cursors(self, source: str, cursors: Mapping[str, Any], *, drop: Iterable[str] = (),
                     conn: sqlite3.Connection | None = None) -> None:
        """Upsert ``cursors`` (JSON-serialisable values) and delete the keys in ``drop``.

        Pass ``conn`` (from ``transaction(..., write=True)``) to save them in the same transaction
        as the data they describe, so a crash cannot leave a cursor ahead of what was stored.
        """
        now = time.time()
        rows = [(source, k, json.dumps(v), now) for k, v in cursors.items()]
        gone = [(source, k) for k in drop]

        def apply(c: sqlite3.Connection) -> None:
            c.executemany("INSERT INTO source_cursors(source, key, value, updated) VALUES (?, ?, ?, ?) "
                          "ON CONFLICT(source, key) DO UPDATE SET value = excluded.value, updated = excluded.updated", rows)
            c.executemany("DELETE FROM source_cursors WHERE source = ? AND key = ?", gone)

        if conn is not None:
            apply(conn)
            return
        with self.transaction(f"save the cursors of source {source!r}", write=True) as c:
            apply(c)

    def _require_writable(self, action: str) -> None:
        if self.readonly:
            raise StoreError(f"{self.path}: cannot {action}, the store was opened read-only")

    def _error(self, exc: sqlite3.Error, action: str = "open") -> StoreError:
        if "not a database" in str(exc):
            return StoreError(f"{self.path}: not a farmwatch store (not an SQLite database)")
        return StoreError(f"{self.path}: {action} failed: {exc}")


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
    # Only takes effect on a new, empty file: 8 KB pages keep a typical frame (~150 values,
    # 1.2 KB) inside its page instead of spilling into an overflow page (half the file size).
    conn.execute("PRAGMA page_size = 8192")
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


__all__ = ["APPLICATION", "CACHE_KIB", "MIGRATIONS", "StoreError", "StoreFile"]
