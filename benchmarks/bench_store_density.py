"""Bytes per sample of farmwatch's store next to Prometheus' TSDB and VictoriaMetrics, on the same
data in one run; compaction and read costs; rollups answering a 30-day query on a generated month.

Data: the numeric samples of a ``farmwatch demo`` store (``--demo-store``, or a fresh ``farmwatch
demo --speed 0`` run, ~3-4 min): a simulated farm of 3 HLT units as the real sources stored it.
- farmwatch: the demo store itself, compacted (``SQLiteStore.compact``): the bytes SQLite uses
  for the chunks and their indexes plus the series catalogue (series, layouts), from ``dbstat``;
  the rollups (1m and 10m) are counted on their own line, as neither TSDB keeps any. Baseline
  "frames": the same store before compaction (the head tables, as all data was stored before).
- Prometheus 2.42 (Debian's ``promtool tsdb create-blocks-from openmetrics``): the block
  directory (chunks, index, meta) made from an OpenMetrics file of the same samples.
- VictoriaMetrics 1.79 (Debian's package, single node): the data directory after importing the
  same samples (``/api/v1/import/prometheus``), a forced flush and merge. It stores no NaN samples
  and floats as decimals of ~12 digits, so it holds slightly less.
Reads (CPU ms, 3 passes: median and range) on the demo store before and after compaction.
Month: ``--month-series`` series (units × metrics) every ``--month-interval`` s for 30 days,
written hour by hour with compaction as the service does; then one series and one name across all
units over the 30 days at the resolution ``auto`` picks (10 m rollups), against reading the raw
samples of the same range (the baseline).

Writes ``benchmarks/results/store_density.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path
from typing import Callable, Iterator

import numpy as np

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from farmwatch.clock import SimClock  # noqa: E402
from farmwatch.model import Batch, labels  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402
from farmwatch.store.remote.naming import label_name, metric_name  # noqa: E402
from farmwatch.store.rollup import choose  # noqa: E402

sys.path.insert(0, str(ROOT / "scripts"))
import tsdb_testenv  # noqa: E402  (scripts/ is not a package)

RESULTS = ROOT / "benchmarks" / "results"
DAY = 86400.0


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def timed(runs: int, fn: Callable[[], object]) -> dict[str, float]:
    """CPU and wall ms of ``fn``: median and range over ``runs`` passes (after one warm-up)."""
    fn()
    cpu, wall = [], []
    for _ in range(runs):
        c, w = time.process_time(), time.perf_counter()
        fn()
        cpu.append(1000 * (time.process_time() - c))
        wall.append(1000 * (time.perf_counter() - w))
    return {"cpu_ms": statistics.median(cpu), "cpu_ms_range": [min(cpu), max(cpu)],
            "wall_ms": statistics.median(wall), "wall_ms_range": [min(wall), max(wall)]}


def table_bytes(db: Path, names: list[str]) -> int:
    with sqlite3.connect(db) as conn:
        return int(conn.execute(f"SELECT total(pgsize) FROM dbstat WHERE name IN ({','.join('?' * len(names))})",
                                names).fetchone()[0])


def head_bytes(db: Path) -> int:
    with sqlite3.connect(db) as conn:
        tables = [n for (n,) in conn.execute("SELECT name FROM sqlite_master WHERE type = 'table' AND "
                                             "(name GLOB 'frames_*' OR name GLOB 'head_*')")]
    return table_bytes(db, tables) if tables else 0


CATALOG = ["series", "series_name", "layouts", "sqlite_autoindex_layouts_1"]
CHUNKS = ["series_chunks", "series_chunks_key", "series_chunks_end"]
ROLLUPS = ["rollups", "rollups_key", "rollups_end"]


def demo_store(args: argparse.Namespace, work: Path) -> Path:
    if args.demo_store:
        return args.demo_store
    out = work / "demo"
    print("running farmwatch demo --speed 0 for the data (3-4 min) …", flush=True)
    subprocess.run([sys.executable, "-m", "farmwatch", "demo", "--speed", "0", "--out", str(out)], check=True,
                   stdout=subprocess.DEVNULL)
    return out / "farmwatch.db"


def samples_of(db: Path) -> tuple[list[tuple[str, tuple]], np.ndarray, np.ndarray, np.ndarray]:
    """Every numeric sample: (series keys, series index, ts ms, value), sorted by series then time."""
    with SQLiteStore(db, readonly=True) as store:
        frame = store.query()
    frame = frame[frame["state"].isna()]
    keys = [(n, tuple(sorted(lb.items()))) for n, lb in zip(frame["name"], frame["labels"])]
    index: dict[tuple, int] = {}
    sid = np.array([index.setdefault(k, len(index)) for k in keys], dtype=np.int64)
    ts = frame["ts"].dt.tz_localize(None).to_numpy().astype("datetime64[ms]").astype(np.int64)
    values = frame["value"].to_numpy(dtype=np.float64)
    order = np.lexsort((ts, sid))
    return list(index), sid[order], ts[order], values[order]


def exposition(keys: list[tuple], sid: np.ndarray, ts: np.ndarray, values: np.ndarray, *, seconds: bool) -> Iterator[str]:
    """Text exposition lines ``name{labels} value ts``, grouped by metric name (OpenMetrics wants
    families together), each series in time order."""
    names = [metric_name(n) for n, _ in keys]
    heads = [names[i] + "{" + ",".join(f'{label_name(k)}="{_escape(v)}"' for k, v in keys[i][1]) + "}"
             for i in range(len(keys))]
    cut = np.flatnonzero(np.diff(sid)) + 1
    starts = np.concatenate(([0], cut))
    ends = np.append(cut, len(sid))
    by_name: dict[str, list[int]] = {}
    for b, (lo, _) in enumerate(zip(starts.tolist(), ends.tolist())):
        by_name.setdefault(names[int(sid[lo])], []).append(b)
    for name in sorted(by_name):
        if seconds:
            yield f"# TYPE {name} unknown\n"
        for b in by_name[name]:
            lo, hi = int(starts[b]), int(ends[b])
            head = heads[int(sid[lo])]
            for t, v in zip(ts[lo:hi].tolist(), values[lo:hi].tolist()):
                stamp = f"{t / 1000:.3f}" if seconds else str(t)
                yield f"{head} {_number(v)} {stamp}\n"


def _escape(value: str) -> str:
    return value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", "\\n")


def _number(v: float) -> str:
    if v != v:
        return "NaN"
    if v in (float("inf"), float("-inf")):
        return "+Inf" if v > 0 else "-Inf"
    return repr(v)


def prometheus_bytes(work: Path, keys, sid, ts, values) -> dict[str, float]:
    om = work / "samples.om"
    with open(om, "w") as f:
        f.writelines(exposition(keys, sid, ts, values, seconds=True))
        f.write("# EOF\n")
    out = work / "prom-blocks"
    started = time.perf_counter()
    proc = subprocess.run(["promtool", "tsdb", "create-blocks-from", "openmetrics", str(om), str(out)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise RuntimeError("promtool failed: " + proc.stderr[-800:])
    return {"bytes": du(out), "seconds": time.perf_counter() - started}


def victoria_bytes(work: Path, keys, sid, ts, values) -> dict[str, float]:
    env = tsdb_testenv
    server = env.victoria(work / "vm").start()
    try:
        started = time.perf_counter()
        lines = list(exposition(keys, sid, ts, values, seconds=False))
        for i in range(0, len(lines), 200_000):
            request = urllib.request.Request(f"{server.url}/api/v1/import/prometheus", data="".join(lines[i:i + 200_000]).encode(),
                                             method="POST")
            urllib.request.urlopen(request, timeout=300).read()
        urllib.request.urlopen(f"{server.url}/internal/force_flush", timeout=300).read()
        months = sorted({time.strftime("%Y_%m", time.gmtime(t / 1000)) for t in (int(ts.min()), int(ts.max()))})
        for month in months:
            urllib.request.urlopen(f"{server.url}/internal/force_merge?partition_prefix={month}", timeout=600).read()
        stored = 0
        span = int(ts.max() - ts.min()) + 1000
        deadline = time.monotonic() + 120
        while time.monotonic() < deadline:
            result = server.query("query", query=f'sum(count_over_time({{__name__=~".+"}}[{span}ms]))',
                                  time=f"{(ts.max() + 1) / 1000:.3f}")["result"]
            stored = int(float(result[0]["value"][1])) if result else 0
            if stored >= np.count_nonzero(~np.isnan(values)):
                break
            time.sleep(1)
        data = work / "vm" / "victoria-data"
        size, previous = _vm_bytes(data), -1
        while size != previous and time.monotonic() < deadline:  # background merges settle
            time.sleep(3)
            size, previous = _vm_bytes(data), size
        seconds = time.perf_counter() - started
    finally:
        server.stop()
    return {"bytes": size, "samples_stored": stored, "seconds": seconds}


def _vm_bytes(data: Path) -> int:
    """The data and index parts, not the caches VictoriaMetrics writes at shutdown (``cache/``)."""
    return sum(p.stat().st_size for p in data.rglob("*") if p.is_file() and p.relative_to(data).parts[0] != "cache")


OLD_CATALOG = ["series", "sqlite_autoindex_series_1", "layouts", "sqlite_autoindex_layouts_1", "layout_series"]


def farmwatch_bytes(original: Path, db: Path, work: Path, runs: int) -> dict[str, object]:
    """``original``: the demo's file as written (frames, the catalogue of that version); ``db``: it upgraded."""
    before = {"frames": head_bytes(original), "catalog": table_bytes(original, OLD_CATALOG)}
    copy = work / "fw.db"
    shutil.copyfile(db, copy)
    reads_before = demo_reads(copy, runs)
    with SQLiteStore(copy) as store:
        cpu = time.process_time()
        compacted = store.compact(everything=True)
        cpu = time.process_time() - cpu
    with sqlite3.connect(copy) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    after = {"chunks": table_bytes(copy, CHUNKS), "catalog": table_bytes(copy, CATALOG),
             "rollups": table_bytes(copy, ROLLUPS), "head": head_bytes(copy)}
    return {"before": before, "after": after, "compacted_samples": compacted, "compaction_cpu_s": cpu,
            "reads_before": reads_before, "reads_after": demo_reads(copy, runs)}


