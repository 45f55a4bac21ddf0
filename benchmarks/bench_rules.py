"""Rule evaluation over a farm-size window, against the naive way, same run.

Workload: a farm of 20 HLT units × 16 worker nodes × 10 worker processes, shaped like the
``hlt_zmq`` source's output (docs/series.md): per unit a distributor and a collector (20 series of
their own, 4 per-peer series for each of the 160 worker processes: 660 each), a final collector
and a final histogram server (20 each) and 16 proxy histogram servers (11 each); 1,536 series per
unit, 30,720 in all, plus ``daq.run_state``, 100 anomaly-score series and 10 log records per
second. One batch per endpoint per 1 s cycle, values as Python lists (the distributor's batch
carries a state string), as the runner hands them to its listeners.

Rules: 200, generated as TOML and loaded with ``parse_rules``, of every kind: 50 thresholds on the
newest value, 20 thresholds aggregated by unit over the 12,800 per-peer rates, 20 over-time
thresholds (avg/min/max/increase/rate over 30 s to 5 min) on those per-peer series, 20 down, 15
absent (with expected label sets), 20 change (1 min against 5 min), 20 ratio (events out/in per
unit), 20 peers (worker node vs the nodes of its unit), 5 log_count and 10 anomaly; half of them
gated on run state with a grace period.

Measured, after filling the window with ``horizon`` seconds of cycles (median over ``--cycles``
timed cycles, one pass over all rules after each): evaluation time per full pass (the target is
≤ 0.2 s), the first pass (cold selection caches), the listener's ingest time per cycle and
``prune``. Baseline, named "naive": each rule reads its series from a SQLite store holding the same
data, ``store.latest()`` for newest-value selectors and ``store.query()`` over the window for the
rest (reads only: the naive way's arithmetic is not even counted, so this is a lower bound).

Writes ``benchmarks/results/rules.json`` and prints a table.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_ingest import machine  # noqa: E402

from farmwatch.alerting import kinds  # noqa: E402
from farmwatch.alerting.rules import Rule, parse_rules  # noqa: E402
from farmwatch.store.window import Window  # noqa: E402
from farmwatch.model import Batch, LogRecord, SeriesKey, labels  # noqa: E402
from farmwatch.store import SQLiteStore  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_704_067_200.0
TARGET_S = 0.2
UNITS, NODES, WORKERS = 20, 16, 10
FILL = [f"hlt.monitor.key{k:02d}" for k in range(20)]
DIST_OWN = ["up", "hlt.poll.duration", "hlt.input.received_events", "hlt.input.received_events:rate",
            "hlt.output.sent_events", "hlt.output.sent_events:rate", "hlt.output.ready_queue_size",
            "hlt.output.registered_workers", "hlt.monitor.monitoring_counter"]
DIST_PEER = ["hlt.output.sent_events", "hlt.output.sent_events:rate", "hlt.output.sent_ready",
             "hlt.output.sent_ready:rate"]
COLL_OWN = ["up", "hlt.poll.duration", "hlt.input.received_events", "hlt.input.received_events:rate",
            "hlt.input.registered_workers", "hlt.input.dead_workers", "hlt.output.sent_events",
            "hlt.output.sent_events:rate", "hlt.monitor.monitoring_counter"]
COLL_PEER = ["hlt.input.received_events", "hlt.input.received_events:rate", "hlt.input.received_bytes",
             "hlt.input.last_seen"]
FINAL_OWN = ["up", "hlt.poll.duration", "hlt.input.received_events", "hlt.input.received_events:rate",
             "hlt.output.sent_events", "hlt.output.sent_events:rate", "hlt.monitor.monitoring_counter"]
HISTO_OWN = ["up", "hlt.poll.duration", "hlt.output.histogram_merges", "hlt.monitor.monitoring_counter"]
PROXY_OWN = ["up", "hlt.poll.duration", "hlt.output.histogram_merges"]
FEATURES = ["input_rate", "output_rate", "ready_queue", "dead_workers", "node_spread"]


def own(names: list[str], n: int) -> list[str]:
    return names + FILL[: n - len(names)]


def farm_targets() -> list[list[SeriesKey]]:
    """The series of each endpoint's batch (distributor, collector, final apps, proxies) per unit."""
    targets = []
    for u in range(1, UNITS + 1):
        unit = f"hlt{u:02d}"
        peers = [(f"hlt{u:02d}wk{n:02d}", str(4000 + w)) for n in range(1, NODES + 1) for w in range(WORKERS)]
        for app, names, per_peer in (("distributor", DIST_OWN, DIST_PEER), ("collector", COLL_OWN, COLL_PEER)):
            base = labels(unit=unit, app=app)
            keys = [(name, base) for name in own(names, 20)]
            keys += [(name, labels(unit=unit, app=app, host=h, pid=p)) for h, p in peers for name in per_peer]
            targets.append(keys)
        targets.append([(n, labels(unit=unit, app="finalcollector")) for n in own(FINAL_OWN, 20)])
        targets.append([(n, labels(unit=unit, app="finalhistoserver")) for n in own(HISTO_OWN, 20)])
        for node in range(1, NODES + 1):
            base = labels(unit=unit, app="proxyhistoserver", node=f"hlt{u:02d}wk{node:02d}")
            targets.append([(n, base) for n in own(PROXY_OWN, 11)])
        targets.append([("anomaly.score", labels(unit=unit, feature=f)) for f in FEATURES])
    return targets


