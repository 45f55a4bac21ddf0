"""``farmwatch logs search``: find log records from a shell, in whichever store the config names.

With an ``[elastic]`` section the query goes to Elasticsearch, otherwise to the embedded store's
full-text index; both take the same query (words that must all occur, ``"phrases"``,
``prefix*``, ``-excluded``) and filters. ``--follow`` keeps printing new matching records, like
``tail -f``. Log text comes from the farm: control characters are escaped before printing so a
line cannot move the cursor or recolour the terminal.
"""

from __future__ import annotations

import argparse
import sys
import time
from datetime import datetime, timezone
from typing import TYPE_CHECKING, Any, Iterable

import orjson

from farmwatch.cli.common import EXIT_OK, EXIT_USAGE, add_config, load_settings, subcommands, time_arg
from farmwatch.cli.output import printable
from farmwatch.model import LogRecord

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings
    from farmwatch.store.elastic.config import ElasticConfig

def _text(record: LogRecord) -> str:
    when = datetime.fromtimestamp(record.ts, timezone.utc).strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"
    message = printable(record.message).replace("\n", "\n    ")
    level = (record.level or "-").upper()
    return f"{when} {record.host} {record.service} {level:<7} {message}"


def _json(record: LogRecord) -> str:
    doc = {"@timestamp": datetime.fromtimestamp(record.ts, timezone.utc).isoformat().replace("+00:00", "Z"),
           "host.name": record.host, "service.name": record.service, "log.level": record.level,
           "message": record.message, **record.fields}
    return orjson.dumps(doc, default=str).decode()


def _print(records: Iterable[LogRecord], fmt: str) -> None:
    out = sys.stdout
    show = _json if fmt == "json" else _text
    for r in records:
        out.write(show(r) + "\n")
    out.flush()


def cmd_logs_search(args: argparse.Namespace) -> int:
    settings = load_settings(args.config)
    since, until = args.since, args.until
    filters = {"host": args.host, "service": args.service, "level": args.level}
    cfg = settings.elastic if args.store != "sqlite" else None
    if args.store == "elastic" and cfg is None:
        print(f"farmwatch logs search: {settings.file} has no [elastic] section", file=sys.stderr)
        return EXIT_USAGE
    if cfg is not None:
        return _search_elastic(cfg, args, since, until, filters)
    return _search_sqlite(settings, args, since, until, filters)


def _search_sqlite(settings: Settings, args: argparse.Namespace, since: float | None, until: float | None,
                   filters: dict[str, Any]) -> int:
    from farmwatch.store import open_file
    from farmwatch.service.signals import stop_on_signals
    from farmwatch.store.logs import LogStore

    store = open_file(settings.store, readonly=True)
    try:
        logs = LogStore(store)
        try:
            _, last_id = logs.after(None)
            found = logs.search(args.query, since=since, until=until, limit=args.limit, **filters)
        except ValueError as exc:
            print(f"farmwatch logs search: {exc}", file=sys.stderr)
            return EXIT_USAGE
        _print(reversed(found), args.format)  # oldest first, as a log reads
        if not args.follow:
            return EXIT_OK
        stop = stop_on_signals()
        while not stop.is_set():
            stop.wait(args.interval)
            new, last_id = logs.after(last_id, args.query, **filters)
            _print(new, args.format)
    finally:
        store.close()
    return EXIT_OK


def _search_elastic(cfg: ElasticConfig, args: argparse.Namespace, since: float | None, until: float | None,
                    filters: dict[str, Any]) -> int:
    from farmwatch.service.signals import stop_on_signals
    from farmwatch.store.elastic.store import ElasticStore

    es = ElasticStore(cfg)
    try:
        found = es.search(args.query, since=since, until=until, limit=args.limit, **filters)
        _print(reversed(found), args.format)
        if args.follow:
            stop = stop_on_signals()
            start = max([r.ts for r in found], default=time.time())
            for record in es.follow(args.query, since=start, poll=args.interval, stop=stop, **filters):
                _print([record], args.format)
    finally:
        es.close()
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    lsub = subcommands(sub, "logs")
    s = lsub.add_parser("search", help="farmwatch logs search 'ERROR worker' --host 'hltwk0*' --since 1h")
    s.add_argument("query", nargs="?", default="",
                   help='words that must all occur (message, level, host, service), "a phrase", prefix*, -excluded')
    add_config(s)
    s.add_argument("--host", help="host name glob, e.g. 'hltwk0*'")
    s.add_argument("--service", help="service name glob")
    s.add_argument("--level", help="level(s), e.g. error or error,fatal")
    s.add_argument("--since", type=time_arg, metavar="TIME", help="from: a duration ago (1h) or an ISO time")
    s.add_argument("--until", type=time_arg, metavar="TIME", help="up to: a duration ago, an ISO time or now")
    s.add_argument("--limit", type=int, default=100, help="at most this many (the newest; default 100)")
    s.add_argument("--format", choices=("text", "json"), default="text")
    s.add_argument("--follow", action="store_true", help="keep printing new matching records (Ctrl-C stops)")
    s.add_argument("--interval", type=float, default=1.0, help=argparse.SUPPRESS)
    s.add_argument("--store", choices=("auto", "sqlite", "elastic"), default="auto",
                   help="where to search (default: Elasticsearch when configured, else the embedded store)")
    s.set_defaults(func=cmd_logs_search)


__all__ = ["add_parsers", "cmd_logs_search"]
