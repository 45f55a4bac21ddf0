"""Runs configured sources and writes what they produce into the store.

One thread per source (a slow target costs only its own source's cycle), one writer thread
draining a bounded queue into the store in one transaction per drain. When the store falls behind
and the queue is full, whole cycles are dropped, counted in ``farmwatch.dropped_samples`` and
logged once per episode: never silently. SIGTERM sets ``stop``; the sources finish their cycle and
the writer flushes everything queued before the store is closed.
"""

from __future__ import annotations

import logging
import math
import queue
import threading
import time
from typing import Callable, Iterable, Protocol

from farmwatch.clock import Clock, RealClock
from farmwatch.model import Batch, labels
from farmwatch.sources.base import Source

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
        retention_every: float = 3600.0,
        listeners: Iterable[Listener] = (),
        write_attempts: int = 5,
        backoff: float = 0.1,
    ) -> None:
        self.sources = list(sources)
        self.store = store
        self.clock = clock or RealClock()
        self.listeners = list(listeners)
        self.retention_every = retention_every
        self._queue: queue.Queue[tuple[str, list[Batch]] | None] = queue.Queue(maxsize=queue_cycles)
        self.written = 0
        self.dropped = 0
        self.overruns = {s.name: 0 for s in self.sources}
        self.write_attempts = write_attempts
        self.backoff = backoff
        self._dropping = False
        self._write_failures = 0

    # -- public --------------------------------------------------------------------------------
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
            batches = self._cycle(s)
            total += self.store.write(batches)
        self.written += total
        return total

    # -- internals -----------------------------------------------------------------------------
    def _cycle(self, source: Source) -> list[Batch]:
        started = time.monotonic()
        try:
            batches = source.poll()
        except Exception:  # a bug in one source must not take the others down
            log.exception("source %s: poll failed", source.name)
            batches = []
        took = time.monotonic() - started
        n = sum(len(b) for b in batches)
        meta = Batch(self.clock.time())
        lb = labels(source=source.name)
        meta.add(("farmwatch.source.cycle_duration", lb), took)
        meta.add(("farmwatch.source.samples", lb), float(n))
        meta.add(("farmwatch.source.overruns", lb), float(self.overruns[source.name]))
        batches.append(meta)
        for listener in self.listeners:
            try:
                listener(source.name, batches)
            except Exception:
                log.exception("listener failed for source %s", source.name)
        return batches

    def _source_loop(self, source: Source, stop: threading.Event) -> None:
        interval = source.interval
        while not stop.is_set():
            started = self.clock.monotonic()
            batches = self._cycle(source)
            self._enqueue(source.name, batches)
            if self.clock.monotonic() - started > interval:
                self.overruns[source.name] += 1  # the missed slots are skipped, not caught up
            now = self.clock.time()
            # aligned to interval boundaries, so series of different sources line up in time
            nxt = (math.floor(now / interval) + 1) * interval
            if self.clock.wait(stop, nxt - now):
                break

    def _enqueue(self, name: str, batches: list[Batch]) -> None:
        try:
            self._queue.put_nowait((name, batches))
            if self._dropping:
                log.warning("store writer caught up; no longer dropping (dropped %d samples in all)", self.dropped)
                self._dropping = False
        except queue.Full:
            self.dropped += sum(len(b) for b in batches)
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
            batches = [b for _, bs in pending for b in bs]
            stats = Batch(self.clock.time())
            stats.add(("farmwatch.written_samples", ()), float(self.written))
            stats.add(("farmwatch.dropped_samples", ()), float(self.dropped))
            stats.add(("farmwatch.queue_depth", ()), float(self._queue.qsize()))
            batches.append(stats)
            self._write(batches)
            now = self.clock.monotonic()
            if now - last_retention >= self.retention_every:
                last_retention = now
                try:
                    self.store.apply_retention()
                except Exception as exc:
                    log.error("store retention failed: %s", exc)

    def _write(self, batches: list[Batch]) -> None:
        """Write, retrying a failing store a few times before counting the data as dropped."""
        for attempt in range(self.write_attempts):
            try:
                self.written += self.store.write(batches)
                if self._write_failures:
                    log.warning("store writes succeed again")
                self._write_failures = 0
                return
            except Exception as exc:
                self._write_failures += 1
                log.error("store write failed (attempt %d/%d): %s", attempt + 1, self.write_attempts, exc)
                time.sleep(min(2.0, self.backoff * 2**attempt))
        lost = sum(len(b) for b in batches)
        self.dropped += lost
        log.error("gave up writing %d samples to the store (counted in farmwatch.dropped_samples)", lost)


class SampleWriter(Protocol):
    """What the runner needs of a store."""

    def write(self, items: list[Batch]) -> int: ...

    def apply_retention(self) -> int: ...
