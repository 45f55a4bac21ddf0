"""Runs configured sources and writes what they produce into the store.

One thread per source (a slow target costs only its own source's cycle), one writer thread
draining a bounded queue into the store in one transaction per drain. When the store falls behind
and the queue is full, whole cycles are dropped, counted in ``farmwatch.dropped_samples`` and
logged once per episode: never silently. SIGTERM sets ``stop``; the sources finish their cycle and
the writer flushes everything queued before the store is closed.

Log records travel as ``LogBatch`` objects among a source's poll results. The writer hands them
to every extra log sink (Elasticsearch), then to the embedded log store together with the
source's offsets in one transaction, and only then acknowledges them (``LogBatch.ack``) so the
source moves its offsets on. A batch a sink refuses, or one that finds the queue full, is not
lost: it is refused (``LogBatch.nack``), counted in ``farmwatch.refused_log_batches``, and the
source reads the same lines again; the records' stable ids keep the stores free of duplicates.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Callable, Iterable, Protocol, Sequence

from farmwatch.clock import Clock, RealClock
from farmwatch.model import Batch, labels
from farmwatch.sources.base import LogBatch, Source
from farmwatch.store.logs import LogSink, LogStore

log = logging.getLogger(__name__)

Listener = Callable[[str, list[Batch]], None]
"""Called on the source's thread after each cycle (live views, detection); must be quick."""


