"""Zabbix source: collecting 2,000 items × 60 s of 1 s history from a real Zabbix 6.0 server.

The server is the tests' one (``scripts/zabbix_testenv.py``, Debian's packages on loopback, PHP's
built-in web server for the API; or ``FARMWATCH_TEST_ZABBIX_URL``). The benchmark creates
``--hosts`` × ``--items`` trapper items, pushes ``--seconds`` values per item with one bulk
``zabbix_sender -T -N -i file`` and waits until the API returns all of them. Then, in the same run:

* **farmwatch**: a fresh ``ZabbixSource`` (discovery + history in bounded calls: ``chunk_items``
  ids per ``history.get``, ``limit`` rows per call) polls once and the samples are written to a
  fresh SQLite store; repeated ``--runs`` times with new source objects (each reads everything).
* **naive** (the baseline): one ``history.get`` per item over the same time range, as a
  straightforward script would do it, on the same logged-in pyzabbix session; no store.

Reported: medians of wall time, API calls, values read (checked: exactly hosts × items × seconds),
and the ratio naive/farmwatch. Results: benchmarks/results/zabbix.json.
"""

from __future__ import annotations

import argparse
import json
import logging
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "tests"))

from zabbix_helpers import zabbix_env  # noqa: E402

from farmwatch.sources.zabbix.source import ZabbixConfig, ZabbixSource  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402


def setup(zbx, n_hosts: int, n_items: int, seconds: int) -> tuple[str, list[str], int, int]:
    """Group, hosts and trapper items; one value per item and second pushed. Returns group, item ids, time range."""
    group = zbx.unique("fw-bench")
    gid = zbx.group(group)
    itemids: list[str] = []
    hosts = []
    for h in range(n_hosts):
        host = f"{group}-wk{h:03d}"
        hid = zbx.host(host, gid)
        hosts.append((host, hid))
        created = zbx.api.item.create(*[{"hostid": hid, "name": f"bench.value[{i}]", "key_": f"bench.value[{i}]",
                                         "type": 2, "value_type": 0, "history": "1d", "trends": "0"}
                                        for i in range(n_items)])
        itemids += created["itemids"]
    zbx.synced(*hosts[-1])
    start = int(time.time()) - seconds - 30
    rows = [(host, f"bench.value[{i}]", start + s, 0, round(h * 1000 + i + s / 100, 2))
            for h, (host, _) in enumerate(hosts) for i in range(n_items) for s in range(seconds)]
    t0 = time.perf_counter()
    zbx.push(rows)
    deadline = time.monotonic() + 300
    want = len(rows)
    while time.monotonic() < deadline:
        got = int(zbx.api.history.get(history=0, itemids=itemids, time_from=start, countOutput=True))
        if got >= want:
            break
        time.sleep(0.5)
    else:
        raise SystemExit(f"Zabbix has {got} of {want} values after 300 s")
    print(f"pushed and synced {want} values in {time.perf_counter() - t0:.1f}s", file=sys.stderr)
    return group, itemids, start, start + seconds - 1


def run_farmwatch(zbx, group: str, start: int, chunk_items: int, limit: int, tmp: Path, run: int) -> dict:
    cfg = ZabbixConfig.model_validate({
        "kind": "zabbix", "url": zbx.url, "user": zbx.user, "password_env": "FARMWATCH_BENCH_ZABBIX_PASSWORD",
        "host_groups": [group], "items": ["bench.value[*]"], "backfill": f"{int(time.time()) - start + 5}s",
        "chunk_items": chunk_items, "limit": limit, "problems": False})
    source = ZabbixSource("bench", cfg)
    store = SQLiteStore(tmp / f"bench-{run}.db")
    source.bind_store(store)
    t0 = time.perf_counter()
    c0 = time.process_time()
    batches = source.poll()
    t1 = time.perf_counter()
    store.write(batches)
    source.written(batches)
    t2 = time.perf_counter()
    c1 = time.process_time()
    store.close()
    return {"wall_s": t2 - t0, "poll_s": t1 - t0, "store_s": t2 - t1, "cpu_s": c1 - c0,
            "api_calls": source.api.calls, "calls_by_method": dict(source.api.calls_by_method),
            "values": source.stats.values, "up": source.up}


