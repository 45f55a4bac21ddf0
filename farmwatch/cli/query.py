"""``farmwatch query``: stored samples of a series, as a table, CSV or JSON lines."""

from __future__ import annotations

import argparse
import csv
import sys

from farmwatch.cli.common import EXIT_OK, UsageError, add_config, load_settings, time_arg
from farmwatch.cli.output import dump_json, print_table


def _format_ts(ts) -> str:
    return ts.strftime("%Y-%m-%dT%H:%M:%S.%f")[:-3] + "Z"


def cmd_query(args: argparse.Namespace) -> int:
    from farmwatch.matchers import parse_matchers
    from farmwatch.store import open_store

    settings = load_settings(args.config)
    try:
        matchers = parse_matchers(args.label)
    except ValueError as exc:
        raise UsageError(f"--label: {exc}") from None
    store = open_store(settings.store, readonly=True)
    try:
        df = store.query(args.name, matchers, since=args.since, limit=args.limit)
    finally:
        store.close()
    out = sys.stdout
    if args.format == "json":
        for row in df.itertuples(index=False):
            value = row.state if isinstance(row.state, str) else row.value
            out.write(dump_json({"ts": _format_ts(row.ts), "name": row.name, "labels": row.labels, "value": value}) + "\n")
    elif args.format == "csv":
        w = csv.writer(out)
        w.writerow(["ts", "name", "labels", "value"])
        for row in df.itertuples(index=False):
            w.writerow([_format_ts(row.ts), row.name, ",".join(f"{k}={v}" for k, v in row.labels.items()),
                        row.state if isinstance(row.state, str) else row.value])
    else:
        from farmwatch.model import format_series

        print_table(f"{args.name} ({len(df)} rows)", ("ts", "series", "value"),
                    ((_format_ts(row.ts), format_series(row.name, tuple(sorted(row.labels.items()))),
                      row.state if isinstance(row.state, str) else f"{row.value:g}") for row in df.itertuples(index=False)),
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
    q.add_argument("--format", choices=("table", "csv", "json"), default="table")
    q.set_defaults(func=cmd_query)


__all__ = ["add_parsers", "cmd_query"]
