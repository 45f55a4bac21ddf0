"""The operator's alert commands: ``alerts`` (what is firing), ``silence`` and ``ack``.

They work on the store file the service uses, so a silence added here takes effect at the
service's next evaluation without any other channel.
"""

from __future__ import annotations

import argparse
import math
import sys
import time
from typing import TYPE_CHECKING, Any

from farmwatch.cli.common import (EXIT_FAIL, EXIT_OK, UsageError, add_config, duration_arg, iso, load_settings, time_arg,
                                  user)
from farmwatch.cli.output import dump_json, print_table
from farmwatch.durations import format_duration
from farmwatch.model import format_series

if TYPE_CHECKING:
    from farmwatch.alerting.state import AlertDB
    from farmwatch.model import Alert


def cmd_alerts(args: argparse.Namespace) -> int:
    from farmwatch.alerting.state import AlertDB
    from farmwatch.store import open_file

    if args.since is not None and not args.history:
        raise UsageError("--since goes with --history (the list shows the alerts active now; --all adds the "
                         "recently resolved ones)")
    settings = load_settings(args.config)
    store = open_file(settings.store, readonly=True)
    try:
        db = AlertDB(store)
        if args.history:
            rows = db.history(since=args.since if args.since is not None else time.time() - 86400.0)
            return _print_history(rows, args.format)
        alerts = db.alerts(states=None if args.all else ["pending", "firing"])
        _mute_marks_now(alerts, db, time.time())
    finally:
        store.close()
    if args.format == "json":
        from farmwatch.alerting.state import alert_doc

        for a in alerts:
            print(dump_json(alert_doc(a)))
        return EXIT_OK
    now = time.time()
    rows = []
    for a in alerts:
        since = a.starts_at if a.state.value == "firing" else a.active_since
        if a.state.value == "resolved":
            since = a.ends_at
        notes = "; ".join(x for x in (
            a.silenced_by and f"silenced ({a.silenced_by})", a.inhibited_by and f"inhibited by {a.inhibited_by}",
            a.acked_by and f"acked by {a.acked_by}") if x)
        age = "" if since is None or math.isnan(since) else f" ({format_duration(max(0.0, now - since))} ago)"
        rows.append((a.fingerprint[:8], a.state.value, a.severity, format_series(a.rule, a.labels), iso(since) + age,
                     a.summary, notes))
    print_table(f"alerts ({len(alerts)})", ("id", "state", "severity", "alert", "since", "summary", "notes"), rows,
                wide=("alert", "since", "summary", "notes"))
    return EXIT_OK


def _mute_marks_now(alerts: list[Alert], db: AlertDB, now: float) -> None:
    """Silences and acks as the database holds them now, not as of the service's last evaluation:
    an operator who just silenced or acked an alert sees it at once."""
    from farmwatch.alerting.muting import silenced_by

    silences, acks = db.silences(now), db.acks()
    for a in alerts:
        if a.state.value == "resolved":
            continue  # resolved alerts keep the marks they had
        a.silenced_by = silenced_by(a, silences)
        ack = acks.get(a.fingerprint)
        if ack is not None:
            a.acked_by, a.acked_at = ack.by, ack.at


def _print_history(rows: list[dict[str, Any]], fmt: str) -> int:
    for row in rows:
        if fmt == "json":
            print(dump_json(row))
        else:
            lbls = ",".join(f"{k}={v}" for k, v in row["labels"].items())
            print(f"{iso(row['ts'])}  {row['event']:<10} {row['rule']} {{{lbls}}}  {row['summary']}")
    return EXIT_OK


