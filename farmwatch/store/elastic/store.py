"""``ElasticStore``: a log sink that never loses or duplicates a record, and log search.

See the package docstring for what happens to every document."""

from __future__ import annotations

import logging
import os
import random
import threading
from dataclasses import dataclass
from itertools import chain
from typing import Any, Iterator, Sequence

import orjson
from elastic_transport import TransportError
from elasticsearch import ApiError, Elasticsearch, UnsupportedProductError

from farmwatch.clock import Clock, RealClock
from farmwatch.model import Alert, Batch, LogRecord
from farmwatch.store.storefile import StoreError
from farmwatch.store.elastic.client import make_client
from farmwatch.store.elastic.config import ElasticConfig
from farmwatch.store.elastic.documents import Pair, _dumps, alert_pairs, iso, log_pairs, record_from_source, sample_pairs
from farmwatch.store.elastic.search import search_body
from farmwatch.store.elastic.spool import Spool
from farmwatch.store.elastic.templates import component_templates, index_templates

log = logging.getLogger("farmwatch.store.elastic")


RETRY_STATUS = frozenset({429, 500, 502, 503, 504})
"""Statuses (whole request or per item) worth sending again: the cluster is busy or failing over."""


class SpoolFull(StoreError):
    """The cluster is unreachable and the spool has no room: none of the batch was accepted."""

    def __init__(self, message: str, not_accepted: int) -> None:
        super().__init__(message)
        self.not_accepted = not_accepted


@dataclass
class _Unavailable(Exception):
    """The cluster cannot take documents now; ``pending`` are the ones not delivered, in order."""

    pending: list[Pair]
    reason: str


def _pair_id(pair: Pair) -> object:
    return next(iter(orjson.loads(pair[0]).values())).get("_id")


class ElasticStore:
    """A log sink (``write_logs``) and log search (``search``, ``follow``) backed by Elasticsearch.

    Thread-safe: writes hold one lock (the spool must stay in order); searches do not take it.
    """

    def __init__(self, config: ElasticConfig, *, clock: Clock | None = None,
                 client: Elasticsearch | None = None) -> None:
        self.config = config
        self.clock: Clock = clock or RealClock()
        self.client = client or make_client(config)
        self.spool = Spool(config.spool_dir, int(config.spool_max_bytes), int(config.spool_segment_bytes),
                           config.fsync == "always")
        self._lock = threading.Lock()
        self._rng = random.Random()
        self._ready = False
        self._offline_since: float | None = None
        self._next_attempt = 0.0
        self._full_episode = 0
        self.cluster_version: str | None = None
        self.counters: dict[str, int] = dict.fromkeys((
            "indexed", "duplicates", "retried", "retried_requests", "items_missing", "dead_lettered",
            "spooled", "replayed", "dropped", "bulk_requests", "unavailable"), 0)
        self.last_error = ""
        if len(self.spool):
            log.info("elastic: %d documents from a previous run wait in the spool %s; they are sent first",
                     len(self.spool), config.spool_dir)

    # -- public ---------------------------------------------------------------------------

    def write_logs(self, records: Sequence[LogRecord]) -> None:
        """Index ``records`` (or spool them while the cluster is unreachable); see the module doc."""
        if "logs" in self.config.ship:
            self._write(log_pairs(records, self.config.index_prefix, self.config.index_mode))

    def write_samples(self, batches: Sequence[Batch]) -> None:
        """Ship samples when ``ship`` includes ``samples`` (else a no-op)."""
        if "samples" in self.config.ship:
            self._write(sample_pairs(batches, self._index("samples")))

    def write_alerts(self, alerts: Sequence[Alert]) -> None:
        """Ship alert state changes when ``ship`` includes ``alerts`` (else a no-op)."""
        if "alerts" in self.config.ship:
            self._write(alert_pairs(alerts, self._index("alerts"), self.clock.time()))

    def flush(self) -> None:
        """Replay the spool if a replay is due; for a periodic call by the runner when no data comes."""
        self._write([])

    def stats(self) -> dict[str, Any]:
        """Counters for self-metrics: documents indexed, duplicates, retries, dead letters, spool, drops."""
        return {
            **self.counters,
            "spool_docs": len(self.spool),
            "spool_bytes": self.spool.bytes,
            "spool_segments": len(self.spool.segments()),
            "spool_torn": self.spool.torn,
            "online": self._offline_since is None,
            "last_error": self.last_error,
        }

    def search(self, query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
               since: float | None = None, until: float | None = None, limit: int = 100) -> list[LogRecord]:
        """Log records matching ``query`` and the filters, newest first (``host``/``service`` are globs)."""
        body = search_body(query, host=host, service=service, level=level, since=since, until=until, limit=limit)
        return [r for _, r in self._records(self._search(body))]

    def follow(self, query: str, *, host: str | None = None, service: str | None = None, level: str | None = None,
               since: float | None = None, poll: float = 2.0, stop: threading.Event | None = None,
               page: int = 1000) -> Iterator[LogRecord]:
        """New matching records, oldest first, as they arrive (``tail -f`` over the index) until ``stop``.

        Records indexed late with an older ``@timestamp`` than the last one seen are not shown.
        """
        stop = stop or threading.Event()
        last = self.clock.time() if since is None else since
        seen: set[str] = set()
        while not stop.is_set():
            body = search_body(query, host=host, service=service, level=level, since=last, limit=page, order="asc")
            for key, r in self._records(self._search(body)):
                if key in seen:
                    continue
                if r.ts > last:
                    last, seen = r.ts, set()
                seen.add(key)
                yield r
            self.clock.wait(stop, poll)

    def refresh(self) -> None:
        """Make everything indexed so far searchable now (tests, and the CLI after a write)."""
        self.client.indices.refresh(index=f"{self.config.index_prefix}-*", allow_no_indices=True)

    def close(self) -> None:
        self.client.close()

    # -- writing --------------------------------------------------------------------------

    def _index(self, kind: str) -> str:
        return f"{self.config.index_prefix}-{kind}"

    def _write(self, pairs: list[Pair]) -> None:
        with self._lock:
            if len(self.spool) and self.clock.monotonic() >= self._next_attempt:
                self._replay()
            if len(self.spool):
                if pairs:
                    self._to_spool(pairs)
                return
            if not pairs:
                return
            try:
                try:
                    self._connect()
                except _Unavailable as exc:
                    exc.pending = pairs
                    raise
                self._ship(pairs, self.config.retries)
            except _Unavailable as exc:
                self._went_offline(exc.reason)
                self._to_spool(exc.pending)
            else:
                self._back_online()

    def _replay(self) -> None:
        """Send the spool, oldest first; stops at the first sign the cluster is still unavailable."""
        retries = self.config.retries if self._offline_since is None else 0
        deadline = self.clock.monotonic() + self.config.replay_budget
        try:
            self._connect()
            first = True
            for seg in self.spool.segments():
                if not first and self.clock.monotonic() >= deadline:
                    self._back_online()
                    return  # due again at once: the next write or flush goes on with it
                pairs = self.spool.read(seg)
                if first and self._offline_since is not None:
                    log.info("elastic: replaying %d spooled documents", len(self.spool))
                first = False
                try:
                    self._ship(pairs, retries)
                except _Unavailable as exc:
                    self.spool.replace(seg, pairs, exc.pending)
                    self.counters["replayed"] += len(pairs) - len(exc.pending)
                    raise
                self.spool.replace(seg, pairs, [])
                self.counters["replayed"] += len(pairs)
                retries = self.config.retries
        except _Unavailable as exc:
            self._went_offline(exc.reason)
            return
        self._back_online()

    def _to_spool(self, pairs: list[Pair]) -> None:
        size = sum(len(a) + len(s) for a, s in pairs)
        if not self.spool.room(size):
            self.counters["dropped"] += len(pairs)
            self._full_episode += len(pairs)
            msg = (f"elastic: spool {self.config.spool_dir} is full ({self.spool.bytes} of {int(self.config.spool_max_bytes)} "
                   f"bytes) while the cluster is unavailable: {len(pairs)} documents not accepted "
                   f"({self.counters['dropped']} so far)")
            if self._full_episode == len(pairs):
                log.error(msg + "; further refusals are counted in stats()['dropped'] until the spool drains")
            raise SpoolFull(msg, len(pairs))
        if self._full_episode:
            log.warning("elastic: spool accepts documents again; %d were refused while it was full", self._full_episode)
            self._full_episode = 0
        self.spool.append(pairs)
        self.counters["spooled"] += len(pairs)

    def _went_offline(self, reason: str) -> None:
        self.counters["unavailable"] += 1
        self.last_error = reason
        if self._offline_since is None:
            self._offline_since = self.clock.time()
            log.warning("elastic: %s; spooling to %s and retrying every %gs", reason, self.config.spool_dir,
                        self.config.retry_interval)
        self._next_attempt = self.clock.monotonic() + self.config.retry_interval

    def _back_online(self) -> None:
        if self._offline_since is not None:
            log.info("elastic: cluster %s reachable again after %.0fs; spool empty: %s", self._where(),
                     self.clock.time() - self._offline_since, not len(self.spool))
            self._offline_since = None
        self._next_attempt = 0.0

    def _where(self) -> str:
        return ",".join(self.config.hosts)

    def _connect(self) -> None:
        """Check the cluster once (product, version) and install the templates; raises _Unavailable."""
        if self._ready:
            return
        try:
            info = self.client.info()
        except UnsupportedProductError:
            raise _Unavailable([], f"the server at {self._where()} is not Elasticsearch (no X-Elastic-Product header)") from None
        except ApiError as exc:
            if exc.meta.status in (400, 406):
                raise _Unavailable([], f"cluster {self._where()} refused the client's API version "
                                       f"(compatible-with={self.config.compatible_with}): set compatible_with "
                                       "to the cluster's major version") from None
            raise _Unavailable([], f"cluster {self._where()} answered {exc.meta.status} to GET /: {exc.message}") from None
        except TransportError as exc:
            raise _Unavailable([], f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})") from None
        self.cluster_version = str(info.get("version", {}).get("number", "?"))
        major = self.cluster_version.split(".")[0]
        if self.config.compatible_with != "none" and major.isdigit() and int(major) != self.config.compatible_with \
                and info.get("version", {}).get("distribution") != "opensearch":
            log.warning("elastic: cluster %s runs %s but compatible_with = %s: set compatible_with = %s",
                        self._where(), self.cluster_version, self.config.compatible_with, major)
        if self.config.manage_templates:
            self._install_templates()
        self._ready = True

    def _install_templates(self) -> None:
        prefix = self.config.index_prefix
        try:
            for name, body in component_templates(prefix).items():
                self.client.cluster.put_component_template(name=name, body=body)
            for name, body in index_templates(prefix, self.config.index_mode, self.config.template_priority).items():
                self.client.indices.put_index_template(name=name, body=body)
        except ApiError as exc:
            if exc.meta.status in RETRY_STATUS:
                raise _Unavailable([], f"cluster {self._where()} busy installing templates ({exc.meta.status})") from None
            log.error("elastic: cannot install the index templates on %s (%s %s): documents are sent without "
                      "them (set manage_templates = false if an admin manages them)", self._where(), exc.meta.status, exc.message)
        except TransportError as exc:
            raise _Unavailable([], f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})") from None

    def _chunks(self, pairs: list[Pair]) -> Iterator[list[Pair]]:
        limit_docs, limit_bytes = self.config.bulk_docs, int(self.config.bulk_bytes)
        chunk: list[Pair] = []
        size = 0
        for p in pairs:
            n = len(p[0]) + len(p[1])
            if chunk and (len(chunk) >= limit_docs or size + n > limit_bytes):
                yield chunk
                chunk, size = [], 0
            chunk.append(p)
            size += n
        if chunk:
            yield chunk

    def _ship(self, pairs: list[Pair], retries: int) -> None:
        chunks = list(self._chunks(pairs))
        for i, chunk in enumerate(chunks):
            try:
                self._ship_chunk(chunk, retries)
            except _Unavailable as exc:
                exc.pending = exc.pending + [p for c in chunks[i + 1:] for p in c]
                raise

    def _delay(self, attempt: int, at_least: float = 0.0) -> float:
        d = min(self.config.backoff_max, self.config.backoff * 2 ** (attempt - 1))
        return max(at_least, d / 2 + self._rng.uniform(0, d / 2))

    def _ship_chunk(self, todo: list[Pair], retries: int) -> None:
        """Deliver one chunk: retry what failed transiently, dead-letter what failed for good."""
        attempt = 0
        while True:
            self.counters["bulk_requests"] += 1
            wait_at_least = 0.0
            try:
                resp = self.client.bulk(operations=b"".join(chain.from_iterable(todo)))
            except ApiError as exc:
                status = exc.meta.status
                if status in (400, 413):  # too large, or one document breaks the request: halve until found
                    if len(todo) > 1:
                        self._ship_halves(todo, retries)
                    else:
                        self._dead_letter([(todo[0], status, {"type": "request_rejected", "reason": str(exc.message)})])
                    return
                if status not in RETRY_STATUS:
                    raise _Unavailable(todo, f"cluster {self._where()} refused the bulk request ({status} {exc.message})") from None
                failed, reason = todo, f"bulk request answered {status}"
                retry_after = exc.meta.headers.get("retry-after") if exc.meta.headers else None
                if retry_after and retry_after.isdigit():
                    wait_at_least = min(float(retry_after), self.config.backoff_max)
            except TransportError as exc:
                failed, reason = todo, f"cluster {self._where()} unreachable ({type(exc).__name__}: {exc.message})"
            else:
                failed, reason = self._items(todo, resp.body)
            if not failed:
                return
            attempt += 1
            if attempt > retries:
                raise _Unavailable(failed, reason)
            self.counters["retried"] += len(failed)
            self.counters["retried_requests"] += 1
            self.clock.sleep(self._delay(attempt, wait_at_least))
            todo = failed

    def _ship_halves(self, todo: list[Pair], retries: int) -> None:
        half = len(todo) // 2
        try:
            self._ship_chunk(todo[:half], retries)
        except _Unavailable as exc:
            exc.pending = exc.pending + todo[half:]
            raise
        self._ship_chunk(todo[half:], retries)

    def _items(self, todo: list[Pair], body: Any) -> tuple[list[Pair], str]:
        """Sort a bulk response's items into done / retry / dead letter; missing items are retried."""
        items = body.get("items") if isinstance(body, dict) else None
        if not isinstance(items, list):
            return todo, "bulk response without items"
        failed: list[Pair] = []
        dead: list[tuple[Pair, int, Any]] = []
        reason = ""
        for pair, item in zip(todo, items):
            result = next(iter(item.values()), None) if isinstance(item, dict) and item else None
            status = result.get("status") if isinstance(result, dict) else None
            if not isinstance(status, int):
                failed.append(pair)
                reason = "bulk response item without status"
            elif "_id" in result and result["_id"] != _pair_id(pair):
                failed.append(pair)  # the item is about another document: this one's fate is unknown
                reason = "bulk response items do not match the documents sent"
            elif 200 <= status < 300:
                self.counters["indexed"] += 1
            elif status == 409:
                self.counters["duplicates"] += 1
            elif status in RETRY_STATUS:
                failed.append(pair)
                reason = f"documents answered {status}"
            else:
                dead.append((pair, status, result.get("error")))
        if len(items) < len(todo):
            missing = todo[len(items):]
            self.counters["items_missing"] += len(missing)
            log.warning("elastic: bulk response has %d items for %d documents; re-sending the %d missing",
                        len(items), len(todo), len(missing))
            failed.extend(missing)
            reason = "bulk response with missing items"
        if dead:
            self._dead_letter(dead)
        return failed, reason

    def _dead_letter(self, dead: list[tuple[Pair, int, Any]]) -> None:
        path = self.config.dead_letter
        path.parent.mkdir(parents=True, exist_ok=True)
        now = iso(self.clock.time())
        with open(path, "ab") as f:
            for (action, source), status, error in dead:
                meta = next(iter(orjson.loads(action).values()))
                f.write(_dumps({"@timestamp": now, "index": meta.get("_index"), "id": meta.get("_id"),
                                "status": status, "error": error, "document": orjson.loads(source)}) + b"\n")
            f.flush()
            os.fsync(f.fileno())
        self.counters["dead_lettered"] += len(dead)
        first = dead[0][2]
        why = f"{first.get('type')}: {first.get('reason')}" if isinstance(first, dict) else str(first)
        log.error("elastic: %d documents rejected by the cluster (%s %s), written to %s (%d dead letters so far)",
                  len(dead), dead[0][1], why[:300], path, self.counters["dead_lettered"])

    # -- reading --------------------------------------------------------------------------

    def _records(self, hits: list[dict[str, Any]]) -> list[tuple[str, LogRecord]]:
        """(``_id``, record) of each hit; documents that are not log records (no ``@timestamp``,
        written by something else into the same indices) are skipped with one line per search."""
        out, skipped = [], 0
        for h in hits:
            try:
                r = record_from_source(h["_source"])
            except (KeyError, TypeError, ValueError):
                skipped += 1
                continue
            out.append((str(h.get("_id") or r.doc_id()), r))
        if skipped:
            log.warning("elastic: %d of %d search hits in %s-logs* are not farmwatch log records (no valid "
                        "@timestamp); skipped", skipped, len(hits), self.config.index_prefix)
        return out

    def _search(self, body: dict[str, Any]) -> list[dict[str, Any]]:
        try:
            resp = self.client.search(index=f"{self.config.index_prefix}-logs*", allow_no_indices=True,
                                      ignore_unavailable=True, **body)
        except ApiError as exc:
            raise StoreError(f"elastic: search on {self._where()} failed: {exc.meta.status} {exc.message}") from None
        except TransportError as exc:
            raise StoreError(f"elastic: search: cluster {self._where()} unreachable ({type(exc).__name__})") from None
        return list(resp.body.get("hits", {}).get("hits", []))


__all__ = ["RETRY_STATUS", "ElasticStore", "SpoolFull"]
