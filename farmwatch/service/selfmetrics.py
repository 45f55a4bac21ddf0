"""farmwatch's own health as a Prometheus exposition endpoint (opt-in), and what `status` reads.

A monitoring tool that fails quietly is worse than none, so every service (``collect``, ``run``,
``watch``) can expose how it is doing: per source the last cycle's duration, its age, samples,
overruns and targets up/down; the store writer's written/dropped samples and queue depth; rule
evaluation time and errors; firing alerts; the outbox depth and delivery failures; plus the
process's CPU and memory (prometheus_client's process collector). The values are read from the
live objects when scraped (a custom collector), so nothing is counted twice and nothing here can
fall behind what the components themselves know.

Configured with ``[self_metrics] port = 9108`` (``address`` defaults to 127.0.0.1); off by default.
"""

from __future__ import annotations

import socket
import threading
import time
from typing import TYPE_CHECKING, Any, Callable, Iterator, Mapping, Sequence

from prometheus_client import CollectorRegistry, ProcessCollector, start_http_server
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric

from farmwatch.model import Batch

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings
    from farmwatch.alerting.delivery import Delivery
    from farmwatch.alerting.engine import AlertEngine
    from farmwatch.service.runner import Runner


def instance(settings: Settings, only: Sequence[str] = ()) -> str:
    """The ``instance`` label of a service's own series in the store: ``[self_metrics] instance``,
    else config name and host (``hlt-zmq@hltmon01``, ``:hlt,logs`` added for ``--source``). Stable
    across restarts, and different for services that share a store, so that no two processes
    write into one series (a counter of one would step back to the other's value)."""
    if settings.self_metrics.instance:
        return settings.self_metrics.instance
    name = settings.file.stem if settings.file is not None else "farmwatch"
    return f"{name}{':' + ','.join(only) if only else ''}@{socket.gethostname().split('.')[0]}"