class Farm:
    """Cycle after cycle of plausible values: counters grow, rates and gauges wander, all up."""

    def __init__(self, targets: list[list[SeriesKey]]) -> None:
        self.targets = targets
        self.rng = np.random.default_rng(4)
        self.kind = []
        self.state = []
        for keys in targets:
            kind = np.array([2 if k[0].endswith(("events", "ready", "bytes", "counter", "merges")) else
                             (1 if k[0] == "up" else 0) for k in keys])
            self.kind.append(kind)
            self.state.append(self.rng.random(len(keys)) * 1000)

    def cycle(self, c: int) -> list[Batch]:
        ts = T0 + c
        batches = []
        for i, keys in enumerate(self.targets):
            kind, state = self.kind[i], self.state[i]
            noise = self.rng.random(len(keys))
            state[kind == 2] += 100 + 10 * noise[kind == 2]
            values = np.where(kind == 2, state, np.where(kind == 1, 1.0, 50 + 100 * noise))
            batch = Batch(ts, keys, values.tolist())
            if i % 20 == 0:  # each distributor also reports its input socket's state
                batch = Batch(ts, [*keys, ("hlt.input.socket_state", keys[0][1])], [*batch.values, "connected"])
            batches.append(batch)
        rc = labels(node="RUNCONTROL")
        batches.append(Batch(ts, [("daq.run_state", rc), ("daq.run_state_since", rc)], ["RUNNING", T0 - 3600]))
        return batches

    def logs(self, c: int) -> list[LogRecord]:
        return [LogRecord(T0 + c + k / 10, f"hlt{k % UNITS + 1:02d}wk{k % NODES + 1:02d}", "basf2",
                          "error" if k % 7 == 0 else "info",
                          "segmentation violation in module X" if k == 3 and c % 60 == 0 else f"event {c}.{k} done")
                for k in range(10)]


