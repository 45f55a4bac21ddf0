"""What every command module shares: exit codes, the config option, time options, who is typing.

Exit codes (the same for every command; docs/operations.md has the table):

====  ==========================================================================================
0     done
1     a runtime failure: the store cannot be read, a model did not train, samples were dropped,
      a source of ``collect --once`` read nothing (credentials refused, no answer), nothing matched
      what ``ack``/``silence expire`` were given, ``status`` found problems
2     bad usage or a bad config (also an unset secret variable, a store folder that does not
      exist): one line on stderr says what and where; nothing was started
3     ``status``: no service answers at the metrics address
130   interrupted (Ctrl-C) before the command finished
====  ==========================================================================================
"""

from __future__ import annotations

import argparse
import getpass
import math
import os
import time
from datetime import datetime, timezone

from typing import TYPE_CHECKING

from farmwatch.config import DEFAULT_PATHS, ENV
from farmwatch.durations import parse_duration, parse_time

if TYPE_CHECKING:
    from farmwatch.config.loader import Settings

EXIT_OK, EXIT_FAIL, EXIT_USAGE, EXIT_UNREACHABLE, EXIT_INTERRUPTED = 0, 1, 2, 3, 130


class UsageError(Exception):
    """A command was given something it cannot use: one line, exit 2 (``main`` prints it)."""


CONFIG_HELP = (f"config file (default: ${ENV}, else " + " or ".join(str(p) for p in DEFAULT_PATHS) + ")")


def add_config(parser: argparse.ArgumentParser) -> None:
    """The ``-c/--config`` option every command that reads a config takes."""
    parser.add_argument("-c", "--config", metavar="FILE", help=CONFIG_HELP)


def load_settings(path: str | None) -> Settings:
    """The config (``-c``, ``$FARMWATCH_CONFIG`` or the default path), with farmwatch's own
    logging set up as it says."""
    from farmwatch.config.loader import load
    from farmwatch.service.logconfig import setup_logging

    settings = load(path)
    setup_logging(settings.log.level, settings.log.format)
    return settings


GROUPS = {"logs": "stored log records: search them (embedded full-text index or Elasticsearch), or list their "
                  "kinds of message (templates)"}
"""The commands whose sub-commands live in more than one command module, with their help."""


def subcommands(sub: argparse._SubParsersAction, name: str) -> argparse._SubParsersAction:
    """The sub-commands of the command ``name`` of ``GROUPS`` (``logs`` → ``logs search``, ``logs
    patterns``): made by the first command module that adds one, found by the others, so that the
    modules of one command need not import each other."""
    parser = sub.choices.get(name)
    if parser is None:
        parser = sub.add_parser(name, help=GROUPS[name])
        parser.add_subparsers(dest="action", required=True)
    return next(a for a in parser._actions if isinstance(a, argparse._SubParsersAction))


def time_arg(text: str) -> float:
    """argparse ``type`` of every time option: a duration ago, an ISO time or ``now``."""
    try:
        return parse_time(text, time.time())
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def duration_arg(text: str) -> float:
    """argparse ``type`` of every duration option (``--for 2h``, ``--step 30s``)."""
    try:
        return parse_duration(text)
    except ValueError as exc:
        raise argparse.ArgumentTypeError(str(exc)) from None


def user(given: str | None) -> str:
    """Who acts (silences, acks): ``--by``, else ``$FARMWATCH_USER``, else the login name."""
    return given or os.environ.get("FARMWATCH_USER") or getpass.getuser()


def iso(ts: float | None) -> str:
    """A time for people: ``2026-11-22 10:00:00Z`` (``-`` when there is none)."""
    if ts is None or (isinstance(ts, float) and math.isnan(ts)):
        return "-"
    return datetime.fromtimestamp(ts, timezone.utc).strftime("%Y-%m-%d %H:%M:%SZ")


__all__ = ["CONFIG_HELP", "EXIT_FAIL", "EXIT_INTERRUPTED", "EXIT_OK", "EXIT_UNREACHABLE", "EXIT_USAGE", "GROUPS",
           "UsageError", "add_config", "duration_arg", "iso", "load_settings", "subcommands", "time_arg", "user"]
