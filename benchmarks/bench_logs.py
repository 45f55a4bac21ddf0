"""Log shipping speed: tail + parse + serialise to ``_bulk`` NDJSON, per core, against the limits.

Workload: a generated mixed log of ``--size`` bytes (``make bench``: 1 GB): 70 % basf2 HLT app
lines with an absolute time (``2026-11-30 14:00:01.250Z [INFO] … { module: HLTZMQ2Ds }``), every
50th record an error with a 6-line Python traceback and every 40th an indented multi-line basf2
message, 10 % RFC 3164 syslog, 5 % RFC 5424 syslog, 10 % JSON lines, 5 % unparseable text; about
100 bytes per line, ~100 lines per second of log time.

Measured in one process, CPU seconds of that process (``time.process_time``: per core, whatever
else the shared machine runs), median over ``--runs``:

- **raw read** (the limit): the file read in 8 MiB chunks and its lines counted (``bytes.count``);
- **read + split + decode**: the same, each line split out and decoded (what any line reader pays);
- **farmwatch**: ``LogFilesSource.poll`` (tail, decode, multi-line assembly, parse, ``LogRecord``
  with ECS fields) and ``farmwatch.store.elastic.bulk_body`` (the exact body ``ElasticStore``
  sends: ``_id`` from ``doc_id``, ECS document, orjson) for every batch, then ``ack``;
- **farmwatch, parse only**: the same without serialising (to see where the time goes);
- **without templates**: tail + parse + serialise with ``templates = false`` (the cost of giving
  every record its message template, ``farmwatch.logtemplates``; its target: >= 80k lines/s/core with them);
- **naive baseline** (``--baseline-lines`` lines, as it is slow): line by line, ``json.loads`` or
  each format's regex in turn with ``datetime.strptime``, one ``Elasticsearch.index()`` call per
  line with the official client, against the protocol-level test server (``farmwatch.sim.es_cluster``)
  in another process; CPU of the shipping process and wall time.

Several ``--size`` values: each size is measured in turn and every figure is the median over the
sizes (the per-size tables are kept in the JSON). Writes ``benchmarks/results/logs.json`` and prints
a table. The log file goes to ``--dir``
(default ``benchmarks/results``: the project's disk) and is deleted afterwards.

CPU seconds on a shared machine move by tens of percent between runs; to compare two versions of
the code, count instructions instead (deterministic): run the farmwatch phase on the first 5,000
and the first 10,000 lines of the generated file under ``valgrind --tool=cachegrind
--cache-sim=no`` (``OPENBLAS_NUM_THREADS=1``: numpy's idle threads add noise) and divide the
difference of the two ``I refs`` by 5,000 (README, Performance, gives the numbers).
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import os
import platform
import random
import re
import socket
import sqlite3
import statistics
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from farmwatch.clock import SimClock  # noqa: E402
from farmwatch.sources.logfiles.source import LogFilesConfig, LogFilesSource  # noqa: E402
from farmwatch.store.elastic import bulk_body  # noqa: E402
from farmwatch.sources.base import LogBatch  # noqa: E402

UNITS = {"kb": 1e3, "mb": 1e6, "gb": 1e9, "kib": 1024, "mib": 1024**2, "gib": 1024**3, "b": 1}
MODULES = ("HLTZMQ2Ds", "HLTDs2ZMQ", "ZMQDistributor", "ZMQCollector", "StorageSerializer")
T0 = datetime(2026, 11, 30, 5, 0, tzinfo=timezone.utc).timestamp()


def size_arg(text: str) -> int:
    m = re.fullmatch(r"(\d+(?:\.\d+)?)\s*([a-zA-Z]*)", text.strip())
    if not m or m.group(2).lower() not in UNITS | {"": 1}:
        raise argparse.ArgumentTypeError(f"{text!r} is not a size such as 64MB or 1GB")
    return int(float(m.group(1)) * UNITS.get(m.group(2).lower(), 1))


def generate(path: Path, size: int, seed: int = 7) -> tuple[int, int]:
    """Write the mixed log; returns (lines, records)."""
    rng = random.Random(seed)
    lines = records = 0
    written = 0
    seq = 0
    with open(path, "w", encoding="utf-8") as f:
        while written < size:
            block: list[str] = []
            for _ in range(2000):
                seq += 1
                ts = T0 + seq / 100
                dt = datetime.fromtimestamp(ts, timezone.utc)
                stamp = dt.strftime("%Y-%m-%d %H:%M:%S.") + f"{dt.microsecond // 1000:03d}"
                kind = rng.random()
                if kind < 0.70:
                    module = MODULES[seq % len(MODULES)]
                    if seq % 50 == 0:
                        block += [f"{stamp}Z [ERROR] Exception in event processing seq={seq}  {{ module: {module} }}",
                                  "Traceback (most recent call last):",
                                  '  File "/hlt/scripts/hlt_worker.py", line 88, in process',
                                  "    self.unpack(event)",
                                  '  File "/hlt/scripts/hlt_worker.py", line 42, in unpack',
                                  "    raise ValueError(f\"bad header {header!r}\")",
                                  f"ValueError: bad header b'\\x00\\x17' (seq={seq})"]
                    elif seq % 40 == 0:
                        block += [f"{stamp}Z [WARNING] worker status seq={seq}  {{ module: {module} }}",
                                  "    hltwk01: 20 processes, 0 dead", "    hltwk02: 20 processes, 2 dead"]
                    else:
                        level = ("INFO", "INFO", "INFO", "DEBUG", "WARNING", "RESULT")[seq % 6]
                        block.append(f"{stamp}Z [{level}] Processed {seq * 7 % 10000} events, ready queue {seq % 64} "
                                     f"seq={seq}  {{ module: {module} }}")
                elif kind < 0.80:
                    block.append(f"{dt.strftime('%b %d %H:%M:%S')} hltwk{seq % 12 + 1:02d} kernel[{seq % 999}]: "
                                 f"nfs: server hltstorage01 not responding, still trying seq={seq}")
                elif kind < 0.85:
                    block.append(f"<165>1 {dt.strftime('%Y-%m-%dT%H:%M:%S')}.{dt.microsecond // 1000:03d}Z "
                                 f"hltwk{seq % 12 + 1:02d} hltctl {seq % 30000} ID47 [run@32473 exp=\"26\" run=\"1234\"] "
                                 f"run control transition seq={seq}")
                elif kind < 0.95:
                    block.append(json.dumps({"@timestamp": dt.isoformat().replace("+00:00", "Z"), "level": "info",
                                             "message": f"histogram server sent {seq % 500} histograms seq={seq}",
                                             "logger": "dqm.proxy", "unit": f"hlt{seq % 10 + 1:02d}"}))
                else:
                    block.append(f"*** free text without a header, seq={seq} ***")
                records += 1
            text = "\n".join(block) + "\n"
            f.write(text)
            written += len(text)
            lines += len(block)
    return lines, records


def cpu_wall(fn):
    c0, w0 = time.process_time(), time.perf_counter()
    out = fn()
    return time.process_time() - c0, time.perf_counter() - w0, out


def raw_read(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        while chunk := f.read(8 << 20):
            n += chunk.count(b"\n")
    return n


def read_split_decode(path: Path) -> int:
    n = 0
    with open(path, "rb", buffering=0) as f:
        rest = b""
        while chunk := f.read(8 << 20):
            parts = (rest + chunk).split(b"\n")
            rest = parts.pop()
            for raw in parts:
                raw.decode("utf-8", "replace")
            n += len(parts)
    return n


def farmwatch(path: Path, serialise: bool, templates: bool = True) -> tuple[int, int]:
    """(records, NDJSON bytes) of shipping the whole file through the source (with message
    templates, the default, or without: the baseline of the templates' cost)."""
    clock = SimClock(T0)
    cfg = LogFilesConfig(kind="logfiles", paths=[str(path)], host="hltwk01", timezone="UTC",
                         multiline_wait="1s", templates=templates)  # max_bytes: the default (8 MiB per cycle)
    src = LogFilesSource("bench", cfg, clock=clock)
    records = nbytes = 0
    size = path.stat().st_size
    try:
        idle = 0
        while idle < 3:
            got = [b for b in src.poll() if isinstance(b, LogBatch)]
            if not got or not got[0].records:
                idle += 1
                clock.advance(2.0)  # the last record's wait for continuation lines
            for batch in got:
                records += len(batch.records)
                if serialise and batch.records:
                    nbytes += len(bulk_body(batch.records, index_mode="daily"))
                batch.ack()
        assert sum(f.offset for f in src._files.values()) == size
    finally:
        src.close()
    return records, nbytes


_B2 = re.compile(r"^(\S+ \S+)Z \[(\w+)\] (.*?)(?:  \{ module: (\S+) \})?$")
_BSD = re.compile(r"^(\w{3} +\d+ \d\d:\d\d:\d\d) (\S+) ([^\[:]+)\[(\d+)\]: (.*)$")
_5424 = re.compile(r"^<(\d+)>1 (\S+) (\S+) (\S+) (\S+) (\S+) (\[.*?\]|-) (.*)$")


def naive(path: Path, n: int, url: str) -> int:
    """The usual first version: line by line, try every format, one ``index()`` call per line."""
    from elasticsearch import Elasticsearch

    es = Elasticsearch(url, request_timeout=30)
    sent = 0
    with open(path, encoding="utf-8", errors="replace") as f:
        for i, line in enumerate(f):
            if i >= n:
                break
            line = line.rstrip("\n")
            doc: dict = {"host": {"name": "hltwk01"}, "log": {"file": {"path": str(path)}}, "event": {"original": line}}
            try:
                obj = json.loads(line)
                doc.update({"@timestamp": obj.get("@timestamp"), "message": obj.get("message"),
                            "log": {**doc["log"], "level": obj.get("level")}})
            except ValueError:
                if m := _B2.match(line):
                    ts = datetime.strptime(m.group(1), "%Y-%m-%d %H:%M:%S.%f").replace(tzinfo=timezone.utc)
                    doc.update({"@timestamp": ts.isoformat(), "message": m.group(3),
                                "log": {**doc["log"], "level": m.group(2).lower(), "logger": m.group(4)}})
                elif m := _BSD.match(line):
                    ts = datetime.strptime(f"2026 {m.group(1)}", "%Y %b %d %H:%M:%S").replace(tzinfo=timezone.utc)
                    doc.update({"@timestamp": ts.isoformat(), "message": m.group(5), "host": {"name": m.group(2)}})
                elif m := _5424.match(line):
                    doc.update({"@timestamp": m.group(2), "message": m.group(8), "host": {"name": m.group(3)}})
                else:
                    doc.update({"@timestamp": datetime.now(timezone.utc).isoformat(), "message": line})
            es.index(index="naive-logs", id=f"{path.name}:{i}", document=doc)
            sent += 1
    es.close()
    return sent


def _serve(port: int, ready, stop) -> None:  # in a child process: the server's CPU is not ours
    from farmwatch.sim.es_cluster import ElasticSim

    sim = ElasticSim(port=port).start()
    ready.set()
    stop.wait()
    sim.stop()


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def machine() -> dict[str, object]:
    models = [line.split(":", 1)[1].strip() for line in Path("/proc/cpuinfo").read_text().splitlines()
              if line.startswith("model name")] if Path("/proc/cpuinfo").exists() else []
    import elasticsearch
    import orjson

    return {"platform": platform.platform(), "cpu_model": models[0] if models else platform.processor(),
            "cpu_count": os.cpu_count(), "python": platform.python_version(), "sqlite": sqlite3.sqlite_version,
            "orjson": orjson.__version__, "elasticsearch_client": elasticsearch.__versionstr__,
            "load_average_at_start": os.getloadavg()}


def measure_size(size_wanted: int, runs: int, baseline_lines: int, folder: Path) -> dict:
    """Every row of the table for one generated file of about ``size_wanted`` bytes."""
    path = folder / f"bench-logs-{os.getpid()}.log.tmp"
    try:
        gen_s = time.perf_counter()
        lines, records = generate(path, size_wanted)
        gen_s = time.perf_counter() - gen_s
        size = path.stat().st_size
        results: dict[str, dict[str, float]] = {}

        def measure(name: str, fn) -> object:
            rows = []
            for _ in range(runs):
                cpu, wall, out = cpu_wall(fn)
                rows.append((cpu, wall, out))
            cpu = statistics.median(r[0] for r in rows)
            wall = statistics.median(r[1] for r in rows)
            results[name] = {"cpu_s": cpu, "wall_s": wall, "lines_per_cpu_s": lines / cpu, "lines_per_wall_s": lines / wall,
                             "mb_per_cpu_s": size / cpu / 1e6}
            print(f"{name:<36} {lines / cpu:>14,.0f} lines/s per core  {lines / wall:>14,.0f} lines/s wall  "
                  f"{size / cpu / 1e6:8.1f} MB/s", flush=True)
            return rows[0][2]

        print(f"{size / 1e6:.0f} MB, {lines:,} lines, {records:,} records (generated in {gen_s:.1f} s)", flush=True)
        measure("raw read (the limit)", lambda: raw_read(path))
        measure("read + split + decode", lambda: read_split_decode(path))
        got, _ = measure("farmwatch tail + parse", lambda: farmwatch(path, serialise=False))
        if got != records:
            raise SystemExit(f"bench_logs: {got:,} records stored for {records:,} written ({size / 1e6:.0f} MB)")
        _, ndjson = measure("farmwatch tail + parse + serialise", lambda: farmwatch(path, serialise=True))
        measure("same, without templates", lambda: farmwatch(path, serialise=True, templates=False))

        ready, stop = multiprocessing.Event(), multiprocessing.Event()
        port = free_port()
        server = multiprocessing.Process(target=_serve, args=(port, ready, stop), daemon=True)
        server.start()
        ready.wait(30)
        try:
            n = min(baseline_lines, lines)
            cpu, wall, sent = cpu_wall(lambda: naive(path, n, f"http://127.0.0.1:{port}"))
            results["naive line-by-line client.index()"] = {
                "lines": n, "cpu_s": cpu, "wall_s": wall, "lines_per_cpu_s": n / cpu, "lines_per_wall_s": n / wall}
            print(f"{'naive line-by-line client.index()':<36} {n / cpu:>14,.0f} lines/s per core  {n / wall:>14,.0f} "
                  f"lines/s wall  ({n:,} lines)", flush=True)
        finally:
            stop.set()
            server.join(10)
        return {"workload": {"bytes": size, "lines": lines, "records": records, "ndjson_bytes": ndjson},
                "results": results, "ratios": ratios_of(results)}
    finally:
        path.unlink(missing_ok=True)


def ratios_of(results: dict[str, dict[str, float]]) -> dict[str, float | bool]:
    fw = results["farmwatch tail + parse + serialise"]
    naive_ = results["naive line-by-line client.index()"]
    return {
        "farmwatch / raw read (share of the limit)": fw["lines_per_cpu_s"] / results["raw read (the limit)"]["lines_per_cpu_s"],
        "farmwatch / naive (per core)": fw["lines_per_cpu_s"] / naive_["lines_per_cpu_s"],
        "farmwatch / naive (wall)": fw["lines_per_wall_s"] / naive_["lines_per_wall_s"],
        "target lines/s per core": 100_000,
        "meets target": fw["lines_per_cpu_s"] >= 100_000,
    }


def median_over_sizes(per_size: list[dict]) -> dict[str, dict[str, float]]:
    """Each number of the results table: its median over the sizes (the figure the docs quote)."""
    out: dict[str, dict[str, float]] = {}
    for row in per_size[0]["results"]:
        out[row] = {k: statistics.median(p["results"][row][k] for p in per_size) for k in per_size[0]["results"][row]}
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", type=size_arg, nargs="+", default=[size_arg("64MB")],
                    help="log file size(s); several: each is measured and every figure is the median over the sizes "
                         "(default 64MB; make bench: 64MB 256MB 1GB)")
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--baseline-lines", type=int, default=3000)
    ap.add_argument("--dir", type=Path, default=ROOT / "benchmarks" / "results")
    ap.add_argument("--out", type=Path, default=ROOT / "benchmarks" / "results" / "logs.json")
    args = ap.parse_args()
    info = machine()
    args.dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    per_size = [measure_size(size, args.runs, args.baseline_lines, args.dir) for size in args.size]
    results = median_over_sizes(per_size)
    ratios = ratios_of(results)
    if len(per_size) > 1:
        print("median over the sizes:")
        for name, row in results.items():
            print(f"  {name:<36} {row['lines_per_cpu_s']:>14,.0f} lines/s per core")
    for k, v in ratios.items():
        print(f"  {k}: {v:,.4g}" if isinstance(v, float) else f"  {k}: {v}")
    first = per_size[0]["workload"]
    doc = {"benchmark": "logs", "machine": info,
           "workload": {**(first if len(per_size) == 1 else {}), "sizes_bytes": [p["workload"]["bytes"] for p in per_size],
                        "runs": args.runs, "statistic": "median over runs, then over sizes",
                        "baseline_lines": args.baseline_lines,
                        "mix": "70% basf2 (2% with 6-line tracebacks, 2.5% 3-line), 10% RFC 3164, 5% RFC 5424, "
                               "10% JSON lines, 5% unparseable", "benchmark_s": time.perf_counter() - started},
           "results": results, "ratios": ratios, "per_size": per_size}
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