def rules_toml() -> str:
    """200 rules of every kind, as an operator would write them (half gated on the run state)."""
    out = []

    def rule(name: str, body: str, gated: bool) -> None:
        gate = 'run_state = ["RUNNING"]\ngrace = "30s"\n' if gated else ""
        out.append(f'[[rule]]\nname = "{name}"\n{gate}{body}\nsummary = "{{rule}} {{unit}} {{value:.1f}}"\n')

    units = [f"hlt{u:02d}" for u in range(1, UNITS + 1)]
    gauges = ["hlt.output.ready_queue_size", "hlt.poll.duration", "hlt.input.received_events:rate",
              "hlt.output.sent_events:rate", "hlt.input.dead_workers"]
    for i in range(50):
        rule(f"Gauge{i}", f'kind = "threshold"\nseries = "{gauges[i % 5]}"\nmatch = ["app=~(distributor|collector)", '
                          f'"host="]\nop = ">"\nvalue = {140 + i}', i % 2 == 0)
    for i in range(20):
        rule(f"UnitPeerSum{i}", f'kind = "threshold"\nseries = "hlt.output.sent_events:rate"\nmatch = ["app=distributor", '
                                f'"host*=hlt*"]\nby = ["unit"]\naggregate = "{["sum", "avg", "min", "max"][i % 4]}"'
                                f'\nop = "<"\nvalue = {10 + i}', i % 2 == 0)
    for i in range(20):
        over, window = ["avg", "min", "max", "increase", "rate"][i % 5], ["30s", "1m", "2m", "5m"][i % 4]
        series = "hlt.output.sent_events" if over in ("increase", "rate") else "hlt.output.sent_events:rate"
        rule(f"PeerOverTime{i}", f'kind = "threshold"\nseries = "{series}"\nmatch = ["app=distributor", '
                                 f'"host*=hlt*"]\nover = "{over}"\nwindow = "{window}"\nop = "<"\nvalue = 1', i % 2 == 0)
    for i in range(20):
        app = ["distributor", "collector", "finalcollector", "finalhistoserver", "proxyhistoserver"][i % 5]
        rule(f"Down{i}", f'kind = "down"\nmatch = {{app = "{app}", unit = "{units[i]}"}}\nafter = "30s"', False)
    for i in range(15):
        app = ["distributor", "collector", "finalcollector"][i % 3]
        expect = ", ".join(f'{{unit = "{u}", app = "{app}"}}' for u in units)
        rule(f"Absent{i}", f'kind = "absent"\nseries = "hlt.monitor.monitoring_counter"\nmatch = {{app = "{app}"}}\n'
                           f'after = "{10 + i}s"\nexpect = [{expect}]', False)
    for i in range(20):
        series = ["hlt.input.received_events:rate", "hlt.output.sent_events:rate"][i % 2]
        rule(f"Change{i}", f'kind = "change"\nseries = "{series}"\nmatch = ["host="]\nby = ["unit"]\n'
                           f'window = "1m"\nbaseline = "5m"\ndrop_below = {0.2 + i / 100}\nmin_baseline = 1', i % 2 == 0)
    for i in range(20):
        rule(f"Ratio{i}", 'kind = "ratio"\nnumerator = { series = "hlt.output.sent_events", match = ["app=finalcollector"], '
                          'over = "increase", window = "1m" }\ndenominator = { series = "hlt.input.received_events", '
                          'match = ["app=distributor", "host="], over = "increase", window = "1m" }\nby = ["unit"]\n'
                          f'op = "<"\nvalue = {0.5 + i / 100}', i % 2 == 0)
    for i in range(20):
        over = 'over = "avg"\nwindow = "1m"\n' if i % 2 else ""
        rule(f"Peers{i}", f'kind = "peers"\nseries = "hlt.output.sent_events:rate"\nmatch = ["app=distributor", '
                          f'"host*=hlt*"]\n{over}entity = "host"\npeers_by = ["unit"]\nbelow = {0.3 + i / 100}', i % 2 == 0)
    for i in range(5):
        rule(f"Logs{i}", f'kind = "log_count"\npattern = "(?i)segmentation (fault|violation)"\nlevel = "error"\n'
                         f'by = ["host"]\nwindow = "{i + 1}m"\nop = ">"\nvalue = {5 + i}', False)
    for i in range(10):
        rule(f"Anomaly{i}", f'kind = "anomaly"\nvalue = {0.9 + i / 200}', False)
    return "\n".join(out)


