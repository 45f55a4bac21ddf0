"""``python -m farmwatch.sim``: a simulated farm in its own process (demo, benchmarks).

Writes a complete farmwatch config pointing at the farm, prints one line saying where it listens
once every socket is bound, and runs until SIGTERM or SIGINT (exit code 0). Without
``--write-config`` the config goes to stdout and that line to stderr, so stdout can be redirected
into a config file.
"""

from __future__ import annotations

import argparse
import signal
import sys
import threading
from pathlib import Path

from farmwatch.sim.farm import SimFarm


def parse_args(argv: list[str] | None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="python -m farmwatch.sim",
                                     description="Simulated HLT units on loopback monitor ports.")
    parser.add_argument("--units", type=int, default=3, help="HLT units (default 3)")
    parser.add_argument("--nodes", type=int, default=4, help="worker nodes per unit (default 4)")
    parser.add_argument("--workers", type=int, default=8, help="worker processes per node (default 8)")
    parser.add_argument("--dead-fraction", type=float, default=0.0,
                        help="share of config entries pointing at ports where nothing listens")
    parser.add_argument("--input-rate", type=float, default=1000.0, help="events/s per unit (default 1000)")
    parser.add_argument("--seed", type=int, default=0, help="seed for pids and sizes (default 0)")
    parser.add_argument("--host", default="127.0.0.1", help="address to bind (default 127.0.0.1)")
    parser.add_argument("--write-config", metavar="PATH", type=Path,
                        help="write the farmwatch config here instead of printing it")
    return parser.parse_args(argv)


def config_text(farm: SimFarm) -> str:
    return '[store]\npath = "farmwatch.db"\n\n' + farm.config_toml()


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if args.units < 1 or args.nodes < 1 or args.workers < 1 or not 0 <= args.dead_fraction < 1:
        print("python -m farmwatch.sim: --units, --nodes and --workers must be >= 1 and "
              "--dead-fraction in [0, 1)", file=sys.stderr)
        return 2
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    farm = SimFarm(args.units, args.nodes, args.workers, args.dead_fraction,
                   input_rate=args.input_rate, host=args.host, seed=args.seed).start()
    try:
        endpoints = farm.endpoints
        if args.write_config:
            args.write_config.write_text(config_text(farm))
            where, status = f"config written to {args.write_config}", sys.stdout
        else:
            sys.stdout.write(config_text(farm))
            sys.stdout.flush()
            where, status = "config on stdout", sys.stderr
        print(f"farmwatch.sim: {args.units} unit(s), {len(endpoints)} endpoint(s) "
              f"({len(farm.dead_endpoints)} dead) listening on {args.host}; {where}", file=status, flush=True)
        while not done.wait(0.5):
            pass
    finally:
        farm.stop()
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
