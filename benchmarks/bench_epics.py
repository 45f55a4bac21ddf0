"""EPICS source under load: many PVs of one IOC updating at 10 Hz, against plain pyepics callbacks.

A real IOC (``farmwatch.sim.ioc.SimIOC``, epicscorelibs, a separate process) serves ``--pvs``
``calc`` counters (default 1,000 so that ``make bench`` stays short; the issue's size is
``--pvs 5000``) with ``SCAN = ".1 second"`` (10 Hz each: 50,000 updates/s at 5,000 PVs).
Each variant runs in its own child process, one after the other against the same IOC, so they do
not disturb each other and a child's CPU time is that client's alone (``time.process_time`` covers
all its threads: CA threads, callbacks, poll).

farmwatch:  EpicsSource (CA channels with a raw ctypes subscription callback that only copies the
            DBR bytes into a buffer) + ``poll()`` every second (decode into batches, ``up`` for every
            PV); then ``SQLiteStore.write`` of the drained batches to a temp file, measured apart.
baseline:   plain pyepics ``PV(name, form="native", auto_monitor=True, callback=...)`` whose
            callback only appends ``(pvname, value, timestamp)`` to a list (what ``camonitor`` does,
            minus the printing; what farmwatch itself did before); drained every second.

Every phase is timed (wall and CPU): IOC start with N records, PV creation, connection of all,
first value of all, the steady state (``--seconds`` 1 s intervals: updates received, CPU per 1,000
updates, poll/store cost, the IOC's CPU from /proc) and teardown. At the end one interval's
batches are written to a fresh store twice, timed: while the subscriptions still deliver, and
after close (see the README's performance section for why they differ). Results: benchmarks/results/epics.json
(``--out`` for another file, e.g. ``epics_5000.json``).
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import platform
import sqlite3
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
CLK_TCK = os.sysconf("SC_CLK_TCK")


def proc_cpu(pid: int) -> float:
    """utime + stime of ``pid`` in seconds (all its threads)."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / CLK_TCK


def wait_next_second() -> None:
    time.sleep(1.0 - (time.time() % 1.0))


def pv_names(n: int) -> list[str]:
    return [f"BENCH:c{i:05d}" for i in range(n)]


def records(n: int, scan: str) -> dict:
    return {name: ("calc", {"SCAN": scan, "INPA": f"$(P){name} NPP", "CALC": "A+1"}) for name in pv_names(n)}


class Phases:
    """Wall and CPU time of consecutive phases."""

    def __init__(self) -> None:
        self.out: dict[str, dict[str, float]] = {}
        self._w, self._c = time.perf_counter(), time.process_time()

    def done(self, name: str) -> None:
        w, c = time.perf_counter(), time.process_time()
        self.out[name] = {"wall_s": w - self._w, "cpu_s": c - self._c}
        print(f"  {name}: wall {w - self._w:.2f}s cpu {c - self._c:.2f}s", file=sys.stderr, flush=True)  # progress
        self._w, self._c = w, c


def wait_for(check, what: str, timeout: float) -> None:
    t0 = time.monotonic()
    while time.monotonic() - t0 < timeout:
        if check():
            return
        time.sleep(0.05)
    raise SystemExit(f"{what} not reached within {timeout:.0f}s")


def summarize(rows: list[dict], n_pvs: int, rate_hz: float) -> dict:
    med = lambda k: statistics.median(r[k] for r in rows)  # noqa: E731
    out = {
        "intervals": len(rows),
        "updates_per_s_median": med("updates_per_s"),
        "updates_per_s_min": min(r["updates_per_s"] for r in rows),
        "expected_updates_per_s": n_pvs * rate_hz,
        "fraction_of_expected": med("updates_per_s") / (n_pvs * rate_hz),
        "cpu_s_per_1000_updates_median": med("cpu_per_1000"),
        "cpu_fraction_of_one_core_median": med("cpu_fraction"),
        "ioc_cpu_fraction_median": med("ioc_cpu_fraction"),
    }
    for k in ("poll_wall", "poll_cpu", "store_wall", "store_cpu", "store_cpu_per_1000", "samples"):
        if k in rows[0]:
            out[f"{k}_median"] = med(k)
    if "poll_wall" in rows[0]:
        out["poll_wall_max"] = max(r["poll_wall"] for r in rows)
        out["total_cpu_fraction_incl_store_median"] = statistics.median((r["cpu"] + r["store_cpu"]) / r["span"] for r in rows)
    return out


