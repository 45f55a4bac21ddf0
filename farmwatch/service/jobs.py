"""The three services as ``lifecycle.Job``s: what one generation of each does.

- ``CollectJob`` (``farmwatch collect``): the sources into the store.
- ``RunJob`` (``farmwatch run``): the sources into the store, the alert window fed straight from
  the runner, rules evaluated and notifications delivered in the same process.
- ``WatchJob`` (``farmwatch watch``): rules and delivery reading the store that separate
  collectors write (split deployments).

The jobs that store samples also send them on with ``[remote_write]`` (``RemoteSinks``).
"""

from __future__ import annotations

import logging
import threading
import time
from typing import TYPE_CHECKING, Sequence

from farmwatch.alerting.startup import FRESH_SAMPLES
from farmwatch.config.loader import Settings
from farmwatch.service.assemble import Alerting, build_alerting, build_sources, log_sinks
from farmwatch.service.lifecycle import Beat
from farmwatch.service.runner import Listener, Runner
from farmwatch.service.selfmetrics import SelfMetrics, instance
from farmwatch.sources.base import Source
from farmwatch.store.logs import LogSink
from farmwatch.store.sqlite import SQLiteStore

if TYPE_CHECKING:
    from farmwatch.store.remote.writer import RemoteWriter

log = logging.getLogger("farmwatch")

WATCH_LAG = 2.0
"""``watch`` reads the store up to this long ago: collectors commit a cycle's batches shortly
after its timestamp, and a cycle must never be half read (the window continues from there)."""


def _sources_stale_after(sources: Sequence[Source]) -> float:
    return 3 * max((s.interval for s in sources), default=1.0) + 30


class RemoteSinks:
    """The ``[remote_write]`` writers of one generation: started on the store its first ``run`` is
    given (their queue is in that store), stopped when the generation is replaced (what is queued
    waits in the store for the next one) and drained, within the request timeout, when the
    service stops."""

    def __init__(self, settings: Settings, sources: Sequence[Source]) -> None:
        self.settings, self.names = settings, [s.name for s in sources]
        self.writers: list[RemoteWriter] | None = None

    def start(self, store: SQLiteStore) -> list[RemoteWriter]:
        if self.writers is None:
            from farmwatch.store.remote.writer import writers

            self.writers = writers(self.settings, store, self.names)
        return self.writers

    def close(self, final: bool) -> None:
        for writer in self.writers or ():
            if final:
                writer.finish()
            else:
                writer.close()
        self.writers = None


def _runner(sources: Sequence[Source], store: SQLiteStore, sinks: Sequence[LogSink], beat: Beat,
            metrics: SelfMetrics | None, instance: str, first: Sequence[Listener] = (),
            remote: Sequence[RemoteWriter] = ()) -> Runner:
    """The sources → store runner of a generation, with the watchdog and self-metrics listening."""
    runner = Runner(sources, store, listeners=[*first, beat] + ([metrics.listener] if metrics else []), log_sinks=sinks,
                    sample_sinks=remote, instance=instance)
    if metrics:
        metrics.runner = runner
        metrics.set_stats("elastic", [sink.stats for sink in sinks if hasattr(sink, "stats")])
        metrics.set_stats("remote_write", [w.stats for w in remote])
    return runner


def _scorer_stats(metrics: SelfMetrics, alerting: Alerting) -> None:
    metrics.set_stats("detect", [alerting.scorer.stats] if alerting.scorer is not None else [])


class CollectJob:
    def __init__(self, settings: Settings, only: Sequence[str] = ()) -> None:
        self.settings = settings
        self.sources = build_sources(settings, only)
        self.sinks = log_sinks(settings)
        self.remote = RemoteSinks(settings, self.sources)
        self.instance = instance(settings, only)
        self.stale_after = _sources_stale_after(self.sources)
        self.written = self.dropped = 0

    def started(self) -> str:
        return f"collecting {', '.join(s.name for s in self.sources)} into {self.settings.store.path}"

    def status(self) -> str:
        return f"collecting {len(self.sources)} source(s) into {self.settings.store.path}"

    def summary(self) -> str:
        return f"{len(self.sources)} source(s)"

    def run(self, store: SQLiteStore, wake: threading.Event, beat: Beat, metrics: SelfMetrics | None) -> None:
        runner = _runner(self.sources, store, self.sinks, beat, metrics, self.instance, remote=self.remote.start(store))
        runner.run(wake)
        self.written, self.dropped = runner.written, runner.dropped

    def close(self, final: bool = True) -> None:
        self.remote.close(final)
        for s in self.sources:
            s.close()