def demo_reads(db: Path, runs: int) -> dict[str, dict[str, float]]:
    with SQLiteStore(db, readonly=True) as store:
        peer = store.series("hlt.output.sent_events:rate", ["host!="]).iloc[0]["labels"]
        return {
            "one series, whole recording (22 min)": timed(runs, lambda: store.query("hlt.output.sent_events:rate", peer)),
            "latest() of one name across the farm": timed(runs, lambda: store.latest("up")),
            "one name across the farm, whole recording": timed(runs, lambda: store.query("hlt.poll.duration")),
        }


def month(work: Path, series: int, interval: float, runs: int) -> dict[str, object]:
    """30 days of ``series`` series written hour by hour with compaction; then 30-day reads."""
    units = max(1, series // 10)
    names = [f"hlt.farm.metric{m}" for m in range(series // units)]
    keys = [(name, labels(unit=f"hlt{u:02d}")) for u in range(1, units + 1) for name in names]
    t0 = 1_700_000_000 - 1_700_000_000 % 86400
    clock = SimClock(t0)
    path = work / "month.db"
    rng = np.random.default_rng(7)
    steps = int(30 * DAY / interval)
    counters = np.zeros(len(keys))
    cpu_write = cpu_compact = 0.0
    per_hour = int(3600 / interval)
    with SQLiteStore(path, clock=clock) as store:
        for hour in range(steps // per_hour):
            batches = []
            for s in range(per_hour):
                step = hour * per_hour + s
                ts = t0 + step * interval
                counters += rng.poisson(300, len(keys))
                kind = np.arange(len(keys)) % 3
                values = np.where(kind == 0, counters, np.where(kind == 1, np.round(counters % 977 / 9.7, 2),
                                                                    rng.integers(0, 50, len(keys)).astype(float)))
                for u in range(units):
                    part = slice(u * len(names), (u + 1) * len(names))
                    batches.append(Batch(ts, keys[part], values[part].tolist()))
            c = time.process_time()
            store.write(batches)
            cpu_write += time.process_time() - c
            clock.set(t0 + (hour + 1) * 3600 + 700)
            c = time.process_time()
            store.compact()
            cpu_compact += time.process_time() - c
    total = steps * len(keys)
    end = t0 + steps * interval
    since = end - 30 * DAY
    resolution = choose(since, end, end)
    with SQLiteStore(path, readonly=True) as store:
        one = dict(keys[0][1])
        reads = {
            f"one series, 30 days, {resolution} rollups (auto)": timed(runs, lambda: store.rollup(
                names[0], one, since=since, until=end, resolution=resolution)),
            f"one name across {units} units, 30 days, {resolution} rollups": timed(runs, lambda: store.rollup(
                names[0], since=since, until=end, resolution=resolution)),
            "baseline: one series, 30 days, raw samples": timed(runs, lambda: store.query(names[0], one, since=since, until=end)),
            f"baseline: one name across {units} units, 30 days, raw samples": timed(
                max(1, runs), lambda: store.query(names[0], since=since, until=end)),
        }
        points = len(store.rollup(names[0], one, since=since, until=end, resolution=resolution))
    with sqlite3.connect(path) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    return {"series": len(keys), "interval_s": interval, "samples": total, "write_cpu_s": cpu_write,
            "compaction_cpu_s": cpu_compact, "ingest_cpu_rate": total / cpu_write,
            "compaction_cpu_rate": total / cpu_compact, "rollup_points_one_series": points,
            "bytes": {"chunks": table_bytes(path, CHUNKS), "catalog": table_bytes(path, CATALOG),
                      "rollups": table_bytes(path, ROLLUPS), "head": head_bytes(path)},
            "reads": reads}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--demo-store", type=Path, help="a farmwatch demo store (default: run the demo)")
    parser.add_argument("--runs", type=int, default=3)
    parser.add_argument("--month-series", type=int, default=200)
    parser.add_argument("--month-interval", type=float, default=30.0)
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the scratch files go")
    parser.add_argument("--out", type=Path, default=RESULTS / "store_density.json")
    args = parser.parse_args()
    RESULTS.mkdir(exist_ok=True)
    load = os.getloadavg()
    report: dict[str, object] = {"benchmark": "store_density", "load_average_at_start": load}
    with tempfile.TemporaryDirectory(dir=args.dir, suffix=".tmp") as tmp:
        work = Path(tmp)
        tsdb_testenv.install()
        original = demo_store(args, work)
        db = work / "demo-copy.db"
        shutil.copyfile(original, db)
        SQLiteStore(db).close()  # a store of an older farmwatch is upgraded (its frames stay as they are)
        keys, sid, ts, values = samples_of(db)
        n = len(sid)
        report["data"] = {"store": str(db), "samples": n, "series": len(keys), "nan_samples": int(np.isnan(values).sum()),
                          "span_s": float(ts.max() - ts.min()) / 1000}
        fw = farmwatch_bytes(original, db, work, args.runs)
        prom = prometheus_bytes(work, keys, sid, ts, values)
        vm = victoria_bytes(work, keys, sid, ts, values)
        after, before = fw["after"], fw["before"]
        report["bytes_per_sample"] = {
            "farmwatch: chunks + catalogue": (after["chunks"] + after["catalog"]) / n,
            "  of which chunks (and their indexes)": after["chunks"] / n,
            "  of which catalogue (series, layouts)": after["catalog"] / n,
            "farmwatch: 1m + 10m rollups besides": after["rollups"] / n,
            "Prometheus 2.42 TSDB (promtool blocks)": prom["bytes"] / n,
            "VictoriaMetrics 1.79 (data dir)": vm["bytes"] / n,
            "baseline: farmwatch frames before compaction (+ catalogue)": (before["frames"] + before["catalog"]) / n,
        }
        report["farmwatch"] = fw
        report["prometheus"] = prom
        report["victoria_metrics"] = vm
        report["month"] = month(work, args.month_series, args.month_interval, args.runs)
    report["load_average_at_end"] = os.getloadavg()
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2, default=str) + "\n")

    print(f"{n:,} samples of {len(keys):,} series ({report['data']['nan_samples']:,} NaN), "
          f"{report['data']['span_s'] / 60:.0f} min of a farmwatch demo; load {load[0]:.1f}")
    for name, value in report["bytes_per_sample"].items():
        print(f"  {name:<62}{value:>7.2f} B/sample")
    print(f"  compaction: {fw['compacted_samples']:,} samples in {fw['compaction_cpu_s']:.2f} s CPU "
          f"({fw['compacted_samples'] / fw['compaction_cpu_s']:,.0f}/s)")
    for label, reads in (("before compaction", fw["reads_before"]), ("after compaction", fw["reads_after"])):
        for name, r in reads.items():
            print(f"  read {label}: {name:<48}{r['cpu_ms']:>8.1f} ms CPU ({r['cpu_ms_range'][0]:.1f}-{r['cpu_ms_range'][1]:.1f})")
    m = report["month"]
    print(f"month: {m['samples']:,} samples ({m['series']} series every {m['interval_s']:.0f} s); write "
          f"{m['ingest_cpu_rate']:,.0f}/s CPU, compaction {m['compaction_cpu_rate']:,.0f}/s CPU; "
          f"chunks {m['bytes']['chunks'] / m['samples']:.2f} B/sample, rollups {m['bytes']['rollups'] / m['samples']:.2f}")
    for name, r in m["reads"].items():
        print(f"  {name:<58}{r['cpu_ms']:>9.1f} ms CPU ({r['cpu_ms_range'][0]:.1f}-{r['cpu_ms_range'][1]:.1f}), "
              f"wall {r['wall_ms']:.1f}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
