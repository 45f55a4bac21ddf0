"""Full-farm poll cycle of the HLT source, against the way b2hlt_monitor.py does it.

A simulated farm (default 20 units × 12 worker nodes × 20 worker processes ≈ 340 endpoints, plus
5% dead endpoints) runs in a separate process, so this process's CPU time is the source's alone.

farmwatch:  HltZmqSource.poll (send all, one deadline, parse, flatten, rates) + SQLiteStore.write
baseline:   "b2hlt_monitor way" on the healthy endpoints only (it would hang on a dead one):
            send `m` to all DEALERs, then a blocking recv on each in turn, json.loads, a flat
            dict keyed "address.section.key", and the pandas table it prints (split on ".",
            unstack). No store.

Cycles run at 1 Hz like the service. Results: benchmarks/results/hlt_poll.json.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import signal
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import logging

import pandas as pd
import zmq

from farmwatch.config.loader import load
from farmwatch.sources.hlt_zmq.source import HltZmqSource
from farmwatch.store import SQLiteStore

HERE = Path(__file__).resolve().parent


def start_farm(args: argparse.Namespace, tmp: Path) -> tuple[subprocess.Popen, Path]:
    cfg = tmp / "sim.toml"
    proc = subprocess.Popen(
        [sys.executable, "-m", "farmwatch.sim", "--units", str(args.units), "--nodes", str(args.nodes),
         "--workers", str(args.workers), "--dead-fraction", str(args.dead_fraction), "--write-config", str(cfg)],
        stdout=subprocess.DEVNULL,
    )
    deadline = time.monotonic() + 120
    while not cfg.exists() or not cfg.read_text().rstrip().endswith("]"):
        if proc.poll() is not None or time.monotonic() > deadline:
            raise SystemExit("the simulated farm did not start")
        time.sleep(0.2)
    time.sleep(1.0)
    return proc, cfg


def wait_next_second() -> None:
    time.sleep(1.0 - (time.time() % 1.0))


def bench_farmwatch(cfg: Path, db: Path, cycles: int) -> dict:
    settings = load(cfg)
    conf = settings.sources["hlt"]
    src = HltZmqSource("hlt", conf)
    store = SQLiteStore(db)
    rows = []
    try:
        for i in range(cycles + 2):
            wait_next_second()
            w0, c0 = time.perf_counter(), time.process_time()
            batches = src.poll()
            w1, c1 = time.perf_counter(), time.process_time()
            n = store.write(batches)
            w2, c2 = time.perf_counter(), time.process_time()
            up = sum(v for b in batches for (name, _), v in zip(b.keys, b.values) if name == "up")
            if i >= 2:  # the first two cycles create series and caches; reported separately below
                rows.append({"wall": w2 - w0, "cpu": c2 - c0, "poll_wall": w1 - w0, "poll_cpu": c1 - c0, "store_cpu": c2 - c1, "samples": n, "up": up})
            elif i == 0:
                first = {"wall": w2 - w0, "cpu": c2 - c0, "samples": n}
    finally:
        src.close()
        store.close()
    return {"first_cycle": first, "cycles": rows, "endpoints": len(conf.endpoints), "timeout": conf.timeout}


def bench_baseline(addresses: list[str], cycles: int) -> dict:
    ctx = zmq.Context()
    socks = {}
    for a in addresses:
        s = ctx.socket(zmq.DEALER)
        s.setsockopt(zmq.LINGER, 0)
        s.connect(a)
        socks[a] = s
    rows = []
    try:
        for i in range(cycles + 1):
            wait_next_second()
            w0, c0 = time.perf_counter(), time.process_time()
            for s in socks.values():
                s.send_multipart([b"m", b"", b""])
            flat = {}
            for a, s in socks.items():
                _, payload, _ = s.recv_multipart()  # blocking, one after the other
                for section, body in json.loads(payload.decode()).items():
                    for key, value in body.items():
                        flat[f"{a}.{section}.{key}"] = value.strip() if isinstance(value, str) else value
            table = pd.Series({tuple(k.split(".")): v for k, v in flat.items()}).unstack(0).fillna("-")
            w1, c1 = time.perf_counter(), time.process_time()
            if i >= 1:
                rows.append({"wall": w1 - w0, "cpu": c1 - c0, "values": len(flat), "table_cells": int(table.size)})
    finally:
        ctx.destroy(0)
    return {"cycles": rows, "endpoints": len(addresses)}


def median(rows: list[dict], key: str) -> float:
    return statistics.median(r[key] for r in rows)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--units", type=int, default=20)
    ap.add_argument("--nodes", type=int, default=12)
    ap.add_argument("--workers", type=int, default=20)
    ap.add_argument("--dead-fraction", type=float, default=0.05)
    ap.add_argument("--cycles", type=int, default=10)
    ap.add_argument("--out", type=Path, default=HERE / "results" / "hlt_poll.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)  # dead endpoints are expected here; their warnings are not the result

    with tempfile.TemporaryDirectory() as tmpdir:
        tmp = Path(tmpdir)
        farm, cfg = start_farm(args, tmp)
        try:
            fw = bench_farmwatch(cfg, tmp / "bench.db", args.cycles)
            # dead endpoints are the ones that never answered in any of three cycles
            settings = load(cfg)
            src = HltZmqSource("hlt", settings.sources["hlt"])
            try:
                answered = set()
                for _ in range(3):
                    wait_next_second()
                    for b in src.poll():
                        for (name, lbls), v in zip(b.keys, b.values):
                            if name == "up" and v == 1.0:
                                answered.add(lbls)
                healthy = [t.address for t in src.targets if t.labels in answered]
            finally:
                src.close()
            base = bench_baseline(healthy, args.cycles)
        finally:
            farm.send_signal(signal.SIGTERM)
            farm.wait(timeout=30)

    cyc = fw["cycles"]
    result = {
        "benchmark": "hlt_poll",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version, "zmq": zmq.zmq_version()},
        "farm": {"units": args.units, "worker_nodes": args.nodes, "workers_per_node": args.workers,
                 "endpoints": fw["endpoints"], "healthy_endpoints": len(healthy), "dead_endpoints": fw["endpoints"] - len(healthy),
                 "timeout_s": fw["timeout"]},
        "farmwatch": {
            "cycles": len(cyc),
            "samples_per_cycle": median(cyc, "samples"),
            "cycle_wall_s_median": median(cyc, "wall"),
            "cycle_wall_s_max": max(r["wall"] for r in cyc),
            "poll_wall_s_median": median(cyc, "poll_wall"),
            "poll_wall_s_max": max(r["poll_wall"] for r in cyc),
            "cycle_cpu_s_median": median(cyc, "cpu"),
            "poll_parse_flatten_cpu_s_median": median(cyc, "poll_cpu"),
            "store_cpu_s_median": median(cyc, "store_cpu"),
            "store_samples_per_cpu_s": median(cyc, "samples") / median(cyc, "store_cpu"),
            "first_cycle": fw["first_cycle"],
        },
        "baseline_b2hlt_monitor_way": {
            "cycles": len(base["cycles"]),
            "values_per_cycle": median(base["cycles"], "values"),
            "cycle_wall_s_median": median(base["cycles"], "wall"),
            "cycle_cpu_s_median": median(base["cycles"], "cpu"),
        },
        "targets": {"cycle_cpu_s": 0.25, "store_samples_per_s": 200_000},
    }
    result["ratio_cpu_farmwatch_over_baseline"] = result["farmwatch"]["cycle_cpu_s_median"] / result["baseline_b2hlt_monitor_way"]["cycle_cpu_s_median"]
    result["ok"] = {
        "cycle_cpu_within_target": result["farmwatch"]["cycle_cpu_s_median"] <= 0.25,
        "dead_endpoints_cost_at_most_the_timeout": result["farmwatch"]["poll_wall_s_max"] <= fw["timeout"] + 0.1,
        "store_ingest_within_target": result["farmwatch"]["store_samples_per_cpu_s"] >= 200_000,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    f, b = result["farmwatch"], result["baseline_b2hlt_monitor_way"]
    print(f"farm: {fw['endpoints']} endpoints ({result['farm']['dead_endpoints']} dead), {f['samples_per_cycle']:,.0f} samples/cycle")
    print(f"farmwatch  cycle: wall {f['cycle_wall_s_median']*1000:7.1f} ms (poll max {f['poll_wall_s_max']*1000:.0f}, timeout {fw['timeout']*1000:.0f}), cpu {f['cycle_cpu_s_median']*1000:7.1f} ms "
          f"(poll+parse+flatten {f['poll_parse_flatten_cpu_s_median']*1000:.1f}, store {f['store_cpu_s_median']*1000:.1f}; {f['store_samples_per_cpu_s']:,.0f} samples/s)")
    print(f"baseline   cycle: wall {b['cycle_wall_s_median']*1000:7.1f} ms, cpu {b['cycle_cpu_s_median']*1000:7.1f} ms (healthy endpoints only, no store)")
    print(f"ratio cpu farmwatch/baseline: {result['ratio_cpu_farmwatch_over_baseline']:.2f}; checks: {result['ok']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
