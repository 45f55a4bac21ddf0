"""``farmwatch top``: a live view of the HLT units of a config, polled directly (no store)."""

from __future__ import annotations

import argparse
import os
import select
import sys
import threading
from contextlib import contextmanager
from datetime import datetime
from typing import Iterator

from farmwatch.cli.common import EXIT_OK, add_config, load_settings


def cmd_top(args: argparse.Namespace) -> int:
    from rich.console import Console
    from rich.live import Live

    from farmwatch.config.base import ConfigError
    from farmwatch.overview import LatestValues, render, summarize
    from farmwatch.service.assemble import build_sources
    from farmwatch.service.signals import stop_on_signals

    settings = load_settings(args.config)
    sources = [s for s in build_sources(settings) if s.config.kind == "hlt_zmq"]
    if not sources:
        raise ConfigError([f"{settings.file}: no hlt_zmq source to show"])
    latest = LatestValues()
    console = Console()
    stop = stop_on_signals()
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
        with Live(console=console, auto_refresh=False, screen=False) as live, _quit_on_q(stop):
            while not stop.is_set():
                cycle()
                live.update(render(summarize(latest.snapshot()), title=f"farmwatch top — {datetime.now():%H:%M:%S}"),
                            refresh=True)
                stop.wait(interval)
    finally:
        for s in sources:
            s.close()
    return EXIT_OK


@contextmanager
def _quit_on_q(stop: threading.Event) -> Iterator[None]:
    """While the live view runs on a terminal: the key ``q`` sets ``stop``, as in top(1). The
    terminal is put in cbreak mode (keys arrive without Enter) and restored afterwards."""
    if not sys.stdin.isatty():
        yield
        return
    import termios
    import tty

    fd = sys.stdin.fileno()
    saved = termios.tcgetattr(fd)

    def keys() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([fd], [], [], 0.2)
            if ready and os.read(fd, 1) in (b"q", b"Q"):
                stop.set()

    tty.setcbreak(fd)
    reader = threading.Thread(target=keys, name="top-keys", daemon=True)
    reader.start()
    try:
        yield
    finally:
        stop.set()
        reader.join(timeout=1.0)
        termios.tcsetattr(fd, termios.TCSADRAIN, saved)


def add_parsers(sub: argparse._SubParsersAction) -> None:
    t = sub.add_parser("top", help="live view of the HLT units in the config")
    add_config(t)
    t.add_argument("--once", action="store_true", help="print one snapshot and exit (the live view quits on q or Ctrl-C)")
    t.set_defaults(func=cmd_top)


__all__ = ["add_parsers", "cmd_top"]
