"""Detection quality on slow faults: farmwatch's family model + peers against two baselines.

Data: simulated HLT units (``farmwatch.sim``) on a ``SimClock`` with a varying load
(``faults.Load``), read through the distributor's and collector's monitor replies every 10 s into
per-node series (``faults.record``: sent rate, accepted rate, credits; the replies are built by the
units' socket callback and decoded by the HLT source's parser, without the sockets, to make hours
of farm time cheap). Per unit: ``--train-hours`` of clean history, then one-hour segments: clean
ones, and one per fault kind and repetition with that slow fault (``faults.KINDS``) on a random
node from minute 15–20 for 30 minutes. Ground truth: ``GroundTruth`` of each fault.

Detectors, all in this run, all with a threshold for the same false-alarm budget α per scored
point (``--alpha``):
* **farmwatch**: ``train_family`` on the clean history of the nodes of each unit (one family per
  unit, window 30 points = 5 min, ``DEFAULT_FEATURES``), scored every 10 s with peers (the
  other nodes of the same unit), exactly as ``FamilyModel.score_entities`` combines them;
  threshold: the model's own calibrated ``1 − α``.
* **rolling z**: per series, |x − mean| / std of the previous 60 points (10 min); a node's score
  is its largest |z|; threshold: the (1 − α) quantile of its training scores.
* **tsfresh + IsolationForest**, naive: ``tsfresh.extract_features`` with ``EfficientFCParameters``
  on the same 30-point windows of the 3 metrics (tsfresh's imputation), an ``IsolationForest``
  with defaults on raw features; no calibration, no peers; threshold: the (1 − α) quantile of
  its training scores. tsfresh needs ~0.2 s per 30-point series here, so it is SUBSAMPLED:
  training on ``--tsfresh-train`` random windows, scoring every ``--tsfresh-stride`` points only on
  the faulty node and one healthy node of the same unit in fault segments (first repetition only
  unless ``--tsfresh-all-reps``), and on all nodes of the clean segments of the first unit. Its
  delay resolution is that stride.

Metrics per fault kind (event level): recall = faults with an alarm on the faulty node between
fault start and fault end / faults (an alarm only at the recovery, after the end, does not count);
precision = those / (those + alarm events elsewhere in the segments of that kind: on other nodes,
or on the faulty node before the fault or more than one window after its end);
delay = first alarm − fault start (median, minutes); false alarms per node-hour on clean segments
(alarm events = runs of alarming points, gaps shorter than a window merged).

Writes ``benchmarks/results/detect_quality.json`` (``--quick``: ``detect_quality_quick.json``, so
the full result stays) and prints a table. ``--quick``: 2 units, 1
repetition, shorter history, sparser tsfresh sampling (about 1.5 minutes on the shared 2-core
machine, too few faults for stable numbers; the full run 4-9 minutes).
"""

from __future__ import annotations

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import argparse  # noqa: E402
import json  # noqa: E402
import random  # noqa: E402
import statistics  # noqa: E402
import sys  # noqa: E402
import time  # noqa: E402
import warnings  # noqa: E402
from dataclasses import dataclass, field  # noqa: E402
from pathlib import Path  # noqa: E402

import numpy as np  # noqa: E402
import pandas as pd  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_store_ingest import machine  # noqa: E402

from farmwatch.clock import SimClock  # noqa: E402
from farmwatch.detect import train_family  # noqa: E402
from farmwatch.detect.family import score_history  # noqa: E402
from farmwatch.sim import faults  # noqa: E402
from farmwatch.sim.unit import SimUnit  # noqa: E402

RESULTS = Path(__file__).resolve().parent / "results"
T0 = 1_700_000_000.0
STEP = 10.0          # seconds between polls (the grid)
WINDOW = 30          # points per feature window (5 minutes)
SEGMENT = 3600.0     # one test segment
FAULT_AT = 900.0     # fault start within a segment (+ up to 5 minutes at random)
FAULT_FOR = 1800.0
ZWINDOW = 60         # rolling z-score history (10 minutes)
INPUT_RATE = 100.0
WORKERS_PER_NODE = 3
DETECTORS = ("farmwatch", "rolling_z", "tsfresh_iforest")


@dataclass
class UnitRun:
    name: str
    train: dict[str, pd.DataFrame]
    test: dict[str, pd.DataFrame]
    segments: list[tuple[str, float, float]]  # (kind or "clean", start, end)
    truths: list[faults.GroundTruth] = field(default_factory=list)


