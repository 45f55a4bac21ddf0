"""``farmwatch logs patterns``: the kinds of message the stored records are, with counts.

Every record carries its message template (``farmwatch.logtemplates``); this groups the records of
a time range by template, most frequent first, with when each was first and last seen in the
range, on which hosts, and one example line. ``--new`` keeps the templates first seen in the range
(never before, in this store): what changed. Answered from the embedded store (in Kibana, the same
is a terms aggregation on ``log.template.id``).
"""

from __future__ import annotations

import argparse
import sys

from farmwatch.cli.common import EXIT_OK, add_config, iso, load_settings, subcommands, time_arg
from farmwatch.cli.output import dump_json, printable


def _line(text: str | None) -> str:
    return printable(text or "").replace("\n", " ⏎ ")


def cmd_logs_patterns(args: argparse.Namespace) -> int:
    from farmwatch.logtemplates import TemplateStore
    from farmwatch.store import open_store

    settings = load_settings(args.config)
    store = open_store(settings.store, readonly=True)
    try:
        rows = TemplateStore(store).patterns(since=args.since, until=args.until, host=args.host,
                                             level=(args.level or "").split(","), new=args.new, limit=args.limit)
    finally:
        store.close()
    out = sys.stdout
    if args.format == "json":
        for r in rows:
            out.write(dump_json({**r, "first": iso(r["first"]), "last": iso(r["last"]),
                                 "first_seen": iso(r["first_seen"])}) + "\n")
        return EXIT_OK
    if not rows:
        out.write("no records with templates in that range\n")
        return EXIT_OK
    for r in rows:
        hosts = ",".join(r["hosts"][:5]) + (f" (+{len(r['hosts']) - 5})" if len(r["hosts"]) > 5 else "")
        new = "  NEW" if r["first_seen"] is not None and args.since is not None and r["first_seen"] >= args.since else ""
        out.write(f"{r['count']:>8}  {_line(r['template'])}{new}\n"
                  f"          id {r['id']} · {','.join(r['levels']) or '-'} · {iso(r['first'])} – {iso(r['last'])}"
                  f" · {hosts}\n          e.g. {_line(r['example'])[:300]}\n")
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    p = subcommands(sub, "logs").add_parser(
        "patterns", help="farmwatch logs patterns --since 1h --level error,fatal --new: the kinds of message, counted")
    add_config(p)
    p.add_argument("--since", type=time_arg, default="1h", metavar="TIME",
                   help="from: a duration ago (default 1h) or an ISO time")
    p.add_argument("--until", type=time_arg, metavar="TIME", help="up to: a duration ago, an ISO time or now")
    p.add_argument("--host", help="host name glob, e.g. 'hltwk0*'")
    p.add_argument("--level", help="level(s), e.g. error or error,fatal")
    p.add_argument("--new", action="store_true", help="only templates first seen in the range")
    p.add_argument("--limit", type=int, default=50, help="at most this many templates (default 50)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_logs_patterns)


__all__ = ["add_parsers", "cmd_logs_patterns"]