def naive_pass(store: SQLiteStore, rules: list[Rule], now: float) -> int:
    """The baseline: every rule reads what it needs from the store (no arithmetic counted)."""
    points = 0

    def read(sel_name: str, match, over: str, window: float | None) -> None:
        nonlocal points
        matchers = list(match)
        if over == "last":
            points += len(store.latest(sel_name, matchers))
        else:
            points += len(store.query(sel_name, matchers, since=now - window, until=now))

    empty = []
    for rule in rules:
        spec, before = rule.spec, points
        if isinstance(spec, kinds.Ratio):
            for side in (spec.numerator, spec.denominator):
                read(side.series, side.match, side.over, side.window)
        elif isinstance(spec, kinds.Selector):
            read(spec.series, spec.match, spec.over, spec.window)
        elif isinstance(spec, kinds.Down):
            read("up", spec.match, "last", None)
        elif isinstance(spec, kinds.Absent):
            read(spec.series, spec.match, "last", None)
        elif isinstance(spec, kinds.Change):
            read(spec.series, spec.match, "avg", spec.window + spec.baseline)
        else:
            continue
        if points == before:
            empty.append(rule.name)
    if empty:  # a rule that selects nothing would make both sides of the comparison cheap
        raise SystemExit(f"bench_rules: {len(empty)} rules select no data, e.g. {', '.join(empty[:5])}")
    return points


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--cycles", type=int, default=20, help="timed cycles (one ingest + one rule pass each)")
    parser.add_argument("--naive-passes", type=int, default=2)
    parser.add_argument("--dir", type=Path, default=RESULTS, help="where the baseline's store file is written")
    parser.add_argument("--out", type=Path, default=RESULTS / "rules.json")
    args = parser.parse_args()
    started = time.perf_counter()

    rules = parse_rules(rules_toml(), "bench_rules.toml")
    names = set().union(*(r.names() for r in rules))
    horizon = max(r.lookback() for r in rules) + 60
    fill = int(horizon)
    targets = farm_targets()
    farm = Farm(targets)
    exact = {n for n in names if not any(c in n for c in "*?[")}
    window = Window(horizon, run_state_node="RUNCONTROL", wants=lambda n: n in exact)

    RESULTS.mkdir(exist_ok=True)
    with tempfile.TemporaryDirectory(dir=args.dir, suffix=".tmp") as tmp:
        store = SQLiteStore(Path(tmp) / "farm.db")
        fill_s = time.perf_counter()
        pending: list[Batch] = []
        for c in range(fill):
            cycle = farm.cycle(c)
            window("hlt", cycle)
            window.ingest_logs(farm.logs(c))
            pending += cycle
            if len(pending) > 40 * len(cycle):
                store.write(pending)
                pending = []
        store.write(pending)
        fill_s = time.perf_counter() - fill_s

        ingest, prune, passes, first = [], [], [], None
        fired = 0
        for k in range(args.cycles):
            c = fill + k
            cycle, logs = farm.cycle(c), farm.logs(c)
            samples = sum(len(b) for b in cycle)
            t = time.perf_counter()
            window("hlt", cycle)
            ingest.append(time.perf_counter() - t)
            window.ingest_logs(logs)
            store.write(cycle)
            now = T0 + c + 0.5
            t = time.perf_counter()
            window.prune(now)
            prune.append(time.perf_counter() - t)
            t = time.perf_counter()
            fired = sum(len(rule.evaluate(window, now)) for rule in rules)
            elapsed = time.perf_counter() - t
            if first is None:
                first = elapsed
            else:
                passes.append(elapsed)

        per_kind: dict[str, float] = {}
        now = T0 + fill + args.cycles - 0.5
        for rule in rules:
            t = time.perf_counter()
            rule.evaluate(window, now)
            per_kind[rule.kind] = per_kind.get(rule.kind, 0.0) + time.perf_counter() - t

        naive, naive_points = [], 0
        for _ in range(args.naive_passes):
            t = time.perf_counter()
            naive_points = naive_pass(store, rules, now)
            naive.append(time.perf_counter() - t)
        store.close()

    evaluation = statistics.median(passes)
    report = {
        "benchmark": "rules",
        "machine": machine(),
        "workload": {
            "series": sum(len(k) for k in targets) + UNITS + 2, "series_kept": window.series_count,
            "samples_per_cycle": samples, "batches_per_cycle": len(targets) + 1, "poll_interval_s": 1.0,
            "rules": len(rules), "rules_by_kind": {k: sum(r.kind == k for r in rules) for k in sorted({r.kind for r in rules})},
            "horizon_s": horizon, "filled_cycles": fill, "timed_cycles": args.cycles, "log_records_per_s": 10,
            "statistic": "median", "fill_s": fill_s, "benchmark_s": time.perf_counter() - started,
        },
        "evaluation_s": {
            "full_pass_median": evaluation, "full_pass_max": max(passes), "first_pass_cold_caches": first,
            "by_kind_one_pass": per_kind, "active_elements_per_pass": fired,
        },
        "ingest_s_per_cycle": {"median": statistics.median(ingest), "max": max(ingest),
                               "prune_median": statistics.median(prune)},
        "baseline": {
            "name": "naive: each rule reads its series with store.latest()/store.query() from a SQLite store "
                    "holding the same data (reads only)",
            "full_pass_median_s": statistics.median(naive), "points_read_per_pass": naive_points,
        },
        "speedup_vs_baseline": statistics.median(naive) / evaluation,
        "target_s": TARGET_S,
        "meets_target": evaluation <= TARGET_S,
    }
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(report, indent=2) + "\n")

    w = report["workload"]
    print(f"{w['series']:,} series ({w['series_kept']:,} kept by the window), {w['samples_per_cycle']:,} samples "
          f"per cycle, {len(rules)} rules, horizon {horizon:.0f} s; median of {args.cycles - 1} passes")
    print(f"{'rule evaluation, full pass':<46}{1000 * evaluation:>9.1f} ms  (max {1000 * max(passes):.1f}, "
          f"first {1000 * first:.1f})")
    for kind, seconds in sorted(per_kind.items(), key=lambda kv: -kv[1]):
        print(f"{'  ' + kind:<46}{1000 * seconds:>9.1f} ms")
    print(f"{'ingest (listener), per cycle':<46}{1000 * statistics.median(ingest):>9.1f} ms  "
          f"(max {1000 * max(ingest):.1f}); prune {1000 * statistics.median(prune):.1f} ms")
    print(f"{'baseline: naive store reads, full pass':<46}{1000 * statistics.median(naive):>9.1f} ms  "
          f"({naive_points:,} points)")
    verdict = "meets" if report["meets_target"] else "MISSES"
    print(f"{report['speedup_vs_baseline']:,.0f}x the baseline; {verdict} the {TARGET_S} s target; "
          f"{w['benchmark_s']:.0f} s; wrote {args.out}")


if __name__ == "__main__":
    main()
