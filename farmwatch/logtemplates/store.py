"""Templates in the store file: the miners' clusters shared by collectors, and what was seen when.

Every collector of one store file mines with the same clusters: before a source hands on a batch
of records, ``TemplateStore.sync`` pulls the clusters other processes changed since its last sync
(``version`` grows with every change), merges them (per position the union of the words, a
variable when too many: the order of merges does not matter), writes its own changed clusters
and registers the templates it met for the first time, in one write transaction. Since a
template's id is a hash of its text, two collectors that know the same clusters give a message the
same id, and so does a collector restarted (or killed) and reloaded from the file.

``log_templates`` keeps, per template, when it was first and last seen (the trigger of schema step
5 updates them as records are stored) and its last return after an idle hour or more
(``resumed``, ``idle``): what the ``log_new_template`` rule kind asks. A template that only makes a
position of known templates variable inherits their first sighting: learning is not news.

The store object only needs ``transaction(action, write=...)`` (``farmwatch.store.SQLiteStore``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Any, Iterable, Mapping

import orjson

from farmwatch.logtemplates.miner import Cluster, TemplateMiner
from farmwatch.model import level_names

__all__ = ["TemplateInfo", "TemplateStore", "record_filter"]


@dataclass(frozen=True)
class TemplateInfo:
    """What the store knows about one template."""

    id: str
    template: str
    first_seen: float
    last_seen: float
    resumed: float
    idle: float


class TemplateStore:
    """The template tables of one store file (schema step 5 of ``farmwatch.store.storefile``)."""

    def __init__(self, store: Any) -> None:
        self.store = store
        self.version = 0
        """The highest cluster version this process has merged."""

    # -- the miners' shared state -------------------------------------------------------------------
    def load(self, miner: TemplateMiner) -> None:
        """Every stored cluster and known template into ``miner`` (at start)."""
        with self.store.transaction("load log template clusters") as conn:
            self._pull(conn, miner)
            miner.known.update(row[0] for row in conn.execute("SELECT id FROM log_templates"))
        for cluster in miner.clusters.values():
            cluster.dirty = False

    def sync(self, miner: TemplateMiner, seen: Mapping[str, float], now: float) -> int:
        """Merge others' clusters, save ours, register new templates (``seen``: id → earliest
        record time in this batch; ``now`` for one met in an earlier batch whose sync failed).
        Returns the number of new templates registered."""
        new = miner.take_new()
        if not new and not any(c.dirty for c in miner.clusters.values()):
            return 0
        try:
            with self.store.transaction("save log templates", write=True) as conn:
                self._pull(conn, miner)
                dirty = [c for c in miner.clusters.values() if c.dirty]
                version = conn.execute("SELECT coalesce(max(version), 0) FROM log_template_clusters").fetchone()[0] + 1
                conn.executemany(
                    "INSERT INTO log_template_clusters(id, bucket, words, version) VALUES (?, ?, ?, ?) "
                    "ON CONFLICT(id) DO UPDATE SET words = excluded.words, version = excluded.version",
                    [(c.id, _json(list(c.bucket)), _json(c.state()), version) for c in dirty])
                for tid, (template, cluster, generalized) in new.items():
                    ts = seen.get(tid, now)
                    if generalized:  # inherits the sightings of the templates it generalises
                        conn.execute(
                            "INSERT OR IGNORE INTO log_templates(id, template, cluster, first_seen, last_seen, resumed) "
                            "SELECT ?, ?, ?, coalesce(min(first_seen), ?), coalesce(max(last_seen), ?), "
                            "coalesce(min(first_seen), ?) FROM log_templates WHERE cluster = ?",
                            (tid, template.text, cluster, ts, ts, ts, cluster))
                    else:
                        conn.execute("INSERT OR IGNORE INTO log_templates(id, template, cluster, first_seen, last_seen, "
                                     "resumed) VALUES (?, ?, ?, ?, ?, ?)", (tid, template.text, cluster, ts, ts, ts))
        except BaseException:
            miner.new.update(new)  # registered at the next sync
            raise
        for c in dirty:
            c.dirty = False
        if dirty:  # (a version nobody wrote must not be skipped by the next pull)
            self.version = max(self.version, version)
        return len(new)

    def pull(self, miner: TemplateMiner) -> None:
        """Merge the clusters other processes changed since the last pull or sync (a read)."""
        with self.store.transaction("read log template clusters") as conn:
            newest = conn.execute("SELECT coalesce(max(version), 0) FROM log_template_clusters").fetchone()[0]
            if newest > self.version:
                self._pull(conn, miner)

    def _pull(self, conn: Any, miner: TemplateMiner) -> None:
        rows = conn.execute("SELECT id, bucket, words, version FROM log_template_clusters WHERE version > ? "
                            "ORDER BY version", (self.version,)).fetchall()
        for cid, bucket, words, version in rows:
            theirs = [None if w is None else set(w) for w in orjson.loads(words)]
            known = miner.clusters.get(cid)
            if known is None:
                length, first = orjson.loads(bucket)
                miner.add_cluster(Cluster(cid, (int(length), str(first)), theirs, dirty=False))
            else:
                miner.merge(known, theirs)
            self.version = max(self.version, int(version))

    # -- questions ------------------------------------------------------------------------------------
    def info(self, ids: Iterable[str]) -> dict[str, TemplateInfo]:
        ids = list(ids)
        if not ids:
            return {}
        with self.store.transaction("read log templates") as conn:
            rows = conn.execute("SELECT t.id, t.template, t.first_seen, t.last_seen, t.resumed, t.idle "
                                "FROM json_each(?) AS j JOIN log_templates AS t ON t.id = j.value",
                                (_json(ids),)).fetchall()
        return {row[0]: TemplateInfo(*row) for row in rows}

    def history_start(self) -> float | None:
        """When the first template was seen: how long this store has been learning."""
        with self.store.transaction("read log templates") as conn:
            return conn.execute("SELECT min(first_seen) FROM log_templates").fetchone()[0]

    def patterns(self, *, since: float | None = None, until: float | None = None, host: str | None = None,
                 level: Iterable[str] = (), new: bool = False, limit: int = 100) -> list[dict[str, Any]]:
        """Templates of the stored records in a time range, most frequent first: count, first and
        last seen in the range, hosts, one example; ``new``: only templates first seen in the range."""
        clauses, params = record_filter(host=host, level=level, since=since, until=until, table="l")
        clauses.insert(0, "l.template_id IS NOT NULL")
        having = ""
        if new:
            having = " HAVING t.first_seen >= ?" + (" AND t.first_seen <= ?" if until is not None else "")
            params += [since if since is not None else -math.inf] + ([until] if until is not None else [])
        sql = ("SELECT l.template_id, coalesce(t.template, json_extract(max(l.fields), '$.\"log.template.text\"')), "
               "count(*), min(l.ts), max(l.ts), group_concat(DISTINCT l.host), group_concat(DISTINCT l.level), "
               "t.first_seen, (SELECT message FROM logs AS e WHERE e.template_id = l.template_id ORDER BY e.ts DESC LIMIT 1) "
               f"FROM logs AS l LEFT JOIN log_templates AS t ON t.id = l.template_id WHERE {' AND '.join(clauses)} "
               f"GROUP BY l.template_id{having} ORDER BY count(*) DESC, min(l.ts) LIMIT ?")
        with self.store.transaction("read log patterns") as conn:
            rows = conn.execute(sql, params + [int(limit)]).fetchall()
        return [{"id": tid, "template": text, "count": n, "first": first, "last": last,
                 "hosts": sorted((hosts or "").split(",")), "levels": sorted((lv or "").split(",")),
                 "first_seen": first_seen, "example": example}
                for tid, text, n, first, last, hosts, lv, first_seen, example in rows]


def record_filter(*, host: str | None = None, service: str | None = None, level: Iterable[str] | str | None = None,
                  since: float | None = None, until: float | None = None, table: str = "") -> tuple[list[str], list[Any]]:
    """SQL conditions (and their parameters) on the ``logs`` table that every log query shares:
    ``host``/``service`` globs, levels by their canonical names (``err`` = ``error``), a time range.
    ``table``: the alias the query gives ``logs``."""
    col = f"{table}." if table else ""
    clauses: list[str] = []
    params: list[Any] = []
    for column, pattern in (("host", host), ("service", service)):
        if pattern:
            clauses.append(f"{col}{column} GLOB ?")
            params.append(pattern)
    levels = level_names(level)
    if levels:
        clauses.append(f"{col}level IN ({','.join('?' * len(levels))})")
        params += levels
    if since is not None:
        clauses.append(f"{col}ts >= ?")
        params.append(float(since))
    if until is not None:
        clauses.append(f"{col}ts <= ?")
        params.append(float(until))
    return clauses, params


def _json(value: object) -> str:
    return orjson.dumps(value).decode()
