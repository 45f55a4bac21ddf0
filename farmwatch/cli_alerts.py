"""The alerting commands: ``run``, ``watch``, ``alerts``, ``silence``, ``ack`` and ``rules``.

``run`` and ``watch`` are services; the others are what an operator types in a shell next to a
running service: they work on the store file the service uses, so a silence added here takes
effect at the service's next evaluation without any other channel.
"""

from __future__ import annotations

import argparse
import getpass
import json
import logging
import math
import os
import sys
import threading
import time
from datetime import datetime, timezone
from typing import Any

from farmwatch import systemd
from farmwatch.cli import EXIT_CONFIG, EXIT_FAIL, EXIT_OK, _build_sources, _load, _open_store, _self_metrics
from farmwatch.config import ConfigError
from farmwatch.durations import format_duration, parse_duration

log = logging.getLogger("farmwatch")

WATCH_LAG = 2.0


def _when(text: str | None, now: float) -> float | None:
    """``2h`` (that long ago), an ISO time (``2026-11-22T10:00``, UTC unless it says otherwise) or ``now``."""
    if text is None:
        return None
    if text == "now":
        return now
    try:
        return now - parse_duration(text)
    except ValueError:
        pass
    try:
        dt = datetime.fromisoformat(text)
    except ValueError:
        raise ValueError(f"{text!r} is neither a duration (2h, 30m) nor an ISO time (2026-11-22T10:00)") from None
    return (dt if dt.tzinfo else dt.replace(tzinfo=timezone.utc)).timestamp()


def _iso(ts: float | None) -> str:
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _user(given: str | None) -> str:
    return given or os.environ.get("FARMWATCH_USER") or getpass.getuser()


