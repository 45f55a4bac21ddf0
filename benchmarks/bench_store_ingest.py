"""Ingest rate of ``SQLiteStore.write`` for HLT-farm poll cycles, against the naive way, same run.

Workload: 50,000 series (10 units × 25 worker nodes × 10 processes × 20 metrics), one timestamp
per poll cycle, 10 cycles into a fresh store file, one ``write`` per cycle as a collector does;
the first cycle registers the series, later cycles find their ids in the cache. Baseline: one
``INSERT`` per sample through ``execute`` in autocommit mode into a plain rowid table indexed on
(series_id, ts), the usual first version; it runs on fewer samples because it is slow.

A fresh file flatters the store. Day chunks are clustered by (series_id, ts), so once each
series' points fill a page of their own, every commit dirties one page per series. The
"pre-filled" rows write the same 10 cycles on top of ``--prefill`` earlier cycles of the same
day: once with one ``write`` per cycle, once with all 10 cycles in one ``write`` (what a
collector's writer thread gets by draining its queue before writing).

Writes ``benchmarks/results/store_ingest.json`` and prints a table. Store files go to a
temporary ``*.tmp`` folder under ``--dir`` (default ``benchmarks/results``: the project's disk,
where /tmp may be a tmpfs that flatters every number).
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import random
import shutil
import sqlite3
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from farmwatch.model import Batch, SeriesKey, labels  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z, so every cycle lands in chunk samples_20240101
POLL = 10.0
TARGET = 200_000
METRICS = (
    "events_in", "events_out", "bytes_in", "bytes_out", "queue_size", "queue_max", "rate_in", "rate_out",
    "cpu_user", "cpu_system", "rss", "vsize", "threads", "fds", "errors", "warnings",
    "latency_mean", "latency_max", "socket_reconnects", "up",
)


def farm_keys() -> list[SeriesKey]:
    """50,000 series shaped like flattened HLT worker state dumps."""
    return [
        (f"hlt.worker.{metric}", labels(unit=f"hlt{u:02d}", host=f"hltwk{u:02d}{n:02d}", app=f"worker{p}"))
        for u in range(1, 11) for n in range(1, 26) for p in range(10) for metric in METRICS
    ]


def poll_cycles(keys: list[SeriesKey], cycles: int, first: int) -> list[Batch]:
    rng = random.Random(first)
    return [Batch(T0 + (first + c) * POLL, keys, [rng.random() * 1e4 for _ in keys]) for c in range(cycles)]


def timed_writes(path: Path, writes: list[list[Batch]]) -> list[tuple[int, float, float]]:
    """(samples, wall s, CPU s) of each ``write`` call, in order."""
    timings = []
    with SQLiteStore(path) as store:
        for batches in writes:
            wall, cpu = time.perf_counter(), time.process_time()
            samples = store.write(batches)
            timings.append((samples, time.perf_counter() - wall, time.process_time() - cpu))
    return timings


def rates(timings: list[tuple[int, float, float]]) -> dict[str, float]:
    samples = sum(t[0] for t in timings)
    wall, cpu = sum(t[1] for t in timings), sum(t[2] for t in timings)
    return {"wall_rate": samples / wall, "cpu_rate": samples / cpu}


def prefill(path: Path, keys: list[SeriesKey], cycles: int) -> None:
    """A store whose day chunk already holds ``cycles`` poll cycles, bulk-loaded in key order."""
    with SQLiteStore(path) as store:
        store.write(Batch(T0, keys, [0.0] * len(keys)))
    conn = sqlite3.connect(path, isolation_level=None)
    ids = [sid for (sid,) in conn.execute("SELECT id FROM series ORDER BY id")]
    conn.execute("BEGIN")
    conn.executemany(
        'INSERT INTO "samples_20240101" VALUES (?, ?, ?)',
        ((sid, round((T0 + c * POLL) * 1000), float(c)) for sid in ids for c in range(1, cycles)),
    )
    conn.execute("COMMIT")
    conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    conn.close()


def naive(path: Path, samples: int, series: int) -> dict[str, float]:
    """The baseline: autocommit, one ``execute`` per sample, rowid table plus an index."""
    rng = random.Random(2)
    conn = sqlite3.connect(path, isolation_level=None)
    conn.execute("CREATE TABLE samples(series_id INTEGER, ts INTEGER, value REAL)")
    conn.execute("CREATE INDEX samples_series_ts ON samples(series_id, ts)")
    ts0 = round(T0 * 1000)
    wall, cpu = time.perf_counter(), time.process_time()
    for i in range(samples):
        row = (i % series + 1, ts0 + i // series, rng.random())
        conn.execute("INSERT INTO samples VALUES (?, ?, ?)", row)
    wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
    conn.close()
    return {"wall_rate": samples / wall, "cpu_rate": samples / cpu}


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def machine() -> dict[str, object]:
    cpuinfo = Path("/proc/cpuinfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=10)
    parser.add_argument("--baseline-samples", type=int, default=20_000)
    parser.add_argument("--prefill", type=int, default=200, help="cycles already in the day chunk; 0 skips")
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the store files are written")
    args = parser.parse_args()

    keys = farm_keys()
    fresh = poll_cycles(keys, args.cycles, 0)
    late = poll_cycles(keys, args.cycles, args.prefill)
    results: dict[str, dict[str, float]] = {}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, suffix=".tmp") as tmp:
        work = Path(tmp)
        runs = [timed_writes(work / f"fresh{r}.db", [[b] for b in fresh]) for r in range(args.runs)]
        results["store, fresh file"] = median([rates(t) for t in runs])
        results["store, fresh file, cycles 2+ (ids cached)"] = median([rates(t[1:]) for t in runs])
        if args.prefill:
            prefill(work / "prefilled.db", keys, args.prefill)
            shapes = {"1 cycle per write": [[b] for b in late], "all cycles in 1 write": [late]}
            for name, writes in shapes.items():
                runs = []
                for r in range(args.runs):
                    shutil.copyfile(work / "prefilled.db", work / "steady.db")
                    runs.append(timed_writes(work / "steady.db", writes))
                    (work / "steady.db").unlink()
                results[f"store, day chunk pre-filled ({args.prefill} cycles), {name}"] = median(
                    [rates(t) for t in runs])
        baseline = "baseline: naive execute per sample, autocommit"
        results[baseline] = median([naive(work / f"naive{r}.db", args.baseline_samples, len(keys))
                                    for r in range(args.runs)])

    store_rate = results["store, fresh file"]["wall_rate"]
    report = {
        "benchmark": "store_ingest",
        "machine": machine(),
        "workload": {
            "series": len(keys), "cycles": args.cycles, "poll_interval_s": POLL, "runs": args.runs,
            "statistic": "median", "prefill_cycles": args.prefill, "baseline_samples": args.baseline_samples,
            "files_in": str(args.dir.resolve()),
        },
        "unit": "samples/s",
        "results": results,
        "speedup_vs_baseline": store_rate / results[baseline]["wall_rate"],
        "target": TARGET,
        "meets_target": store_rate >= TARGET,
    }
    (RESULTS / "store_ingest.json").write_text(json.dumps(report, indent=2) + "\n")

    width = max(map(len, results)) + 2
    print(f"{'samples/s, median of ' + str(args.runs) + ' runs':<{width}}{'wall':>11}{'CPU':>11}")
    for name, row in results.items():
        print(f"{name:<{width}}{row['wall_rate']:>11,.0f}{row['cpu_rate']:>11,.0f}")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"fresh-file store is {report['speedup_vs_baseline']:,.0f}x the baseline and {verdict} the "
          f"{TARGET:,} samples/s target; wrote {RESULTS / 'store_ingest.json'}")


if __name__ == "__main__":
    main()