def run_naive(zbx, itemids: list[str], start: int, end: int) -> dict:
    api = zbx.login()
    t0 = time.perf_counter()
    c0 = time.process_time()
    values = 0
    for itemid in itemids:
        rows = api.history.get(history=0, itemids=[itemid], time_from=start, time_till=end, output="extend")
        values += len([float(r["value"]) for r in rows])
    return {"wall_s": time.perf_counter() - t0, "cpu_s": time.process_time() - c0, "api_calls": len(itemids),
            "values": values}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--hosts", type=int, default=20)
    p.add_argument("--items", type=int, default=100, help="items per host")
    p.add_argument("--seconds", type=int, default=60)
    p.add_argument("--runs", type=int, default=3)
    p.add_argument("--naive-runs", type=int, default=1)
    p.add_argument("--chunk-items", type=int, default=500)
    p.add_argument("--limit", type=int, default=50_000)
    p.add_argument("--out", type=Path, default=HERE / "results" / "zabbix.json")
    args = p.parse_args()
    logging.basicConfig(level=logging.WARNING)
    zbx = zabbix_env()
    try:
        bench(zbx, args)
    finally:
        if zbx.started:  # leave a Zabbix that was already running as it was
            zbx.testenv.stop()


def bench(zbx, args: argparse.Namespace) -> None:
    import os

    os.environ["FARMWATCH_BENCH_ZABBIX_PASSWORD"] = zbx.password
    version = zbx.api.api_version()
    group, itemids, start, end = setup(zbx, args.hosts, args.items, args.seconds)
    expected = len(itemids) * args.seconds
    with tempfile.TemporaryDirectory() as tmp:
        fw = [run_farmwatch(zbx, group, start, args.chunk_items, args.limit, Path(tmp), r) for r in range(args.runs)]
    naive = [run_naive(zbx, itemids, start, end) for _ in range(args.naive_runs)]
    for r in fw + naive:
        if r["values"] != expected:
            raise SystemExit(f"a run read {r['values']} values, expected {expected}: {r}")

    def med(runs: list[dict], key: str) -> float:
        return statistics.median(r[key] for r in runs)

    result = {
        "benchmark": "zabbix",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version()},
        "setup": {"zabbix_api": version, "server": "Debian zabbix-server-pgsql + PHP built-in server (4 workers), "
                  "private PostgreSQL 15 (fsync off), all on loopback, same machine as the client",
                  "hosts": args.hosts, "items": len(itemids), "seconds": args.seconds, "values": expected,
                  "chunk_items": args.chunk_items, "limit": args.limit},
        "farmwatch": {"runs": fw, "wall_s_median": med(fw, "wall_s"), "poll_s_median": med(fw, "poll_s"),
                      "store_s_median": med(fw, "store_s"), "cpu_s_median": med(fw, "cpu_s"),
                      "api_calls": fw[0]["api_calls"], "values_per_s": expected / med(fw, "wall_s")},
        "naive_one_call_per_item": {"runs": naive, "wall_s_median": med(naive, "wall_s"),
                                    "cpu_s_median": med(naive, "cpu_s"), "api_calls": naive[0]["api_calls"],
                                    "values_per_s": expected / med(naive, "wall_s")},
    }
    result["ratio_naive_over_farmwatch"] = {
        "wall": result["naive_one_call_per_item"]["wall_s_median"] / result["farmwatch"]["wall_s_median"],
        "api_calls": result["naive_one_call_per_item"]["api_calls"] / result["farmwatch"]["api_calls"],
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    f, n = result["farmwatch"], result["naive_one_call_per_item"]
    print(f"{expected} values of {len(itemids)} items: farmwatch {f['wall_s_median']:.2f}s "
          f"(poll {f['poll_s_median']:.2f}s + store {f['store_s_median']:.2f}s) in {f['api_calls']} API calls; "
          f"naive {n['wall_s_median']:.2f}s in {n['api_calls']} calls "
          f"({result['ratio_naive_over_farmwatch']['wall']:.1f}x the time) → {args.out}")


if __name__ == "__main__":
    main()
