"""Ingest and read speed of ``SQLiteStore`` for HLT-farm poll cycles, against the naive way, same run.

Workload: one poll cycle is 340 batches, one per HLT endpoint, as ``HltZmqSource.poll`` returns
them: per unit (10), a distributor and a collector with 1,400 series each (6 health values, 14 of
their own, 69 peers × 20 per-peer values) and 32 worker processes with 147 series each; 75,040
samples sharing one timestamp. Cycles are 1 s apart (the farm's rate), one ``write`` per cycle as
the runner does, values as Python lists of floats; in 4 batches per cycle a state string changed.
Series names and labels are synthetic but shaped like the flattened HLT state dumps.

Ingest, samples/s (wall and CPU), median over ``--runs``:
- fresh file: ``--cycles`` cycles into a new file (the first registers 75k series, 340 layouts);
- steady state: the hour's head table already holds ``--prefill`` cycles (written through the store,
  50 cycles per ``write``); ``--cycles`` more, on a fresh copy of that file per run, after an
  untimed resend of the last pre-filled cycle (a running collector's store has its series' ids
  and layouts cached);
- first write after opening that file: the same cycles without the warm-up, the first one timed
  alone (cold caches: each series id and layout is looked up in the file, as after a restart).
Bytes per steady-state cycle: WAL bytes (a separate pass: the WAL is truncated before each write
and measured after); bytes the block device received (another pass: ``sync``, the cycles, ``sync``,
the device's sectors-written counter; WAL appends plus checkpoints plus file-system overhead; the
counter is the whole machine's, so the least of 3 passes); and file growth per cycle during the
pre-fill. (``/proc/self/io`` write_bytes is no use here: on recent kernels it counts whole large
page-cache folios and reported 4-5x what the device received.)

Reads, ms wall and CPU (a second process's view: the store opened read-only; warm cache; median
and range over ``--runs``), once with everything in the head tables and once after compaction
into chunks (timed: compaction samples/s CPU): the pre-filled file is extended to ``--read-cycles`` cycles (3,600 = one hour) for
the 34 batches of one unit only (the whole farm's hour takes ~90 s and ~6 GB to write); then one
series over that hour (in a 147-series and in a 1,400-series frame), all series of one 1,400-series
batch over 10 min (long and wide), ``latest()`` of one name across the farm (340 series in 340
layouts), and one name across the farm over one minute (every frame is read whole, so this reads
nearly all the data of that minute).

Baseline: one ``INSERT`` per sample through ``execute`` in autocommit mode into a plain rowid
table indexed on (series_id, ts), the usual first version; on fewer samples because it is slow.

Writes ``benchmarks/results/store_ingest.json`` and prints a table. Store files go to a temporary
``*.tmp`` folder under ``--dir`` (default ``benchmarks/results``: the project's disk, where /tmp
may be a tmpfs that flatters every number).
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
from typing import Callable

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import pandas as pd  # noqa: E402

from farmwatch.model import Batch, SeriesKey, labels, with_labels  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_704_067_200.0  # 2024-01-01T00:00:00Z: the first hour's cycles land in head table head_20240101T00
POLL = 1.0
TARGET = 200_000
UNITS, WORKERS, PEERS = 10, 32, 69
HEALTH = ("up", "hlt.poll.duration", "hlt.poll.failures", "hlt.poll.duplicate_replies",
          "hlt.poll.ignored_values", "hlt.poll.restarts")
PER_PEER = tuple(f"hlt.input.{k}" for k in (
    "received_events", "received_bytes", "sent_ready", "queue_size", "queue_max", "reconnects",
    "last_seen", "event_rate", "byte_rate", "errors", "warnings", "latency_mean", "latency_max",
    "credits", "pending", "resent", "dropped", "socket_events", "socket_errors", "connected"))
OWN = tuple(f"hlt.monitor.{k}" for k in (
    "monitoring_counter", "uptime", "rss", "vsize", "threads", "fds", "cpu_user", "cpu_system",
    "ready_queue_size", "output_queue_size", "total_number_messages", "received_events", "sent_events",
    "dead_workers"))
WORKER = tuple(f"hlt.{section}.key{k:02d}" for section in ("input", "output", "process") for k in range(47))
STATE = "hlt.input.socket_state"
READ_UNIT = "hlt01"


def farm_targets() -> list[list[SeriesKey]]:
    """The series of each of the 340 batches of a cycle: 20 × 1,400 and 320 × 147."""
    targets = []
    for u in range(1, UNITS + 1):
        unit = f"hlt{u:02d}"
        for app in ("distributor", "collector"):
            base = labels(unit=unit, app=app)
            keys = [(name, base) for name in HEALTH + OWN]
            keys += [(name, with_labels(base, peer=f"hltwk{u:02d}{p:02d}")) for p in range(1, PEERS + 1)
                     for name in PER_PEER]
            targets.append(keys)
        for w in range(WORKERS):
            base = labels(unit=unit, host=f"hltwk{u:02d}{w // 4 + 1:02d}", app=f"worker{w % 4}")
            targets.append([(name, base) for name in HEALTH + WORKER])
    return targets


def poll_cycle(targets: list[list[SeriesKey]], cycle: int, *, lists: bool = True) -> list[Batch]:
    """One cycle's batches; every 85th batch (4 of 340) also carries a changed state string."""
    rng = np.random.default_rng(cycle)
    batches = []
    for i, keys in enumerate(targets):
        values = rng.random(len(keys)) * 1e4
        batch = Batch(T0 + cycle * POLL, keys, values.tolist() if lists else values)
        if i % 85 == 1:
            state = "connected" if cycle % 2 else "reconnecting"
            batch = Batch(batch.ts, [*keys, (STATE, keys[0][1])], [*batch.values, state])
        batches.append(batch)
    return batches