def simulate(index: int, nodes: int, train_hours: float, kinds: list[str], seed: int) -> UnitRun:
    """One unit's timeline: 10 min settling, clean training history, then the test segments."""
    rng = random.Random(f"{seed}:{index}")
    clock = SimClock(T0)
    unit = SimUnit(f"hlt{index + 1:02d}", worker_nodes=nodes, workers_per_node=WORKERS_PER_NODE,
                   input_rate=INPUT_RATE, clock=clock, seed=seed, first_node=index * nodes + 1)
    unit.add_schedule(faults.Load(INPUT_RATE, seed=seed * 1000 + index))
    faults.record(unit, clock, 600, STEP)
    train = faults.record(unit, clock, train_hours * 3600, STEP)
    run = UnitRun(unit.name, train, {}, [])
    parts = []
    for kind in kinds:
        start = clock.time()
        if kind != "clean":
            at = start + FAULT_AT + rng.uniform(0, 300)
            run.truths.append(faults.make(kind, unit, rng.choice(unit.nodes), at, FAULT_FOR).truth)
        parts.append(faults.record(unit, clock, SEGMENT, STEP))
        run.segments.append((kind, start, clock.time()))
    run.test = faults.concat(parts)
    return run


def seconds(index: pd.DatetimeIndex) -> np.ndarray:
    return (index - pd.Timestamp(0, tz="UTC")) / pd.Timedelta(seconds=1)


# ------------------------------------------------------------------------------- detectors


def farmwatch_scores(runs: list[UnitRun], alpha: float) -> tuple[dict, float, dict]:
    """Scores per (unit, node) over the test timeline, the threshold, and timing.

    One family per unit (``match = ["unit=…"]`` in the config): its nodes are each other's peers
    in training and in scoring alike (units see different loads, so peers across units would
    teach the model a peer spread that hides one node's drift).
    """
    out, train_s, score_s, rows = {}, 0.0, 0.0, 0
    threshold = 1.0 - alpha
    for r in runs:
        t = time.perf_counter()
        model = train_family(r.train, family=f"worker-{r.name}", window=WINDOW, step=2, target_false_alarm=alpha)
        train_s += time.perf_counter() - t
        rows += int(model.trained.get("n_samples", 0))
        threshold = model.threshold
        t = time.perf_counter()
        # The windows of the first test points reach back into the training history.
        context = {n: pd.concat([r.train[n].iloc[-(WINDOW - 1):], r.test[n]]) for n in r.test}
        scores = score_history(model, context)  # what score_entities gives at each time
        for n in scores.columns:
            out[(r.name, n)] = scores[n].to_numpy()
        score_s += time.perf_counter() - t
    return out, threshold, {"train_s": train_s, "score_s": score_s, "train_rows": rows,
                            "features": len(model.columns), "families": len(runs)}


def rolling_z(frame: pd.DataFrame) -> np.ndarray:
    hist = frame.shift(1).rolling(ZWINDOW, min_periods=ZWINDOW)
    z = (frame - hist.mean()) / hist.std().clip(lower=1e-9)
    return np.nan_to_num(z.abs().max(axis=1).to_numpy(), nan=0.0, posinf=1e9)


def zscore_scores(runs: list[UnitRun], alpha: float) -> tuple[dict, float, dict]:
    t = time.perf_counter()
    train = np.concatenate([rolling_z(f) for r in runs for f in r.train.values()])
    threshold = float(np.quantile(train, 1 - alpha))
    out = {}
    for r in runs:
        for n in r.test:
            ctx = pd.concat([r.train[n].iloc[-ZWINDOW:], r.test[n]])
            out[(r.name, n)] = rolling_z(ctx)[ZWINDOW:]
    return out, threshold, {"seconds": time.perf_counter() - t}