class RunJob:
    def __init__(self, settings: Settings, store: SQLiteStore, reloaded: bool = False) -> None:
        self.settings = settings
        self.sources = build_sources(settings)
        self.remote = RemoteSinks(settings, self.sources)
        try:
            self.alerting = build_alerting(settings, store)
            self.sinks = log_sinks(settings)
        except BaseException:
            self.close()
            raise
        # A start or a reload: the rules see the recent past, and nothing resolves on data the
        # stop left missing before the sources delivered again (two cycles of the slowest).
        slowest = max((s.interval for s in self.sources), default=0.0)
        self.alerting.restore(store, time.time(), settle=FRESH_SAMPLES * slowest + settings.alerting.evaluation_interval)
        self.stale_after = _sources_stale_after(self.sources)
        self.written = self.dropped = 0

    def started(self) -> str:
        notify = ", ".join(self.alerting.delivery.notifiers) or "nobody (no [alerting.notify] configured)"
        return f"running {len(self.sources)} source(s), {len(self.alerting.rules)} rule(s), notifying {notify}"

    def status(self) -> str:
        return f"running {len(self.sources)} source(s) and {len(self.alerting.rules)} rule(s)"

    def summary(self) -> str:
        return f"{len(self.sources)} source(s), {len(self.alerting.rules)} rule(s)"

    def run(self, store: SQLiteStore, wake: threading.Event, beat: Beat, metrics: SelfMetrics | None) -> None:
        alerting = self.alerting
        runner = _runner(self.sources, store, self.sinks, beat, metrics, instance(self.settings), first=[alerting.window],
                         remote=self.remote.start(store))
        if metrics:
            metrics.engine, metrics.delivery = alerting.engine, alerting.delivery
            _scorer_stats(metrics, alerting)
        threads = [
            threading.Thread(target=alerting.engine.run, args=(wake, self.settings.alerting.evaluation_interval),
                             name="alert-rules", daemon=True),
            threading.Thread(target=alerting.delivery.run, args=(wake,), name="alert-delivery", daemon=True),
        ]
        for t in threads:
            t.start()
        runner.run(wake)
        for t in threads:
            t.join(timeout=30)
        alerting.delivery.pump()
        self.written, self.dropped = runner.written, runner.dropped

    def close(self, final: bool = True) -> None:
        self.remote.close(final)
        for s in self.sources:
            s.close()


class WatchJob:
    def __init__(self, settings: Settings, store: SQLiteStore) -> None:
        self.settings = settings
        self.alerting = build_alerting(settings, store)
        self.stale_after = 3 * settings.alerting.evaluation_interval + 60
        self.written = self.dropped = 0

    def started(self) -> str:
        return f"watching {self.settings.store.path} with {len(self.alerting.rules)} rule(s)"

    def status(self) -> str:
        return self.started()

    def summary(self) -> str:
        return f"{len(self.alerting.rules)} rule(s)"

    def run(self, store: SQLiteStore, wake: threading.Event, beat: Beat, metrics: SelfMetrics | None) -> None:
        alerting, interval = self.alerting, self.settings.alerting.evaluation_interval
        if metrics:
            metrics.engine, metrics.delivery = alerting.engine, alerting.delivery
            _scorer_stats(metrics, alerting)
        delivery = threading.Thread(target=alerting.delivery.run, args=(wake,), name="alert-delivery", daemon=True)
        delivery.start()
        names = alerting.names()  # the rules' series and the anomaly families'
        start = time.time()
        since = start - alerting.window.horizon  # a fresh window: fill it from the store
        alerting.restore(store, start, until=start - WATCH_LAG, settle=(FRESH_SAMPLES + 1) * interval + WATCH_LAG)
        while not wake.is_set():
            now = time.time()
            try:
                alerting.window.load(store, since, now - WATCH_LAG, names)
                alerting.window.prune(now)
                alerting.engine.evaluate(now)
            except Exception as exc:
                log.error("alert evaluation failed: %s", exc)
            else:
                beat()
            wake.wait(interval - time.time() % interval)
        delivery.join(timeout=30)
        alerting.delivery.pump()

    def close(self, final: bool = True) -> None:
        pass


__all__ = ["CollectJob", "RemoteSinks", "RunJob", "WATCH_LAG", "WatchJob"]