def write_cycles(store: SQLiteStore, targets: list[list[SeriesKey]], first: int, last: int,
                 per_write: int) -> None:
    """Bulk-write cycles first..last-1 through the store, ``per_write`` cycles per transaction."""
    for start in range(first, last, per_write):
        store.write([b for c in range(start, min(last, start + per_write))
                     for b in poll_cycle(targets, c, lists=False)])


def device_written(path: Path) -> int | None:
    """Bytes written so far to the block device holding ``path`` (Linux), or None."""
    st = os.stat(path)
    try:
        stat = Path(f"/sys/dev/block/{os.major(st.st_dev)}:{os.minor(st.st_dev)}/stat").read_text()
        return int(stat.split()[6]) * 512  # field 7: sectors written, always 512-byte units
    except (OSError, IndexError, ValueError):
        return None


def timed_writes(path: Path, cycles: list[list[Batch]],
                 warmup: list[Batch] | None = None) -> list[dict[str, float]]:
    """Per ``write`` call (one cycle each): samples, wall s, CPU s.

    ``warmup`` is written first, untimed: a running collector's store knows its series' ids.
    """
    timings = []
    with SQLiteStore(path) as store:
        if warmup:
            store.write(warmup)
        for batches in cycles:
            wall, cpu = time.perf_counter(), time.process_time()
            samples = store.write(batches)
            wall, cpu = time.perf_counter() - wall, time.process_time() - cpu
            timings.append({"samples": samples, "wall": wall, "cpu": cpu})
    return timings


def rates(timings: list[dict[str, float]]) -> dict[str, float]:
    samples = sum(t["samples"] for t in timings)
    return {
        "wall_rate": samples / sum(t["wall"] for t in timings),
        "cpu_rate": samples / sum(t["cpu"] for t in timings),
        "cycle_wall_ms_median": 1000 * statistics.median(t["wall"] for t in timings),
        "cycle_wall_ms_max": 1000 * max(t["wall"] for t in timings),
    }


