"""The one service lifecycle that ``collect``, ``run`` and ``watch`` share.

A service is a sequence of *generations*: a ``Job`` built from one config runs until SIGTERM/SIGINT
(the service ends) or SIGHUP (the config is reloaded and the next generation starts). ``serve``
does, once for all three: open the store, install the signal handlers, start the self-metrics
endpoint, tell systemd READY/STATUS, keep the watchdog fed only while the job shows progress,
build the next generation *before* stopping anything of the running one (a config that does not
load or build leaves the running one alone), count what was written and dropped, and close
everything on the way out, whatever happened.
"""

from __future__ import annotations

import logging
import os
import threading
from dataclasses import dataclass
from typing import Callable, Protocol

from farmwatch.config.base import ConfigError
from farmwatch.config.loader import Settings
from farmwatch.service import systemd
from farmwatch.service.selfmetrics import SelfMetrics
from farmwatch.service.signals import ServiceSignals, reload
from farmwatch.store import open_store
from farmwatch.store.sqlite import SQLiteStore

log = logging.getLogger("farmwatch")

Beat = Callable[..., None]
"""Progress for the watchdog; accepts and ignores arguments so that it can be a runner listener."""


class Job(Protocol):
    """One generation of a service: what one config builds, run until ``wake`` is set."""

    stale_after: float
    """Seconds without progress (``beat``) after which the service counts as hung."""
    written: int
    """Samples written by the last ``run``."""
    dropped: int
    """Samples the last ``run`` had to drop (the store writer fell behind)."""

    def started(self) -> str:
        """The log line when the generation starts (``collecting hlt into fw.db``)."""

    def status(self) -> str:
        """The same for systemd's STATUS= (shown by ``systemctl status``)."""

    def summary(self) -> str:
        """What a reload built, for its log line (``2 source(s), 14 rule(s)``)."""

    def run(self, store: SQLiteStore, wake: threading.Event, beat: Beat, metrics: SelfMetrics | None) -> None:
        """Work until ``wake`` is set, then finish the cycle and flush before returning."""

    def close(self, final: bool = True) -> None:
        """Release what this generation owns (sources, sockets); the store is ``serve``'s.
        ``final``: the service ends (not replaced by a reload), so what waits to be sent elsewhere
        (the remote-write queue) is sent first, within a bound."""


Build = Callable[[Settings, SQLiteStore, bool], Job]
"""(settings, store, reloaded) → the generation; ``reloaded`` is False for the first one."""


@dataclass
class Totals:
    written: int = 0
    dropped: int = 0


def start_self_metrics(settings: Settings, service: str) -> SelfMetrics | None:
    """The service's own health endpoint when ``[self_metrics] port`` is set, else None."""
    cfg = settings.self_metrics
    if cfg.port is None:
        return None
    metrics = SelfMetrics(service)
    try:
        metrics.serve(cfg.address, cfg.port)
    except OSError as exc:
        raise ConfigError([f"{settings.file}: self_metrics: cannot listen on {cfg.address}:{cfg.port}: "
                           f"{exc.strerror or exc}"]) from None
    log.info("self-metrics at http://%s:%d/metrics", cfg.address, cfg.port)
    return metrics


def serve(service: str, path: str | os.PathLike[str], settings: Settings, build: Build, *,
          reopen_store: bool = False) -> Totals:
    """Run generations of ``build`` until the service is stopped; returns what all of them wrote
    and dropped. ``reopen_store``: a reload that names another ``[store]`` switches to it (a
    collector); else it is kept, with a warning (the alert state lives in the store)."""
    store = open_store(settings.store)
    job: Job | None = None
    metrics: SelfMetrics | None = None
    totals = Totals()
    try:
        job = build(settings, store, False)
        signals = ServiceSignals().install()
        metrics = start_self_metrics(settings, service)
        while True:
            watchdog = systemd.Watchdog(stale_after=job.stale_after)
            log.info("%s", job.started())
            systemd.notify("READY=1", f"STATUS={job.status()}")
            watchdog.start()
            try:
                job.run(store, signals.wake, watchdog.beat, metrics)
            finally:
                watchdog.stop()
            totals.written += job.written
            totals.dropped += job.dropped
            if not signals.next_generation():
                break
            current = job
            new = reload(path, lambda st: build(st, store, True))
            if new is None:
                continue  # the same generation runs on
            current.close(final=False)  # before the store may change: a generation may use it until then
            if new.settings.store != settings.store:
                if reopen_store:
                    store.close()
                    store = open_store(new.settings.store)
                elif new.settings.store.path != settings.store.path:
                    log.warning("reload: a new [store] path needs a restart; keeping %s", settings.store.path)
            settings, job = new.settings, new.built
            log.info("reloaded %s: %s", path, job.summary())
        log.info("stopped; %d samples written, %d dropped", totals.written, totals.dropped)
    finally:
        if job is not None:
            job.close()
        store.close()
        if metrics is not None:
            metrics.close()
    return totals


__all__ = ["Beat", "Build", "Job", "Totals", "serve", "start_self_metrics"]
