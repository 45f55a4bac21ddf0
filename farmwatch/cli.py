"""The ``farmwatch`` command (``python -m farmwatch`` is the same).

Exit codes: 0 success, 1 runtime failure, 2 bad usage or bad config (nothing was started),
130 interrupted.
"""

from __future__ import annotations

import argparse
import csv
import json
import logging
import signal
import sys
import threading
from datetime import datetime, timezone
from pathlib import Path
from typing import Sequence

from farmwatch import __version__, systemd
from farmwatch.config import ConfigError, Settings, load
from farmwatch.durations import parse_duration

log = logging.getLogger("farmwatch")

EXIT_OK, EXIT_FAIL, EXIT_CONFIG = 0, 1, 2


class _JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        return json.dumps({"ts": record.created, "level": record.levelname.lower(), "logger": record.name, "message": record.getMessage()})


def setup_logging(level: str = "info", fmt: str = "plain") -> None:
    handler = logging.StreamHandler(sys.stderr)
    handler.setFormatter(_JsonFormatter() if fmt == "json" else logging.Formatter("%(asctime)s %(levelname)s %(name)s: %(message)s"))
    root = logging.getLogger()
    root.handlers[:] = [handler]
    root.setLevel(level.upper())


def _load(path: str) -> Settings:
    settings = load(path)
    setup_logging(settings.log.level, settings.log.format)
    return settings


def _build_sources(settings: Settings, only: Sequence[str] = ()):
    from farmwatch.sources import source_class

    names = list(only) or list(settings.sources)
    unknown = [n for n in names if n not in settings.sources]
    if unknown:
        raise ConfigError([f"{settings.file}: sources.{n}: no such source in this config (have: {', '.join(settings.sources)})" for n in unknown])
    return [source_class(settings.sources[n].kind)(n, settings.sources[n]) for n in names]


def _open_store(settings: Settings, readonly: bool = False):
    from farmwatch.store import SQLiteStore

    return SQLiteStore(settings.store.path, retention=settings.store.retention, readonly=readonly)


def _stop_on_signals() -> threading.Event:
    stop = threading.Event()

    def handler(signum, _frame):
        log.info("received %s: finishing the current cycle and flushing", signal.Signals(signum).name)
        systemd.notify("STOPPING=1")
        stop.set()

    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)
    return stop


def _self_metrics(settings: Settings, service: str):
    """The service's own health endpoint when ``[self_metrics] port`` is set, else None."""
    cfg = settings.self_metrics
    if cfg.port is None:
        return None
    from farmwatch.selfmetrics import SelfMetrics

    metrics = SelfMetrics(service)
    try:
        metrics.serve(cfg.address, cfg.port)
    except OSError as exc:
        raise ConfigError([f"{settings.file}: self_metrics: cannot listen on {cfg.address}:{cfg.port}: {exc.strerror or exc}"]) from None
    log.info("self-metrics at http://%s:%d/metrics", cfg.address, cfg.port)
    return metrics


# -- commands ----------------------------------------------------------------------------------
def cmd_check_config(args: argparse.Namespace) -> int:
    from farmwatch.alerting import service

    settings = load(args.config)
    n_targets = sum(len(getattr(s, "endpoints", ())) for s in settings.sources.values())
    rules = service.load_rule_set(settings.alerting) if settings.alerting.enabled else []
    inhibits = service.inhibit_rules(settings.alerting) if settings.alerting.enabled else []
    for name, source in settings.sources.items():
        for warning in source.warnings():
            print(f"{args.config}: sources.{name}.{warning}", file=sys.stderr)
    print(f"{args.config}: OK: {len(settings.sources)} source(s), {n_targets} endpoint(s), store {settings.store.path}, "
          f"{len(rules)} alert rule(s), {len(inhibits)} inhibit rule(s), "
          f"notify: {', '.join(settings.alerting.notify) or 'nobody'}")
    return EXIT_OK