def median(runs: list[dict[str, float]]) -> dict[str, float]:
    return {key: statistics.median(run[key] for run in runs) for key in runs[0]}


def wal_bytes_per_cycle(path: Path, cycles: list[list[Batch]]) -> list[int]:
    """WAL bytes of each cycle's commit: the WAL is truncated before each write (not timed)."""
    wal = Path(f"{path}-wal")
    sizes = []
    side = sqlite3.connect(path, isolation_level=None)
    try:
        with SQLiteStore(path) as store:
            for batches in cycles:
                side.execute("PRAGMA wal_checkpoint(TRUNCATE)")
                store.write(batches)
                sizes.append(wal.stat().st_size)
    finally:
        side.close()
    return sizes


def device_bytes_per_cycle(path: Path, cycles: list[list[Batch]], warmup: list[Batch]) -> float | None:
    """What the block device received per cycle: synced before and after, caches warm."""
    with SQLiteStore(path) as store:
        store.write(warmup)
        os.sync()
        before = device_written(path)
        for batches in cycles:
            store.write(batches)
        os.sync()
        after = device_written(path)
    if before is None or after is None:
        return None
    return (after - before) / len(cycles)


def timed_read(runs: int, read: Callable[[], pd.DataFrame]) -> dict[str, float]:
    times, cpus, points = [], [], 0
    read()  # warm the cache and the reader's connection
    for _ in range(runs):
        start, cpu = time.perf_counter(), time.process_time()
        frame = read()
        times.append(time.perf_counter() - start)
        cpus.append(time.process_time() - cpu)
        points = int(frame.count().sum()) if frame.index.name == "ts" else len(frame)
    return {"ms": 1000 * statistics.median(times), "cpu_ms": 1000 * statistics.median(cpus),
            "cpu_ms_range": [1000 * min(cpus), 1000 * max(cpus)], "points": points}


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


