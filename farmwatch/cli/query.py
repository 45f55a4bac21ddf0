"""``farmwatch query``: stored samples of a series, as a table, CSV or JSON lines; raw or as
1-minute/10-minute rollups, from the embedded store or the TSDB that ``[remote_write]`` feeds."""

from __future__ import annotations

import argparse
import csv
import sys
import time

from farmwatch.cli.common import EXIT_OK, UsageError, add_config, load_settings, time_arg
from farmwatch.cli.output import dump_json, print_table

ROLLUP_STATS = ("min", "max", "last", "count")
"""The columns a rollup row has besides its mean (``value``)."""


def _format_ts(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def _open(settings, where: str):
    """The embedded store (read-only), or the Prometheus query API of ``[remote_write] query_url``."""
    from farmwatch.store import open_store

    if where == "local":
        return open_store(settings.store, readonly=True)
    from farmwatch.config.base import ConfigError
    from farmwatch.credentials import SecretError
    from farmwatch.store.remote.reader import open_reader

    if settings.remote_write is None or settings.remote_write.query_url is None:
        raise ConfigError([f"{settings.file}: remote_write.query_url: needed by --store remote (the TSDB's "
                           "Prometheus query API, e.g. http://vm01:8428)"])
    try:
        return open_reader(settings.remote_write)
    except SecretError as exc:
        raise ConfigError([f"{settings.file}: remote_write: {exc}"]) from None


def cmd_query(args: argparse.Namespace) -> int:
    from farmwatch.matchers import parse_matchers
    from farmwatch.store.rollup import choose

    settings = load_settings(args.config)
    try:
        matchers = parse_matchers(args.label)
    except ValueError as exc:
        raise UsageError(f"--label: {exc}") from None
    resolution = choose(args.since, None, time.time()) if args.resolution == "auto" else args.resolution
    store = _open(settings, args.store)
    try:
        if args.store == "local":  # rows without pandas: its import would be most of the command's time
            rows = store.rows(args.name, matchers, since=args.since, resolution=resolution, limit=args.limit)
        else:  # the TSDB's reader gives frames
            df = (store.query(args.name, matchers, since=args.since, limit=args.limit) if resolution == "raw"
                  else store.rollup(args.name, matchers, since=args.since, resolution=resolution))
            rows = list(df.itertuples(index=False))[:args.limit]
    finally:
        store.close()
    rolled = resolution != "raw"
    stats = ROLLUP_STATS if rolled else ()

    def value(row):  # a rollup's mean, a number, or a state value
        return row.state if not rolled and isinstance(row.state, str) else row.value

    out = sys.stdout
    if args.format == "json":
        for row in rows:
            doc = {"ts": _format_ts(row.ts), "name": row.name, "labels": row.labels, "value": value(row)}
            doc.update((k, int(row.count) if k == "count" else float(getattr(row, k))) for k in stats)
            out.write(dump_json(doc) + "\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["ts", "name", "labels", "value", *stats])
        for row in rows:
            w.writerow([_format_ts(row.ts), row.name, ",".join(f"{k}={v}" for k, v in row.labels.items()), value(row),
                        *(getattr(row, k) for k in stats)])
    else:
        from farmwatch.model import format_series

        def text(v) -> str:
            return v if isinstance(v, str) else f"{v:g}"

        title = f"{args.name} ({len(rows)} rows{f', {resolution} rollups' if rolled else ''})"
        print_table(title, ("ts", "series", "mean" if rolled else "value", *stats),
                    ((_format_ts(row.ts), format_series(row.name, tuple(sorted(row.labels.items()))), text(value(row)),
                      *(text(getattr(row, k)) for k in stats)) for row in rows),
                    wide=("series",))
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    q = sub.add_parser("query", help="print stored samples of a series")
    add_config(q)
    q.add_argument("name", help="series name, globs allowed (hlt.output.*)")
    q.add_argument("--label", action="append", default=[], metavar="K=V",
                   help="label matcher: k=v, k!=v (exact), k=~re, k!~re, k*=glob, k!*=glob")
    q.add_argument("--since", type=time_arg, metavar="TIME",
                   help="from: a duration ago (10m) or an ISO time (default: everything)")
    q.add_argument("--limit", type=int, default=None)
    q.add_argument("--store", choices=("local", "remote"), default="local",
                   help="the embedded store, or the TSDB of [remote_write] query_url (Prometheus query API)")
    q.add_argument("--resolution", choices=("auto", "raw", "1m", "10m"), default="auto",
                   help="raw samples or 1m/10m rollups (min/max/mean/last/count); auto: raw up to 6 h back, "
                        "1m up to 3 days, else 10m")
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_query)


__all__ = ["ROLLUP_STATS", "add_parsers", "cmd_query"]