class Runner:
    def __init__(
        self,
        sources: Iterable[Source],
        store: "SampleWriter",
        *,
        clock: Clock | None = None,
        queue_cycles: int = 64,
        retention_every: float = 600.0,
        listeners: Iterable[Listener] = (),
        write_attempts: int = 5,
        backoff: float = 0.1,
        log_sinks: Iterable[LogSink] = (),
        sample_sinks: Iterable["SampleSink"] = (),
        instance: str = "",
        once: bool = False,
    ) -> None:
        self.sources = list(sources)
        self.once = once
        """One cycle for cron (``collect --once``): the sources are told, so that no log line
        promises a later cycle of this process."""
        self.instance = labels(instance=instance) if instance else ()
        """Labels of this process's own series (``farmwatch.written_samples{instance}``, …): processes
        sharing a store must not write into each other's (``selfmetrics.instance``)."""
        self.store = store
        self.clock = clock or RealClock()
        self.listeners = list(listeners)
        self.retention_every = retention_every
        self._queue: queue.Queue[tuple[str, list[Batch], list[LogBatch]] | None] = queue.Queue(maxsize=queue_cycles)
        self.sample_sinks = list(sample_sinks)
        """Where samples go besides the store, queued in the store's transaction (remote write)."""
        self.log_sinks = list(log_sinks)
        """Where log records go besides the embedded store (which is always written, last)."""
        self.logs = LogStore(store) if hasattr(store, "transaction") else None  # type: ignore[arg-type]
        self.written_logs = 0
        self.refused_log_batches = 0
        self.written = 0
        self.dropped = 0
        self.overruns = {s.name: 0 for s in self.sources}
        self.write_attempts = write_attempts
        self.backoff = backoff
        self._dropping = False
        self._write_failures = 0
        self._by_name = {s.name: s for s in self.sources}
        for s in self.sources:
            s.bind_store(store)
            s.once = once

    # -- public --------------------------------------------------------------------------------
    @property
    def queue_depth(self) -> int:
        """Source cycles waiting for the store writer (``run`` mode; a full queue drops cycles)."""
        return self._queue.qsize()

    def run(self, stop: threading.Event) -> None:
        """Until ``stop`` is set: poll every source each interval, write everything."""
        threads = [threading.Thread(target=self._source_loop, args=(s, stop), name=f"source-{s.name}", daemon=True) for s in self.sources]
        writer = threading.Thread(target=self._writer_loop, name="store-writer", daemon=True)
        writer.start()
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        self._queue.put(None)  # after the last cycle of every source: flush and stop
        writer.join()

    def run_once(self) -> int:
        """One cycle of every source, written synchronously (cron, ``--once``). Returns samples written."""
        total = 0
        for s in self.sources:
            batches, logs = self._cycle(s)
            total += self._store_write(batches)
            s.written(batches)
            self._write_logs(logs)
        self.written += total
        self._maintain()
        return total

    # -- internals -----------------------------------------------------------------------------
    def _cycle(self, source: Source) -> tuple[list[Batch], list[LogBatch]]:
        started = time.monotonic()
        try:
            polled = source.poll()
        except Exception:  # a bug in one source must not take the others down
            log.exception("source %s: poll failed", source.name)
            polled = []
        batches = [b for b in polled if not isinstance(b, LogBatch)]
        logs = [b for b in polled if isinstance(b, LogBatch)]
        took = time.monotonic() - started
        n = sum(len(b) for b in batches)
        meta = Batch(self.clock.time())
        lb = labels(source=source.name, **dict(self.instance))
        meta.add(("farmwatch.source.cycle_duration", lb), took)
        meta.add(("farmwatch.source.samples", lb), float(n))
        meta.add(("farmwatch.source.overruns", lb), float(self.overruns[source.name]))
        # In every cycle's batches (not only the writer's), so that the alert window, fed by the
        # listeners, sees drops too: that is when the store is failing.
        meta.add(("farmwatch.dropped_samples", self.instance), float(self.dropped))
        batches.append(meta)
        for listener in self.listeners:
            try:
                listener(source.name, batches)
            except Exception:
                log.exception("listener failed for source %s", source.name)
        return batches, logs

    def _source_loop(self, source: Source, stop: threading.Event) -> None:
        interval = source.interval
        while not stop.is_set():
            started = self.clock.monotonic()
            batches, logs = self._cycle(source)
            self._enqueue(source.name, batches, logs)
            if self.clock.monotonic() - started > interval:
                self.overruns[source.name] += 1  # the missed slots are skipped, not caught up
            now = self.clock.time()
            # aligned to interval boundaries, so series of different sources line up in time
            nxt = (math.floor(now / interval) + 1) * interval
            if self.clock.wait(stop, nxt - now):
                break

    def _enqueue(self, name: str, batches: list[Batch], logs: Sequence[LogBatch] = ()) -> None:
        try:
            self._queue.put_nowait((name, batches, list(logs)))
            if self._dropping:
                log.warning("store writer caught up; no longer dropping (dropped %d samples in all)", self.dropped)
                self._dropping = False
        except queue.Full:
            self.dropped += sum(len(b) for b in batches)
            self._refuse(logs, "the store writer is behind")
            if not self._dropping:
                log.error("store writer is behind and the queue is full: dropping cycles of %s (counted in farmwatch.dropped_samples)", name)
                self._dropping = True

    def _writer_loop(self) -> None:
        last_retention = -math.inf
        done = False
        while not done:
            item = self._queue.get()
            pending = []
            if item is None:
                done = True
            else:
                pending.append(item)
            while True:  # coalesce whatever else is queued into the same transaction
                try:
                    more = self._queue.get_nowait()
                except queue.Empty:
                    break
                if more is None:
                    done = True
                else:
                    pending.append(more)
            batches = [b for _, bs, _ in pending for b in bs]
            stats = Batch(self.clock.time())
            stats.add(("farmwatch.written_samples", self.instance), float(self.written))
            stats.add(("farmwatch.queue_depth", self.instance), float(self._queue.qsize()))
            stats.add(("farmwatch.written_logs", self.instance), float(self.written_logs))
            stats.add(("farmwatch.refused_log_batches", self.instance), float(self.refused_log_batches))
            batches.append(stats)
            if self._write(batches):
                for name, bs, _ in pending:
                    self._acknowledge(name, bs)
            self._write_logs([lb for _, _, lbs in pending for lb in lbs])
            now = self.clock.monotonic()
            if now - last_retention >= self.retention_every:
                last_retention = now
                self._maintain()

    def _maintain(self) -> None:
        """Compact finished hours into chunks and rollups (when the store does that), then retention."""
        try:
            compact = getattr(self.store, "compact", None)
            if compact is not None:
                compact()
            self.store.apply_retention()
            if self.logs is not None:
                self.logs.apply_retention()
        except Exception as exc:
            log.error("store maintenance (compaction, retention) failed: %s", exc)

    def _acknowledge(self, name: str, batches: list[Batch]) -> None:
        """Tell a source its cycle is stored (it may advance persistent cursors now)."""
        try:
            self._by_name[name].written(batches)
        except Exception:
            log.exception("source %s: acknowledging a stored cycle failed", name)

    def _write(self, batches: list[Batch]) -> bool:
        """Write, retrying a failing store a few times before counting the data as dropped."""
        for attempt in range(self.write_attempts):
            try:
                self.written += self._store_write(batches)
                if self._write_failures:
                    log.warning("store writes succeed again")
                self._write_failures = 0
                return True
            except Exception as exc:
                self._write_failures += 1
                log.error("store write failed (attempt %d/%d): %s", attempt + 1, self.write_attempts, exc)
                time.sleep(min(2.0, self.backoff * 2**attempt))
        lost = sum(len(b) for b in batches)
        self.dropped += lost
        log.error("gave up writing %d samples to the store (counted in farmwatch.dropped_samples)", lost)
        return False

    def _store_write(self, batches: list[Batch]) -> int:
        if not self.sample_sinks:
            return self.store.write(batches)
        return self.store.write(batches, also=[sink.stage(batches) for sink in self.sample_sinks])  # type: ignore[call-arg]

    def _write_logs(self, batches: list[LogBatch]) -> None:
        """Every sink, then the embedded store with the offsets; then the source may move on."""
        for batch in batches:
            if not self._write_log_batch(batch):
                self._refuse([batch], "a log sink refused them")
                continue
            self.written_logs += len(batch.records)
            try:
                batch.ack()
            except Exception:
                log.exception("source %s: acknowledging stored log records failed", batch.source)

    def _write_log_batch(self, batch: LogBatch) -> bool:
        """True when every sink accepted the batch. Extra sinks (Elasticsearch) retry and spool on
        their own, so they get one call; the embedded store (a busy lock) gets ``write_attempts``."""
        sinks: list = [*self.log_sinks, self.logs] if self.logs is not None else list(self.log_sinks)
        for sink in sinks:
            for attempt in range(self.write_attempts if sink is self.logs else 1):
                try:
                    if sink is self.logs:
                        sink.write_logs(batch.records, cursors=batch)
                    elif batch.records:
                        sink.write_logs(batch.records)
                    break
                except Exception as exc:
                    log.error("writing %d log records of source %s to %s failed (attempt %d): %s", len(batch.records),
                              batch.source, type(sink).__name__, attempt + 1, exc)
                    if sink is self.logs:
                        time.sleep(min(2.0, self.backoff * 2**attempt))
            else:
                return False
        return True

    def _refuse(self, batches: Sequence[LogBatch], why: str) -> None:
        for batch in batches:
            self.refused_log_batches += 1
            log.warning("log records of source %s not stored now (%s): they are read again %s "
                        "(counted in farmwatch.refused_log_batches)", batch.source, why,
                        "by the next run" if self.once else "next cycle")
            try:
                batch.nack()
            except Exception:
                log.exception("source %s: refusing log records failed", batch.source)


class SampleSink(Protocol):
    """Samples sent on besides the store: ``stage`` encodes them and returns what queues them inside
    the store's write transaction (``farmwatch.store.remote.RemoteWriter``)."""

    def stage(self, batches: list[Batch]) -> Callable[..., None]: ...


class SampleWriter(Protocol):
    """What the runner needs of a store."""

    def write(self, items: list[Batch]) -> int: ...

    def apply_retention(self) -> int: ...


__all__ = ["Listener", "Runner", "SampleSink", "SampleWriter"]