def cmd_collect(args: argparse.Namespace) -> int:
    """The configured sources into the store, until SIGTERM; SIGHUP reloads the config (sources,
    store path, log settings) without losing a cycle's data; ``--once`` is one cycle for cron."""
    from farmwatch.cli_logs import log_sinks
    from farmwatch.runner import Runner
    from farmwatch.signals import ServiceSignals, reload

    settings = _load(args.config)
    sources = _build_sources(settings, args.source)
    store = _open_store(settings)
    sinks = log_sinks(settings)
    if args.once:
        runner = Runner(sources, store, log_sinks=sinks)
        try:
            n = runner.run_once()
            log.info("wrote %d samples to %s", n, settings.store.path)
        finally:
            for s in sources:
                s.close()
            store.close()
        return EXIT_OK if runner.dropped == 0 else EXIT_FAIL

    signals = ServiceSignals().install()
    metrics = _self_metrics(settings, "collect")
    written = dropped = 0
    try:
        while True:
            watchdog = systemd.Watchdog(stale_after=3 * max((s.interval for s in sources), default=1.0) + 30)
            runner = Runner(sources, store, listeners=[watchdog.beat] + ([metrics.listener] if metrics else []), log_sinks=sinks)
            if metrics:
                metrics.runner = runner
                metrics.set_stats("elastic", [sink.stats for sink in sinks if hasattr(sink, "stats")])
            log.info("collecting %s into %s", ", ".join(s.name for s in sources), settings.store.path)
            systemd.notify("READY=1", f"STATUS=collecting {len(sources)} source(s) into {settings.store.path}")
            watchdog.start()
            runner.run(signals.wake)
            watchdog.stop()
            written, dropped = written + runner.written, dropped + runner.dropped
            if not signals.next_generation():
                break
            new = reload(args.config, lambda st: (_build_sources(st, args.source), log_sinks(st)))
            if new is None:
                continue
            for s in sources:
                s.close()
            if new.settings.store.path != settings.store.path or new.settings.store.retention != settings.store.retention:
                store.close()
                store = _open_store(new.settings)
            settings, (sources, sinks) = new.settings, new.built
            log.info("reloaded %s: %d source(s)", args.config, len(sources))
        log.info("stopped; %d samples written, %d dropped", written, dropped)
    finally:
        for s in sources:
            s.close()
        store.close()
        if metrics:
            metrics.close()
    return EXIT_OK if dropped == 0 else EXIT_FAIL


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from farmwatch.overview import LatestValues, render, summarize

    settings = _load(args.config)
    sources = [s for s in _build_sources(settings) if s.config.kind == "hlt_zmq"]
    if not sources:
        raise ConfigError([f"{settings.file}: no hlt_zmq source to show"])
    latest = LatestValues()
    console = Console()
    stop = _stop_on_signals()
    interval = min(s.interval for s in sources)

    def cycle() -> None:
        for s in sources:
            latest(s.name, s.poll())

    try:
        if args.once:  # two cycles: rates need two samples
            cycle()
            stop.wait(interval)
            cycle()
            console.print(render(summarize(latest.snapshot())))
            return EXIT_OK
        with Live(console=console, auto_refresh=False, screen=False) as live:
            while not stop.is_set():
                cycle()
                live.update(render(summarize(latest.snapshot()), title=f"farmwatch top — {datetime.now():%H:%M:%S}"), refresh=True)
                stop.wait(interval)
    finally:
        for s in sources:
            s.close()
    return EXIT_OK