# -- the children -----------------------------------------------------------------------------------
def child_farmwatch(args: argparse.Namespace, names: list[str]) -> dict:
    from farmwatch.config.loader import parse
    from farmwatch.sources.epics.source import EpicsSource
    from farmwatch.store import SQLiteStore

    body = {"kind": "epics", "interval": "1s", "timeout": "500ms", "missing_after": "60s",
            "ca_addr_list": [args.address], "ca_auto_addr_list": False, "ca_repeater_port": args.repeater_port,
            "pvs": names}
    conf = parse({"sources": {"slc": body}}).sources["slc"]
    ph = Phases()
    src = EpicsSource("slc", conf)
    ph.done("create")
    wait_for(lambda: all(p.connected for p in src.pvs), "all PVs connected", 120)
    ph.done("connect")
    seen: set = set()

    def all_values() -> bool:
        seen.update(k for b in src.poll() for k in b.keys if k[0] == "epics.pv")
        return len(seen) == len(names)

    wait_for(all_values, "a first value of every PV", 60)
    ph.done("first_values")
    rows = []
    with tempfile.TemporaryDirectory() as tmp:
        store = SQLiteStore(Path(tmp) / "bench.db")
        for _ in range(2):  # warm-up: series ids created in the store
            wait_next_second()
            batches = src.poll()
            if args.store:
                store.write(batches)
        wait_next_second()
        src.poll()
        w_prev, c_prev, i_prev = time.perf_counter(), time.process_time(), proc_cpu(args.ioc_pid)
        for _ in range(args.seconds):
            wait_next_second()
            w0, t0c = time.perf_counter(), time.thread_time()
            batches = src.poll()
            w1, t1c = time.perf_counter(), time.thread_time()
            n = store.write(batches) if args.store else 0
            w2, t2c = time.perf_counter(), time.thread_time()
            c_now, i_now = time.process_time(), proc_cpu(args.ioc_pid)
            updates = sum(1 for b in batches for (name, _) in b.keys if name == "epics.pv")
            span = w2 - w_prev
            store_cpu = t2c - t1c
            cpu = (c_now - c_prev) - store_cpu  # CA threads, callbacks and poll(); the store apart
            rows.append({"updates": updates, "updates_per_s": updates / span, "span": span,
                         "cpu": cpu, "cpu_per_1000": cpu / updates * 1000 if updates else float("nan"),
                         "cpu_fraction": cpu / span, "ioc_cpu_fraction": (i_now - i_prev) / span,
                         "poll_wall": w1 - w0, "poll_cpu": t1c - t0c, "store_wall": w2 - w1, "store_cpu": store_cpu,
                         "store_cpu_per_1000": store_cpu / updates * 1000 if updates else float("nan"),
                         "samples": n, "batches": len(batches)})
            w_prev, c_prev, i_prev = w2, c_now, i_now
        ph.done("steady")
        # The store write of one interval while the CA threads deliver updates, and the same
        # batches into a fresh store once the subscriptions are gone: the GIL hand-offs that
        # every update callback forces slow any other Python work of the process down.
        wait_next_second()
        batches = src.poll()
        store_busy = timed(lambda: SQLiteStore(Path(tmp) / "busy.db"), batches)
        ph.done("store_one_interval")
        src.close()
        ph.done("teardown")
        store_quiet = timed(lambda: SQLiteStore(Path(tmp) / "quiet.db"), batches)
        store.close()
    return {"rows": rows, "phases": ph.out, "store_one_interval": {
        "updates": sum(1 for b in batches for k in b.keys if k[0] == "epics.pv"), "batches": len(batches),
        "while_subscribed": store_busy, "after_close": store_quiet}}


def timed(open_store, batches) -> dict:
    store = open_store()
    try:
        w, c, t = time.perf_counter(), time.process_time(), time.thread_time()
        store.write(batches)
        return {"wall_s": time.perf_counter() - w, "process_cpu_s": time.process_time() - c,
                "writer_thread_cpu_s": time.thread_time() - t}
    finally:
        store.close()


