"""The ``farmwatch`` command (``python -m farmwatch`` is the same): parse, dispatch, and the one
error path every command shares.

Each command group is a module of this package with ``add_parsers``; the modules import only
``farmwatch.cli.common`` of each other, and their heavy imports (pandas, the store, the alerting
pipeline) inside the commands, so that parsing the command line costs almost nothing.
Exit codes: ``farmwatch.cli.common``.
"""

from __future__ import annotations

import argparse
import os
import sys
from typing import NoReturn, Sequence

from farmwatch import __version__
from farmwatch.cli import alerts, anomaly, configuration, demo, logsearch, patterns, query, rules, services, status, top
from farmwatch.cli.common import EXIT_FAIL, EXIT_INTERRUPTED, EXIT_OK, EXIT_USAGE, UsageError

COMMAND_GROUPS = (demo, services, top, query, configuration, alerts, rules, logsearch, patterns, anomaly, status)


class _Parser(argparse.ArgumentParser):
    """argparse, but a usage error is one line (what and how to get help) and exit 2."""

    def error(self, message: str) -> NoReturn:
        self.exit(EXIT_USAGE, f"{self.prog}: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    p = _Parser(prog="farmwatch", description="Monitoring and alerting for the Belle II HLT farm.")
    p.add_argument("--version", action="version", version=f"farmwatch {__version__}")
    sub = p.add_subparsers(dest="command", required=True, metavar="COMMAND", parser_class=_Parser)
    for group in COMMAND_GROUPS:
        group.add_parsers(sub)
    return p


def main(argv: Sequence[str] | None = None) -> int:
    from farmwatch.config.base import ConfigError

    args = build_parser().parse_args(argv)
    prog = " ".join(["farmwatch", args.command] + ([args.action] if getattr(args, "action", None) else []))
    try:
        code = args.func(args)
        sys.stdout.flush()  # here, so that a closed pipe is met by the handler below
        return code
    except ConfigError as exc:
        for line in exc.problems:
            print(line, file=sys.stderr)
        return EXIT_USAGE
    except UsageError as exc:
        print(f"{prog}: {exc}", file=sys.stderr)
        return EXIT_USAGE
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except BrokenPipeError:
        _quiet_stdout()
        return EXIT_OK
    except Exception as exc:  # last resort: one line, not a traceback, for errors users cause
        from farmwatch.store import StoreError

        if isinstance(exc, StoreError):
            print(f"farmwatch: {exc}", file=sys.stderr)
            return EXIT_FAIL
        raise


def _quiet_stdout() -> None:
    """The reader of our output went away (``| head``): point stdout at /dev/null so that the
    interpreter's final flush does not complain about the closed pipe."""
    devnull = os.open(os.devnull, os.O_WRONLY)
    os.dup2(devnull, sys.stdout.fileno())


__all__ = ["COMMAND_GROUPS", "build_parser", "main"]
