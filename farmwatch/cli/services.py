"""The services: ``collect`` (sources → store), ``run`` (everything in one process) and ``watch``
(rules and delivery on a store that collectors write). All three are the same lifecycle
(``farmwatch.service.lifecycle.serve``): SIGTERM/SIGINT stop after flushing, SIGHUP reloads the
config without losing a cycle's data."""

from __future__ import annotations

import argparse
import logging
from typing import TYPE_CHECKING, Sequence

from farmwatch.cli.common import EXIT_FAIL, EXIT_OK, add_config, load_settings

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings

log = logging.getLogger("farmwatch")


def cmd_collect(args: argparse.Namespace) -> int:
    """The configured sources into the store, until SIGTERM; ``--once`` is one cycle for cron."""
    from farmwatch.service.jobs import CollectJob
    from farmwatch.service.lifecycle import serve

    settings = load_settings(args.config)
    if args.once:
        return _collect_once(settings, args.source)
    totals = serve("collect", settings.file, settings, lambda st, _store, _reloaded: CollectJob(st, args.source),
                   reopen_store=True)
    return EXIT_OK if totals.dropped == 0 else EXIT_FAIL


def _collect_once(settings: Settings, only: Sequence[str]) -> int:
    """One cycle (cron); with ``[remote_write]``, what it queued is sent before the command ends."""
    from farmwatch.service.assemble import build_sources, log_sinks
    from farmwatch.service.jobs import RemoteSinks
    from farmwatch.service.runner import Runner
    from farmwatch.service.selfmetrics import instance
    from farmwatch.store import open_store

    sources = build_sources(settings, only)
    try:
        store = open_store(settings.store)
    except BaseException:
        for s in sources:
            s.close()
        raise
    remote = RemoteSinks(settings, sources)
    try:
        runner = Runner(sources, store, log_sinks=log_sinks(settings), sample_sinks=remote.start(store),
                        instance=instance(settings, only), once=True)
        n = runner.run_once()
        log.info("wrote %d samples to %s", n, settings.store.path)
        failed = [(s.name, s.failure()) for s in sources if s.failure()]
    finally:
        remote.close(final=True)
        for s in sources:
            s.close()
        store.close()
    for name, why in failed:  # cron mails this; the source logged the details
        log.error("source %s read nothing in this run: %s", name, why)
    return EXIT_OK if runner.dropped == 0 and not failed else EXIT_FAIL


def cmd_run(args: argparse.Namespace) -> int:
    """Sources, rules and delivery in one process (the alert state lives in the store)."""
    from farmwatch.service.jobs import RunJob
    from farmwatch.service.lifecycle import serve

    settings = load_settings(args.config)
    serve("run", settings.file, settings, RunJob)
    return EXIT_OK


def cmd_watch(args: argparse.Namespace) -> int:
    """Rules and delivery reading from the store that separate collectors write."""
    from farmwatch.service.jobs import WatchJob
    from farmwatch.service.lifecycle import serve

    settings = load_settings(args.config)
    serve("watch", settings.file, settings, lambda st, store, _reloaded: WatchJob(st, store))
    return EXIT_OK


def add_parsers(sub: argparse._SubParsersAction) -> None:
    c = sub.add_parser("collect", help="run the configured sources and write to the store")
    add_config(c)
    c.add_argument("--once", action="store_true", help="one cycle of every source, then exit (cron)")
    c.add_argument("--source", action="append", default=[], help="only this source (repeatable)")
    c.set_defaults(func=cmd_collect)

    r = sub.add_parser("run", help="collect, evaluate the alert rules and notify, in one process")
    add_config(r)
    r.set_defaults(func=cmd_run)

    w = sub.add_parser("watch", help="evaluate the alert rules on the store and notify (split deployments)")
    add_config(w)
    w.set_defaults(func=cmd_watch)


__all__ = ["add_parsers", "cmd_collect", "cmd_run", "cmd_watch"]
