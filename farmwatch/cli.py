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

    cfg = settings.store
    return SQLiteStore(cfg.path, retention=cfg.retention, readonly=readonly,
                       rollup_retention={"1m": cfg.retention_1m, "10m": cfg.retention_10m})


def _remote_writers(settings: Settings, store, sources) -> list:
    """The ``[remote_write]`` sink of this service (queue named after the config and its sources), started."""
    if settings.remote_write is None:
        return []
    from farmwatch.store.remote import writers

    return writers(settings, store, [s.name for s in sources])


def _close_remote(remote: list) -> None:
    """Send what is queued (for up to the request timeout), then stop; the rest waits in the store."""
    for writer in remote:
        if not writer.drain(writer.settings.timeout):
            requests, samples = writer.pending()
            log.warning("remote write: %d samples (%d requests) still queued; they are sent at the next start",
                        samples, requests)
        writer.close()


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
    remote = _remote_writers(settings, store, sources)
    if args.once:
        runner = Runner(sources, store, log_sinks=sinks, sample_sinks=remote)
        try:
            n = runner.run_once()
            log.info("wrote %d samples to %s", n, settings.store.path)
        finally:
            _close_remote(remote)
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
            runner = Runner(sources, store, listeners=[watchdog.beat] + ([metrics.listener] if metrics else []), log_sinks=sinks,
                            sample_sinks=remote)
            if metrics:
                metrics.runner = runner
                metrics.set_stats("elastic", [sink.stats for sink in sinks if hasattr(sink, "stats")])
                metrics.set_stats("remote_write", [w.stats for w in remote])
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
            if new.settings.store != settings.store or new.settings.remote_write != settings.remote_write:
                _close_remote(remote)
                if new.settings.store != settings.store:
                    store.close()
                    store = _open_store(new.settings)
                remote = _remote_writers(new.settings, store, new.built[0])
            settings, (sources, sinks) = new.settings, new.built
            log.info("reloaded %s: %d source(s)", args.config, len(sources))
        log.info("stopped; %d samples written, %d dropped", written, dropped)
    finally:
        _close_remote(remote)
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
    from farmwatch.store.rollup import choose

    settings = _load(args.config)
    try:
        matchers = parse_matchers(args.label)
    except ValueError as exc:
        print(f"farmwatch query: --label: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    now = datetime.now(timezone.utc).timestamp()
    since = now - parse_duration(args.since) if args.since else None
    resolution = choose(since, None, now) if args.resolution == "auto" else args.resolution
    store = _open_store(settings, readonly=True) if args.store == "local" else _remote_reader(settings)
    try:
        if resolution == "raw":
            df = store.query(args.name, matchers, since=since, limit=args.limit)
        else:
            df = store.rollup(args.name, matchers, since=since, resolution=resolution)
            df = df if args.limit is None else df.head(args.limit)
    finally:
        store.close()
    rolled = resolution != "raw"
    stats = ("min", "max", "last", "count") if rolled else ()
    out = sys.stdout
    if args.format == "json":
        for row in df.itertuples(index=False):
            value = None if rolled else row.state if isinstance(row.state, str) else None
            if value is None:
                value = None if row.value != row.value else row.value
            doc = {"ts": _format_ts(row.ts), "name": row.name, "labels": row.labels, "value": value}
            doc.update((k, int(row.count) if k == "count" else _number(getattr(row, k))) for k in stats)
            out.write(json.dumps(doc) + "\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["ts", "name", "labels", "value", *stats])
        for row in df.itertuples(index=False):
            value = row.value if rolled or not isinstance(row.state, str) else row.state
            w.writerow([_format_ts(row.ts), row.name, ",".join(f"{k}={v}" for k, v in row.labels.items()), value,
                        *(getattr(row, k) for k in stats)])
    else:
        from rich.console import Console
        from rich.table import Table

        from farmwatch.model import format_series

        t = Table(title=f"{args.name} ({len(df)} rows{'' if not rolled else f', {resolution} rollups'})")
        for col in ("ts", "series", "value" if not rolled else "mean", *stats):
            t.add_column(col)
        for row in df.itertuples(index=False):
            value = row.state if not rolled and isinstance(row.state, str) else f"{row.value:g}"
            t.add_row(_format_ts(row.ts), format_series(row.name, tuple(sorted(row.labels.items()))), value,
                      *(f"{getattr(row, k):g}" for k in stats))
        Console().print(t)
    return EXIT_OK


def _remote_reader(settings: Settings):
    """The Prometheus query API of ``[remote_write] query_url``, read like the store."""
    from farmwatch.secrets import secret
    from farmwatch.store.remote.reader import PrometheusReader

    cfg = settings.remote_write
    if cfg is None or cfg.query_url is None:
        raise ConfigError([f"{settings.file}: remote_write.query_url: needed by --store remote (the TSDB's "
                           "Prometheus query API, e.g. http://vm01:8428)"])
    headers = dict(cfg.headers)
    auth = None
    if cfg.bearer_token_env or cfg.bearer_token_file:
        token = secret(cfg.bearer_token_env, str(cfg.bearer_token_file) if cfg.bearer_token_file else None, "bearer token")
        headers["Authorization"] = f"Bearer {token}"
    elif cfg.username:
        auth = (cfg.username, secret(cfg.password_env, str(cfg.password_file) if cfg.password_file else None, "password"))
    verify = str(cfg.ca_file) if cfg.ca_file else cfg.verify
    return PrometheusReader(cfg.query_url, prefix=cfg.prefix, timeout=cfg.timeout, headers=headers, auth=auth,
                            verify=verify)


def _number(value: float) -> float | None:
    return None if value != value else float(value)


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
    q.add_argument("--label", action="append", default=[], metavar="K=V", help="label matcher: k=v, k!=v, k=~re, k!~re, globs in values")
    q.add_argument("--since", help="how far back, e.g. 10m (default: everything)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--store", choices=("local", "remote"), default="local",
                   help="the embedded store, or the TSDB of [remote_write] query_url (Prometheus query API)")
    q.add_argument("--resolution", choices=("auto", "raw", "1m", "10m"), default="auto",
                   help="raw samples or 1m/10m rollups (min/max/mean/last/count); auto: raw up to 6 h back, "
                        "1m up to 3 days, else 10m")
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
