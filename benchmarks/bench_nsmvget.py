"""NSM source, method nsmvget: one poll of many variables with bounded concurrency.

The stand-in ``tests/nsm_standin/nsmvget`` (a real executable, started once per variable and cycle
exactly as the real tool would be) answers after ``--delay`` seconds (default 50 ms, set through
its $NSM_STANDIN_DATA file). ``NsmSource.poll()`` reads ``--vars`` variables (default 200:
20 nodes × 10 variables) with ``concurrency`` 1, 8 and 16; concurrency 1 (one call after the
other) is the baseline. Reported per concurrency (medians over ``--cycles`` polls): poll wall
time, whether it fits the ``--interval`` (10 s), CPU of this process and of the children
(``os.times`` children user+sys: every call is a process spawn), per call.

``--standin sh`` (the default) is a two-line POSIX shell script (``sleep``, then the documented
``<var> : <value>`` line): a start-up of a few ms, close to the compiled nsmvget, so the numbers show
farmwatch's own cost and the concurrency effect. ``--standin python`` uses the test suite's stand-in,
whose ~100 ms Python start-up per call makes a 2-core machine CPU-bound (200 calls ≈ 20 CPU-seconds).
Results: benchmarks/results/nsmvget.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

from farmwatch.config.loader import parse
from farmwatch.sources.nsm.source import NsmSource

HERE = Path(__file__).resolve().parent
STANDIN = HERE.parent / "tests" / "nsm_standin"


SH_STANDIN = """#!/bin/sh
# nsmvget stand-in for the benchmark: nsmvget <node> <var> -c <config> -n <name>
sleep {delay}
echo "$2 : 1.5"
"""


def bench(n_nodes: int, n_vars: int, concurrency: int, cycles: int, interval: float, tool: Path) -> dict:
    vars_ = [{"node": f"HLT{n:02d}", "var": f"v{v}"} for n in range(1, n_nodes + 1) for v in range(n_vars)]
    body = {"kind": "nsm", "method": "nsmvget", "interval": f"{interval:g}s", "timeout": "5s", "nsm_config": "hlt.conf",
            "nsmvget_path": str(tool), "nsmvlistget_path": str(STANDIN / "nsmvlistget"),
            "concurrency": concurrency, "vars": vars_}
    src = NsmSource("n", parse({"sources": {"n": body}}).sources["n"])
    rows = []
    try:
        for _ in range(cycles):
            t0, w0 = os.times(), time.perf_counter()
            batches = src.poll()
            t1, w1 = os.times(), time.perf_counter()
            up = sum(v for b in batches for (name, _), v in zip(b.keys, b.values) if name == "up")
            calls = len(vars_)
            rows.append({"wall": w1 - w0, "self_cpu": (t1.user - t0.user) + (t1.system - t0.system),
                         "children_cpu": (t1.children_user - t0.children_user) + (t1.children_system - t0.children_system),
                         "calls": calls, "up": up})
    finally:
        src.close()
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    calls = rows[0]["calls"]
    return {"concurrency": concurrency, "cycles": len(rows), "calls_per_poll": calls,
            "poll_wall_s_median": med("wall"), "poll_wall_s_max": max(r["wall"] for r in rows),
            "fits_interval": max(r["wall"] for r in rows) <= interval,
            "up_per_poll_min": min(r["up"] for r in rows),
            "self_cpu_s_per_poll_median": med("self_cpu"), "children_cpu_s_per_poll_median": med("children_cpu"),
            "cpu_ms_per_call_median": (med("self_cpu") + med("children_cpu")) / calls * 1000,
            "polls": rows}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", type=int, default=20)
    ap.add_argument("--vars-per-node", type=int, default=10)
    ap.add_argument("--delay", type=float, default=0.05, help="seconds every stand-in call takes to answer")
    ap.add_argument("--interval", type=float, default=10.0)
    ap.add_argument("--cycles", type=int, default=3)
    ap.add_argument("--concurrency", type=int, nargs="+", default=[1, 8, 16])
    ap.add_argument("--standin", choices=["sh", "python"], default="sh", help="which stand-in answers (see above)")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "nsmvget.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)

    with tempfile.TemporaryDirectory() as tmpdir:
        data = Path(tmpdir) / "nsm.json"
        nodes = {f"HLT{n:02d}": {f"v{v}": (float(v) if v % 2 else f"S{v}") for v in range(args.vars_per_node)}
                 for n in range(1, args.nodes + 1)}
        data.write_text(json.dumps({"config": "hlt.conf", "delay": args.delay, "nodes": nodes}))
        os.environ["NSM_STANDIN_DATA"] = str(data)
        tool = STANDIN / "nsmvget"
        if args.standin == "sh":
            tool = Path(tmpdir) / "nsmvget"
            tool.write_text(SH_STANDIN.format(delay=args.delay))
            tool.chmod(0o755)
        results = [bench(args.nodes, args.vars_per_node, c, args.cycles, args.interval, tool) for c in args.concurrency]

    base = next((r for r in results if r["concurrency"] == 1), results[0])
    result = {
        "benchmark": "nsmvget",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {"variables": args.nodes * args.vars_per_node, "nodes": args.nodes, "stand_in_delay_s": args.delay,
                  "interval_s": args.interval, "stand_in": {"sh": "POSIX sh script: sleep, then one value line",
                                                 "python": "tests/nsm_standin/nsmvget (python3 -I -S script)"}[args.standin]},
        "results": results,
        "baseline": "concurrency 1 (sequential calls)",
        "speedup_over_sequential": {str(r["concurrency"]): base["poll_wall_s_median"] / r["poll_wall_s_median"] for r in results},
        "notes": "Every variable and cycle spawns one process (as the real nsmvget method does); children CPU is the "
                 "stand-in's start-up, which a real nsmvget (C++ binary, plus an NSM connection) replaces with its own cost.",
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"{result['setup']['variables']} variables, stand-in delay {args.delay*1000:.0f} ms, interval {args.interval:g} s, {args.cycles} polls each")
    print(f"{'concurrency':>11} {'wall med':>9} {'wall max':>9} {'fits':>5} {'up':>4} {'cpu/call':>9} {'self cpu':>9} {'child cpu':>10} {'speedup':>8}")
    for r in results:
        print(f"{r['concurrency']:>11} {r['poll_wall_s_median']:8.2f}s {r['poll_wall_s_max']:8.2f}s {str(r['fits_interval']):>5} {r['up_per_poll_min']:4.0f} "
              f"{r['cpu_ms_per_call_median']:6.1f} ms {r['self_cpu_s_per_poll_median']:8.2f}s {r['children_cpu_s_per_poll_median']:9.2f}s "
              f"{result['speedup_over_sequential'][str(r['concurrency'])]:7.1f}x")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
