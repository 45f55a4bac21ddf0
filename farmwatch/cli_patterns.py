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
import time
from datetime import datetime, timezone

import orjson

from farmwatch.cli import EXIT_CONFIG, EXIT_OK, _load, _open_store
from farmwatch.cli_logs import _CONTROL


def _utc(ts: float | None) -> str:
    return "-" if ts is None else datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


def _safe(text: str | None) -> str:
    return _CONTROL.sub(lambda m: "\\x%02x" % ord(m.group()), text or "").replace("\n", " ⏎ ")


def cmd_logs_patterns(args: argparse.Namespace) -> int:
    from farmwatch.cli_alerts import _when
    from farmwatch.logtemplates import TemplateStore

    settings = _load(args.config)
    now = time.time()
    try:
        since, until = _when(args.since, now), _when(args.until, now)
    except ValueError as exc:
        print(f"farmwatch logs patterns: {exc}", file=sys.stderr)
        return EXIT_CONFIG
    store = _open_store(settings, readonly=True)
    try:
        rows = TemplateStore(store).patterns(since=since, until=until, host=args.host,
                                             level=(args.level or "").split(","), new=args.new, limit=args.limit)
    finally:
        store.close()
    out = sys.stdout
    if args.format == "json":
        for r in rows:
            out.write(orjson.dumps({**r, "first": _utc(r["first"]), "last": _utc(r["last"]),
                                    "first_seen": _utc(r["first_seen"])}).decode() + "\n")
        return EXIT_OK
    if not rows:
        out.write("no records with templates in that range\n")
        return EXIT_OK
    for r in rows:
        hosts = ",".join(r["hosts"][:5]) + (f" (+{len(r['hosts']) - 5})" if len(r["hosts"]) > 5 else "")
        new = "  NEW" if r["first_seen"] is not None and since is not None and r["first_seen"] >= since else ""
        out.write(f"{r['count']:>8}  {_safe(r['template'])}{new}\n"
                  f"          id {r['id']} · {','.join(r['levels']) or '-'} · {_utc(r['first'])} – {_utc(r['last'])}"
                  f" · {hosts}\n          e.g. {_safe(r['example'])[:300]}\n")
    out.flush()
    return EXIT_OK


def add_parser(lsub: argparse._SubParsersAction) -> None:
    p = lsub.add_parser("patterns", help="farmwatch logs patterns --since 1h --level error,fatal --new")
    p.add_argument("-c", "--config", required=True)
    p.add_argument("--since", default="1h", help="how far back (1h, the default) or an ISO time")
    p.add_argument("--until", help="up to: duration ago, ISO time or now")
    p.add_argument("--host", help="host name glob, e.g. 'hltwk0*'")
    p.add_argument("--level", help="level(s), e.g. error or error,fatal")
    p.add_argument("--new", action="store_true", help="only templates first seen in the range")
    p.add_argument("--limit", type=int, default=50, help="at most this many templates (default 50)")
    p.add_argument("--format", choices=("text", "json"), default="text")
    p.set_defaults(func=cmd_logs_patterns)
