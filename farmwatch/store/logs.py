"""Log records in the embedded store: full-text search (SQLite FTS5), retention, no duplicates.

Without Elasticsearch this is where log records rest, and it is always one of the sinks (the
runner writes every log record here, and to Elasticsearch when configured). The tables are the
store file's (schema step 4 in ``farmwatch.store.storefile``): ``logs`` with a unique ``doc_id``
(``LogRecord.doc_id``), so a record sent twice after a crash or a retry is stored once, and an
external-content FTS5 index ``logs_fts`` over message, level, host and service kept in step by
triggers. A log source's file offsets are saved in the same transaction as its records
(``write_logs(..., cursors=...)``), so a crash can never leave an offset ahead of what was stored.

The query interface (``search``) has the same signature as the Elasticsearch store's, so the
``farmwatch logs search`` command, notebooks and the alerting feed do not care which one answers.
"""

from __future__ import annotations

import re
import sqlite3
from typing import TYPE_CHECKING, Any, Iterable, Mapping, Protocol, Sequence

import orjson

from farmwatch.logtemplates.store import record_filter
from farmwatch.model import LogRecord
from farmwatch.sources.base import LogBatch
from farmwatch.store.storefile import StoreError, StoreFile

if TYPE_CHECKING:
    import pandas as pd

_COLUMNS = "id, ts, host, service, level, message, fields"
_TOKEN = re.compile(r'-?"[^"]*"?|\S+')
_WORD = re.compile(r"[^\W_]")
"""A letter or digit: what FTS5's unicode61 tokenizer keeps. A term without one (``_``, ``·``) is
an empty phrase that matches nothing, so it is left out like other punctuation."""
RETENTION_BATCH = 20_000


class LogSink(Protocol):
    """Anything log records can be written to (the embedded store, Elasticsearch).

    When ``write_logs`` returns, the records are durably accepted (stored, or spooled on disk);
    it raises ``farmwatch.store.StoreError`` when they are not.
    """

    def write_logs(self, records: Sequence[LogRecord]) -> None: ...


def fts_query(text: str) -> tuple[str, str]:
    """A user's search words as an FTS5 query: (must match, must not match), either may be "".

    Words are ANDed; ``"a phrase"`` is a phrase; ``word*`` a prefix; ``-word`` excludes. Every
    word is quoted, so characters FTS5 would read as syntax (``:``, ``-``, ``(``…) in log text
    such as ``tcp://hltin01:5000`` are searched for instead of being a syntax error. A term with
    no letter or digit (``_``, ``-``, ``…``) is ignored: the tokenizer has nothing to match it to.
    """
    positive: list[str] = []
    negative: list[str] = []
    for token in _TOKEN.findall(text):
        negate = token.startswith("-") and len(token) > 1
        if negate:
            token = token[1:]
        prefix = token.endswith("*") and not token.startswith('"')
        word = token.strip('"').rstrip("*") if not token.startswith('"') else token.strip('"')
        if not _WORD.search(word):
            continue
        term = '"' + word.replace('"', '""') + '"' + ("*" if prefix else "")
        (negative if negate else positive).append(term)
    return " AND ".join(positive), " OR ".join(negative)