def tsfresh_features(windows: list[pd.DataFrame]) -> pd.DataFrame:
    from tsfresh import extract_features
    from tsfresh.feature_extraction import EfficientFCParameters

    long = pd.concat([w.reset_index(drop=True).assign(id=i, time=np.arange(len(w)))
                      for i, w in enumerate(windows)], ignore_index=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = extract_features(long, column_id="id", column_sort="time",
                             default_fc_parameters=EfficientFCParameters(), n_jobs=0,
                             disable_progressbar=True)
    return X.sort_index()


def tsfresh_scores(runs: list[UnitRun], alpha: float, n_train: int, stride: int, all_reps: bool,
                   seed: int) -> tuple[dict, float, dict]:
    """Sparse scores: NaN where a window was not scored (see the module docstring)."""
    from sklearn.ensemble import IsolationForest
    from tsfresh.utilities.dataframe_functions import impute

    rng = random.Random(seed)
    t = time.perf_counter()
    train_windows = []
    for _ in range(n_train):
        r = rng.choice(runs)
        f = r.train[rng.choice(list(r.train))]
        i = rng.randrange(WINDOW, len(f) + 1)
        train_windows.append(f.iloc[i - WINDOW:i])
    Xtr = tsfresh_features(train_windows)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # "columns did not have any finite values": tsfresh fills 0
        Xtr = impute(Xtr.replace([np.inf, -np.inf], np.nan))
    columns = Xtr.columns
    forest = IsolationForest(random_state=0).fit(Xtr.to_numpy())
    train_scores = -forest.score_samples(Xtr.to_numpy())
    threshold = float(np.quantile(train_scores, 1 - alpha))
    train_s = time.perf_counter() - t

    t = time.perf_counter()
    wanted: list[tuple[str, str, int]] = []  # (unit, node, index of the window's last test point)
    for k, r in enumerate(runs):
        first_of = {}
        times = seconds(r.test[next(iter(r.test))].index)
        for kind, start, end in r.segments:
            lo, hi = np.searchsorted(times, start), np.searchsorted(times, end)
            if kind == "clean":
                if k == 0:
                    wanted += [(r.name, n, i) for n in r.test for i in range(lo + stride - 1, hi, stride)]
                continue
            if first_of.setdefault(kind, start) != start and not all_reps:
                continue
            truth = next(g for g in r.truths if start <= g.start < end)
            other = rng.choice([n for n in r.test if n != truth.host])
            wanted += [(r.name, n, i) for n in (truth.host, other) for i in range(lo + stride - 1, hi, stride)]
    by_unit = {r.name: r for r in runs}
    windows = []
    for unit, node, i in wanted:
        ctx = pd.concat([by_unit[unit].train[node].iloc[-(WINDOW - 1):], by_unit[unit].test[node]])
        windows.append(ctx.iloc[i:i + WINDOW])
    X = tsfresh_features(windows).reindex(columns=columns)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        X = impute(X.replace([np.inf, -np.inf], np.nan))
    s = -forest.score_samples(X.to_numpy())
    out: dict = {}
    for (unit, node, i), v in zip(wanted, s):
        arr = out.setdefault((unit, node), np.full(len(by_unit[unit].test[node]), np.nan))
        arr[i] = v
    return out, threshold, {"train_s": train_s, "score_s": time.perf_counter() - t,
                            "train_windows": n_train, "scored_windows": len(windows),
                            "features": len(columns), "stride_points": stride}


# ------------------------------------------------------------------------------ evaluation


def alarm_events(times: np.ndarray, alarm: np.ndarray, scored: np.ndarray, merge: float) -> list[float]:
    """Start times of alarm events: runs of alarming points, gaps shorter than ``merge`` merged."""
    starts, last = [], None
    for t in times[alarm & scored]:
        if last is None or t - last > merge:
            starts.append(float(t))
        last = t
    return starts


def evaluate(runs: list[UnitRun], scores: dict, threshold: float) -> dict:
    grace = WINDOW * STEP
    per_kind: dict[str, dict] = {}
    for r in runs:
        times = seconds(r.test[next(iter(r.test))].index)
        for kind, start, end in r.segments:
            seg = (times >= start) & (times < end)
            truth = next((g for g in r.truths if start <= g.start < end), None)
            stats = per_kind.setdefault(kind, {"faults": 0, "detected": 0, "false_events": 0, "delays": [],
                                               "node_hours": 0.0, "scored": False, "on_other_nodes": 0})
            for n in r.test:
                s = scores.get((r.name, n))
                if s is None:
                    continue
                scored = seg & ~np.isnan(s)
                if not scored.any():
                    continue
                stats["scored"] = True
                alarm = np.nan_to_num(s, nan=-np.inf) >= threshold
                if truth is not None and n == truth.host:
                    stats["faults"] += 1
                    inside = scored & (times >= truth.start) & (times < truth.end)
                    hits = times[inside & alarm]  # the recovery after the end does not count
                    if len(hits):
                        stats["detected"] += 1
                        stats["delays"].append((hits[0] - truth.start) / 60.0)
                    outside = scored & ~((times >= truth.start) & (times < truth.end + grace))
                    stats["false_events"] += len(alarm_events(times, alarm, outside, grace))
                else:
                    events = len(alarm_events(times, alarm, scored, grace))
                    stats["false_events"] += events
                    stats["on_other_nodes"] += events
                    if kind == "clean":
                        stats["node_hours"] += (end - start) / 3600.0
    out = {}
    for kind, st in per_kind.items():
        if not st["scored"]:
            continue
        if kind == "clean":
            hours = st["node_hours"]
            out[kind] = {"false_alarms": st["false_events"], "node_hours": hours,
                         "false_alarms_per_node_hour": st["false_events"] / hours if hours else None}
            continue
        tp, fp = st["detected"], st["false_events"]
        out[kind] = {"faults": st["faults"], "detected": tp, "false_events": fp,
                     "false_events_on_other_nodes": st["on_other_nodes"],
                     "recall": tp / st["faults"] if st["faults"] else None,
                     "precision": tp / (tp + fp) if tp + fp else None,
                     "delay_min_median": statistics.median(st["delays"]) if st["delays"] else None,
                     "delays_min": [round(d, 2) for d in st["delays"]]}
    return out


def table(results: dict) -> str:
    kinds = [k for k in faults.KINDS]
    lines = ["| detector | " + " | ".join(f"{k} P / R / delay" for k in kinds) + " | false alarms / node-h (clean) |",
             "|---|" + "---|" * (len(kinds) + 1)]
    for name in DETECTORS:
        q = results[name]["quality"]
        cells = []
        for k in kinds:
            c = q.get(k)
            if c is None:
                cells.append("-")
                continue
            p = "-" if c["precision"] is None else f"{c['precision']:.2f}"
            d = "-" if c["delay_min_median"] is None else f"{c['delay_min_median']:.1f} min"
            cells.append(f"{p} / {c['recall']:.2f} / {d}")
        fa = q.get("clean", {}).get("false_alarms_per_node_hour")
        lines.append(f"| {name} | " + " | ".join(cells) + f" | {'-' if fa is None else f'{fa:.3f}'} |")
    return "\n".join(lines)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="2 units, 1 repetition, 2 h training history")
    ap.add_argument("--units", type=int, default=3)
    ap.add_argument("--nodes", type=int, default=6, help="worker nodes per unit")
    ap.add_argument("--train-hours", type=float, default=3.0)
    ap.add_argument("--reps", type=int, default=2, help="segments per fault kind and unit")
    ap.add_argument("--clean", type=int, default=2, help="clean one-hour segments per unit")
    ap.add_argument("--alpha", type=float, default=0.001, help="false-alarm budget per scored point")
    ap.add_argument("--tsfresh-train", type=int, default=100)
    ap.add_argument("--tsfresh-stride", type=int, default=60, help="points between tsfresh-scored windows")
    ap.add_argument("--tsfresh-all-reps", action="store_true")
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--out", type=Path, default=None,
                    help="default: results/detect_quality.json (--quick: detect_quality_quick.json)")
    a = ap.parse_args()
    if a.out is None:
        a.out = RESULTS / ("detect_quality_quick.json" if a.quick else "detect_quality.json")
    if a.quick:
        a.units, a.train_hours, a.reps, a.clean = 2, 2.0, 1, 1
        a.tsfresh_train, a.tsfresh_stride = min(a.tsfresh_train, 60), max(a.tsfresh_stride, 90)

    t = time.perf_counter()
    runs = []
    for i in range(a.units):
        rng = random.Random(f"{a.seed}:order:{i}")
        kinds = [k for k in faults.KINDS for _ in range(a.reps)]
        rng.shuffle(kinds)
        kinds = ["clean"] * a.clean + kinds
        runs.append(simulate(i, a.nodes, a.train_hours, kinds, a.seed))
        print(f"simulated {runs[-1].name}: {a.train_hours:g} h training + {len(kinds)} h test "
              f"({time.perf_counter() - t:.0f} s)", flush=True)
    sim_s = time.perf_counter() - t

    results = {}
    for name, fn in (("farmwatch", lambda: farmwatch_scores(runs, a.alpha)),
                     ("rolling_z", lambda: zscore_scores(runs, a.alpha)),
                     ("tsfresh_iforest", lambda: tsfresh_scores(runs, a.alpha, a.tsfresh_train,
                                                                a.tsfresh_stride, a.tsfresh_all_reps, a.seed))):
        scores, threshold, timing = fn()
        results[name] = {"threshold": threshold, "timing": timing, "quality": evaluate(runs, scores, threshold)}
        print(f"{name}: done ({timing})", flush=True)

    doc = {
        "benchmark": "detect_quality",
        "machine": machine(),
        "workload": {
            "units": a.units, "nodes_per_unit": a.nodes, "workers_per_node": WORKERS_PER_NODE,
            "input_rate": INPUT_RATE, "grid_s": STEP, "window_points": WINDOW,
            "train_hours_per_unit": a.train_hours, "reps_per_kind_and_unit": a.reps,
            "clean_hours_per_unit": a.clean, "fault_minutes": FAULT_FOR / 60, "alpha": a.alpha,
            "data": "faults.record: distributor + collector replies via SimUnit.answer (no sockets), "
                    "load varied by faults.Load",
            "quick": a.quick, "seed": a.seed, "simulation_s": sim_s,
        },
        "baseline": "rolling_z and tsfresh_iforest, same data, same run, threshold = (1 - alpha) "
                    "quantile of their training scores; farmwatch uses its calibrated 1 - alpha",
        "ground_truth": [g.to_dict() for r in runs for g in r.truths],
        **results,
    }
    a.out.parent.mkdir(parents=True, exist_ok=True)
    a.out.write_text(json.dumps(doc, indent=1) + "\n")
    print(table(results))
    print(f"wrote {a.out} ({time.perf_counter() - t:.0f} s in all)")


if __name__ == "__main__":
    main()