def cmd_silence(args: argparse.Namespace) -> int:
    from farmwatch.alerting.state import AlertDB
    from farmwatch.store import open_file

    settings = load_settings(args.config)
    now = time.time()
    store = open_file(settings.store, readonly=args.action == "list")
    try:
        db = AlertDB(store)
        if args.action == "add":
            try:
                silence = db.add_silence(args.matchers, now, now + args.duration, user(args.by), args.comment)
            except ValueError as exc:
                raise UsageError(str(exc)) from None
            print(f"silence {silence.id}: {' '.join(silence.matchers)} until {iso(silence.ends_at)} ({args.comment})")
        elif args.action == "expire":
            if not db.expire_silence(args.id, now):
                print(f"farmwatch silence expire: no active silence {args.id!r} (or the prefix is ambiguous)",
                      file=sys.stderr)
                return EXIT_FAIL
            print(f"silence {args.id} expired")
        else:
            for s in db.silences(None if args.all else now):
                state = "active" if s.active(now) else ("pending" if s.starts_at > now else "expired")
                print(f"{s.id}  {state:<8} {' '.join(s.matchers)}  {iso(s.starts_at)} → {iso(s.ends_at)}"
                      f"  by {s.created_by}: {s.comment}")
    finally:
        store.close()
    return EXIT_OK


def cmd_ack(args: argparse.Namespace) -> int:
    """Acknowledge alerts by fingerprint (prefix) or by matchers: no more reminders, the message says who."""
    from farmwatch.alerting.state import AlertDB, label_map
    from farmwatch.matchers import parse_matchers
    from farmwatch.store import open_file

    settings = load_settings(args.config)
    store = open_file(settings.store)
    try:
        db = AlertDB(store)
        active = db.alerts(states=["pending", "firing"])
        matchers = [m for m in args.targets if any(op in m for op in "=~!")]
        prefixes = [t for t in args.targets if t not in matchers]
        try:
            parsed = parse_matchers(matchers)
        except ValueError as exc:
            raise UsageError(str(exc)) from None
        chosen = [a for a in active
                  if (prefixes and any(a.fingerprint.startswith(p) for p in prefixes))
                  or (parsed and all(m.matches(label_map(a)) for m in parsed))]
        if not chosen:
            print("farmwatch ack: no active alert matches " + " ".join(args.targets), file=sys.stderr)
            return EXIT_FAIL
        db.ack([a.fingerprint for a in chosen], user(args.by), time.time(), args.comment)
    finally:
        store.close()
    for a in chosen:
        print(f"acknowledged {format_series(a.rule, a.labels)} (id {a.fingerprint[:8]}) by {user(args.by)}"
              + (f": {args.comment}" if args.comment else ""))
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    a = sub.add_parser("alerts", help="list active (and recent) alerts, or their history")
    add_config(a)
    a.add_argument("--all", action="store_true", help="also recently resolved alerts")
    a.add_argument("--history", action="store_true", help="every transition, oldest first")
    a.add_argument("--since", type=time_arg, metavar="TIME",
                   help="with --history: from a duration ago (default 24h) or an ISO time")
    a.add_argument("--format", choices=("table", "json"), default="table")
    a.set_defaults(func=cmd_alerts)

    s = sub.add_parser("silence", help="mute alerts matching labels for a while")
    ssub = s.add_subparsers(dest="action", required=True)
    sa = ssub.add_parser("add", help="farmwatch silence add unit=hlt03 --for 2h --comment 'disk swap'")
    sa.add_argument("matchers", nargs="+", metavar="MATCHER", help="label=value, label=~regex, alertname=…")
    sa.add_argument("--for", dest="duration", type=duration_arg, required=True, help="how long, e.g. 2h")
    sa.add_argument("--comment", required=True, help="why (shown in chat and in the list)")
    sl = ssub.add_parser("list", help="active silences (--all: also expired)")
    sl.add_argument("--all", action="store_true")
    se = ssub.add_parser("expire", help="end a silence now")
    se.add_argument("id", help="silence id (or a unique prefix)")
    for p in (sa, sl, se):
        add_config(p)
        p.add_argument("--by", help="who (default: $FARMWATCH_USER or the login name)")
    s.set_defaults(func=cmd_silence)

    k = sub.add_parser("ack", help="acknowledge alerts (by fingerprint prefix or label matchers): no more reminders")
    k.add_argument("targets", nargs="+", metavar="FINGERPRINT|MATCHER")
    add_config(k)
    k.add_argument("--comment", default="", help="what you are doing about it")
    k.add_argument("--by", help="who (default: $FARMWATCH_USER or the login name)")
    k.set_defaults(func=cmd_ack)


__all__ = ["add_parsers", "cmd_ack", "cmd_alerts", "cmd_silence"]