class LogStore:
    """The log records of one store file (the store's lock and transactions are reused)."""

    def __init__(self, store: StoreFile, *, retention: float | None = None) -> None:
        self.store = store
        self.retention = store.retention if retention is None else retention

    # -- writing ----------------------------------------------------------------------------------
    def write_logs(self, records: Sequence[LogRecord], *, cursors: LogBatch | None = None) -> int:
        """Store ``records`` (and the batch's cursors) in one transaction; returns how many were new.

        A record whose ``doc_id`` is already stored is skipped, so re-sends never duplicate.
        """
        rows = [(r.doc_id(), float(r.ts), r.host, r.service, r.level, r.message, _fields_json(r.fields))
                for r in records]
        with self.store.transaction("write log records", write=True) as conn:
            # rowcount: rows this statement inserted (not those of the FTS trigger; ignored ones not at all)
            inserted = conn.executemany("INSERT OR IGNORE INTO logs(doc_id, ts, host, service, level, message, fields) "
                                        "VALUES (?, ?, ?, ?, ?, ?, ?)", rows).rowcount
            if cursors is not None and (cursors.cursors or cursors.drop):
                self.store.save_cursors(cursors.source, cursors.cursors, drop=cursors.drop, conn=conn)
        return inserted

    def apply_retention(self, now: float | None = None) -> int:
        """Delete records older than ``retention``, in batches so writers are never held up long."""
        if self.retention is None:
            return 0
        cutoff = (self.store._clock.time() if now is None else now) - self.retention
        removed = 0
        while True:
            with self.store.transaction("log retention", write=True) as conn:
                n = conn.execute("DELETE FROM logs WHERE id IN (SELECT id FROM logs WHERE ts < ? LIMIT ?)",
                                 (cutoff, RETENTION_BATCH)).rowcount
            removed += n
            if n < RETENTION_BATCH:
                return removed

    # -- reading ----------------------------------------------------------------------------------
    def search(self, query: str = "", *, host: str | None = None, service: str | None = None,
               level: str | None = None, since: float | None = None, until: float | None = None,
               limit: int = 100) -> list[LogRecord]:
        """Records matching ``query`` and the filters, newest first.

        ``query``: words (all must occur, in message, level, host or service; case-insensitive),
        ``"phrases"``, ``prefix*``, ``-excluded``; empty matches everything. ``host`` and
        ``service`` are globs (``hltwk0*``), ``level`` one level or several separated by commas.
        """
        where, params = self._where(query, host, service, level, since, until)
        sql = f"SELECT {_COLUMNS} FROM logs{where} ORDER BY ts DESC, id DESC LIMIT ?"
        with self.store.transaction("search log records") as conn:
            rows = self._run(conn, sql, params + [int(limit)])
        return [_record(row) for row in rows]

    def search_frame(self, query: str = "", **filters: Any) -> pd.DataFrame:
        """``search`` as a DataFrame (ts as UTC datetimes, newest first) for notebooks."""
        import pandas as pd

        records = self.search(query, **filters)
        return pd.DataFrame({
            "ts": pd.to_datetime([r.ts for r in records], unit="s", utc=True),
            "host": [r.host for r in records], "service": [r.service for r in records],
            "level": [r.level for r in records], "message": [r.message for r in records],
            "fields": [dict(r.fields) for r in records],
        })

    def after(self, last_id: int | None, query: str = "", *, host: str | None = None, service: str | None = None,
              level: str | None = None, since: float | None = None, limit: int = 10_000) -> tuple[list[LogRecord], int]:
        """Records stored after row ``last_id`` (oldest first) and the id to continue from.

        ``last_id=None`` starts at the newest row now stored (returning nothing), or, with
        ``since``, returns the records of that time range stored so far. For ``--follow`` and the
        alerting feed: row ids only grow, so nothing is missed or read twice.
        """
        where, params = self._where(query, host, service, level, since if last_id is None else None, None)
        with self.store.transaction("read new log records") as conn:
            newest = conn.execute("SELECT coalesce(max(id), 0) FROM logs").fetchone()[0]
            if last_id is None and since is None:
                return [], newest
            start = 0 if last_id is None else last_id
            joiner = " AND " if where else " WHERE "
            sql = f"SELECT {_COLUMNS} FROM logs{where}{joiner}id > ? AND id <= ? ORDER BY id LIMIT ?"
            rows = self._run(conn, sql, params + [start, newest, int(limit)])
        if len(rows) == limit:
            newest = rows[-1][0]
        return [_record(row) for row in rows], newest

    def count(self) -> int:
        with self.store.transaction("count log records") as conn:
            return conn.execute("SELECT count(*) FROM logs").fetchone()[0]

    @staticmethod
    def _where(query: str, host: str | None, service: str | None, level: str | None,
               since: float | None, until: float | None) -> tuple[str, list[Any]]:
        clauses: list[str] = []
        params: list[Any] = []
        positive, negative = fts_query(query or "")
        if positive:
            clauses.append("id IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)")
            params.append(positive)
        if negative:
            clauses.append("id NOT IN (SELECT rowid FROM logs_fts WHERE logs_fts MATCH ?)")
            params.append(negative)
        more, more_params = record_filter(host=host, service=service, level=level, since=since, until=until)
        clauses += more
        params += more_params
        return (" WHERE " + " AND ".join(clauses)) if clauses else "", params

    def _run(self, conn: sqlite3.Connection, sql: str, params: list[Any]) -> list[tuple]:
        try:
            return conn.execute(sql, params).fetchall()
        except sqlite3.OperationalError as exc:
            if "fts5" in str(exc) or "MATCH" in str(exc):
                raise ValueError(f"cannot search for {params[0]!r}: {exc}") from None
            raise


class LogFeed:
    """New log records of the store for an alerting window (``farmwatch run`` and ``watch``).

    The first call returns what was stored within ``horizon`` before ``now``; every later call
    what was stored since the previous call, whatever its timestamps (late records included).
    """

    def __init__(self, store: StoreFile, horizon: float, *, batch: int = 50_000) -> None:
        self.logs = LogStore(store)
        self.horizon = horizon
        self.batch = batch
        self.last_id: int | None = None

    def __call__(self, now: float) -> list[LogRecord]:
        out: list[LogRecord] = []
        since = now - self.horizon if self.last_id is None else None
        while True:
            records, self.last_id = self.logs.after(self.last_id, since=since, limit=self.batch)
            out += records
            if len(records) < self.batch:
                return out
            since = None


def _fields_json(fields: Mapping[str, object]) -> str:
    if not fields:
        return "{}"
    return orjson.dumps(fields if isinstance(fields, dict) else dict(fields), default=str).decode()


def _record(row: tuple) -> LogRecord:
    _, ts, host, service, level, message, fields = row
    return LogRecord(ts, host, service, level, message, orjson.loads(fields) if fields != "{}" else {})


def wants_logs(rules: Iterable[Any]) -> bool:
    """Whether any rule reads log records (so an alerting service needs a feed at all)."""
    return any(getattr(rule, "kind", None) == "log_count" or getattr(getattr(rule, "spec", None), "reads_logs", False)
               for rule in rules)


__all__ = ["LogBatch", "LogFeed", "LogSink", "LogStore", "StoreError", "fts_query", "wants_logs"]