# -- services ------------------------------------------------------------------------------------
def cmd_run(args: argparse.Namespace) -> int:
    """Sources, rules and delivery in one process: the window is fed straight from the runner.
    SIGHUP reloads config and rules (the alert state lives in the store, so nothing is forgotten)."""
    from farmwatch.alerting.service import build
    from farmwatch.cli_logs import log_sinks
    from farmwatch.runner import Runner
    from farmwatch.signals import ServiceSignals, reload

    settings = _load(args.config)
    sources = _build_sources(settings)
    store = _open_store(settings)
    metrics = None
    try:
        alerting, sinks = build(settings, store), log_sinks(settings)
        signals = ServiceSignals().install()
        metrics = _self_metrics(settings, "run")
        while True:
            watchdog = systemd.Watchdog(stale_after=3 * max((s.interval for s in sources), default=1.0) + 30)
            runner = Runner(sources, store, listeners=[alerting.window, watchdog.beat] + ([metrics.listener] if metrics else []),
                            log_sinks=sinks)
            if metrics:
                metrics.runner, metrics.engine, metrics.delivery = runner, alerting.engine, alerting.delivery
                metrics.set_stats("elastic", [sink.stats for sink in sinks if hasattr(sink, "stats")])
                metrics.set_stats("detect", [alerting.scorer.stats] if alerting.scorer is not None else [])
            threads = [
                threading.Thread(target=alerting.engine.run, args=(signals.wake, settings.alerting.evaluation_interval),
                                 name="alert-rules", daemon=True),
                threading.Thread(target=alerting.delivery.run, args=(signals.wake,), name="alert-delivery", daemon=True),
            ]
            for t in threads:
                t.start()
            log.info("running %d source(s), %d rule(s), notifying %s", len(sources), len(alerting.rules),
                     ", ".join(alerting.delivery.notifiers) or "nobody (no [alerting.notify] configured)")
            systemd.notify("READY=1", f"STATUS=running {len(sources)} source(s) and {len(alerting.rules)} rule(s)")
            watchdog.start()
            runner.run(signals.wake)
            watchdog.stop()
            for t in threads:
                t.join(timeout=30)
            alerting.delivery.pump()
            if not signals.next_generation():
                break
            new = reload(args.config, lambda st: (_build_sources(st), build(st, store), log_sinks(st)))
            if new is None:
                continue
            for s in sources:
                s.close()
            if new.settings.store.path != settings.store.path:
                log.warning("reload: a new [store] path needs a restart; keeping %s", settings.store.path)
            settings, (sources, alerting, sinks) = new.settings, new.built
            names = alerting.names()  # the rules' series and the anomaly families'
            now = time.time()
            alerting.window.load(store, now - alerting.window.horizon, now, names)  # the new rules see the recent past
            log.info("reloaded %s: %d source(s), %d rule(s)", args.config, len(sources), len(alerting.rules))
    finally:
        for s in sources:
            s.close()
        store.close()
        if metrics:
            metrics.close()
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Rules and delivery reading from the store that separate collectors write; SIGHUP reloads
    the config and rules."""
    from farmwatch.alerting.service import build
    from farmwatch.signals import ServiceSignals, reload

    settings = _load(args.config)
    store = _open_store(settings)
    metrics = None
    try:
        alerting = build(settings, store)
        signals = ServiceSignals().install()
        metrics = _self_metrics(settings, "watch")
        since = time.time() - alerting.window.horizon
        while True:
            names = alerting.names()  # the rules' series and the anomaly families'
            window, engine = alerting.window, alerting.engine
            delivery = threading.Thread(target=alerting.delivery.run, args=(signals.wake,), name="alert-delivery", daemon=True)
            delivery.start()
            interval = settings.alerting.evaluation_interval
            log.info("watching %s with %d rule(s)", settings.store.path, len(alerting.rules))
            watchdog = systemd.Watchdog(stale_after=3 * interval + 60)
            if metrics:
                metrics.engine, metrics.delivery = engine, alerting.delivery
                metrics.set_stats("detect", [alerting.scorer.stats] if alerting.scorer is not None else [])
            systemd.notify("READY=1", f"STATUS=watching {settings.store.path} with {len(alerting.rules)} rule(s)")
            watchdog.start()
            while not signals.wake.is_set():
                now = time.time()
                try:
                    # Collectors commit a cycle's batches shortly after its timestamp: read up to
                    # WATCH_LAG ago, so that a cycle is never half read (the window continues from there).
                    window.load(store, since, now - WATCH_LAG, names)
                    window.prune(now)
                    engine.evaluate(now)
                except Exception as exc:
                    log.error("alert evaluation failed: %s", exc)
                else:
                    watchdog.beat()
                signals.wake.wait(interval - time.time() % interval)
            watchdog.stop()
            delivery.join(timeout=30)
            alerting.delivery.pump()
            if not signals.next_generation():
                break
            new = reload(args.config, lambda st: build(st, store))
            if new is None:
                continue
            if new.settings.store.path != settings.store.path:
                log.warning("reload: a new [store] path needs a restart; keeping %s", settings.store.path)
            settings, alerting = new.settings, new.built
            since = time.time() - alerting.window.horizon  # a fresh window: fill it from the store
            log.info("reloaded %s: %d rule(s)", args.config, len(alerting.rules))
    finally:
        store.close()
        if metrics:
            metrics.close()
    return EXIT_OK


# -- operator commands ---------------------------------------------------------------------------
def cmd_alerts(args: argparse.Namespace) -> int:
    from farmwatch.alerting.state import AlertDB

    settings = _load(args.config)
    store = _open_store(settings, readonly=True)
    try:
        db = AlertDB(store)
        if args.history:
            now = time.time()
            rows = db.history(since=_when(args.since or "24h", now))
            return _print_history(rows, args.format)
        states = None if args.all else ["pending", "firing"]
        alerts = db.alerts(states=states)
    finally:
        store.close()
    if args.format == "json":
        from farmwatch.alerting.state import alert_doc

        for a in alerts:
            print(json.dumps(alert_doc(a), default=str))
        return EXIT_OK
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    t = Table(title=f"alerts ({len(alerts)})")
    for col in ("state", "severity", "rule", "labels", "since", "summary", "notes", "fingerprint"):
        t.add_column(col, overflow="fold")
    now = time.time()
    for a in alerts:
        since = a.starts_at if a.state.value == "firing" else a.active_since
        if a.state.value == "resolved":
            since = a.ends_at
        notes = "; ".join(x for x in (
            a.silenced_by and f"silenced ({a.silenced_by})", a.inhibited_by and f"inhibited by {a.inhibited_by}",
            a.acked_by and f"acked by {a.acked_by}") if x)
        age = "" if since is None or math.isnan(since) else f" ({format_duration(max(0.0, now - since))} ago)"
        cells = (a.state.value, a.severity, a.rule, ",".join(f"{k}={v}" for k, v in a.labels),
                 _iso(since) + age, a.summary, notes, a.fingerprint)
        t.add_row(*(Text(c) for c in cells))  # Text: labels and summaries are data, not rich markup
    Console(highlight=False).print(t)
    return EXIT_OK


def _print_history(rows: list[dict[str, Any]], fmt: str) -> int:
    for row in rows:
        if fmt == "json":
            print(json.dumps(row))
        else:
            lbls = ",".join(f"{k}={v}" for k, v in row["labels"].items())
            print(f"{_iso(row['ts'])}  {row['event']:<10} {row['rule']} {{{lbls}}}  {row['summary']}")
    return EXIT_OK


def cmd_silence(args: argparse.Namespace) -> int:
    from farmwatch.alerting.state import AlertDB

    settings = _load(args.config)
    now = time.time()
    store = _open_store(settings, readonly=args.action == "list")
    try:
        db = AlertDB(store)
        if args.action == "add":
            try:
                ends = now + parse_duration(args.duration)
                silence = db.add_silence(args.matchers, now, ends, _user(args.by), args.comment)
            except ValueError as exc:
                print(f"farmwatch silence add: {exc}", file=sys.stderr)
                return EXIT_CONFIG
            print(f"silence {silence.id}: {' '.join(silence.matchers)} until {_iso(silence.ends_at)} ({args.comment})")
        elif args.action == "expire":
            if not db.expire_silence(args.id, now):
                print(f"farmwatch silence expire: no active silence {args.id!r} (or the prefix is ambiguous)",
                      file=sys.stderr)
                return EXIT_FAIL
            print(f"silence {args.id} expired")
        else:
            for s in db.silences(None if args.all else now):
                state = "active" if s.active(now) else ("pending" if s.starts_at > now else "expired")
                print(f"{s.id}  {state:<8} {' '.join(s.matchers)}  {_iso(s.starts_at)} → {_iso(s.ends_at)}"
                      f"  by {s.created_by}: {s.comment}")
    finally:
        store.close()
    return EXIT_OK


def cmd_ack(args: argparse.Namespace) -> int:
    """Acknowledge alerts by fingerprint (prefix) or by matchers: no more reminders, the message says who."""
    from farmwatch.alerting.state import AlertDB, label_map
    from farmwatch.store.matchers import parse_matchers

    settings = _load(args.config)
    store = _open_store(settings)
    try:
        db = AlertDB(store)
        active = db.alerts(states=["pending", "firing"])
        matchers = [m for m in args.targets if any(op in m for op in "=~!")]
        prefixes = [t for t in args.targets if t not in matchers]
        try:
            parsed = parse_matchers(matchers)
        except ValueError as exc:
            print(f"farmwatch ack: {exc}", file=sys.stderr)
            return EXIT_CONFIG
        chosen = [a for a in active
                  if (prefixes and any(a.fingerprint.startswith(p) for p in prefixes))
                  or (parsed and all(m.matches(label_map(a)) for m in parsed))]
        if not chosen:
            print("farmwatch ack: no active alert matches " + " ".join(args.targets), file=sys.stderr)
            return EXIT_FAIL
        db.ack([a.fingerprint for a in chosen], _user(args.by), time.time(), args.comment)
    finally:
        store.close()
    for a in chosen:
        print(f"acknowledged {a.fingerprint} {a.rule} {dict(a.labels)}")
    return EXIT_OK


def cmd_rules(args: argparse.Namespace) -> int:
    from farmwatch.alerting import service
    from farmwatch.config import AlertingSettings

    if args.config:
        settings = _load(args.config)
        alerting = settings.alerting
    else:
        settings, alerting = None, AlertingSettings()
    if args.paths:
        from pathlib import Path

        alerting = alerting.model_copy(update={"rules": [Path(p) for p in args.paths]})
    rules = service.load_rule_set(alerting)
    inhibits = service.inhibit_rules(alerting)
    if args.action == "check":
        for r in rules:
            print(f"{r.name:<32} {r.kind:<10} {r.severity:<8} for {format_duration(r.for_):<6} {getattr(r, 'source', '')}")
        print(f"{len(rules)} rule(s), {len(inhibits)} inhibit rule(s): OK")
        return EXIT_OK
    if settings is None:
        raise ConfigError(["farmwatch rules test: -c CONFIG is required (the store to replay)"])
    return _backtest(settings, alerting, rules, args)


def _backtest(settings, alerting, rules, args: argparse.Namespace) -> int:
    """Replay stored data through the rules on a simulated clock and print what would have fired."""
    from farmwatch.alerting.dispatch import Timers
    from farmwatch.alerting.engine import AlertEngine
    from farmwatch.alerting.service import inhibit_rules, make_window
    from farmwatch.alerting.state import AlertDB
    from farmwatch.clock import SimClock

    now = time.time()
    start, end = _when(args.from_, now), _when(args.to, now) or now
    if start is None or not end > start:
        print("farmwatch rules test: --from must be before --to", file=sys.stderr)
        return EXIT_CONFIG
    step = parse_duration(args.step) if args.step else alerting.evaluation_interval
    store = _open_store(settings, readonly=True)
    try:
        scorer = None
        if settings.detect is not None and settings.detect.families:
            from farmwatch.detect.service import Scorer

            scorer = Scorer(settings.detect)  # the trained models score the replayed history; nothing is written
        extra = scorer.names() if scorer else set()
        window = make_window(rules, alerting, extra=extra, min_horizon=scorer.horizon() if scorer else 0.0)
        names = set().union(*(r.names() for r in rules)) | {"daq.run_state", "daq.run_state_since"} | extra
        if scorer:  # the models' scores of this replay, not what a service stored then
            names -= {"anomaly.score", "anomaly.surprise", "anomaly.explanation"}
        names = sorted(names)
        clock = SimClock(start)
        timers = Timers(tuple(alerting.group_by), alerting.group_wait, alerting.group_interval, alerting.repeat_interval,
                    alerting.new_alert_wait)
        engine = AlertEngine(rules, window, AlertDB(store), timers=timers, notifiers=["backtest"],
                             inhibits=inhibit_rules(alerting), clock=clock, persist=False)
        if scorer:
            scorer.window = window
            engine.before_rules.append(scorer.step)
        window.load(store, start - window.horizon, start, names)
        t, fired, notes = start, 0, 0
        while t <= end:
            window.load(store, t - step, t, names)
            window.prune(t)
            result = engine.evaluate(t)
            for ts, event, alert in result.events:
                if event in ("firing", "resolved"):
                    fired += event == "firing"
                    lbls = ",".join(f"{k}={v}" for k, v in alert.labels)
                    print(f"{_iso(ts)}  {event.upper():<8} {alert.rule} {{{lbls}}}  {alert.summary}")
            notes += len(result.notifications)
            t += step
    finally:
        store.close()
    print(f"{_iso(start)} → {_iso(end)}: {fired} alert(s) fired, {notes} notification(s) would have been sent")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    r = sub.add_parser("run", help="collect, evaluate the alert rules and notify, in one process")
    r.add_argument("-c", "--config", required=True)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("watch", help="evaluate the alert rules on the store and notify (split deployments)")
    w.add_argument("-c", "--config", required=True)
    w.set_defaults(func=cmd_watch)

    a = sub.add_parser("alerts", help="list active (and recent) alerts, or their history")
    a.add_argument("-c", "--config", required=True)
    a.add_argument("--all", action="store_true", help="also recently resolved alerts")
    a.add_argument("--history", action="store_true", help="every transition, oldest first")
    a.add_argument("--since", help="with --history: how far back (default 24h) or an ISO time")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=cmd_alerts)

    s = sub.add_parser("silence", help="mute alerts matching labels for a while")
    ssub = s.add_subparsers(dest="action", required=True)
    sa = ssub.add_parser("add", help="farmwatch silence add unit=hlt03 --for 2h --comment 'disk swap'")
    sa.add_argument("matchers", nargs="+", metavar="MATCHER", help="label=value, label=~regex, alertname=…")
    sa.add_argument("--for", dest="duration", required=True, help="how long, e.g. 2h")
    sa.add_argument("--comment", required=True, help="why (shown in chat and in the list)")
    sl = ssub.add_parser("list", help="active silences (--all: also expired)")
    sl.add_argument("--all", action="store_true")
    se = ssub.add_parser("expire", help="end a silence now")
    se.add_argument("id", help="silence id (or a unique prefix)")
    for p in (sa, sl, se):
        p.add_argument("-c", "--config", required=True)
        p.add_argument("--by", help="who (default: $FARMWATCH_USER or the login name)")
    s.set_defaults(func=cmd_silence)

    k = sub.add_parser("ack", help="acknowledge alerts (by fingerprint prefix or label matchers): no more reminders")
    k.add_argument("targets", nargs="+", metavar="FINGERPRINT|MATCHER")
    k.add_argument("-c", "--config", required=True)
    k.add_argument("--comment", default="", help="what you are doing about it")
    k.add_argument("--by", help="who (default: $FARMWATCH_USER or the login name)")
    k.set_defaults(func=cmd_ack)

    u = sub.add_parser("rules", help="check rule files, or replay stored data through them (backtest)")
    usub = u.add_subparsers(dest="action", required=True)
    uc = usub.add_parser("check", help="load and validate the rules (shipped + config + PATHs)")
    ut = usub.add_parser("test", help="replay stored data through the rules: what would have fired")
    ut.add_argument("--from", dest="from_", required=True, help="start: 2h (ago) or an ISO time")
    ut.add_argument("--to", help="end: duration ago, ISO time or now (default)")
    ut.add_argument("--step", help="evaluation step (default: the config's evaluation_interval)")
    for p in (uc, ut):
        p.add_argument("paths", nargs="*", metavar="PATH", help="rule files or folders (besides the config's)")
        p.add_argument("-c", "--config")
    u.set_defaults(func=cmd_rules)