def machine() -> dict[str, object]:
    cpuinfo, meminfo = Path("/proc/cpuinfo"), Path("/proc/meminfo")
    models = [line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
              if line.startswith("model name")] if cpuinfo.exists() else []
    mem = [line.split()[1] for line in meminfo.read_text().splitlines()
           if line.startswith("MemTotal:")] if meminfo.exists() else []
    return {
        "platform": platform.platform(),
        "machine": platform.machine(),
        "cpu_model": models[0] if models else platform.processor(),
        "cpu_count": os.cpu_count(),
        "memory_gib": round(int(mem[0]) / 2**20, 1) if mem else None,
        "python": platform.python_version(),
        "sqlite": sqlite3.sqlite_version,
        "numpy": np.__version__,
        "pandas": pd.__version__,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--runs", type=int, default=5)
    parser.add_argument("--cycles", type=int, default=10, help="timed cycles per run")
    parser.add_argument("--prefill", type=int, default=300, help="cycles already in the hour's head table")
    parser.add_argument("--read-cycles", type=int, default=3600, help="cycles of the read unit's batches")
    parser.add_argument("--baseline-samples", type=int, default=5_000)
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the store files are written")
    parser.add_argument("--out", type=Path, default=RESULTS / "store_ingest.json")
    args = parser.parse_args()
    if args.prefill < 1 or args.read_cycles < args.prefill + 600:
        parser.error("need --prefill >= 1 and --read-cycles >= --prefill + 600")

    started = time.perf_counter()
    targets = farm_targets()
    per_cycle = sum(len(keys) for keys in targets)
    fresh = [poll_cycle(targets, c) for c in range(args.cycles)]
    steady = [poll_cycle(targets, args.prefill + c) for c in range(args.cycles)]
    ingest: dict[str, dict[str, float]] = {}
    reads: dict[str, dict[str, float]] = {}
    size: dict[str, float] = {}
    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, suffix=".tmp") as tmp:
        work = Path(tmp)
        runs = []
        for r in range(args.runs):
            runs.append(timed_writes(work / f"fresh{r}.db", fresh))
            for leftover in work.glob(f"fresh{r}.db*"):
                leftover.unlink()
        ingest["fresh file"] = median([rates(t) for t in runs])
        ingest["fresh file, cycles 2+ (series known)"] = median([rates(t[1:]) for t in runs])

        prefilled = work / "prefilled.db"
        with SQLiteStore(prefilled) as store:
            fill = time.perf_counter()
            write_cycles(store, targets, 0, args.prefill, 50)
            fill = time.perf_counter() - fill
        checkpoint = sqlite3.connect(prefilled)
        checkpoint.execute("PRAGMA wal_checkpoint(TRUNCATE)")
        checkpoint.close()
        size["file_bytes_per_cycle"] = prefilled.stat().st_size / args.prefill
        resend = poll_cycle(targets, args.prefill - 1)
        runs, cold = [], []
        for r in range(args.runs):
            shutil.copyfile(prefilled, work / "steady.db")
            runs.append(timed_writes(work / "steady.db", steady, warmup=resend))
            for leftover in work.glob("steady.db*"):
                leftover.unlink()
            if r < 3:
                shutil.copyfile(prefilled, work / "steady.db")
                cold.append(timed_writes(work / "steady.db", steady[:1]))
                for leftover in work.glob("steady.db*"):
                    leftover.unlink()
        label = f"steady state ({args.prefill} cycles in the hour's head table)"
        ingest[label] = median([rates(t) for t in runs])
        ingest["  first write after opening it (cold caches)"] = median([rates(t) for t in cold])
        device = []
        for _ in range(3):
            shutil.copyfile(prefilled, work / "device.db")
            device.append(device_bytes_per_cycle(work / "device.db", steady, resend))
            for leftover in work.glob("device.db*"):
                leftover.unlink()
        size["device_bytes_written_per_cycle"] = None if None in device else min(device)
        shutil.copyfile(prefilled, work / "wal.db")
        size["wal_bytes_per_cycle"] = statistics.median(wal_bytes_per_cycle(work / "wal.db", steady))
        for leftover in work.glob("wal.db*"):
            leftover.unlink()

        unit = [keys for keys in targets if dict(keys[0][1])["unit"] == READ_UNIT]
        with SQLiteStore(prefilled) as store:
            extend = time.perf_counter()
            write_cycles(store, unit, args.prefill, args.read_cycles, 50)
            extend = time.perf_counter() - extend
        end = T0 + (args.read_cycles - 1) * POLL
        hour = {"since": end - 3599 * POLL, "until": end}
        worker = {"unit": READ_UNIT, "host": "hltwk0101", "app": "worker0"}
        peer = {"unit": READ_UNIT, "app": "distributor", "peer": "hltwk0105"}
        big = {"unit": READ_UNIT, "app": "distributor"}
        minute = {"since": T0 + (args.prefill - 60) * POLL, "until": T0 + (args.prefill - 1) * POLL}
        compacted = work / "compacted.db"
        shutil.copyfile(prefilled, compacted)
        with SQLiteStore(compacted) as store:
            cpu = time.process_time()
            size["compacted_samples"] = store.compact(everything=True)
            size["compaction_cpu_s"] = time.process_time() - cpu
        for where, path in (("head", prefilled), ("chunks", compacted)):
            with SQLiteStore(path, readonly=True) as reader:
                cases: dict[str, Callable[[], pd.DataFrame]] = {
                    "one series, 1 h, in a 147-series frame": lambda: reader.query(WORKER[5], worker, **hour),
                    "one series, 1 h, in a 1,400-series frame": lambda: reader.query(PER_PEER[3], peer, **hour),
                    "1,400-series batch, 10 min, long": lambda: reader.query(None, big, since=end - 599 * POLL),
                    "1,400-series batch, 10 min, wide": lambda: reader.query(None, big, since=end - 599 * POLL,
                                                                             form="wide"),
                    "  of which selecting its series (series())": lambda: reader.series(None, big),
                    "latest() of one name across the farm": lambda: reader.latest("up"),
                    "one name across the farm, 1 min": lambda: reader.query(WORKER[5], **minute),
                }
                for name, read in cases.items():
                    reads[f"{where}: {name}"] = timed_read(args.runs, read)

        baseline = "baseline: naive execute per sample, autocommit"
        ingest[baseline] = median([naive(work / f"naive{r}.db", args.baseline_samples, per_cycle)
                                   for r in range(min(args.runs, 3))])

    steady_rate = ingest[label]["wall_rate"]
    report = {
        "benchmark": "store_ingest",
        "machine": machine(),
        "workload": {
            "batches_per_cycle": len(targets), "samples_per_cycle": per_cycle,
            "batch_sizes": sorted({len(keys) for keys in targets}), "poll_interval_s": POLL,
            "timed_cycles": args.cycles, "runs": args.runs, "statistic": "median",
            "prefill_cycles": args.prefill, "prefill_s": fill,
            "read_cycles": args.read_cycles, "read_unit_batches": len(unit), "read_extend_s": extend,
            "baseline_samples": args.baseline_samples, "files_in": str(args.dir.resolve()),
            "benchmark_s": time.perf_counter() - started,
        },
        "ingest": {"unit": "samples/s", "results": ingest},
        "bytes_per_cycle": size,
        "reads": {"unit": "ms", "results": reads},
        "speedup_vs_baseline": steady_rate / ingest[baseline]["wall_rate"],
        "target": TARGET,
        "meets_target": steady_rate >= TARGET,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    width = max(map(len, [*ingest, *reads])) + 2
    print(f"{per_cycle:,} samples in {len(targets)} batches per cycle, median of {args.runs} runs")
    print(f"{'ingest, samples/s; one cycle, ms':<{width}}{'wall':>11}{'CPU':>11}{'median':>8}{'max':>7}")
    for name, row in ingest.items():
        cycle = (f"{row['cycle_wall_ms_median']:>8,.0f}{row['cycle_wall_ms_max']:>7,.0f}"
                 if "cycle_wall_ms_max" in row else "")
        print(f"{name:<{width}}{row['wall_rate']:>11,.0f}{row['cpu_rate']:>11,.0f}{cycle}")
    device = size["device_bytes_written_per_cycle"]
    print(f"{'steady-state cycle, MB':<{width}}{'WAL':>11}{'device':>11}{'file':>11}")
    device_mb = "n/a" if device is None else f"{device / 1e6:.1f}"
    print(f"{'':<{width}}{size['wal_bytes_per_cycle'] / 1e6:>11.1f}{device_mb:>11}"
          f"{size['file_bytes_per_cycle'] / 1e6:>11.2f}")
    print(f"compaction (the read unit's hour and the prefill into chunks and rollups): {size['compacted_samples']:,} "
          f"samples, {size['compacted_samples'] / size['compaction_cpu_s']:,.0f}/s CPU")
    width = max(map(len, reads)) + 2
    print(f"{'reads (store opened read-only)':<{width}}{'wall ms':>9}{'CPU ms':>9}{'range':>15}{'points':>10}")
    for name, row in reads.items():
        lo, hi = row["cpu_ms_range"]
        print(f"{name:<{width}}{row['ms']:>9.1f}{row['cpu_ms']:>9.1f}{f'{lo:.1f}-{hi:.1f}':>15}{row['points']:>10,}")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"steady-state ingest is {report['speedup_vs_baseline']:,.0f}x the baseline and {verdict} the "
          f"{TARGET:,} samples/s target; {report['workload']['benchmark_s']:.0f} s; "
          f"wrote {args.out}")


if __name__ == "__main__":
    main()