def child_baseline(args: argparse.Namespace, names: list[str]) -> dict:
    os.environ.update({"EPICS_CA_ADDR_LIST": args.address, "EPICS_CA_AUTO_ADDR_LIST": "NO",
                       "EPICS_CA_REPEATER_PORT": str(args.repeater_port)})
    import epics

    buf: list = []

    def on_value(pvname=None, value=None, timestamp=None, **_):
        buf.append((pvname, value, timestamp))

    ph = Phases()
    pvs = [epics.PV(n, form="native", auto_monitor=True, callback=on_value) for n in names]
    ph.done("create")
    wait_for(lambda: all(p.connected for p in pvs), "all PVs connected", 120)
    ph.done("connect")
    seen: set = set()

    def all_values() -> bool:
        nonlocal buf
        got, buf = buf, []
        seen.update(x[0] for x in got)
        return len(seen) == len(names)

    wait_for(all_values, "a first value of every PV", 60)
    ph.done("first_values")
    rows = []
    wait_next_second()
    buf = []
    w_prev, c_prev, i_prev = time.perf_counter(), time.process_time(), proc_cpu(args.ioc_pid)
    for _ in range(args.seconds):
        wait_next_second()
        w1 = time.perf_counter()
        got, buf = buf, []  # drain: the callbacks append to the new list from here on
        c_now, i_now = time.process_time(), proc_cpu(args.ioc_pid)
        span = w1 - w_prev
        cpu = c_now - c_prev
        rows.append({"updates": len(got), "updates_per_s": len(got) / span, "span": span, "cpu": cpu,
                     "cpu_per_1000": cpu / len(got) * 1000 if got else float("nan"),
                     "cpu_fraction": cpu / span, "ioc_cpu_fraction": (i_now - i_prev) / span})
        w_prev, c_prev, i_prev = w1, c_now, i_now
    ph.done("steady")
    # pyepics' own PV.disconnect() polls CA for >= 1 ms per PV while updates keep coming (the
    # quadratic-looking teardown found at 2,500 PVs); the floor is: subscriptions off, then channels.
    for p in pvs:
        p._clear_auto_monitor_subscription()
    for p in pvs:
        epics.ca.clear_channel(p.chid)
    epics.ca.flush_io()
    ph.done("teardown")
    return {"rows": rows, "phases": ph.out}