class SelfMetrics:
    """Collects farmwatch's own health from the components it is given; a prometheus_client collector."""

    def __init__(self, service: str) -> None:
        self.service = service
        self.started = time.time()
        self.runner: Runner | None = None
        self.engine: AlertEngine | None = None
        self.delivery: Delivery | None = None
        self._lock = threading.Lock()
        self._sources: dict[str, dict[str, float]] = {}
        self._stats: list[tuple[str, Callable[[], Mapping[str, float]]]] = []
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(self)
        ProcessCollector(namespace="farmwatch", registry=self.registry)
        self._server: Any = None

    # -- wiring -------------------------------------------------------------------------------
    def listener(self, source: str, batches: list[Batch]) -> None:
        """A runner listener: remembers each source's last cycle and its targets up/down."""
        up = down = 0
        meta: dict[str, float] = {}
        for b in batches:
            for (name, _), value in zip(b.keys, b.values):
                if name == "up":
                    if value == 1.0:
                        up += 1
                    else:
                        down += 1
                elif name.startswith("farmwatch.source."):
                    meta[name.removeprefix("farmwatch.source.")] = float(value)  # type: ignore[arg-type]
        with self._lock:
            s = self._sources.setdefault(source, {"cycles": 0.0, "samples_total": 0.0})
            s["cycles"] += 1
            s["samples_total"] += meta.get("samples", 0.0)
            s.update(last_cycle=time.time(), up=up, down=down, duration=meta.get("cycle_duration", float("nan")),
                     overruns=meta.get("overruns", 0.0))

    def set_stats(self, prefix: str, stats: list[Callable[[], Mapping[str, Any]]]) -> None:
        """Expose the numbers of each ``stats()`` (e.g. the Elasticsearch spool's size and drops) as
        gauges ``farmwatch_<prefix>_<key>`` (booleans as 0/1; text such as the last error is left
        out); replaces what was set for ``prefix`` before (a reload builds new sinks)."""
        self._stats = [(p, f) for p, f in self._stats if p != prefix] + [(prefix, f) for f in stats]

    def serve(self, address: str, port: int) -> None:
        """Start the HTTP endpoint on a daemon thread (``/metrics``)."""
        self._server = start_http_server(port, addr=address, registry=self.registry)

    def close(self) -> None:
        if self._server is not None:
            server, _thread = self._server
            server.shutdown()
            server.server_close()
            self._server = None

    # -- exposition ---------------------------------------------------------------------------
    def collect(self) -> Iterator[Metric]:
        info = GaugeMetricFamily("farmwatch_service_start_time_seconds", "When this farmwatch service started.", labels=["service"])
        info.add_metric([self.service], self.started)
        yield info
        yield from self._source_metrics()
        if self.runner is not None:
            yield _counter("farmwatch_samples_written", "Samples written to the store.", self.runner.written)
            yield _counter("farmwatch_samples_dropped", "Samples dropped because the store writer fell behind.", self.runner.dropped)
            yield _gauge("farmwatch_store_queue_depth", "Source cycles waiting for the store writer.", self.runner.queue_depth)
        if self.engine is not None:
            st = self.engine.stats
            yield _counter("farmwatch_rule_evaluations", "Rule evaluation passes.", st.evaluations)
            yield _gauge("farmwatch_rule_evaluation_seconds", "Duration of the last rule evaluation pass.", st.last_seconds)
            yield _counter("farmwatch_rule_errors", "Rule evaluations that failed.", st.rule_errors)
            alerts = GaugeMetricFamily("farmwatch_alerts", "Alerts by state.", labels=["state"])
            alerts.add_metric(["firing"], st.firing)
            alerts.add_metric(["pending"], st.pending)
            yield alerts
            window = getattr(self.engine, "window", None)
            if window is not None:
                yield _gauge("farmwatch_window_series", "Series the alerting window keeps.", window.series_count)
                yield _counter("farmwatch_window_forgotten_series", "Series forgotten (no sample for forget_series_after).",
                               window.forgotten_series)
                yield _counter("farmwatch_window_compactions", "Compactions of the alerting window (ids reclaimed).",
                               window.compactions)
        if self.delivery is not None:
            ds = self.delivery.stats
            yield _counter("farmwatch_notifications_delivered", "Chat messages posted or updated.", ds.delivered)
            yield _counter("farmwatch_delivery_failures", "Notifications given up on (dead-lettered).", ds.failed)
            yield _counter("farmwatch_delivery_retries", "Delivery attempts that will be retried.", ds.retries)
            depth = GaugeMetricFamily("farmwatch_outbox_depth", "Notifications waiting to be delivered.", labels=["notifier"])
            for notifier, n in sorted(self.delivery.db.outbox_depth().items()):
                depth.add_metric([notifier], n)
            yield depth
        for prefix, stats in self._stats:
            for key, value in sorted(stats().items()):
                if isinstance(value, (int, float)):
                    yield _gauge(f"farmwatch_{prefix}_{key}", f"{prefix} {key}.", float(value))

    def _source_metrics(self) -> Iterator[Metric]:
        with self._lock:
            sources = {k: dict(v) for k, v in self._sources.items()}
        fams = {
            "duration": GaugeMetricFamily("farmwatch_source_cycle_seconds", "Duration of the source's last cycle.", labels=["source"]),
            "last_cycle": GaugeMetricFamily("farmwatch_source_last_cycle_timestamp_seconds", "When the source's last cycle ended.", labels=["source"]),
            "cycles": CounterMetricFamily("farmwatch_source_cycles", "Cycles completed.", labels=["source"]),
            "samples_total": CounterMetricFamily("farmwatch_source_samples", "Samples produced.", labels=["source"]),
            "overruns": CounterMetricFamily("farmwatch_source_overruns", "Cycles that took longer than the interval.", labels=["source"]),
        }
        targets = GaugeMetricFamily("farmwatch_targets", "Targets (up series) of the last cycle, by state.", labels=["source", "state"])
        for name, s in sorted(sources.items()):
            for key, fam in fams.items():
                fam.add_metric([name], s.get(key, float("nan")))
            targets.add_metric([name, "up"], s.get("up", 0))
            targets.add_metric([name, "down"], s.get("down", 0))
        yield from fams.values()
        yield targets


def _counter(name: str, doc: str, value: float) -> CounterMetricFamily:
    return CounterMetricFamily(name, doc, value=value)


def _gauge(name: str, doc: str, value: float) -> GaugeMetricFamily:
    return GaugeMetricFamily(name, doc, value=value)


__all__ = ["SelfMetrics", "instance"]
