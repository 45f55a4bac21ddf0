"""``farmwatch demo``: the whole chain against simulated units, a real IOC and simulated logs."""

from __future__ import annotations

import argparse
from pathlib import Path

from farmwatch.service.logconfig import setup_logging


def cmd_demo(args: argparse.Namespace) -> int:
    from farmwatch.demo import run_demo  # the simulators: only this command imports them

    setup_logging("warning")
    return run_demo(speed=args.speed, out=Path(args.out))


def add_parsers(sub: argparse._SubParsersAction) -> None:
    d = sub.add_parser("demo", help="simulated HLT units and their logs under run control, collected, alerted on, "
                                    "with injected faults")
    d.add_argument("--speed", type=float, default=10.0,
                   help="simulated seconds per real second after the fast-forwarded start (default 10: 22 simulated "
                        "minutes in ~2 min; 0: as fast as possible)")
    d.add_argument("--out", default="demo-out", help="folder for the store, config, logs and report (default demo-out)")
    d.set_defaults(func=cmd_demo)


__all__ = ["add_parsers", "cmd_demo"]