def run_child(variant: str, args: argparse.Namespace, ioc) -> dict:
    cmd = [sys.executable, __file__, "--child", variant, "--pvs", str(args.pvs), "--seconds", str(args.seconds),
           *([] if args.store else ["--no-store"]),
           "--address", ioc.address, "--repeater-port", str(ioc.repeater_port), "--ioc-pid", str(ioc._proc.pid)]
    t0 = time.perf_counter()
    print(f"{variant} ({args.pvs} PVs):", file=sys.stderr, flush=True)
    proc = subprocess.run(cmd, env={**os.environ, **ioc.ca_env}, stdout=subprocess.PIPE, text=True,
                          timeout=args.seconds * 3 + 240)  # the child's progress lines go to our stderr
    if proc.returncode != 0:
        raise SystemExit(f"{variant} child failed with status {proc.returncode}")
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    out["process_wall_s"] = time.perf_counter() - t0
    return out


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--pvs", type=int, default=1000, help="PVs on the IOC (the issue's size: 5000)")
    ap.add_argument("--scan", default=".1 second", help="SCAN of the calc records (default 10 Hz)")
    ap.add_argument("--seconds", type=int, default=20, help="measured 1 s intervals per variant")
    ap.add_argument("--out", type=Path, default=HERE / "results" / "epics.json")
    ap.add_argument("--no-store", dest="store", action="store_false",
                    help="do not write to the store every interval (at 5,000 PVs one write takes longer than the interval; "
                         "one interval is still written, timed, at the end)")
    ap.add_argument("--child", choices=("farmwatch", "baseline"), help=argparse.SUPPRESS)
    ap.add_argument("--address", help=argparse.SUPPRESS)
    ap.add_argument("--repeater-port", type=int, help=argparse.SUPPRESS)
    ap.add_argument("--ioc-pid", type=int, help=argparse.SUPPRESS)
    args = ap.parse_args()
    logging.basicConfig(level=logging.ERROR)
    if args.child:
        res = (child_farmwatch if args.child == "farmwatch" else child_baseline)(args, pv_names(args.pvs))
        print(json.dumps(res))
        return
    from farmwatch.sim.ioc import SimIOC

    rate_hz = 1.0 / float(args.scan.split()[0])
    t0 = time.perf_counter()
    ioc = SimIOC(records(args.pvs, args.scan), startup_timeout=120)
    try:
        ioc.start()
        ioc_start_s = time.perf_counter() - t0
        time.sleep(1.0)
        i0, w0 = proc_cpu(ioc._proc.pid), time.perf_counter()
        time.sleep(2.0)
        ioc_idle = (proc_cpu(ioc._proc.pid) - i0) / (time.perf_counter() - w0)  # scanning, no clients
        fw = run_child("farmwatch", args, ioc)
        base = run_child("baseline", args, ioc)
    finally:
        ioc.close()

    import epics
    f, b = summarize(fw["rows"], args.pvs, rate_hz), summarize(base["rows"], args.pvs, rate_hz)
    f["phases"], b["phases"] = fw["phases"], base["phases"]
    f["store_one_interval"] = fw["store_one_interval"]
    f["store_every_interval"] = args.store
    f["total_cpu_s_per_1000_updates_with_store_median"] = statistics.median(
        (r["cpu"] + r["store_cpu"]) / r["updates"] * 1000 for r in fw["rows"] if r["updates"])
    result = {
        "benchmark": "epics",
        "machine": {"platform": platform.platform(), "cpus": os.cpu_count(), "python": platform.python_version(),
                    "sqlite": sqlite3.sqlite_version, "pyepics": epics.__version__,
                    "load_average_at_end": os.getloadavg()},
        "ioc": {"pvs": args.pvs, "record": "calc", "scan": args.scan, "rate_hz_per_pv": rate_hz,
                "expected_updates_per_s": args.pvs * rate_hz, "start_s": ioc_start_s,
                "cpu_fraction_scanning_without_clients": ioc_idle},
        "farmwatch": f,
        "baseline_pyepics_append": b,
        "ratio_cpu_per_update_farmwatch_over_baseline": f["cpu_s_per_1000_updates_median"] / b["cpu_s_per_1000_updates_median"],
        "intervals": {"farmwatch": fw["rows"], "baseline": base["rows"]},
        "notes": "cpu_s_per_1000_updates: the client process's CPU (all threads: CA, callbacks, poll) per 1,000 value "
                 "updates received, store write excluded (store_cpu_per_1000 is that). Each variant runs in its own "
                 "process; the IOC runs in another process on the same machine and competes for the same cores.",
    }
    result["ok"] = {
        "keeps_up_with_updates_received": f["fraction_of_expected"] >= 0.95 * b["fraction_of_expected"],
        "source_within_one_core": f["cpu_fraction_of_one_core_median"] < 1.0,
        "baseline_within_one_core": b["cpu_fraction_of_one_core_median"] < 1.0,
    }
    if args.store:
        result["ok"]["within_one_core_incl_store"] = f["total_cpu_fraction_incl_store_median"] < 1.0
    so = f["store_one_interval"]
    result["ok"]["store_write_of_one_interval_within_the_interval"] = so["while_subscribed"]["wall_s"] < 1.0
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(result, indent=2) + "\n")
    print(f"IOC: {args.pvs} calc PVs, SCAN {args.scan!r} → {args.pvs * rate_hz:,.0f} updates/s expected; "
          f"started in {ioc_start_s:.1f}s; IOC cpu without clients {ioc_idle:.0%} of a core")
    print(f"{'':10} {'updates/s':>10} {'of exp.':>8} {'cpu/1k upd':>11} {'cpu/core':>9} {'IOC cpu':>8} {'poll wall':>10} {'store cpu/1k':>13}")
    print(f"{'farmwatch':10} {f['updates_per_s_median']:10,.0f} {f['fraction_of_expected']:8.1%} {f['cpu_s_per_1000_updates_median']*1000:8.2f} ms "
          f"{f['cpu_fraction_of_one_core_median']:9.0%} {f['ioc_cpu_fraction_median']:8.0%} {f['poll_wall_median']*1000:7.1f} ms "
          f"{f['store_cpu_per_1000_median']*1000:10.2f} ms")
    print(f"{'baseline':10} {b['updates_per_s_median']:10,.0f} {b['fraction_of_expected']:8.1%} {b['cpu_s_per_1000_updates_median']*1000:8.2f} ms "
          f"{b['cpu_fraction_of_one_core_median']:9.0%} {b['ioc_cpu_fraction_median']:8.0%} {'-':>10} {'-':>13}")
    for name, v in (("farmwatch", f), ("baseline", b)):
        print(f"{name:10} phases (wall s): " + ", ".join(f"{k} {p['wall_s']:.2f}" for k, p in v["phases"].items()))
    print(f"store write of one interval ({so['updates']:,} updates, {so['batches']} batches): "
          f"{so['while_subscribed']['wall_s']:.2f}s wall while subscribed, {so['after_close']['wall_s']:.2f}s after close")
    print(f"ratio cpu/update farmwatch/baseline: {result['ratio_cpu_per_update_farmwatch_over_baseline']:.2f}; "
          f"poll max {f['poll_wall_max']*1000:.0f} ms; checks: {result['ok']}")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    sys.exit(main())