def _format_ts(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cmd_query(args: argparse.Namespace) -> int:
    from farmwatch.store import parse_matchers

    settings = _load(args.config)
    try:
        matchers = parse_matchers(args.label)
    except ValueError as exc:
        print(f"farmwatch query: --label: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    now = datetime.now(timezone.utc).timestamp()
    since = now - parse_duration(args.since) if args.since else None
    store = _open_store(settings, readonly=True)
    try:
        df = store.query(args.name, matchers, since=since, limit=args.limit)
    finally:
        store.close()
    out = sys.stdout
    if args.format == "json":
        for row in df.itertuples(index=False):
            value = row.state if isinstance(row.state, str) else (None if row.value != row.value else row.value)
            out.write(json.dumps({"ts": _format_ts(row.ts), "name": row.name, "labels": row.labels, "value": value}) + "\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["ts", "name", "labels", "value"])
        for row in df.itertuples(index=False):
            w.writerow([_format_ts(row.ts), row.name, ",".join(f"{k}={v}" for k, v in row.labels.items()), row.state if isinstance(row.state, str) else row.value])
    else:
        from rich.console import Console
        from rich.table import Table

        t = Table(title=f"{args.name} ({len(df)} rows)")
        for col in ("ts", "series", "value"):
            t.add_column(col)
        from farmwatch.model import format_series

        for row in df.itertuples(index=False):
            t.add_row(_format_ts(row.ts), format_series(row.name, tuple(sorted(row.labels.items()))), row.state if isinstance(row.state, str) else f"{row.value:g}")
        Console().print(t)
    return EXIT_OK


def cmd_demo(args: argparse.Namespace) -> int:
    from farmwatch.demo import run_demo

    setup_logging("warning")
    return run_demo(speed=args.speed, out=Path(args.out))


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="farmwatch", description="Monitoring and alerting for the Belle II HLT farm.")
    p.add_argument("--version", action="version", version=f"farmwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND")

    d = sub.add_parser("demo", help="simulated HLT units and their logs under run control, collected, alerted on, with injected faults")
    d.add_argument("--speed", type=float, default=10.0,
                   help="simulated seconds per real second after the fast-forwarded start (default 10: 22 simulated minutes in ~2 min; 0: as fast as possible)")
    d.add_argument("--out", default="demo-out", help="folder for the store, config, logs and report (default demo-out)")
    d.set_defaults(func=cmd_demo)

    c = sub.add_parser("collect", help="run the configured sources and write to the store")
    c.add_argument("-c", "--config", required=True)
    c.add_argument("--once", action="store_true", help="one cycle of every source, then exit (cron)")
    c.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    c.set_defaults(func=cmd_collect)

    t = sub.add_parser("top", help="live view of the HLT units in the config")
    t.add_argument("-c", "--config", required=True)
    t.add_argument("--once", action="store_true", help="print one snapshot and exit")
    t.set_defaults(func=cmd_top)

    q = sub.add_parser("query", help="print stored samples of a series")
    q.add_argument("-c", "--config", required=True)
    q.add_argument("name", help="series name, globs allowed (hlt.output.*)")
    q.add_argument("--label", action="append", default=[], metavar="K=V", help="label matcher: k=v, k!=v (exact), k=~re, k!~re, k*=glob, k!*=glob")
    q.add_argument("--since", help="how far back, e.g. 10m (default: everything)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_query)

    r = sub.add_parser("config-reference", help="print the configuration reference (Markdown; docs/config.md)")
    r.set_defaults(func=lambda args: __import__("farmwatch.configref", fromlist=["main"]).main([]))

    k = sub.add_parser("check-config", help="validate a config file")
    k.add_argument("-c", "--config", required=True)
    k.set_defaults(func=cmd_check_config)

    from farmwatch.cli_alerts import add_parsers

    add_parsers(sub)
    from farmwatch.cli_logs import add_parsers as add_logs; add_logs(sub)  # noqa: E702
    from farmwatch.cli_detect import add_parsers as add_detect; add_detect(sub)  # noqa: E702
    from farmwatch.cli_status import add_parsers as add_status

    add_status(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    try:
        return args.func(args)
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_CONFIG
    except KeyboardInterrupt:
        return 130
    except Exception as exc:  # last resort: one line, not a traceback, for errors users cause
        from farmwatch.store import StoreError

        if isinstance(exc, StoreError):
            print(f"farmwatch: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise
