"""The remote-write sink: samples → a queue in the store file → POSTs to the receiver, in order.

The queue is the table ``remote_queue`` of the SQLite store, and a cycle's requests are queued in
the same transaction that stores its samples (``SQLiteStore.write(..., also=[…])``): what is in
the store is queued, exactly, however the process ends (kill -9, a full disk rolls both back). A
sender thread POSTs the oldest request of this service's queue and deletes it only when the
receiver accepted it (2xx), so an outage or a restart only delays; 429, 5xx and no answer are
retried with backoff (``Retry-After`` honoured); a request the receiver refuses for good (other
4xx, e.g. out-of-order samples) is counted and logged, then skipped. A crash between an accepted
POST and its deletion sends that one request again: Prometheus ignores a repeated identical
sample, VictoriaMetrics needs ``-dedup.minScrapeInterval`` (docs/remote-write.md). The queue is
bounded (``queue_max_bytes``): beyond it samples are stored locally but not queued, counted in
``dropped_samples`` and logged once per episode.
"""

from __future__ import annotations

import logging
import math
import socket
import sqlite3
import threading
import time
from pathlib import Path
from typing import Any, Callable, Iterable, Sequence

import numpy as np
import requests

from farmwatch.model import Batch, SeriesKey
from farmwatch.credentials import SecretError
from farmwatch.store.remote import wire
from farmwatch.store.remote.naming import prometheus_labels
from farmwatch.store.remote.settings import RemoteWriteSettings

__all__ = ["RemoteWriter", "owner", "writers"]

log = logging.getLogger(__name__)
Record = tuple[int, bytes]
"""(samples, snappy body) of one request."""


class RemoteWriter:
    """One service's remote-write queue and sender over a store (``SQLiteStore``)."""

    def __init__(self, settings: RemoteWriteSettings, store: Any, owner: str) -> None:
        self.settings = settings
        self.store = store
        self.owner = owner
        self.session = requests.Session()
        self.session.verify = str(settings.ca_file) if settings.ca_file else settings.verify
        self._prefixes: dict[int, dict[tuple[SeriesKey, str | None], bytes]] = {}
        """Per length of the ts varint: series (and state) → its TimeSeries prefix, b"" when not sent."""
        self._stop = threading.Event()
        self._wake = threading.Event()
        self._thread: threading.Thread | None = None
        self._dropping = False
        self._failing: str | None = None
        self.counters = {"queued_samples": 0, "sent_samples": 0, "sent_requests": 0, "retries": 0,
                         "rejected_samples": 0, "rejected_requests": 0, "dropped_samples": 0}
        self.last_error = ""
        with store.transaction("read the remote-write queue") as conn:
            self._queued_bytes = conn.execute("SELECT total(length(body)) FROM remote_queue WHERE owner = ?",
                                              (owner,)).fetchone()[0]

    # -- the writer's side ------------------------------------------------------------------------
    def stage(self, batches: Sequence[Batch]) -> Callable[[sqlite3.Connection], None]:
        """Encode ``batches`` now (outside the store's write lock); the callable queues them inside
        the store's write transaction."""
        records = self.encode(batches)

        def queue(conn: sqlite3.Connection) -> None:
            size = sum(len(body) for _, body in records)
            if self._queued_bytes + size > self.settings.queue_max_bytes:
                samples = sum(n for n, _ in records)
                self.counters["dropped_samples"] += samples
                if not self._dropping:
                    log.error("remote write to %s: the queue is full (%d bytes, queue_max_bytes); %d samples not "
                              "sent (counted in farmwatch_remote_write_dropped_samples) until it drains",
                              self.settings.url, self._queued_bytes, samples)
                    self._dropping = True
                return
            if self._dropping:
                log.warning("remote write to %s: the queue has room again", self.settings.url)
                self._dropping = False
            now = time.time()
            conn.executemany("INSERT INTO remote_queue(owner, samples, created, body) VALUES (?, ?, ?, ?)",
                             [(self.owner, n, now, body) for n, body in records])
            self._queued_bytes += size
            self.counters["queued_samples"] += sum(n for n, _ in records)
            self._wake.set()

        return queue

    def encode(self, batches: Iterable[Batch]) -> list[Record]:
        """The requests for ``batches``: one TimeSeries per series and batch (a series' samples in
        time order: batches are taken by time), series named and relabelled once and cached, at
        most ``max_samples_per_request`` samples per request."""
        limit = self.settings.max_samples_per_request
        records: list[Record] = []
        pending: list[bytes] = []
        count = 0
        for batch in sorted(batches, key=lambda b: b.ts):
            ts = round(batch.ts * 1000)
            prefixes, values = self._series(batch.keys, batch.values, ts)
            start = 0
            while start < len(prefixes):
                take = min(limit - count, len(prefixes) - start)
                pending.append(wire.one_sample_each(prefixes[start:start + take], values[start:start + take], ts))
                count += take
                start += take
                if count >= limit:
                    records.append((count, wire.snappy(b"".join(pending))))
                    pending, count = [], 0
        if pending:
            records.append((count, wire.snappy(b"".join(pending))))
        return records

    def _series(self, keys: Sequence[SeriesKey], values: Sequence[Any], ts: int) -> tuple[list[bytes], np.ndarray]:
        """The cached series prefixes (``wire.series_prefix``) and the values of a batch's samples
        that are sent (states as 1 with their state label; relabelled-away series left out)."""
        cfg = self.settings
        try:
            numbers = np.asarray(values, dtype=np.float64)
            pairs = [(key, None) for key in keys] if numbers.ndim == 1 else None
        except (TypeError, ValueError):
            pairs = None
        if pairs is None:  # strings (states) among them: value by value
            pairs, floats = [], []
            for key, value in zip(keys, values):
                if isinstance(value, str):
                    if cfg.states:
                        pairs.append((key, value))
                        floats.append(1.0)
                else:
                    pairs.append((key, None))
                    floats.append(math.nan if value is None else float(value))
            numbers = np.array(floats, dtype=np.float64)
        width = len(wire.series_prefix(b"", ts))
        cache = self._prefixes.setdefault(width, {})
        prefixes: list[bytes] = []
        keep = np.ones(len(pairs), dtype=bool)
        for i, pair in enumerate(pairs):
            prefix = cache.get(pair)
            if prefix is None:
                labels = prometheus_labels(pair[0][0], pair[0][1], prefix=cfg.prefix, external=cfg.external_labels,
                                           rules=cfg.relabel, state=pair[1])
                prefix = cache[pair] = b"" if labels is None else wire.series_prefix(wire.encode_labels(labels), ts)
            if prefix:
                prefixes.append(prefix)
            else:
                keep[i] = False
        return prefixes, numbers if keep.all() else numbers[keep]

    # -- the sender -------------------------------------------------------------------------------
    def start(self) -> None:
        if self._thread is None:
            self._thread = threading.Thread(target=self._run, name="remote-write", daemon=True)
            self._thread.start()

    def close(self, timeout: float = 5.0) -> None:
        """Stop sending; what is queued stays queued for the next start."""
        self._stop.set()
        self._wake.set()
        if self._thread is not None:
            self._thread.join(timeout)
        self.session.close()

    def finish(self) -> None:
        """A service ends: send what is queued (for up to the request timeout), then stop; the rest
        waits in the store for the next start."""
        if not self.drain(self.settings.timeout):
            requests_left, samples = self.pending()
            log.warning("remote write: %d samples (%d requests) still queued; they are sent at the next start",
                        samples, requests_left)
        self.close()

    def drain(self, timeout: float) -> bool:
        """Wait up to ``timeout`` seconds for the queue to empty (a service stopping, a cron run);
        True when it did. What is left is sent by the next start."""
        deadline = time.monotonic() + timeout
        self._wake.set()
        while self.pending()[0]:
            if time.monotonic() >= deadline or self._thread is None or not self._thread.is_alive():
                return False
            time.sleep(0.05)
        return True

    def pending(self) -> tuple[int, int]:
        """(requests, samples) still queued for this service."""
        with self.store.transaction("read the remote-write queue") as conn:
            n, samples = conn.execute("SELECT count(*), total(samples) FROM remote_queue WHERE owner = ?",
                                      (self.owner,)).fetchone()
        return int(n), int(samples)

    def stats(self) -> dict[str, Any]:
        requests_queued, samples_queued = self.pending()
        return {**self.counters, "queue_requests": requests_queued, "queue_samples": samples_queued,
                "queue_bytes": int(self._queued_bytes), "online": self._failing is None,
                "last_error": self.last_error}

    def _run(self) -> None:
        delay = self.settings.backoff
        while not self._stop.is_set():
            try:
                row = self._oldest()
            except Exception as exc:  # the store is busy or failing: try again shortly
                log.error("remote write: reading the queue failed: %s", exc)
                self._stop.wait(1.0)
                continue
            if row is None:
                self._wake.wait(1.0)
                self._wake.clear()
                continue
            rid, samples, body = row
            outcome, wait = self._post(body)
            if outcome == "retry":
                self.counters["retries"] += 1
                self._stop.wait(max(wait, delay))
                delay = min(self.settings.backoff_max, delay * 2)
                continue
            delay = self.settings.backoff
            if outcome == "sent":
                self.counters["sent_samples"] += samples
                self.counters["sent_requests"] += 1
            else:
                self.counters["rejected_samples"] += samples
                self.counters["rejected_requests"] += 1
            try:
                with self.store.transaction("remote write: dequeue", write=True) as conn:
                    conn.execute("DELETE FROM remote_queue WHERE id = ?", (rid,))
                self._queued_bytes -= len(body)
            except Exception as exc:
                log.error("remote write: removing a sent request from the queue failed (it will be sent again): %s", exc)
                self._stop.wait(1.0)

    def _oldest(self) -> tuple[int, int, bytes] | None:
        with self.store.transaction("read the remote-write queue") as conn:
            return conn.execute("SELECT id, samples, body FROM remote_queue WHERE owner = ? ORDER BY id LIMIT 1",
                                (self.owner,)).fetchone()

    def _post(self, body: bytes) -> tuple[str, float]:
        """("sent" | "retry" | "rejected", seconds to wait before a retry)."""
        cfg = self.settings
        try:
            extra, auth = cfg.credentials()
            headers = {"Content-Encoding": "snappy", "Content-Type": "application/x-protobuf",
                       "X-Prometheus-Remote-Write-Version": "0.1.0", "User-Agent": "farmwatch", **extra}
            response = self.session.post(cfg.url, data=body, headers=headers, auth=auth, timeout=cfg.timeout)
        except SecretError as exc:
            return self._failed(str(exc), 0.0)
        except requests.RequestException as exc:
            return self._failed(f"no answer ({type(exc).__name__})", 0.0)
        code = response.status_code
        if 200 <= code < 300:
            if self._failing is not None:
                log.warning("remote write to %s works again", cfg.url)
                self._failing = None
            return "sent", 0.0
        detail = " ".join(response.text.split())[:300]
        if code == 429 or code >= 500:
            return self._failed(f"HTTP {code}: {detail}", _retry_after(response.headers.get("Retry-After")))
        self.last_error = f"HTTP {code}: {detail}"
        log.error("remote write to %s: request refused for good (%s); its samples are counted in "
                  "farmwatch_remote_write_rejected_samples", cfg.url, self.last_error)
        return "rejected", 0.0

    def _failed(self, why: str, wait: float) -> tuple[str, float]:
        self.last_error = why
        if self._failing != why.split(":")[0]:
            log.error("remote write to %s failed: %s; retrying with backoff, samples stay queued", self.settings.url, why)
            self._failing = why.split(":")[0]
        return "retry", wait


def _retry_after(value: str | None) -> float:
    try:
        return min(300.0, max(0.0, float(value))) if value else 0.0
    except ValueError:
        return 0.0


def owner(config: Path | None, sources: Sequence[str]) -> str:
    """The default queue name of a service: its config file and sources, and the host."""
    name = config.stem if config is not None else "farmwatch"
    return f"{name}[{','.join(sorted(sources))}]@{socket.gethostname()}"


def writers(settings: Any, store: Any, sources: Sequence[str]) -> list[RemoteWriter]:
    """The remote writers a service's config asks for (none without ``[remote_write]``), started."""
    cfg: RemoteWriteSettings | None = getattr(settings, "remote_write", None)
    if cfg is None:
        return []
    writer = RemoteWriter(cfg, store, cfg.queue or owner(settings.file, sources))
    writer.start()
    return [writer]
